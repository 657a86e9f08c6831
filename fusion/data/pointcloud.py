"""Point-cloud preprocessing with open3d: range crop, voxel down-sampling, ground removal, outlier removal.

Applied to the aggregated sweeps in the lidar frame, before augmentation. Every step is optional and vectorised (the
heavy lifting is open3d's C++); intensity and time lag travel through open3d as the points' colours, so voxel
down-sampling averages them with the positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PointFilter:
    """Which steps to apply; None / 0 / False switches a step off."""

    xy_range: float | None = 54.0  # keep |x| <= r and |y| <= r (metres)
    z_range: tuple[float, float] | None = (-5.0, 3.0)
    voxel_size: float | None = None  # metres; one averaged point per occupied voxel
    remove_ground: bool = False  # RANSAC plane fit; drops the inliers
    ground_threshold: float = 0.15  # metres from the plane that count as ground
    outlier_neighbours: int = 0  # statistical outlier removal with this many neighbours
    outlier_std: float = 2.5
    seed: int = 0  # RANSAC is random; seeded for reproducible samples

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """<float32: n, 5> (x, y, z, intensity, time lag) -> <float32: m, 5>."""
        keep = np.ones(len(points), bool)
        if self.xy_range is not None:
            keep &= (np.abs(points[:, 0]) <= self.xy_range) & (np.abs(points[:, 1]) <= self.xy_range)
        if self.z_range is not None:
            keep &= (points[:, 2] >= self.z_range[0]) & (points[:, 2] <= self.z_range[1])
        points = points[keep]
        if not (self.voxel_size or self.remove_ground or self.outlier_neighbours) or len(points) < 4:
            return points
        import open3d as o3d

        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points[:, :3].astype(np.float64)))
        extra = np.zeros((len(points), 3))
        extra[:, :2] = points[:, 3:5]
        cloud.colors = o3d.utility.Vector3dVector(extra)
        if self.voxel_size:
            cloud = cloud.voxel_down_sample(self.voxel_size)
        if self.remove_ground and len(cloud.points) >= 3:
            o3d.utility.random.seed(self.seed)
            _, inliers = cloud.segment_plane(self.ground_threshold, 3, 200)
            cloud = cloud.select_by_index(inliers, invert=True)
        if self.outlier_neighbours and len(cloud.points) > self.outlier_neighbours:
            cloud, _ = cloud.remove_statistical_outlier(self.outlier_neighbours, self.outlier_std)
        xyz, extra = np.asarray(cloud.points), np.asarray(cloud.colors)
        return np.concatenate([xyz, extra[:, :2]], axis=1).astype(np.float32)
