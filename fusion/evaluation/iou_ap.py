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
from fusion.evaluation.matching import greedy_match, window_pairs
from fusion.evaluation.rotated_iou import bev_iou_upper_bound, pair_iou


def voc_ap(is_tp: np.ndarray, num_gt: int) -> tuple[float, np.ndarray, np.ndarray]:
    """VOC all-point AP of a ranked TP/FP list.

    Args:
        is_tp: <bool: D> true positive flags in rank order.
        num_gt: Number of GT boxes (> 0).

    Returns:
        (ap, recall, precision): the AP and the raw curve, <float64: D> each.
    """
    return voc_ap_rows(is_tp[None], num_gt)[0]


def voc_ap_rows(is_tp: np.ndarray, num_gt: int) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """`voc_ap` of several ranked TP/FP lists of the same detections (one per kind and threshold) at once.

    Args:
        is_tp: <bool: R, D> true positive flags in rank order, one row per list.
        num_gt: Number of GT boxes (> 0).

    Returns:
        (ap, recall, precision) per row, as `voc_ap`.
    """
    tp = np.cumsum(is_tp, axis=1).astype(np.float64)
    rec = tp / num_gt
    prec = tp / np.arange(1.0, is_tp.shape[1] + 1)  # tp + fp: exact integers, as a float
    # VOC: mrec = [0, rec, 1], mpre = [0, prec, 0] made monotone from the right, AP = sum over the steps of mrec
    # of Δmrec * mpre. mrec steps exactly at the true positives (and at the end, where mpre is 0); prec >= 0, so
    # mpre there is the running maximum of prec from the right. The same terms, so the same sum, bit for bit.
    mpre = np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1]
    out = []
    for r in range(len(is_tp)):
        j = np.flatnonzero(is_tp[r])
        before = rec[r, j - 1]
        if len(j) and j[0] == 0:
            before[0] = 0.0
        terms = (rec[r, j] - before) * mpre[r, j]
        if is_tp.shape[1] == 0 or rec[r, -1] != 1.0:
            terms = np.append(terms, (1.0 - (rec[r, -1] if is_tp.shape[1] else 0.0)) * 0.0)
        out.append((float(np.sum(terms)), rec[r], prec[r]))
    return out


def candidate_pairs(pred: BoxArrays, gt: BoxArrays, key_p: np.ndarray, key_g: np.ndarray) -> tuple:
    """(prediction, GT) index pairs of the same key whose BEV circumcircles overlap (`may_overlap`).

    Only each prediction's x window (its half diagonal + the largest GT half diagonal) is tested, which gives
    the same pairs as testing every GT box of its key.

    Returns:
        (<int64: K> prediction indices, <int64: K> GT indices).
    """
    if len(pred) == 0 or len(gt) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    diag_p, diag_g = np.hypot(pred.size[:, 0], pred.size[:, 1]), np.hypot(gt.size[:, 0], gt.size[:, 1])
    xp, xg = pred.translation[:, 0], gt.translation[:, 0]
    p, g = window_pairs(key_p, xp, key_g, xg, (diag_p + diag_g.max()) / 2)
    dx, dy = xp[p] - xg[g], pred.translation[p, 1] - gt.translation[g, 1]
    reach = (diag_p[p] + diag_g[g]) / 2
    ok = dx**2 + dy**2 <= reach**2  # `may_overlap`, term for term
    return p[ok], g[ok]


