"""Readable tables of metrics.json: one run, and several runs side by side (camera-only / LiDAR-only / fused)."""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from fusion.evaluation.bootstrap import BootstrapAP, compare
from fusion.evaluation.config import DETECTION_NAMES, IOU_KINDS, IOU_ORDERINGS, IOU_THRESHOLDS, TP_METRICS
from fusion.evaluation.errors import EvaluationError

TP_SHORT = {"trans_err": "ATE", "scale_err": "ASE", "orient_err": "AOE", "vel_err": "AVE", "attr_err": "AAE"}


def _fmt(value: float | None, width: int = 7) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'-':>{width}}"
    return f"{value:>{width}.4f}"


def format_metrics(metrics: Mapping) -> str:
    """The summary and the per-class table of one metrics.json.

    Args:
        metrics: `{"nuscenes": ..., "iou_ap": ...}` as written by `fusion evaluate`.
    """
    nus, iou = metrics["nuscenes"], metrics["iou_ap"]
    lines = [f"mAP {nus['mean_ap']:.4f}   NDS {nus['nd_score']:.4f}"]
    lines.append("   ".join(f"m{TP_SHORT[m]} {nus['tp_errors'][m]:.4f}" for m in TP_METRICS))
    for kind in IOU_KINDS:
        for ordering in IOU_ORDERINGS:
            cells = "  ".join(f"@{th}: {_fmt(iou[kind][ordering][str(th)]['mean'], 6)}" for th in IOU_THRESHOLDS)
            lines.append(f"AP {kind.upper():3} {ordering:6}  {cells}")
    header = f"{'class':<21}{'AP':>7}" + "".join(f"{TP_SHORT[m]:>7}" for m in TP_METRICS)
    header += "".join(f"{'bev@' + str(th):>9}" for th in IOU_THRESHOLDS) + f"{'3d@0.7':>9}"
    lines += ["", header, "-" * len(header)]
    for name in DETECTION_NAMES:
        row = f"{name:<21}{_fmt(nus['mean_dist_aps'][name])}"
        row += "".join(_fmt(nus["label_tp_errors"][name][m]) for m in TP_METRICS)
        row += "".join(_fmt(iou["bev"]["global"][str(th)][name], 9) for th in IOU_THRESHOLDS)
        row += _fmt(iou["3d"]["global"]["0.7"][name], 9)
        lines.append(row)
    lines.append("(bev@t, 3d@t: AP at IoU t, global ordering; '-': no GT of the class, or not applicable)")
    return "\n".join(lines)


def load_metrics(path: str | os.PathLike) -> dict:
    """Read a metrics.json written by `fusion evaluate`, checking its two sections."""
    try:
        content = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EvaluationError(f"{path}: cannot read metrics: {e}") from e
    for field in ("nuscenes", "iou_ap"):
        if not isinstance(content, dict) or field not in content:
            raise EvaluationError(f"{path}: field {field}: missing (not a `fusion evaluate` metrics.json)")
    return content


def comparison_rows(runs: Mapping[str, Mapping]) -> list[tuple[str, list[float | None]]]:
    """Rows (label, value per run) of the side-by-side table."""
    rows: list[tuple[str, list[float | None]]] = []

    def add(label: str, get) -> None:
        rows.append((label, [get(m) for m in runs.values()]))

    add("mAP", lambda m: m["nuscenes"]["mean_ap"])
    add("NDS", lambda m: m["nuscenes"]["nd_score"])
    for metric in TP_METRICS:
        add(f"m{TP_SHORT[metric]}", lambda m, metric=metric: m["nuscenes"]["tp_errors"][metric])
    for kind in IOU_KINDS:
        for ordering in IOU_ORDERINGS:
            for th in IOU_THRESHOLDS:
                label = f"AP {kind} {ordering} @{th}"
                add(label, lambda m, k=kind, o=ordering, t=th: m["iou_ap"][k][o][str(t)]["mean"])
    for name in DETECTION_NAMES:
        add(f"AP {name}", lambda m, n=name: m["nuscenes"]["mean_dist_aps"][n])
    for ordering in ("global", "local"):
        for name in DETECTION_NAMES:
            add(f"AP bev {ordering} @0.7 {name}", lambda m, n=name, o=ordering: m["iou_ap"]["bev"][o]["0.7"][n])
    return rows


CAR_AP_TARGET = 0.6  # fused car AP at BEV IoU 0.7 (global ordering) on the validation split
ORDER = ("fused", "lidar_only", "camera_only")  # the learning target's order, best first


def nan_to_zero(value: float | None) -> float:
    """An AP as a number: 0 for a class without GT (None) or an undefined (NaN) value."""
    return 0.0 if value is None or math.isnan(value) else float(value)


