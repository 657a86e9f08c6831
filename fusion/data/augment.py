"""Augmentations that keep the modalities consistent, and modality dropout.

A global transform of the LiDAR scene (rotation about z, scaling, flips, translation) moves the points, boxes and
velocities, and updates every camera's extrinsics so that each 3D point still projects to the same pixel. An image
transform (resize, crop, horizontal flip) updates the intrinsics to match. All are off at evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GlobalTransform:
    """Random global transform of the lidar frame. Ranges are (low, high); probabilities in [0, 1]. The defaults are
    CenterPoint's nuScenes ones (rotation +-pi/8, scale 0.95-1.05, both flips)."""

    rotation: tuple[float, float] = (-np.pi / 8, np.pi / 8)
    scale: tuple[float, float] = (0.95, 1.05)
    flip_x_prob: float = 0.5  # mirror across the x axis (y -> -y)
    flip_y_prob: float = 0.5  # mirror across the y axis (x -> -x)
    translation_std: float = 0.2

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One random affine <float64: 4, 4>, applied as p' = A p in the lidar frame."""
        a = rng.uniform(*self.rotation)
        s = rng.uniform(*self.scale)
        m = np.eye(4)
        m[:3, :3] = s * np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        if rng.random() < self.flip_x_prob:
            m = np.diag([1.0, -1.0, 1.0, 1.0]) @ m
        if rng.random() < self.flip_y_prob:
            m = np.diag([-1.0, 1.0, 1.0, 1.0]) @ m
        m[:3, 3] = rng.normal(0.0, self.translation_std, size=3)
        return m


def apply_global(transform: np.ndarray, points: np.ndarray, boxes: np.ndarray, velocity: np.ndarray,
                 cam_from_lidar: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Apply p' = A p (A: rotation about z, uniform scale, axis flips, translation) to a scene.

    points <n, >=3>, boxes <m, 7> (x, y, z, w, l, h, yaw), velocity <m, 2>, cam_from_lidar <c, 4, 4>. Returns new
    arrays; the cameras' extrinsics become cam_from_lidar @ A^-1 so projections are unchanged.
    """
    linear = transform[:3, :3]
    scale = np.cbrt(abs(np.linalg.det(linear)))
    points = points.copy()
    points[:, :3] = points[:, :3] @ linear.T + transform[:3, 3]
    boxes = boxes.copy()
    boxes[:, :3] = boxes[:, :3] @ linear.T + transform[:3, 3]
    boxes[:, 3:6] *= scale
    heading = np.stack([np.cos(boxes[:, 6]), np.sin(boxes[:, 6])], axis=1) @ linear[:2, :2].T
    boxes[:, 6] = np.arctan2(heading[:, 1], heading[:, 0])  # a mirrored box's heading maps like any direction
    velocity = velocity @ linear[:2, :2].T
    cam_from_lidar = cam_from_lidar @ np.linalg.inv(transform)
    return points, boxes, velocity, cam_from_lidar


@dataclass(frozen=True)
class ImageTransform:
    """Random resize, crop back to the output size, and horizontal flip."""

    scale: tuple[float, float] = (0.9, 1.1)
    flip_prob: float = 0.5

    def sample(self, rng: np.random.Generator, size: tuple[int, int]) -> tuple[float, tuple[int, int], bool]:
        """(scale, crop offset (x, y) in the scaled image, flip) for an output of `size` = (width, height)."""
        s = rng.uniform(*self.scale)
        w, h = size
        sw, sh = max(round(w * s), w), max(round(h * s), h)
        offset = (int(rng.integers(0, sw - w + 1)), int(rng.integers(0, sh - h + 1)))
        return s, offset, bool(rng.random() < self.flip_prob)


def apply_image(image: np.ndarray, k: np.ndarray, scale: float, offset: tuple[int, int], flip: bool
                ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Resize by `scale` (at least the output size), crop at `offset`, flip; intrinsics <3, 3> updated to match."""
    from PIL import Image

    from fusion.data.io import resize_intrinsics

    h, w = image.shape[:2]
    sw, sh = max(round(w * scale), w), max(round(h * scale), h)
    out = np.asarray(Image.fromarray(image).resize((sw, sh), Image.BILINEAR))
    k = resize_intrinsics(k, (w, h), (sw, sh))
    out = out[offset[1] : offset[1] + h, offset[0] : offset[0] + w]
    k = k.copy()
    k[0, 2] -= offset[0]
    k[1, 2] -= offset[1]
    if flip:
        out = out[:, ::-1]
        k = np.array([[-1.0, 0.0, w - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ k
    return np.ascontiguousarray(out), k


@dataclass(frozen=True)
class ModalityDropout:
    """Serve a sample camera-only or LiDAR-only with these probabilities, or always one modality (`fixed`)."""

    camera_only: float = 0.0
    lidar_only: float = 0.0
    fixed: str | None = None  # "fused", "camera", "lidar" or None (random)

    def choose(self, rng: np.random.Generator) -> str:
        if self.fixed is not None:
            if self.fixed not in ("fused", "camera", "lidar"):
                raise ValueError(f"modality must be fused, camera or lidar, got {self.fixed!r}")
            return self.fixed
        r = rng.random()
        return "camera" if r < self.camera_only else "lidar" if r < self.camera_only + self.lidar_only else "fused"