def match_iou(
    gt: BoxArrays, pred: BoxArrays, num_samples: int, chunk: int = 8192, order: np.ndarray | None = None
) -> np.ndarray:
    """Greedy IoU matching for every kind, threshold, class and sample at once.

    `chunk` candidate pairs at a time go through the IoU gate and the rotated IoU; `order` is the predictions
    by descending score, ties to the first listed (computed when not given).

    Returns:
        <bool: kinds, thresholds, P> whether each prediction is a true positive.
    """
    n_cls, n_thr, n_kind = len(DETECTION_NAMES), len(IOU_THRESHOLDS), len(IOU_KINDS)
    n_prob = n_kind * n_thr
    key_p, key_g = pred.sample * n_cls + pred.label, gt.sample * n_cls + gt.label
    if order is None:
        order = np.argsort(-pred.score, kind="stable")  # descending score, ties to the first listed
    seq = np.empty(len(pred), dtype=np.int64)
    seq[order] = np.arange(len(pred))  # processing position (the matching only compares it within a group)
    yaw_p, yaw_g = quaternion_yaw(pred.rotation), quaternion_yaw(gt.rotation)
    p_all, g_all = candidate_pairs(pred, gt, key_p, key_g)
    items: list = [[] for _ in range(n_prob)]
    gts: list = [[] for _ in range(n_prob)]
    costs: list = [[] for _ in range(n_prob)]
    for start in range(0, len(p_all), chunk):  # chunks bound the memory of the IoU's temporaries
        p, g = p_all[start : start + chunk], g_all[start : start + chunk]
        args = (pred.translation[p], pred.size[p], yaw_p[p], gt.translation[g], gt.size[g], yaw_g[g])
        reachable = bev_iou_upper_bound(*args) >= min(IOU_THRESHOLDS) - 1e-9  # the rest cannot reach a threshold
        p, g = p[reachable], g[reachable]
        ious = pair_iou(*(a[reachable] for a in args))
        for k, iou in enumerate(ious):
            for t, th in enumerate(IOU_THRESHOLDS):
                ok = iou >= th
                items[k * n_thr + t].append(p[ok])
                gts[k * n_thr + t].append(g[ok])
                costs[k * n_thr + t].append(-iou[ok])
    del p_all, g_all
    is_tp = np.zeros((n_prob, len(pred)), dtype=bool)
    for prob in range(n_prob):  # one matching problem at a time: the memory of one
        pair_p, pair_g = (np.concatenate([np.zeros(0, np.int64), *x[prob]]) for x in (items, gts))
        pair_cost = np.concatenate([np.zeros(0), *costs[prob]])
        items[prob] = gts[prob] = costs[prob] = None
        match = greedy_match(pair_p, pair_g, pair_cost, key_p, seq, len(pred), len(gt))
        is_tp[prob] = match >= 0
    return is_tp.reshape(n_kind, n_thr, len(pred))


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
    order = np.argsort(-pred.score, kind="stable")  # descending score, ties to the first listed
    is_tp = match_iou(gt, pred, num_samples, order=order)
    n_cls, n_kind, n_thr = len(DETECTION_NAMES), len(IOU_KINDS), len(IOU_THRESHOLDS)
    idx = np.arange(len(pred))
    num_gt = np.bincount(gt.label, minlength=n_cls)
    by_sample = pred.label * (int(pred.sample.max(initial=0)) + 1) + pred.sample
    # Each class's detections in the ordering's rank order, classes one after the other. `local`: samples in
    # table order, each by score (ties: listed first), which a stable sort of `order` by (class, sample) gives.
    # `global`: by score, ties by sample, then listed first: a stable sort of `order` by class, unless scores tie.
    score = pred.score[order]
    if np.any(score[1:] == score[:-1]):
        by_global = np.lexsort((pred.sample * len(pred) + idx, -pred.score, pred.label))
    else:
        by_global = order[np.argsort(pred.label[order].astype(np.int8), kind="stable")]
    by_class = {"local": order[np.argsort(by_sample[order], kind="stable")], "global": by_global}
    bounds = np.searchsorted(np.sort(pred.label), np.arange(n_cls + 1))
    results = {}  # (ordering, class) -> [(ap, rec, prec)] per (kind, threshold)
    for ordering in IOU_ORDERINGS:
        ranked_tp = is_tp.reshape(n_kind * n_thr, len(pred))[:, by_class[ordering]]
        for c in np.flatnonzero(num_gt):
            results[(ordering, int(c))] = voc_ap_rows(ranked_tp[:, bounds[c] : bounds[c + 1]], int(num_gt[c]))
    summary: dict = {}
    curves: dict = {}
    for k, kind in enumerate(IOU_KINDS):
        summary[kind] = {}
        for ordering in IOU_ORDERINGS:
            summary[kind][ordering] = {}
            for t, th in enumerate(IOU_THRESHOLDS):
                table: dict[str, float | None] = {}
                for c, name in enumerate(DETECTION_NAMES):
                    if num_gt[c] == 0:
                        table[name] = None
                        continue
                    ap, rec, prec = results[(ordering, c)][k * n_thr + t]
                    table[name] = ap
                    curves[(kind, ordering, th, name)] = (rec, prec)
                present = [v for v in table.values() if v is not None]
                table["mean"] = float(np.mean(present)) if present else None
                summary[kind][ordering][str(th)] = table
    return summary, curves
