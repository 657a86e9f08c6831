"""AP at BEV and 3D IoU thresholds, `global` and `local` ordering (the protocol of DESIGN.md).

Per class, threshold and sample, predictions are taken in descending score order (ties: the one listed
first in the results) and each is matched to the not-yet-matched GT box of its class with the highest IoU
(ties: the GT box listed first); IoU >= t is a true positive and consumes that box. The TP/FP list is then
ranked `global`ly (all detections of the class by descending score, ties in `local` order) or kept `local`
(samples in sample-table order, each in its matching order, as OpenCOOD does), and AP is the VOC all-point
interpolation. A class without GT boxes has AP None and is left out of the mean.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fusion.evaluation.boxes import BoxArrays, quaternion_yaw
from fusion.evaluation.config import DETECTION_NAMES, IOU_KINDS, IOU_ORDERINGS, IOU_THRESHOLDS
from fusion.evaluation.matching import greedy_match
from fusion.evaluation.rotated_iou import pair_iou_columns


def voc_ap(is_tp: np.ndarray, num_gt: int) -> tuple[float, np.ndarray, np.ndarray]:
    """VOC all-point AP of a ranked TP/FP list.

    Args:
        is_tp: <bool: D> true positive flags in rank order.
        num_gt: Number of GT boxes (> 0).

    Returns:
        (ap, recall, precision): the AP and the raw curve, <float64: D> each.
    """
    return (voc_ap_value(is_tp, num_gt), *pr_curve(is_tp, num_gt))


def voc_ap_rows(is_tp: np.ndarray, num_gt: int) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """`voc_ap` of several ranked TP/FP lists (<bool: R, D>, one per row) with the same number of GT boxes."""
    return [voc_ap(row, num_gt) for row in is_tp]


def pr_curve(is_tp: np.ndarray, num_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) after each detection of a ranked TP/FP list, <float64: D> each."""
    tp = np.cumsum(is_tp).astype(np.float64)
    return tp / num_gt, tp / np.arange(1.0, len(is_tp) + 1)  # tp + fp: exact integers, as a float


def voc_ap_value(is_tp: np.ndarray, num_gt: int) -> float:
    """The VOC all-point AP of a ranked TP/FP list, from its true positives only, bit for bit the textbook sum.

    VOC: mrec = [0, rec, 1], mpre = [0, prec, 0] made monotone from the right, AP = sum over the steps of mrec
    of Δmrec * mpre. mrec steps exactly at the true positives (and at the end, where mpre is 0), and the
    precision after a false positive is below the one at the true positive before it, so mpre at a true
    positive is the running maximum from the right of the precisions at the true positives: the same terms,
    so the same sum.
    """
    j = np.flatnonzero(is_tp)
    tp = np.arange(1.0, len(j) + 1)  # the true positives so far, at each of them
    rec = tp / num_gt
    mpre = np.maximum.accumulate((tp / (j + 1.0))[::-1])[::-1]
    before = np.empty(len(j))
    before[:1] = 0.0
    before[1:] = rec[:-1]
    terms = (rec - before) * mpre
    last = rec[-1] if len(j) else 0.0
    if len(is_tp) == 0 or last != 1.0:
        terms = np.append(terms, (1.0 - last) * 0.0)
    return float(np.sum(terms))


class PRCurves(Mapping):
    """`{(kind, ordering, threshold, class): (recall, precision)}`, each curve computed when it is read.

    Holds the ranked TP/FP flags (one bool per detection) instead of two float64 arrays per curve.
    """

    def __init__(self, ranked: dict):
        self._ranked = ranked  # key -> (<bool: D> ranked TP flags, number of GT boxes)

    def __getitem__(self, key) -> tuple[np.ndarray, np.ndarray]:
        return pr_curve(*self._ranked[key])

    def __iter__(self):
        return iter(self._ranked)

    def __len__(self) -> int:
        return len(self._ranked)


def score_order(score: np.ndarray) -> np.ndarray:
    """Indices by descending score, ties to the first listed (an unstable sort when no two scores tie)."""
    order = np.argsort(-score)
    ranked = score[order]
    if np.any(ranked[1:] == ranked[:-1]):
        order = np.argsort(-score, kind="stable")
    return order


def stable_argsort_int(keys: np.ndarray) -> np.ndarray:
    """Stable argsort of non-negative integer keys, in the narrowest dtype that holds them (a radix sort <= 16 bit)."""
    top = int(keys.max(initial=0))
    dtype = np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.int64
    return np.argsort(keys.astype(dtype), kind="stable")


