"""Boxes as columns: the one container GT and predictions share, and the box geometry on it.

All boxes are in the global frame, nuScenes conventions: `translation` is the box centre, `size` is
(w, l, h), `rotation` a (w, x, y, z) quaternion whose x axis runs along l.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np


@dataclass(frozen=True)
class BoxArrays:
    """N boxes of one split, grouped by sample (rows of a sample are contiguous, in input order).

    Attributes:
        sample: <int64: N> index of the box's sample in the split's sample list.
        translation: <float64: N, 3> centre (m).
        size: <float64: N, 3> (w, l, h) in m.
        rotation: <float64: N, 4> quaternion (w, x, y, z).
        velocity: <float64: N, 2> (vx, vy) in m/s; NaN where the GT velocity is unknown.
        label: <int64: N> index into `DETECTION_NAMES`.
        score: <float64: N> detection score (-1 for GT).
        attribute: <int64: N> index into `ATTRIBUTE_NAMES`, -1 for none.
        num_pts: <int64: N> LiDAR + radar points (GT), -1 for predictions.
    """

    sample: np.ndarray
    translation: np.ndarray
    size: np.ndarray
    rotation: np.ndarray
    velocity: np.ndarray
    label: np.ndarray
    score: np.ndarray
    attribute: np.ndarray
    num_pts: np.ndarray

    def __len__(self) -> int:
        return len(self.sample)

    def select(self, index: np.ndarray) -> BoxArrays:
        """The boxes at `index` (a boolean mask or integer indices), in that order."""
        return BoxArrays(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Columns keyed `prefix + name`, for `np.savez`."""
        return {prefix + f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_arrays(cls, arrays: dict, prefix: str) -> BoxArrays:
        """Inverse of `to_arrays`."""
        return cls(**{f.name: np.asarray(arrays[prefix + f.name]) for f in fields(cls)})

    @classmethod
    def empty(cls) -> BoxArrays:
        """No boxes."""
        z = np.zeros
        i64 = np.int64
        return cls(z(0, i64), z((0, 3)), z((0, 3)), z((0, 4)), z((0, 2)), z(0, i64), z(0), z(0, i64), z(0, i64))


def quaternion_yaw(q: np.ndarray) -> np.ndarray:
    """Yaw of quaternions, as the devkit's `quaternion_yaw`: the angle of the rotated x axis in the xy plane.

    Args:
        q: <float64: N, 4> quaternions (w, x, y, z), any positive norm.

    Returns:
        <float64: N> yaw in (-pi, pi].
    """
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    # First column of the rotation matrix, up to the positive factor |q|^2 that arctan2 ignores.
    return np.arctan2(2.0 * (x * y + w * z), w * w + x * x - y * y - z * z)


def rotation_matrices(q: np.ndarray) -> np.ndarray:
    """Rotation matrices of quaternions (normalised first, as pyquaternion does).

    Args:
        q: <float64: N, 4> quaternions (w, x, y, z).

    Returns:
        <float64: N, 3, 3> `global_from_box` rotations.
    """
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    r = np.empty((len(q), 3, 3))
    r[:, 0, 0] = 1 - 2 * (y * y + z * z)
    r[:, 0, 1] = 2 * (x * y - w * z)
    r[:, 0, 2] = 2 * (x * z + w * y)
    r[:, 1, 0] = 2 * (x * y + w * z)
    r[:, 1, 1] = 1 - 2 * (x * x + z * z)
    r[:, 1, 2] = 2 * (y * z - w * x)
    r[:, 2, 0] = 2 * (x * z - w * y)
    r[:, 2, 1] = 2 * (y * z + w * x)
    r[:, 2, 2] = 1 - 2 * (x * x + y * y)
    return r


def points_in_boxes(points: np.ndarray, centre: np.ndarray, size: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Whether point k lies in box k (closed box), pairwise, as the devkit's `points_in_box`.

    Args:
        points: <float64: K, 3> points.
        centre: <float64: K, 3> box centres.
        size: <float64: K, 3> box (w, l, h).
        rotation: <float64: K, 4> box quaternions.

    Returns:
        <bool: K> inside flags.
    """
    box_from_global = np.transpose(rotation_matrices(rotation), (0, 2, 1))
    local = np.einsum("kij,kj->ki", box_from_global, points - centre)  # (K, 3) in the box frame: x along l
    half = np.stack([size[:, 1], size[:, 0], size[:, 2]], axis=1) / 2
    return np.all(np.abs(local) <= half, axis=1)
