"""Greedy matching of predictions to GT, vectorised across samples, classes and thresholds.

Both protocols (nuScenes centre distance and AP@IoU) match the same way: within one sample and class,
predictions are taken in a fixed order, and each takes the not-yet-taken GT box that is best for it (lowest
cost; ties go to the GT box listed first), if that box is good enough at all. Samples, classes and
thresholds are independent matching *groups*, so the k-th prediction of every group is matched in the same
numpy step; the number of steps is the largest number of predictions with a candidate in one group, not
the number of predictions.
"""

from __future__ import annotations

import numpy as np


def window_pairs(
    pred_key: np.ndarray, pred_x: np.ndarray, gt_key: np.ndarray, gt_x: np.ndarray, half: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray]:
    """All (prediction, GT) index pairs of equal keys with |x_pred - x_gt| <= half (and possibly a few more).

    GT boxes are sorted by key and then x, so each prediction's pairs are one `searchsorted` window rather than
    every GT box of its key. The window is widened by a margin far above the rounding of the sort key, so every
    pair within `half` is there; callers apply their exact test to the pairs.

    Args:
        pred_key, gt_key: <int64: P>, <int64: G> group keys (>= 0).
        pred_x, gt_x: <float64: P>, <float64: G> the coordinate to window on.
        half: <float64: P> or a scalar: the window's half width per prediction.

    Returns:
        (<int64: K> prediction indices, <int64: K> GT indices), same keys only.
    """
    if len(pred_key) == 0 or len(gt_key) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    half = np.broadcast_to(np.asarray(half, dtype=np.float64), pred_x.shape)
    x0 = min(pred_x.min(), gt_x.min())
    span = max(pred_x.max(), gt_x.max()) - x0 + 2 * float(half.max()) + 2.0  # key k owns [k span, (k + 1) span - 2)
    margin = 1e-3 + 1e-12 * (max(pred_key.max(), gt_key.max()) + 1) * span
    comp_g = gt_key * span + (gt_x - x0)
    order_g = np.argsort(comp_g, kind="stable")
    comp_g = comp_g[order_g]
    centre = pred_key * span + (pred_x - x0)
    lo = np.searchsorted(comp_g, centre - half - margin, side="left")
    n = np.searchsorted(comp_g, centre + half + margin, side="right") - lo
    p = np.repeat(np.arange(len(pred_key)), n)
    g = order_g[lo[p] + (np.arange(len(p)) - np.repeat(np.cumsum(n) - n, n))]
    same = pred_key[p] == gt_key[g]  # windows stay inside their key; a guard
    return p[same], g[same]


def rank_in_group(group: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Position of each item within its group when the group's items are taken in `order`.

    Args:
        group: <int64: N> group id per item.
        order: <int64: N> a permutation: the processing order of all items.

    Returns:
        <int64: N> 0-based rank of each item in its group.
    """
    seq = np.empty(len(order), dtype=np.int64)
    seq[order] = np.arange(len(order))
    by_group = np.lexsort((seq, group))  # items grouped, each group in processing order
    g = group[by_group]
    first = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    rank = np.empty(len(group), dtype=np.int64)
    rank[by_group] = np.arange(len(group)) - np.repeat(first, np.diff(np.r_[first, len(group)]))
    return rank


def greedy_match(
    pair_item: np.ndarray,
    pair_gt: np.ndarray,
    pair_cost: np.ndarray,
    item_group: np.ndarray,
    item_rank: np.ndarray,
    num_items: int,
    num_gt: int,
) -> np.ndarray:
    """Sequential greedy matching, one step per rank.

    Args:
        pair_item: <int64: K> the item (prediction in one matching problem) of each candidate pair.
        pair_gt: <int64: K> the GT key of each pair; keys of different groups must differ.
        pair_cost: <float64: K> lower is better; only pairs good enough to match are given.
        item_group: <int64: N> group of each item (independent matching problems).
        item_rank: <int64: N> processing position of each item within its group (or any key that orders
            each group's items the same way, e.g. the position in one global processing order).
        num_items: N.
        num_gt: Number of GT keys (upper bound of `pair_gt`).

    Returns:
        <int64: N> the matched GT key of each item, -1 for none.
    """
    match = np.full(num_items, -1, dtype=np.int64)
    if len(pair_item) == 0:
        return match
    # A pair whose item has no other candidate and whose GT no other item is matched whatever the order.
    alone = (np.bincount(pair_item, minlength=num_items)[pair_item] == 1) & (
        np.bincount(pair_gt, minlength=num_gt)[pair_gt] == 1
    )
    if alone.any():
        match[pair_item[alone]] = pair_gt[alone]
        rest = ~alone
        pair_item, pair_gt, pair_cost = pair_item[rest], pair_gt[rest], pair_cost[rest]
        if len(pair_item) == 0:
            return match
    order = np.lexsort((pair_gt, pair_cost, pair_item))  # by item, then cost, then GT listed first
    pair_item, pair_gt = pair_item[order], pair_gt[order]
    items, seg_start, seg_len = np.unique(pair_item, return_index=True, return_counts=True)
    step = rank_in_group(item_group[items], np.lexsort((item_rank[items], item_group[items])))
    by_step = np.argsort(step, kind="stable")
    bounds = np.searchsorted(step[by_step], np.arange(step.max() + 2))
    taken = np.zeros(num_gt, dtype=bool)
    big = np.iinfo(np.int64).max
    for k in range(len(bounds) - 1):
        act = by_step[bounds[k] : bounds[k + 1]]  # at most one item per group
        lens = seg_len[act]
        first_of = np.cumsum(lens) - lens
        idx = np.repeat(seg_start[act] - first_of, lens) + np.arange(lens.sum())
        pos = np.where(taken[pair_gt[idx]], big, idx)
        best = np.minimum.reduceat(pos, first_of)
        ok = best != big
        gt = pair_gt[best[ok]]
        taken[gt] = True
        match[items[act[ok]]] = gt
    return match
