"""Predictions in the lidar frame -> the official nuScenes detection results JSON (global frame).

`to_results` converts one sample's boxes, vectorised; `write_results` checks that every sample of the split is
present, keeps at most 500 boxes per sample (highest scores), fills `meta` from the modalities actually used, and
writes the file atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from fusion.data.io import write_text_atomic
from fusion.data.synth.geometry import matrix_to_quaternion
from fusion.data.types import ATTRIBUTES, CLASS_ATTRIBUTES, DETECTION_CLASSES

MAX_BOXES = 500
_MOVING = 0.2  # m/s: above this a box counts as moving when no attribute was predicted


def default_attribute(name: str, speed: float) -> str:
    """The attribute to report when the model predicts none (the devkit evaluates AAE on it): the class's first
    attribute when it moves (vehicle.moving, pedestrian.moving, cycle.with_rider), its second when not; "" for a
    class without attributes."""
    family = CLASS_ATTRIBUTES[name]
    return (family[0] if speed > _MOVING else family[1]) if family else ""


def best_boxes(records: list[dict]) -> list[dict]:
    """A sample's records, at most the format's `MAX_BOXES`, best-scored first."""
    return sorted(records, key=lambda r: -r["detection_score"])[:MAX_BOXES]


def to_results(sample_token: str, global_from_lidar: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
               labels: np.ndarray, velocity: np.ndarray | None = None, attributes: np.ndarray | None = None,
               ) -> list[dict]:  # fmt: skip
    """Result records of one sample.

    boxes <n, 7> (x, y, z, w, l, h, yaw) in the lidar frame; scores <n>; labels <n> into DETECTION_CLASSES;
    velocity <n, 2> in the lidar frame (zeros if None); attributes <n> into ATTRIBUTES, -1 for "default".
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 7)
    n = len(boxes)
    velocity = np.zeros((n, 2)) if velocity is None else np.asarray(velocity, np.float64).reshape(n, 2)
    attributes = np.full(n, -1) if attributes is None else np.asarray(attributes).reshape(n)
    rot = global_from_lidar[:3, :3]
    centres = boxes[:, :3] @ rot.T + global_from_lidar[:3, 3]
    v_global = np.column_stack([velocity, np.zeros(n)]) @ rot.T
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    yaw_rot = np.zeros((n, 3, 3))
    yaw_rot[:, 0, 0], yaw_rot[:, 0, 1], yaw_rot[:, 1, 0], yaw_rot[:, 1, 1], yaw_rot[:, 2, 2] = c, -s, s, c, 1.0
    global_rot = rot @ yaw_rot  # (n, 3, 3)
    records = []
    for i in range(n):
        name = DETECTION_CLASSES[int(labels[i])]
        speed = float(np.hypot(*v_global[i, :2]))
        attr = ATTRIBUTES[int(attributes[i])] if attributes[i] >= 0 else default_attribute(name, speed)
        records.append({
            "sample_token": sample_token, "translation": centres[i].tolist(), "size": boxes[i, 3:6].tolist(),
            "rotation": matrix_to_quaternion(global_rot[i]).tolist(), "velocity": v_global[i, :2].tolist(),
            "detection_name": name, "detection_score": float(scores[i]), "attribute_name": attr,
        })  # fmt: skip
    return records


def write_results(path: str | os.PathLike, results: dict[str, list[dict]], sample_tokens: list[str],
                  meta: dict[str, bool]) -> Path:  # fmt: skip
    """Write `{"meta", "results"}` for exactly the samples of a split; at most 500 boxes each, best first."""
    missing = [t for t in sample_tokens if t not in results]
    if missing:
        raise ValueError(f"{path}: no predictions for {len(missing)} samples of the split (first: {missing[0]})")
    extra = sorted(set(results) - set(sample_tokens))
    if extra:
        raise ValueError(f"{path}: predictions for {len(extra)} samples outside the split (first: {extra[0]})")
    keys = ("use_camera", "use_lidar", "use_radar", "use_map", "use_external")
    if set(meta) != set(keys):
        raise ValueError(f"{path}: meta must have exactly {', '.join(keys)}")
    trimmed = {t: best_boxes(results[t]) for t in sample_tokens}
    return write_text_atomic(path, json.dumps({"meta": meta, "results": trimmed}))
