"""Greedy matching of predictions to GT, vectorised across samples, classes and thresholds.

Both protocols (nuScenes centre distance and AP@IoU) match the same way: within one sample and class,
predictions are taken in a fixed order, and each takes the not-yet-taken GT box that is best for it (lowest
cost; ties go to the GT box listed first), if that box is good enough at all. Samples, classes and
thresholds are independent matching *groups*, so the k-th prediction of every group is matched in the same
numpy step; the number of steps is the largest number of predictions with a candidate in one group, not
the number of predictions.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def group_pairs(pred_key: np.ndarray, gt_key: np.ndarray, max_pairs: int = 2_000_000) -> Iterator[tuple]:
    """All (prediction, GT) index pairs whose keys are equal, in chunks of at most `max_pairs` pairs.

    Args:
        pred_key: <int64: P> group key per prediction (e.g. sample * num_classes + label).
        gt_key: <int64: G> group key per GT box.
        max_pairs: Chunk size bound (one prediction's pairs are never split, so a chunk can exceed it).

    Yields:
        (<int64: K> prediction indices, <int64: K> GT indices); a prediction's GT boxes in index order.
    """
    gt_order = np.argsort(gt_key, kind="stable")
    sorted_key = gt_key[gt_order]
    lo = np.searchsorted(sorted_key, pred_key, side="left")
    n = np.searchsorted(sorted_key, pred_key, side="right") - lo
    cum = np.cumsum(n)
    start = 0
    while start < len(pred_key):
        stop = max(int(np.searchsorted(cum, (cum[start] - n[start]) + max_pairs, side="right")), start + 1)
        counts = n[start:stop]
        pred = np.repeat(np.arange(start, stop), counts)
        offset = np.arange(len(pred)) - np.repeat(np.cumsum(counts) - counts, counts)
        yield pred, gt_order[lo[pred] + offset]
        start = stop


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
        item_rank: <int64: N> processing position of each item within its group.
        num_items: N.
        num_gt: Number of GT keys (upper bound of `pair_gt`).

    Returns:
        <int64: N> the matched GT key of each item, -1 for none.
    """
    match = np.full(num_items, -1, dtype=np.int64)
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
