"""How sure a difference in AP at a BEV IoU threshold is: a paired bootstrap over the split's samples.

`make run` compares one checkpoint fused, LiDAR-only and camera-only on `mini_val` (40 samples). Its car APs can
differ by a few thousandths, well inside what another draw of 40 samples would change. This module resamples the
samples with replacement, the same resample for every run compared (paired), and recomputes each run's AP on it:

    runs = {"fused": ev_fused, "lidar_only": ev_lidar}          # `Evaluation`s of one split
    boot = bootstrap_ap(ev_fused.gt.boxes, {k: e.pred for k, e in runs.items()}, len(ev_fused.gt.sample_tokens))
    compare(boot, "fused", "lidar_only", "car")                   # difference, 95 % interval, share ahead

A resample is a weight per sample (how many times it was drawn). Matching is done once per sample (it never looks
across samples), so a resample's AP is the AP of the split with each sample's boxes repeated that many times:
`weighted_ap` computes it from the ranked true-positive flags with the weights, exactly (tests hold it to the
evaluator run on the repeated split). The intervals are percentile intervals of the differences.

What this does not measure: keyframes of one scene share their objects, so the samples are not independent and the
intervals are narrower than the truth; and a run's training noise (another seed) is not in them at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fusion.evaluation.boxes import BoxArrays
from fusion.evaluation.config import DETECTION_NAMES, IOU_KINDS, IOU_THRESHOLDS
from fusion.evaluation.iou_ap import global_rank, match_iou

CHUNK_ELEMENTS = 2_000_000  # resamples x detections computed at once: ~16 MB a float64 temporary, whatever the split


def sample_weights(num_samples: int, resamples: int, seed: int = 0) -> np.ndarray:
    """<int64: resamples, num_samples>: how many times each sample is drawn in each resample of `num_samples`
    draws with replacement."""
    if num_samples < 1 or resamples < 1:
        raise ValueError(f"sample_weights: need at least one sample and one resample, got {num_samples}, {resamples}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(num_samples, np.full(num_samples, 1.0 / num_samples), size=resamples)


def weighted_ap(is_tp: np.ndarray, sample: np.ndarray, gt_per_sample: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """VOC all-point AP of one class on each resample.

    Args:
        is_tp: <bool: D> the class's detections' true-positive flags, in rank order (descending score).
        sample: <int: D> each ranked detection's sample.
        gt_per_sample: <int: S> the class's GT boxes in each sample.
        weights: <int: R, S> each resample's draws of each sample (`sample_weights`).

    Returns:
        <float64: R> the AP of each resample; NaN where the resample holds no GT box of the class.

    A detection drawn w times is w detections in a row with one flag. Within such a run of true positives the
    precision rises, so each of them has the monotone (from the right) precision of the run's last one: the AP is
    sum over true-positive detections of w x (the running maximum from the right of the precision after each
    detection) over the resample's GT count. The precision after a false positive never raises that maximum (it is
    below the one at the true positive before it), so the maximum runs over every detection.
    """
    weights = np.asarray(weights)
    num_gt = weights @ np.asarray(gt_per_sample, dtype=np.int64)  # (R,)
    ap = np.full(len(weights), np.nan)
    if len(is_tp) == 0:
        ap[num_gt > 0] = 0.0
        return ap
    tp = np.asarray(is_tp, dtype=bool)
    rows = max(1, CHUNK_ELEMENTS // len(tp))
    for start in range(0, len(weights), rows):
        w = weights[start : start + rows][:, sample].astype(np.float64)  # (r, D)
        hits = w * tp
        drawn = np.cumsum(w, axis=1)
        precision = np.divide(np.cumsum(hits, axis=1), drawn, out=np.zeros_like(drawn), where=drawn > 0)
        monotone = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        total = np.einsum("rd,rd->r", hits, monotone)
        g = num_gt[start : start + rows]
        ap[start : start + rows] = np.divide(total, g, out=np.full(len(g), np.nan), where=g > 0)
    return ap


@dataclass(frozen=True)
class BootstrapAP:
    """Per run, the AP of every class (<float64: R + 1, C>, NaN for a class without GT in a resample): row 0 is the
    split as it is (every weight 1), rows 1.. the resamples; `classes` the columns; `num_samples` the split's."""

    ap: dict[str, np.ndarray]
    classes: tuple[str, ...]
    num_samples: int
    kind: str
    threshold: float

    @property
    def resamples(self) -> int:
        return len(next(iter(self.ap.values()))) - 1

    @property
    def present_classes(self) -> list[str]:
        """The classes with a GT box in the split (the evaluator's non-null APs), in `classes` order."""
        first = next(iter(self.ap.values()))[0]
        return [c for c, ap in zip(self.classes, first, strict=True) if not np.isnan(ap)]

    def values(self, run: str, what: str) -> np.ndarray:
        """<float64: R + 1> one class's AP, or with `what` "mean" the mean over the classes with GT in each
        resample (the evaluator's "mean"), a resample without any GT box giving NaN."""
        ap = self.ap[run]
        if what != "mean":
            return ap[:, self.classes.index(what)]
        present = ~np.isnan(ap)
        count = present.sum(1)
        return np.divide(np.where(present, ap, 0.0).sum(1), count, out=np.full(len(ap), np.nan), where=count > 0)


