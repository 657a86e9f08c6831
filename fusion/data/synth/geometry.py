"""Rigid transforms and quaternions for the synthetic world, vectorised over leading dimensions.

Conventions follow nuscenes-devkit: quaternions are (w, x, y, z); a pose `global_from_ego` maps ego-frame points to the
global frame; transforms compose right to left (`global_from_lidar = global_from_ego @ ego_from_lidar`).
"""

from __future__ import annotations

import numpy as np


def yaw_quaternion(yaw: np.ndarray | float) -> np.ndarray:
    """Quaternion of a rotation about +z. Returns <float64: ..., 4> as (w, x, y, z)."""
    yaw = np.asarray(yaw, dtype=np.float64)
    return np.stack([np.cos(yaw / 2), np.zeros_like(yaw), np.zeros_like(yaw), np.sin(yaw / 2)], axis=-1)


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrices of unit quaternions. <float64: ..., 4> (w, x, y, z) -> <float64: ..., 3, 3>."""
    q = np.asarray(q, dtype=np.float64)
    w, x, y, z = np.moveaxis(q / np.linalg.norm(q, axis=-1, keepdims=True), -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], axis=-1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], axis=-1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=-1),
        ],
        axis=-2,
    )


def matrix_to_quaternion(m: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) with w >= 0 of one rotation matrix <float64: 3, 3>."""
    m = np.asarray(m, dtype=np.float64)
    t = np.trace(m)
    if t > 0:
        s = 2.0 * np.sqrt(1.0 + t)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    q = q / np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def rotation_zyx(yaw: float, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """R = Rz(yaw) @ Ry(pitch) @ Rx(roll). Returns <float64: 3, 3>."""
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    return rz @ ry @ rx


def make_pose(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Homogeneous transforms from rotations <..., 3, 3> and translations <..., 3>. Returns <..., 4, 4>."""
    rotation = np.asarray(rotation, dtype=np.float64)
    translation = np.asarray(translation, dtype=np.float64)
    pose = np.zeros((*rotation.shape[:-2], 4, 4))
    pose[..., :3, :3] = rotation
    pose[..., :3, 3] = translation
    pose[..., 3, 3] = 1.0
    return pose


def invert_pose(pose: np.ndarray) -> np.ndarray:
    """Inverse of rigid transforms <..., 4, 4>."""
    rot_t = np.swapaxes(pose[..., :3, :3], -1, -2)
    return make_pose(rot_t, -np.einsum("...ij,...j->...i", rot_t, pose[..., :3, 3]))
