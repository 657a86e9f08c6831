"""The devkit's `filter_eval_boxes`, vectorised: class ranges and bicycle racks (for GT and predictions).

The point filter (no GT box without LiDAR/radar points) applies to GT only and lives in the GT cache.
"""

from __future__ import annotations

import numpy as np

from fusion.evaluation.boxes import BoxArrays, points_in_boxes
from fusion.evaluation.config import DETECTION_NAMES, RACK_FILTERED_CLASSES, DetectionConfig


def ego_distance(boxes: BoxArrays, ego_translation: np.ndarray) -> np.ndarray:
    """xy distance from the sample's ego position to each box centre, as the devkit's `ego_dist`.

    Args:
        boxes: N boxes.
        ego_translation: <float64: S, 3> ego position per sample.

    Returns:
        <float64: N> distances (m).
    """
    d = boxes.translation[:, :2] - ego_translation[boxes.sample, :2]
    return np.sqrt(d[:, 0] ** 2 + d[:, 1] ** 2)


def in_bike_rack(boxes: BoxArrays, racks: BoxArrays, num_samples: int) -> np.ndarray:
    """Whether each box centre lies in one of the bicycle racks of its sample.

    Args:
        boxes: N boxes.
        racks: Rack boxes, grouped by sample.
        num_samples: S, the number of samples of the split.

    Returns:
        <bool: N> flags.
    """
    inside = np.zeros(len(boxes), dtype=bool)
    if len(racks) == 0 or len(boxes) == 0:
        return inside
    order = np.argsort(racks.sample, kind="stable")
    counts = np.bincount(racks.sample, minlength=num_samples)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    n = counts[boxes.sample]  # racks to test per box
    box_idx = np.repeat(np.arange(len(boxes)), n)
    offset = np.arange(len(box_idx)) - np.repeat(np.cumsum(n) - n, n)
    rack_idx = order[starts[boxes.sample][box_idx] + offset]
    hit = points_in_boxes(
        boxes.translation[box_idx], racks.translation[rack_idx], racks.size[rack_idx], racks.rotation[rack_idx]
    )
    inside[box_idx[hit]] = True
    return inside


def filter_boxes(boxes: BoxArrays, ego_translation: np.ndarray, racks: BoxArrays, config: DetectionConfig) -> BoxArrays:
    """Drop boxes beyond their class range, and bicycles/motorcycles whose centre lies in a bicycle rack.

    Args:
        boxes: N boxes (GT or predictions).
        ego_translation: <float64: S, 3> ego position per sample.
        racks: The split's bicycle racks.
        config: Detection config (class ranges).

    Returns:
        The kept boxes, in their original order.
    """
    max_dist = np.array([config.class_range[name] for name in DETECTION_NAMES], dtype=np.float64)
    keep = ego_distance(boxes, ego_translation) < max_dist[boxes.label]
    rack_labels = [DETECTION_NAMES.index(name) for name in RACK_FILTERED_CLASSES]
    cycle = keep & np.isin(boxes.label, rack_labels)
    if cycle.any():
        idx = np.flatnonzero(cycle)
        keep[idx[in_bike_rack(boxes.select(idx), racks, len(ego_translation))]] = False
    return boxes.select(keep)
