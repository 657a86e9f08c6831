"""PNG plots of an evaluation: PR curves, TP-error curves and BEV pictures of predictions against GT.

matplotlib (Agg backend) is imported here only, so evaluating without `--plots` never loads it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fusion.evaluation.config import DETECTION_NAMES, IOU_THRESHOLDS, TP_METRICS
from fusion.evaluation.report import TP_SHORT
from fusion.evaluation.rotated_iou import bev_corners


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pr_curves(ev, name: str, path: Path) -> None:
    """nuScenes PR curves (one per distance threshold) next to AP@IoU PR curves (BEV, global) for one class."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    aps = ev.metrics["nuscenes"]["label_aps"][name]
    for (cls, th), md in ev.curves.items():
        if cls == name:
            left.plot(md.recall, md.precision, label=f"{th} m: AP {aps[str(float(th))]:.3f}")
    left.set(
        title=f"{name}: nuScenes (centre distance)", xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.05)
    )
    for th in IOU_THRESHOLDS:
        curve = ev.iou_curves.get(("bev", "global", th, name))
        if curve is not None and len(curve[0]):
            ap = ev.metrics["iou_ap"]["bev"]["global"][str(th)][name]
            right.plot(curve[0], curve[1], label=f"IoU {th}: AP {ap:.3f}")
    right.set(title=f"{name}: BEV IoU (global)", xlabel="recall", xlim=(0, 1), ylim=(0, 1.05))
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def tp_curves(ev, name: str, path: Path) -> None:
    """TP errors against recall at the TP distance threshold for one class (as the devkit's `class_tp_curve`)."""
    plt = _pyplot()
    cfg = ev.metrics["nuscenes"]["cfg"]
    md = ev.curves[(name, cfg["dist_th_tp"])]
    first, last = round(100 * cfg["min_recall"]) + 1, md.max_recall_ind
    fig, ax = plt.subplots(figsize=(5, 4))
    errors = ev.metrics["nuscenes"]["label_tp_errors"][name]
    for metric in TP_METRICS:
        value = errors[metric]
        if last >= first and not np.isnan(value):
            curve = getattr(md, metric)[first : last + 1]
            ax.plot(md.recall[first : last + 1], curve, label=f"{TP_SHORT[metric]}: {value:.3f}")
    ax.axvline(cfg["min_recall"], color="k", ls=":", lw=1)
    ax.set(title=f"{name}: TP errors @ {cfg['dist_th_tp']} m", xlabel="recall", ylabel="error", xlim=(0, 1))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def bev_picture(ev, sample_index: int, path: Path, min_score: float = 0.0) -> None:
    """GT (green) and predictions (red/blue by score) of one sample, in the ego-centred xy plane."""
    from fusion.evaluation.boxes import quaternion_yaw

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 6))
    ego = ev.gt.ego_translation[sample_index, :2]
    for boxes, style in ((ev.gt.boxes, "gt"), (ev.pred, "pred")):
        sel = boxes.select((boxes.sample == sample_index) & (boxes.score >= (min_score if style == "pred" else -2)))
        if len(sel) == 0:
            continue
        corners = bev_corners(sel.translation[:, :2] - ego, sel.size, quaternion_yaw(sel.rotation))
        for k, quad in enumerate(corners):
            closed = np.vstack([quad, quad[:1]])
            if style == "gt":
                ax.plot(closed[:, 0], closed[:, 1], color="tab:green", lw=1.5)
            else:
                ax.plot(closed[:, 0], closed[:, 1], color=plt.cm.coolwarm(float(sel.score[k])), lw=1, alpha=0.9)
    ax.plot([0], [0], "k^", ms=8)
    reach = max(ev.metrics["nuscenes"]["cfg"]["class_range"].values())
    token = str(ev.gt.sample_tokens[sample_index])
    ax.set(
        xlim=(-reach, reach),
        ylim=(-reach, reach),
        aspect="equal",
        title=f"sample {token[:12]}…: GT green, predictions by score",
    )
    ax.set(xlabel="x - ego x (m)", ylabel="y - ego y (m)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def render_all(ev, out: Path, samples: Sequence[str] | int = 3) -> list[Path]:
    """All plots into `out`: `pr_<class>.png`, `tp_<class>.png`, `bev_<token>.png`.

    Args:
        ev: An `Evaluation`.
        out: Existing folder.
        samples: Sample tokens for the BEV pictures, or how many of the split's first samples.
    """
    written = []
    for name in DETECTION_NAMES:
        if np.count_nonzero(ev.gt.boxes.label == DETECTION_NAMES.index(name)) == 0:
            continue
        for kind, fn in (("pr", pr_curves), ("tp", tp_curves)):
            written.append(out / f"{kind}_{name}.png")
            fn(ev, name, written[-1])
    tokens = ev.gt.sample_tokens.tolist()
    chosen = tokens[:samples] if isinstance(samples, int) else [t for t in samples if t in tokens]
    for token in chosen:
        written.append(out / f"bev_{re.sub(r'[^0-9A-Za-z_-]', '_', token)}.png")
        bev_picture(ev, tokens.index(token), written[-1])
    return written
