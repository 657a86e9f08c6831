"""Read-only access to one sample's sensor data and annotations, for the app and for pictures.

Everything is addressed by nuScenes tokens; no path a user types is ever opened, only files the tables name under the
dataroot.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from fusion.data.summary import check_layout

CAMERA_ORDER = ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT")


@dataclass(frozen=True)
class BoxView:
    """One annotation as drawn: its class, and its corners in the view (pixels or BEV metres)."""

    name: str  # detection class, or the nuScenes category when it is not a detection class
    corners: np.ndarray  # <float64: 2, 8> image (u, v), or <float64: 2, 4> BEV footprint (x right, y forward)
    token: str


class Browser:
    """The samples of one nuScenes dataroot (real or synthetic), through the devkit."""

    def __init__(self, dataroot: str | os.PathLike, version: str):
        check_layout(dataroot, version)
        from nuscenes.nuscenes import NuScenes

        self.dataroot = str(dataroot)
        self.nusc = NuScenes(version=version, dataroot=self.dataroot, verbose=False)

    def scenes(self) -> list[dict]:
        return [{"name": s["name"], "token": s["token"], "description": s["description"]} for s in self.nusc.scene]

    def samples(self, scene_token: str) -> list[str]:
        """Sample tokens of a scene, in time order."""
        out, token = [], self.nusc.get("scene", scene_token)["first_sample_token"]
        while token:
            out.append(token)
            token = self.nusc.get("sample", token)["next"]
        return out

    def _name(self, ann_token: str) -> str:
        from nuscenes.eval.detection.utils import category_to_detection_name

        category = self.nusc.get("sample_annotation", ann_token)["category_name"]
        return category_to_detection_name(category) or category

    def camera(self, sample_token: str, channel: str) -> tuple[np.ndarray, list[BoxView]]:
        """The keyframe image <uint8: H, W, 3> and the boxes in front of the camera, projected by the devkit."""
        from nuscenes.utils.geometry_utils import BoxVisibility, view_points
        from PIL import Image

        sd_token = self.nusc.get("sample", sample_token)["data"][channel]
        path, boxes, intrinsic = self.nusc.get_sample_data(sd_token, box_vis_level=BoxVisibility.ANY)
        image = np.asarray(Image.open(path).convert("RGB"))
        views = []
        for box in boxes:
            corners = box.corners()
            if corners[2].min() <= 0.1:
                continue
            uv = view_points(corners, np.asarray(intrinsic), normalize=True)[:2]
            views.append(BoxView(self._name(box.token), uv, box.token))
        return image, views

    def lidar(self, sample_token: str, nsweeps: int = 1) -> tuple[np.ndarray, list[BoxView]]:
        """LiDAR points in a flat ego frame rotated so that forward is +y, <float32: n, 4> (x, y, z, intensity),
        and the box footprints in the same frame."""
        from nuscenes.utils.data_classes import LidarPointCloud
        from pyquaternion import Quaternion

        sample = self.nusc.get("sample", sample_token)
        sd = self.nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        pc, _ = LidarPointCloud.from_file_multisweep(self.nusc, sample, "LIDAR_TOP", "LIDAR_TOP", nsweeps=nsweeps)
        cs = self.nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        pose = self.nusc.get("ego_pose", sd["ego_pose_token"])
        ego_from_lidar = Quaternion(cs["rotation"]).rotation_matrix
        points = (ego_from_lidar @ pc.points[:3]).T + np.asarray(cs["translation"])
        # View frame: x right, y forward (a -90 degree turn of the ego frame), so that forward is up in pictures.
        view_from_ego = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        points = points @ view_from_ego.T
        yaw = Quaternion(pose["rotation"]).yaw_pitch_roll[0]
        ego_from_global = np.array([[np.cos(yaw), np.sin(yaw), 0], [-np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
        views = []
        for ann_token in sample["anns"]:
            box = self.nusc.get_box(ann_token)
            corners = box.bottom_corners() - np.asarray(pose["translation"])[:, None]
            corners = view_from_ego @ ego_from_global @ corners
            views.append(BoxView(self._name(ann_token), corners[:2], ann_token))
        out = np.column_stack([points, pc.points[3]]).astype(np.float32)
        return out, views

    def annotations(self, sample_token: str) -> list[dict]:
        """One row per annotation: class, attribute, distance from the ego, speed, LiDAR points, visibility."""
        sample = self.nusc.get("sample", sample_token)
        pose = self.nusc.get("ego_pose", self.nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
        rows = []
        for ann_token in sample["anns"]:
            ann = self.nusc.get("sample_annotation", ann_token)
            attrs = [self.nusc.get("attribute", t)["name"] for t in ann["attribute_tokens"]]
            velocity = np.nan_to_num(self.nusc.box_velocity(ann_token)[:2])
            distance = float(np.linalg.norm(np.subtract(ann["translation"][:2], pose["translation"][:2])))
            rows.append({
                "class": self._name(ann_token), "attribute": ", ".join(attrs), "distance_m": round(distance, 1),
                "speed_mps": round(float(np.linalg.norm(velocity)), 2), "lidar_pts": ann["num_lidar_pts"],
                "visibility": self.nusc.get("visibility", ann["visibility_token"])["level"],
            })  # fmt: skip
        return sorted(rows, key=lambda r: r["distance_m"])