def bootstrap_ap(gt: BoxArrays, preds: Mapping[str, BoxArrays], num_samples: int, resamples: int = 1000,
                 kind: str = "bev", threshold: float = 0.7, seed: int = 0) -> BootstrapAP:  # fmt: skip
    """AP at IoU `threshold` (`kind` "bev" or "3d", global ordering) of each run in `preds` (filtered predictions
    of one split, e.g. `Evaluation.pred`) on the split and on `resamples` resamples of its samples, the same
    resamples for every run."""
    if kind not in IOU_KINDS or threshold not in IOU_THRESHOLDS:
        raise ValueError(f"bootstrap_ap: kind {kind!r} / threshold {threshold}: not in {IOU_KINDS} / {IOU_THRESHOLDS}")
    weights = np.vstack([np.ones((1, num_samples), np.int64), sample_weights(num_samples, resamples, seed)])
    n_cls = len(DETECTION_NAMES)
    gt_counts = np.zeros((n_cls, num_samples), np.int64)
    np.add.at(gt_counts, (gt.label, gt.sample), 1)
    k, t = IOU_KINDS.index(kind), IOU_THRESHOLDS.index(threshold)
    out = {}
    for run, pred in preds.items():
        is_tp = match_iou(gt, pred, num_samples)[k, t]
        rank = global_rank(pred)
        bounds = np.r_[0, np.cumsum(np.bincount(pred.label, minlength=n_cls))]
        ap = np.full((len(weights), n_cls), np.nan)
        for c in np.flatnonzero(gt_counts.sum(1)):
            ranked = rank[bounds[c] : bounds[c + 1]]
            ap[:, c] = weighted_ap(is_tp[ranked], pred.sample[ranked], gt_counts[c], weights)
        out[run] = ap
    return BootstrapAP(out, tuple(DETECTION_NAMES), num_samples, kind, threshold)


def compare(boot: BootstrapAP, a: str, b: str, what: str, level: float = 0.95) -> dict:
    """Run `a` against run `b` on one class's AP (or "mean"): `difference` a - b on the split, the `level`
    percentile interval of the differences over the resamples (`low`, `high`), and `ahead`, the share of
    resamples where a's AP is above b's (resamples where either is NaN left out). A figure that is undefined (no GT
    box of the class in the split, or in any resample) is None, so that the dict stays valid JSON."""
    diff = boot.values(a, what) - boot.values(b, what)
    rest = diff[1:][~np.isnan(diff[1:])]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(rest, [tail, 100 - tail]) if len(rest) else (None, None)

    def number(x) -> float | None:
        return None if x is None or np.isnan(x) else float(x)

    return {
        "difference": number(diff[0]),
        "low": number(low),
        "high": number(high),
        "ahead": float(np.mean(rest > 0)) if len(rest) else None,
        "level": level,
        "resamples": len(rest),
    }