def learning_verdict(runs: Mapping[str, Mapping], steps: int | None = None, boot: BootstrapAP | None = None) -> str:
    """The learning targets checked on one checkpoint evaluated three ways (`runs` holds `ORDER`'s keys): fused car
    AP at BEV IoU 0.7 against `CAR_AP_TARGET`, and the order fused > LiDAR-only > camera-only on the car AP and on the
    mean over classes at BEV IoU 0.7 (global ordering). Classes without GT count as 0 here. `steps`: the optimiser
    steps the checkpoint trained, said in the heading (a time-bounded fit trains fewer on a slower machine). `boot`
    (`bootstrap_ap` of the same runs at BEV IoU 0.7): under each order, each step's difference with its 95 % interval
    over resamples of the samples, and how often the better-placed run is ahead."""

    def bev07(m: Mapping, key: str) -> float:
        return nan_to_zero(m["iou_ap"]["bev"]["global"]["0.7"].get(key))

    trained = "" if steps is None else f"; the checkpoint trained {steps:,} steps"
    lines = [f"learning targets (BEV IoU 0.7, global ordering{trained}):"]
    car = bev07(runs["fused"], "car")
    lines.append(f"  fused car AP {car:.4f} >= {CAR_AP_TARGET}: {'met' if car >= CAR_AP_TARGET else 'MISSED'}")
    for key, label in (("car", "car AP"), ("mean", "mean AP over classes")):
        values = [bev07(runs[r], key) for r in ORDER]
        chain = " > ".join(f"{r} {v:.4f}" for r, v in zip(ORDER, values, strict=True))
        held = all(a > b for a, b in itertools.pairwise(values))
        lines.append(f"  {label}: {chain}: {'holds' if held else 'DOES NOT HOLD'}")
        if boot is not None:
            for a, b in itertools.pairwise(ORDER):
                lines.append(f"    {a} - {b} {format_difference(compare(boot, a, b, key))}")
    if boot is not None:
        lines.append(f"  [low, high]: 95% of the differences over {boot.resamples:,} resamples of the "
                     f"{boot.num_samples} samples (paired bootstrap; docs/evaluation.md)")  # fmt: skip
    return "\n".join(lines)


def format_difference(c: Mapping) -> str:
    """'+0.0123 [-0.0101, +0.0342], ahead in 84%' (`compare`'s difference, interval and share ahead)."""
    if c["resamples"] == 0 or c["difference"] is None:
        return "- (no GT box of it in the split or in any resample)"
    return f"{c['difference']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}], ahead in {c['ahead']:.0%}"


def bootstrap_summary(boot: BootstrapAP, order: Sequence[str] = ORDER, keys: Sequence[str] = ("car", "mean")) -> dict:
    """Each run of `order` against the next on each of `keys` (classes or "mean"), as a JSON-ready dict: by default
    the comparisons `learning_verdict` prints (`bootstrap.json` of `fusion run`)."""
    pairs = {f"{a}-{b}": {key: compare(boot, a, b, key) for key in keys} for a, b in itertools.pairwise(order)}
    return {"kind": boot.kind, "ordering": "global", "threshold": boot.threshold, "samples": boot.num_samples,
            "resamples": boot.resamples, "differences": pairs}  # fmt: skip


def format_bootstrap(boot: BootstrapAP, split: str = "the split") -> str:
    """Each run against the next (in `boot`'s order), per class with GT in the split and on the mean: both APs,
    the difference, its 95% interval over the resamples and how often the first run is ahead."""
    runs = list(boot.ap)
    lines = [f"paired bootstrap of AP at {boot.kind.upper()} IoU {boot.threshold} (global ordering): "
             f"{boot.resamples:,} resamples of the {boot.num_samples} samples of {split}"]  # fmt: skip
    for a, b in itertools.pairwise(runs):
        width = max(10, len(a) + 2, len(b) + 2)
        header = (
            f"{'class':<22}{a:>{width}}{b:>{width}}{'difference':>12}   {'95% interval':<20}{a + ' ahead':>{width + 6}}"
        )
        lines += ["", header, "-" * len(header)]
        for key in [*boot.present_classes, "mean"]:
            c = compare(boot, a, b, key)
            undefined = c["resamples"] == 0 or c["difference"] is None
            interval = "-" if undefined else f"[{c['low']:+.4f}, {c['high']:+.4f}]"
            ahead = "-" if undefined else f"{c['ahead']:.0%}"
            difference = "-" if c["difference"] is None else f"{c['difference']:+.4f}"
            both = "".join(_fmt(float(boot.values(r, key)[0]), width) for r in (a, b))
            lines.append(f"{key:<22}{both}{difference:>12}   {interval:<20}{ahead:>{width + 6}}")
    return "\n".join(lines)


def format_comparison(runs: Mapping[str, Mapping]) -> str:
    """One table, one column per run (e.g. camera_only, lidar_only, fused), one row per figure.

    Args:
        runs: Run name -> metrics.json content, in column order.
    """
    width = max(10, *(len(name) + 2 for name in runs))
    rows = comparison_rows(runs)
    label_width = max(len(label) for label, _ in rows) + 2
    header = f"{'metric':<{label_width}}" + "".join(f"{name:>{width}}" for name in runs)
    lines = [header, "-" * len(header)]
    for label, values in rows:
        lines.append(f"{label:<{label_width}}" + "".join(_fmt(v, width) for v in values))
    return "\n".join(lines)