def global_rank(pred: BoxArrays, order: np.ndarray | None = None) -> np.ndarray:
    """The `global` ranking: each class's detections by descending score (ties: by sample, then listed first),
    classes one after the other. `order` is `score_order(pred.score)` when the caller has it."""
    order = score_order(pred.score) if order is None else order
    if len(order) > 1 and np.any(np.diff(pred.score[order]) == 0):
        return np.lexsort((pred.sample * len(pred) + np.arange(len(pred)), -pred.score, pred.label))
    return order[stable_argsort_int(pred.label[order])]


def candidate_pairs(pred: BoxArrays, gt: BoxArrays, key_p: np.ndarray, key_g: np.ndarray) -> tuple:
    """(prediction, GT) index pairs of the same key whose BEV circumcircles overlap.

    GT boxes are sorted by key and then x; each prediction's candidates are one window of that order, its half
    diagonal plus the largest GT half diagonal of its class either side, which holds every GT box of its key
    whose circumcircle can meet its own. The exact test then runs on the window's pairs.

    Returns:
        (<int64: K> prediction indices, <int64: K> GT indices).
    """
    none = np.zeros(0, np.int64), np.zeros(0, np.int64)
    if len(pred) == 0 or len(gt) == 0:
        return none
    diag_p, diag_g = np.hypot(pred.size[:, 0], pred.size[:, 1]), np.hypot(gt.size[:, 0], gt.size[:, 1])
    reach_of_class = np.full(len(DETECTION_NAMES), -1.0)  # -1: no GT box of the class
    for c in np.flatnonzero(np.bincount(gt.label, minlength=len(DETECTION_NAMES))):
        reach_of_class[c] = diag_g[gt.label == c].max()
    half = (diag_p + reach_of_class[pred.label]) / 2
    live = np.flatnonzero(reach_of_class[pred.label] >= 0)
    if len(live) == 0:
        return none
    xp, xg = pred.translation[:, 0], gt.translation[:, 0]
    x0 = min(xp.min(), xg.min())
    span = max(xp.max(), xg.max()) - x0 + 2 * float(half[live].max()) + 2.0  # key k owns [k span, (k + 1) span - 2)
    margin = 1e-3 + 1e-12 * (max(key_p.max(), key_g.max()) + 1) * span  # far above the rounding of the key
    comp_g = key_g * span + (xg - x0)
    order_g = np.argsort(comp_g, kind="stable")
    comp_g = comp_g[order_g]
    centre = key_p[live] * span + (xp[live] - x0)
    lo = np.searchsorted(comp_g, centre - half[live] - margin, side="left")
    n = np.searchsorted(comp_g, centre + half[live] + margin, side="right") - lo
    pos = np.repeat(lo - (np.cumsum(n) - n), n)
    pos += np.arange(len(pos))  # the windows' GT boxes, in the sorted order
    # The exact test, with the prediction's columns repeated and the GT's in the sorted order (each window is
    # contiguous there): same key (a guard; the windows stay inside their key) and circumcircles that meet,
    # term for term the centre distance test.
    dx = np.repeat(xp[live], n)
    dx -= xg[order_g][pos]
    dy = np.repeat(pred.translation[live, 1], n)
    dy -= gt.translation[order_g, 1][pos]
    reach = np.repeat(diag_p[live], n)
    reach += diag_g[order_g][pos]
    reach /= 2
    dx *= dx
    dy *= dy
    dx += dy
    reach *= reach
    ok = dx <= reach
    ok &= np.repeat(key_p[live], n) == key_g[order_g][pos]
    ok = np.flatnonzero(ok)
    return np.repeat(live, n)[ok], order_g[pos[ok]]


def pair_ious(pred: BoxArrays, gt: BoxArrays, p: np.ndarray, g: np.ndarray, chunk: int = 16384) -> tuple:
    """BEV and 3D IoU of the pairs (pred[p], gt[g]), `chunk` pairs at a time (cache-sized temporaries).

    Returns:
        (bev, iou3d): <float64: K> each.
    """
    cols_p = [np.ascontiguousarray(x) for x in (*pred.translation.T, *pred.size.T, quaternion_yaw(pred.rotation))]
    cols_g = [np.ascontiguousarray(x) for x in (*gt.translation.T, *gt.size.T, quaternion_yaw(gt.rotation))]
    bev, iou3d = np.empty(len(p)), np.empty(len(p))
    for start in range(0, len(p), chunk):
        pc, gc = p[start : start + chunk], g[start : start + chunk]
        b, i3 = pair_iou_columns([x[pc] for x in cols_p], [x[gc] for x in cols_g])
        bev[start : start + chunk], iou3d[start : start + chunk] = b, i3
    return bev, iou3d


