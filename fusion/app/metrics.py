"""The run's figures for the app: mAP, NDS and AP@0.7 per modality from `outputs/latest/*/metrics.json`, and PR curves.

PR curves are the PNGs `fusion evaluate --plots` left in `<run>/fused/plots/`; when there are none, they are rendered
from the run's results JSON with the evaluation's own plotting code, into the app's temporary folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

RUN_MODALITIES = {"fused": "fused", "lidar_only": "LiDAR-only", "camera_only": "camera-only"}
METRIC_HEADERS = ["modality", "nuScenes mAP", "NDS", "AP BEV@0.7 (mean)", "AP BEV@0.7 car", "AP 3D@0.7 (mean)"]


def _fmt(v) -> float | str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else round(float(v), 4)


def metric_rows(run_dir: str | Path) -> list[list]:
    """One row per modality folder of the run that has a metrics.json (none: an empty list)."""
    rows = []
    for folder, label in RUN_MODALITIES.items():
        path = Path(run_dir) / folder / "metrics.json"
        if not path.is_file():
            continue
        try:
            m = json.loads(path.read_text())
            bev, box = m["iou_ap"]["bev"]["global"]["0.7"], m["iou_ap"]["3d"]["global"]["0.7"]
            rows.append([label, _fmt(m["nuscenes"]["mean_ap"]), _fmt(m["nuscenes"]["nd_score"]), _fmt(bev["mean"]),
                         _fmt(bev.get("car")), _fmt(box["mean"])])  # fmt: skip
        except (KeyError, TypeError, ValueError) as e:
            rows.append([label, f"{path}: unreadable ({type(e).__name__}: {e})", "", "", "", ""])
    return rows


DIFFERENCE_HEADERS = ["comparison", "AP BEV@0.7", "difference", "95% interval", "ahead in"]
_WHAT = {"car": "car", "mean": "mean over classes"}


def difference_rows(run_dir: str | Path) -> list[list]:
    """The run's paired-bootstrap differences (`bootstrap.json` of `fusion run`): one row per step of the order
    fused > LiDAR-only > camera-only and figure (car AP, class mean). None written: an empty list."""
    path = Path(run_dir) / "bootstrap.json"
    if not path.is_file():
        return []
    try:
        boot = json.loads(path.read_text())
        rows = []
        for pair, figures in boot["differences"].items():
            a, b = (RUN_MODALITIES[k] for k in pair.split("-"))
            for what, c in figures.items():
                defined = c["resamples"] > 0 and c["low"] is not None
                rows.append([f"{a} − {b}", _WHAT.get(what, what), _fmt(c["difference"]),
                             f"[{c['low']:+.4f}, {c['high']:+.4f}]" if defined else "—",
                             f"{c['ahead']:.0%}" if defined else "—"])  # fmt: skip
        return rows
    except (KeyError, TypeError, ValueError) as e:
        return [[f"{path}: unreadable ({type(e).__name__}: {e})", "", "", "", ""]]


def run_split(run_dir: str | Path, default: str = "mini_val") -> str:
    """The validation split of the run (from its run_config.yaml), the one its metrics were computed on."""
    import yaml

    path = Path(run_dir) / "run_config.yaml"
    if path.is_file():
        cfg = yaml.safe_load(path.read_text()) or {}
        return str((cfg.get("data") or {}).get("val_split") or default)
    return default


def pr_curves(run_dir: str | Path, dataroot: str, version: str, work_dir: str | Path) -> list[tuple[np.ndarray, str]]:
    """PR curve pictures (<uint8: H, W, 3>, caption) of the fused run: the stored plots, or rendered from its
    results JSON into `work_dir`. Empty when the run has neither."""
    from PIL import Image

    fused = Path(run_dir) / "fused"
    pngs = sorted((fused / "plots").glob("pr_*.png")) if (fused / "plots").is_dir() else []
    results = fused / "results.json"
    if not pngs and results.is_file():
        import hashlib

        from fusion.evaluation.config import DETECTION_NAMES
        from fusion.evaluation.evaluate import run_evaluation
        from fusion.evaluation.plots import pr_curves as plot_pr

        # rendered once per results file (its path and modification time): later clicks reuse the pictures
        key = hashlib.sha1(f"{results.resolve()}:{results.stat().st_mtime_ns}:{dataroot}".encode()).hexdigest()[:12]
        out = Path(work_dir) / "pr" / key
        pngs = sorted(out.glob("pr_*.png"))
        if not pngs:
            ev = run_evaluation(dataroot, version, run_split(run_dir), str(results))
            tmp = Path(work_dir) / "pr" / f".{key}.partial"
            tmp.mkdir(parents=True, exist_ok=True)
            for name in DETECTION_NAMES:
                if np.count_nonzero(ev.gt.boxes.label == DETECTION_NAMES.index(name)):
                    plot_pr(ev, name, tmp / f"pr_{name}.png")
            tmp.replace(out)
            pngs = sorted(out.glob("pr_*.png"))
    return [(np.asarray(Image.open(p).convert("RGB")), p.stem[3:]) for p in pngs]


def pr_curves_or_message(run_dir: str | Path, dataroot: str, version: str,
                         work_dir: str | Path) -> tuple[list[tuple[np.ndarray, str]] | None, str | None]:  # fmt: skip
    """`pr_curves` for the app's button: (pictures, None), or (None, why there are none), never an exception."""
    from fusion.evaluation.errors import EvaluationError

    try:
        pictures = pr_curves(run_dir, dataroot, version, work_dir)
    except (EvaluationError, OSError, ValueError) as e:
        return None, f"No PR curves: evaluating {Path(run_dir) / 'fused' / 'results.json'} failed: {e}"
    if not pictures:
        return None, f"No PR curves: {run_dir}/fused has neither plots/ nor results.json (make run)"
    return pictures, None
