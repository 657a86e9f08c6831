"""`evaluate`: GT cache + results -> nuScenes metrics and AP@IoU, the one entry point (CLI and training loop).

    metrics = evaluate("data/mini", "v1.0-mini", "mini_val", "results.json", out_dir="outputs/eval")
    metrics["nuscenes"]["nd_score"], metrics["iou_ap"]["bev"]["local"]["0.7"]["mean"]

Nothing is written to `out_dir` unless the whole evaluation succeeded; `metrics.json` is written atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fusion.evaluation.boxes import BoxArrays
from fusion.evaluation.config import load_config
from fusion.evaluation.ground_truth import GroundTruth, load_ground_truth
from fusion.evaluation.iou_ap import iou_ap
from fusion.evaluation.nuscenes_metrics import MetricData, nuscenes_metrics
from fusion.evaluation.results import load_results
from fusion.files import atomic_target


@dataclass(frozen=True)
class Evaluation:
    """Everything one evaluation produced.

    Attributes:
        metrics: The metrics.json content: `{"nuscenes": ..., "iou_ap": ...}`.
        curves: nuScenes `MetricData` per (class, distance threshold).
        iou_curves: (recall, precision) per (kind, ordering, IoU threshold, class), computed when read.
        gt: The ground truth evaluated against.
        pred: The filtered predictions.
    """

    metrics: dict
    curves: dict[tuple[str, float], MetricData]
    iou_curves: Mapping
    gt: GroundTruth
    pred: BoxArrays


def run_evaluation(
    dataroot: str | os.PathLike,
    version: str,
    split: str,
    results: str | os.PathLike | Mapping,
    cache_dir: str | os.PathLike | None = None,
    config_name: str = "detection_cvpr_2019",
) -> Evaluation:
    """Evaluate a results JSON (path) or submission dict on a split; writes nothing but the GT cache.

    Raises:
        EvaluationError: bad dataroot, split or results (the message names file, sample token and field).
    """
    config = load_config(config_name)
    gt = load_ground_truth(dataroot, version, split, config, cache_dir)
    pred, meta = load_results(results, gt, config)
    start = time.time()
    summary, curves = nuscenes_metrics(gt.boxes, pred, len(gt.sample_tokens), config)
    iou_summary, iou_curves = iou_ap(gt.boxes, pred, len(gt.sample_tokens))
    summary["eval_time"] = time.time() - start
    summary["cfg"] = config.serialize()
    summary["meta"] = dict(meta)
    return Evaluation({"nuscenes": summary, "iou_ap": iou_summary}, curves, iou_curves, gt, pred)


def evaluate(
    dataroot: str | os.PathLike,
    version: str,
    split: str,
    results: str | os.PathLike | Mapping,
    out_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    plots: bool = False,
    plot_samples: Sequence[str] | int = 3,
) -> dict:
    """Evaluate and, with `out_dir`, write `out_dir/metrics.json` (and `out_dir/plots/*.png` with `plots`).

    Args:
        dataroot: nuScenes dataroot.
        version: Version folder, e.g. `v1.0-mini`.
        split: Devkit split name or a name from `<dataroot>/<version>/splits.json`.
        results: Results JSON path, or the submission dict (`{"meta": {...}, "results": {token: [box, ...]}}`).
        out_dir: Where to write; None writes nothing.
        cache_dir: GT cache folder (default `$FUSION_CACHE_DIR/eval` or `~/.cache/fusion/eval`; '' disables).
        plots: Also render PR curves, TP-error curves and BEV pictures.
        plot_samples: Sample tokens for the BEV pictures, or how many (the first of the split).

    Returns:
        The metrics dict (the content of metrics.json).
    """
    ev = run_evaluation(dataroot, version, split, results, cache_dir)
    if out_dir is not None:
        write_evaluation(ev, out_dir, plots, plot_samples)
    return ev.metrics


def write_evaluation(ev: Evaluation, out_dir: str | os.PathLike, plots: bool = False,
                     plot_samples: Sequence[str] | int = 3) -> None:  # fmt: skip
    """Write `out_dir/metrics.json` (atomically) and, with `plots`, `out_dir/plots/*.png` of one evaluation."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if plots:
        _write_plots(out, ev, plot_samples)
    write_json_atomic(out / "metrics.json", ev.metrics)


def write_json_atomic(path: Path, content: dict) -> None:
    """Write JSON to a temporary file next to `path`, then rename it over `path`."""
    with atomic_target(path) as tmp, open(tmp, "w") as f:
        json.dump(content, f, indent=2)


def _write_plots(out: Path, ev: Evaluation, plot_samples: Sequence[str] | int) -> None:
    from fusion.evaluation.plots import render_all

    tmp = Path(tempfile.mkdtemp(prefix=".plots.", dir=out))
    try:
        render_all(ev, tmp, plot_samples)
        final = out / "plots"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