def match_iou(gt: BoxArrays, pred: BoxArrays, num_samples: int, order: np.ndarray | None = None) -> np.ndarray:
    """Greedy IoU matching for every kind, threshold, class and sample at once.

    Each candidate pair's IoU is computed once and shared by the thresholds (a pair below a threshold can
    never match at it, so each threshold's problem is the pairs at or above it). `order` is any processing
    order of the predictions that takes each sample and class by descending score, ties to the first listed
    (the global descending score order when not given).

    Returns:
        <bool: kinds, thresholds, P> whether each prediction is a true positive.
    """
    n_cls, n_thr, n_kind = len(DETECTION_NAMES), len(IOU_THRESHOLDS), len(IOU_KINDS)
    key_p, key_g = pred.sample * n_cls + pred.label, gt.sample * n_cls + gt.label
    if order is None:
        order = score_order(pred.score)
    seq = np.empty(len(pred), dtype=np.int64)
    seq[order] = np.arange(len(pred))  # processing position (the matching only compares it within a group)
    p, g = candidate_pairs(pred, gt, key_p, key_g)
    ious = pair_ious(pred, gt, p, g)
    is_tp = np.zeros((n_kind, n_thr, len(pred)), dtype=bool)
    for k, iou in enumerate(ious):
        for t, th in enumerate(IOU_THRESHOLDS):
            ok = iou >= th
            match = greedy_match(p[ok], g[ok], -iou[ok], key_p, seq, len(pred), len(gt))
            is_tp[k, t] = match >= 0
    return is_tp


def iou_ap(gt: BoxArrays, pred: BoxArrays, num_samples: int) -> tuple[dict, PRCurves]:
    """The `iou_ap` section of metrics.json, and the PR curves behind it.

    Args:
        gt: Filtered GT boxes of the split.
        pred: Filtered predictions.
        num_samples: Samples of the split.

    Returns:
        (summary, curves): `{kind: {ordering: {"0.3": {class: ap|None, "mean": ap|None}}}}` and
        `{(kind, ordering, threshold, class): (recall, precision)}` (a `PRCurves` mapping).
    """
    n_cls, n_kind, n_thr = len(DETECTION_NAMES), len(IOU_KINDS), len(IOU_THRESHOLDS)
    order = score_order(pred.score)  # descending score, ties to the first listed
    # Each class's detections in the ordering's rank order, classes one after the other. `local`: samples in
    # table order, each by score (ties: listed first), which a stable sort of `order` by (class, sample) gives.
    # `global`: by score, ties by sample, then listed first: a stable sort of `order` by class, unless scores tie.
    by_sample = pred.label * (int(pred.sample.max(initial=0)) + 1) + pred.sample
    local = order[stable_argsort_int(by_sample[order])]
    by_global = global_rank(pred, order)
    is_tp = match_iou(gt, pred, num_samples, order=local)  # local takes each sample and class by score
    num_gt = np.bincount(gt.label, minlength=n_cls)
    bounds = np.r_[0, np.cumsum(np.bincount(pred.label, minlength=n_cls))]
    ranked = {}  # (kind, ordering, threshold, class) -> (ranked TP flags, number of GT boxes)
    for ordering, by_class in (("global", by_global), ("local", local)):
        ranked_tp = is_tp.reshape(n_kind * n_thr, len(pred))[:, by_class]
        for c in np.flatnonzero(num_gt):
            for k, kind in enumerate(IOU_KINDS):
                for t, th in enumerate(IOU_THRESHOLDS):
                    row = ranked_tp[k * n_thr + t, bounds[c] : bounds[c + 1]]
                    ranked[(kind, ordering, th, DETECTION_NAMES[c])] = (row, int(num_gt[c]))
    summary: dict = {}
    for kind in IOU_KINDS:
        summary[kind] = {}
        for ordering in IOU_ORDERINGS:
            summary[kind][ordering] = {}
            for th in IOU_THRESHOLDS:
                table: dict[str, float | None] = {}
                for c, name in enumerate(DETECTION_NAMES):
                    table[name] = voc_ap_value(*ranked[(kind, ordering, th, name)]) if num_gt[c] else None
                present = [v for v in table.values() if v is not None]
                table["mean"] = float(np.mean(present)) if present else None
                summary[kind][ordering][str(th)] = table
    return summary, PRCurves(ranked)
