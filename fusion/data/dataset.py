"""`NuScenesDataset`: one typed `Sample` per keyframe, from a `SplitIndex` (no devkit object in the workers)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from fusion.data.augment import GlobalTransform, ImageTransform, ModalityDropout, apply_global, apply_image
from fusion.data.index import SplitIndex
from fusion.data.io import ImageCache, read_image, read_points, resize_intrinsics
from fusion.data.pointcloud import PointFilter
from fusion.data.types import CAMERAS, Sample


@dataclass(frozen=True)
class LoaderConfig:
    """How samples are served. `image_size` is (width, height); None keeps the original size."""

    image_size: tuple[int, int] | None = (320, 180)
    sweeps: int = 3  # LiDAR sweeps aggregated per keyframe (the keyframe included)
    min_distance: float = 1.0  # drop returns within this box around the sensor, as the devkit's remove_close
    point_filter: PointFilter | None = None  # range crop, voxel down-sampling, ground/outlier removal (open3d)
    global_transform: GlobalTransform | None = None  # training augmentation; None at evaluation
    image_transform: ImageTransform | None = None
    modality: ModalityDropout = field(default_factory=ModalityDropout)


class NuScenesDataset(Dataset):
    def __init__(self, index: SplitIndex, config: LoaderConfig = LoaderConfig(), cache: ImageCache | None = None,
                 seed: int = 0):  # fmt: skip
        if config.sweeps < 1:
            raise ValueError(f"sweeps must be >= 1, got {config.sweeps}")
        self.index, self.config, self.cache, self.seed = index, config, cache, seed

    def __len__(self) -> int:
        return len(self.index)

    def _path(self, relative: str) -> str:
        return os.path.join(self.index.dataroot, relative)

    def load_points(self, i: int) -> np.ndarray:
        """All sweeps of sample i in its keyframe's lidar frame: <float32: n, 5> x, y, z, intensity, time lag."""
        ix = self.index
        start, stop = ix.sweep_offsets[i], ix.sweep_offsets[i + 1]
        parts = []
        for j in range(start, min(stop, start + self.config.sweeps)):
            raw = read_points(self._path(ix.sweep_files[j]))
            close = (np.abs(raw[:, 0]) < self.config.min_distance) & (np.abs(raw[:, 1]) < self.config.min_distance)
            raw = raw[~close]
            m = ix.lidar_from_sweep[j]
            xyz = (raw[:, :3].astype(np.float64) @ m[:3, :3].T + m[:, 3][:3]).astype(np.float32)
            lag = np.full((len(raw), 1), ix.sweep_time_lag[j], np.float32)
            parts.append(np.concatenate([xyz, raw[:, 3:4], lag], axis=1))
        return np.concatenate(parts, axis=0)

    def load_images(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Images <uint8: 6, H, W, 3>, intrinsics <6, 3, 3> after resizing, and the present-camera mask <6>."""
        ix, size = self.index, self.config.image_size
        images, ks, present = [], [], []
        for c in range(len(CAMERAS)):
            name = ix.camera_files[i, c]
            orig = tuple(int(v) for v in ix.image_sizes[i, c])
            out_size = size if size is not None else orig
            if not name:
                images.append(np.zeros((out_size[1], out_size[0], 3), np.uint8))
                ks.append(np.eye(3))
                present.append(False)
                continue
            path = self._path(name)
            image = self.cache.read(path, size) if self.cache is not None else read_image(path, size)
            images.append(image)
            ks.append(
                resize_intrinsics(ix.intrinsics[i, c], orig, out_size) if size is not None else ix.intrinsics[i, c]
            )
            present.append(True)
        return np.stack(images), np.stack(ks), np.asarray(present)

    def __getitem__(self, i: int) -> Sample:
        ix, cfg = self.index, self.config
        # torch's generator is reseeded per epoch and per worker by the DataLoader (and by Lightning's seeding), so
        # augmentations differ between epochs yet repeat under the same seed.
        rng = np.random.default_rng([self.seed, int(torch.randint(0, 2**31 - 1, ())), i])
        modality = cfg.modality.choose(rng)
        points = self.load_points(i) if modality != "camera" else np.zeros((0, 5), np.float32)
        if cfg.point_filter is not None:
            points = cfg.point_filter(points)
        images, ks, present = self.load_images(i)
        if modality == "lidar":
            images[:] = 0
            present[:] = False
        b0, b1 = ix.box_offsets[i], ix.box_offsets[i + 1]
        boxes, velocity = ix.boxes[b0:b1].copy(), ix.velocity[b0:b1].copy()
        cam_from_lidar = ix.cam_from_lidar[i].copy()
        if cfg.global_transform is not None:
            a = cfg.global_transform.sample(rng)
            points, boxes, velocity, cam_from_lidar = apply_global(a, points, boxes, velocity, cam_from_lidar)
        if cfg.image_transform is not None:
            for c in np.flatnonzero(present):
                s, offset, flip = cfg.image_transform.sample(rng, (images.shape[2], images.shape[1]))
                images[c], ks[c] = apply_image(images[c], ks[c], s, offset, flip)
        return Sample(
            token=str(ix.tokens[i]),
            points=torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)),
            images=torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
            camera_mask=torch.from_numpy(present),
            cam_from_lidar=torch.from_numpy(cam_from_lidar.astype(np.float32)),
            intrinsics=torch.from_numpy(ks.astype(np.float32)),
            boxes=torch.from_numpy(boxes.astype(np.float32)),
            velocity=torch.from_numpy(velocity.astype(np.float32)),
            labels=torch.from_numpy(ix.labels[b0:b1].copy()),
            attributes=torch.from_numpy(ix.attributes[b0:b1].copy()),
            num_points=torch.from_numpy(ix.num_points[b0:b1].copy()),
            visibility=torch.from_numpy(ix.visibility[b0:b1].copy()),
            global_from_lidar=torch.from_numpy(ix.global_from_lidar[i].copy()),
            has_lidar=modality != "camera",
            has_camera=modality != "lidar" and bool(present.any()),
        )
