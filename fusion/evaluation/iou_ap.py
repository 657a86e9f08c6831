"""AP at BEV and 3D IoU thresholds, `global` and `local` ordering (the protocol of DESIGN.md).

Per class, threshold and sample, predictions are taken in descending score order (ties: the one listed
first in the results) and each is matched to the not-yet-matched GT box of its class with the highest IoU
(ties: the GT box listed first); IoU >= t is a true positive and consumes that box. The TP/FP list is then
ranked `global`ly (all detections of the class by descending score, ties in `local` order) or kept `local`
(samples in sample-table order, each in its matching order, as OpenCOOD does), and AP is the VOC all-point
interpolation. A class without GT boxes has AP None and is left out of the mean.
"""

from __future__ import annotations

import numpy as np

from fusion.evaluation.boxes import BoxArrays, quaternion_yaw
from fusion.evaluation.config import DETECTION_NAMES, IOU_KINDS, IOU_ORDERINGS, IOU_THRESHOLDS
from fusion.evaluation.matching import greedy_match, group_pairs, rank_in_group
from fusion.evaluation.rotated_iou import bev_iou_upper_bound, may_overlap, pair_iou


def voc_ap(is_tp: np.ndarray, num_gt: int) -> tuple[float, np.ndarray, np.ndarray]:
    """VOC all-point AP of a ranked TP/FP list.

    Args:
        is_tp: <bool: D> true positive flags in rank order.
        num_gt: Number of GT boxes (> 0).

    Returns:
        (ap, recall, precision): the AP and the raw curve, <float64: D> each.
    """
    tp = np.cumsum(is_tp).astype(np.float64)
    fp = np.cumsum(~is_tp).astype(np.float64)
    rec = tp / num_gt
    prec = tp / np.maximum(tp + fp, 1.0)
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.maximum.accumulate(np.concatenate([[0.0], prec, [0.0]])[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i])), rec, prec


def match_iou(gt: BoxArrays, pred: BoxArrays, num_samples: int) -> np.ndarray:
    """Greedy IoU matching for every kind, threshold, class and sample at once.

    Returns:
        <bool: kinds, thresholds, P> whether each prediction is a true positive.
    """
    n_cls, n_thr, n_kind = len(DETECTION_NAMES), len(IOU_THRESHOLDS), len(IOU_KINDS)
    n_prob = n_kind * n_thr
    key_p, key_g = pred.sample * n_cls + pred.label, gt.sample * n_cls + gt.label
    order = np.lexsort((np.arange(len(pred)), -pred.score))  # descending score, ties to the first listed
    rank = rank_in_group(key_p, order)
    yaw_p, yaw_g = quaternion_yaw(pred.rotation), quaternion_yaw(gt.rotation)
    items, gts, costs = [], [], []
    for p, g in group_pairs(key_p, key_g):
        near = may_overlap(pred.translation[p], pred.size[p], gt.translation[g], gt.size[g])
        p, g = p[near], g[near]
        args = (pred.translation[p], pred.size[p], yaw_p[p], gt.translation[g], gt.size[g], yaw_g[g])
        reachable = bev_iou_upper_bound(*args) >= min(IOU_THRESHOLDS) - 1e-9  # the rest cannot reach a threshold
        p, g = p[reachable], g[reachable]
        ious = pair_iou(pred.translation[p], pred.size[p], yaw_p[p], gt.translation[g], gt.size[g], yaw_g[g])
        for k, iou in enumerate(ious):
            for t, th in enumerate(IOU_THRESHOLDS):
                ok = iou >= th
                prob = k * n_thr + t
                items.append(prob * len(pred) + p[ok])
                gts.append(prob * len(gt) + g[ok])
                costs.append(-iou[ok])
    group = np.tile(key_p, n_prob) + np.repeat(np.arange(n_prob), len(pred)) * (num_samples * n_cls)
    match = greedy_match(
        np.concatenate(items) if items else np.zeros(0, np.int64),
        np.concatenate(gts) if gts else np.zeros(0, np.int64),
        np.concatenate(costs) if costs else np.zeros(0),
        group,
        np.tile(rank, n_prob),
        n_prob * len(pred),
        n_prob * len(gt),
    )
    return (match >= 0).reshape(n_kind, n_thr, len(pred))


def iou_ap(gt: BoxArrays, pred: BoxArrays, num_samples: int) -> tuple[dict, dict]:
    """The `iou_ap` section of metrics.json, and the PR curves behind it.

    Args:
        gt: Filtered GT boxes of the split.
        pred: Filtered predictions.
        num_samples: Samples of the split.

    Returns:
        (summary, curves): `{kind: {ordering: {"0.3": {class: ap|None, "mean": ap|None}}}}` and
        `{(kind, ordering, threshold, class): (recall, precision)}`.
    """
    is_tp = match_iou(gt, pred, num_samples)
    idx = np.arange(len(pred))
    orders = {
        "local": np.lexsort((idx, -pred.score, pred.sample)),
        "global": np.lexsort((idx, pred.sample, -pred.score)),
    }
    num_gt = np.bincount(gt.label, minlength=len(DETECTION_NAMES))
    summary: dict = {}
    curves: dict = {}
    for k, kind in enumerate(IOU_KINDS):
        summary[kind] = {}
        for ordering in IOU_ORDERINGS:
            order = orders[ordering]
            summary[kind][ordering] = {}
            for t, th in enumerate(IOU_THRESHOLDS):
                table: dict[str, float | None] = {}
                for c, name in enumerate(DETECTION_NAMES):
                    if num_gt[c] == 0:
                        table[name] = None
                        continue
                    ranked = order[pred.label[order] == c]
                    ap, rec, prec = voc_ap(is_tp[k, t, ranked], int(num_gt[c]))
                    table[name] = ap
                    curves[(kind, ordering, th, name)] = (rec, prec)
                present = [v for v in table.values() if v is not None]
                table["mean"] = float(np.mean(present)) if present else None
                summary[kind][ordering][str(th)] = table
    return summary, curves
