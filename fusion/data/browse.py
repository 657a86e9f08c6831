"""Read-only access to one sample's sensor data, annotations and any other boxes, for the app and for pictures.

Everything is addressed by nuScenes tokens looked up in the tables; no path a user types is ever opened, only files
the tables name under the dataroot. Boxes (annotations or predictions) are `Boxes3D` in the global frame; the views
project them vectorised with the same frames the devkit uses (each camera with its own ego pose).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from fusion.data.summary import DatasetError, check_layout
from fusion.data.synth.geometry import invert_pose, make_pose, quaternion_to_matrix

CAMERA_ORDER = ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT")
# The devkit's `Box.corners()` order in the box frame (x along l, y along w, z up): 0-3 front face, 4-7 back face.
_CORNER_SIGNS = np.array([[1, 1, 1], [1, -1, 1], [1, -1, -1], [1, 1, -1],
                          [-1, 1, 1], [-1, -1, 1], [-1, -1, -1], [-1, 1, -1]], np.float64)  # fmt: skip
# View frame of pictures: x right, y forward, z up (a -90 degree turn of the ego frame), forward is up in a BEV.
VIEW_FROM_EGO = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class Boxes3D:
    """K boxes in the global frame. `scores` is nan for annotations; `tokens` are annotation tokens or ids."""

    names: tuple[str, ...]
    tokens: tuple[str, ...]
    centre: np.ndarray  # <float64: K, 3>
    size: np.ndarray  # <float64: K, 3> w, l, h
    rotation: np.ndarray  # <float64: K, 3, 3> global_from_box
    velocity: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # <float64: K, 2> global vx, vy
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))  # <float64: K>

    def __len__(self) -> int:
        return len(self.names)

    @property
    def yaw(self) -> np.ndarray:
        """<float64: K> heading of the box's x axis (along l) in the global xy plane."""
        return np.arctan2(self.rotation[:, 1, 0], self.rotation[:, 0, 0])

    def corners(self) -> np.ndarray:
        """<float64: K, 8, 3> corners in the global frame, in the devkit's `Box.corners()` order."""
        half = self.size[:, [1, 0, 2]] / 2  # (K, 3) l/2, w/2, h/2 along the box's x, y, z
        local = _CORNER_SIGNS[None] * half[:, None, :]  # (K, 8, 3)
        return np.einsum("kij,kcj->kci", self.rotation, local) + self.centre[:, None, :]

    def select(self, keep: np.ndarray) -> Boxes3D:
        idx = np.flatnonzero(keep)
        return Boxes3D(tuple(self.names[i] for i in idx), tuple(self.tokens[i] for i in idx), self.centre[idx],
                       self.size[idx], self.rotation[idx], self.velocity[idx], self.scores[idx])  # fmt: skip

    @staticmethod
    def from_records(records: list[dict]) -> Boxes3D:
        """From nuScenes result records (`translation`, `size`, `rotation`, `detection_name`, ...)."""
        k = len(records)
        return Boxes3D(
            names=tuple(r["detection_name"] for r in records),
            tokens=tuple(f"pred-{i}" for i in range(k)),
            centre=np.asarray([r["translation"] for r in records], np.float64).reshape(k, 3),
            size=np.asarray([r["size"] for r in records], np.float64).reshape(k, 3),
            rotation=quaternion_to_matrix(np.asarray([r["rotation"] for r in records], np.float64).reshape(k, 4)),
            velocity=np.asarray([r.get("velocity", (0.0, 0.0)) for r in records], np.float64).reshape(k, 2),
            scores=np.asarray([r["detection_score"] for r in records], np.float64).reshape(k),
        )


@dataclass(frozen=True)
class BoxView:
    """One box as drawn: its class, and its corners in the view (pixels or BEV metres)."""

    name: str  # detection class, or the nuScenes category when it is not a detection class
    corners: np.ndarray  # <float64: 2, 8> image (u, v), or <float64: 2, 4> BEV footprint (x right, y forward)
    token: str
    score: float = float("nan")  # nan for annotations


class Browser:
    """The samples of one nuScenes dataroot (real or synthetic), through the devkit."""

    def __init__(self, dataroot: str | os.PathLike, version: str):
        check_layout(dataroot, version)
        from nuscenes.nuscenes import NuScenes

        self.dataroot, self.version = str(dataroot), version
        self.nusc = NuScenes(version=version, dataroot=self.dataroot, verbose=False)
        self._scene_of = {s["token"]: s["scene_token"] for s in self.nusc.sample}

    def scenes(self) -> list[dict]:
        return [{"name": s["name"], "token": s["token"], "description": s["description"]} for s in self.nusc.scene]

    def has_sample(self, sample_token: object) -> bool:
        """Whether a string is a sample token of this dataroot (a table lookup, never a path)."""
        return isinstance(sample_token, str) and sample_token in self._scene_of

    def check_sample(self, sample_token: object) -> str:
        if not self.has_sample(sample_token):
            shown = repr(sample_token)[:80]
            raise DatasetError(f"{self.dataroot}/{self.version}/sample.json: no sample with token {shown}")
        return sample_token  # type: ignore[return-value]

    def scene_of(self, sample_token: str) -> str:
        return self._scene_of[self.check_sample(sample_token)]

    def samples(self, scene_token: str) -> list[str]:
        """Sample tokens of a scene, in time order."""
        out, token = [], self.nusc.get("scene", scene_token)["first_sample_token"]
        while token:
            out.append(token)
            token = self.nusc.get("sample", token)["next"]
        return out

    def _name(self, category: str) -> str:
        from nuscenes.eval.detection.utils import category_to_detection_name

        return category_to_detection_name(category) or category

    def annotation_boxes(self, sample_token: str) -> Boxes3D:
        """The sample's annotations as global boxes."""
        anns = [self.nusc.get("sample_annotation", t) for t in self.nusc.get("sample", sample_token)["anns"]]
        k = len(anns)
        return Boxes3D(
            names=tuple(self._name(a["category_name"]) for a in anns),
            tokens=tuple(a["token"] for a in anns),
            centre=np.asarray([a["translation"] for a in anns], np.float64).reshape(k, 3),
            size=np.asarray([a["size"] for a in anns], np.float64).reshape(k, 3),
            rotation=quaternion_to_matrix(np.asarray([a["rotation"] for a in anns], np.float64).reshape(k, 4)),
            velocity=np.asarray([np.nan_to_num(self.nusc.box_velocity(a["token"])[:2]) for a in anns]).reshape(k, 2),
            scores=np.full(k, np.nan),
        )  # fmt: skip

    def _global_from_sensor(self, sd: dict) -> np.ndarray:
        cs = self.nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        ego = self.nusc.get("ego_pose", sd["ego_pose_token"])
        global_from_ego = make_pose(quaternion_to_matrix(np.asarray(ego["rotation"])), ego["translation"])
        return global_from_ego @ make_pose(quaternion_to_matrix(np.asarray(cs["rotation"])), cs["translation"])

    def camera_image(self, sample_token: str, channel: str) -> np.ndarray:
        from PIL import Image

        sd = self.nusc.get("sample_data", self.nusc.get("sample", sample_token)["data"][channel])
        return np.asarray(Image.open(os.path.join(self.dataroot, sd["filename"])).convert("RGB"))

    def project(self, sample_token: str, channel: str, boxes: Boxes3D) -> list[BoxView]:
        """Boxes with every corner in front of the camera and any corner inside the image (the devkit's
        `BoxVisibility.ANY`, plus all corners in front so that no edge wraps), as image corners <2, 8>."""
        sd = self.nusc.get("sample_data", self.nusc.get("sample", sample_token)["data"][channel])
        intrinsic = np.asarray(self.nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])["camera_intrinsic"])
        cam_from_global = invert_pose(self._global_from_sensor(sd))
        corners = boxes.corners() @ cam_from_global[:3, :3].T + cam_from_global[:3, 3]  # (K, 8, 3)
        depth = corners[..., 2]
        uv = corners @ intrinsic.T
        uv = uv[..., :2] / np.where(np.abs(uv[..., 2:]) < 1e-9, 1e-9, uv[..., 2:])  # (K, 8, 2)
        inside = (uv[..., 0] > 0) & (uv[..., 0] < sd["width"]) & (uv[..., 1] > 0) & (uv[..., 1] < sd["height"])
        keep = (depth > 0.1).all(axis=1) & (inside & (depth > 0.1)).any(axis=1)
        return [BoxView(boxes.names[k], uv[k].T, boxes.tokens[k], float(boxes.scores[k])) for k in np.flatnonzero(keep)]

    def camera(self, sample_token: str, channel: str, boxes: Boxes3D | None = None) -> tuple[np.ndarray, list[BoxView]]:
        """The keyframe image <uint8: H, W, 3> and the boxes (annotations by default) projected into it."""
        self.check_sample(sample_token)
        boxes = self.annotation_boxes(sample_token) if boxes is None else boxes
        return self.camera_image(sample_token, channel), self.project(sample_token, channel, boxes)

    def view_from_global(self, sample_token: str) -> np.ndarray:
        """<float64: 4, 4> global -> flat view frame of the LiDAR keyframe's ego (x right, y forward, z up)."""
        sd = self.nusc.get("sample_data", self.nusc.get("sample", sample_token)["data"]["LIDAR_TOP"])
        pose = self.nusc.get("ego_pose", sd["ego_pose_token"])
        r = quaternion_to_matrix(np.asarray(pose["rotation"]))
        yaw = np.arctan2(r[1, 0], r[0, 0])
        ego_from_global = np.array([[np.cos(yaw), np.sin(yaw), 0], [-np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
        rot = VIEW_FROM_EGO @ ego_from_global
        return make_pose(rot, -rot @ np.asarray(pose["translation"], np.float64))

    def footprints(self, sample_token: str, boxes: Boxes3D) -> list[BoxView]:
        """Bottom faces <2, 4> of the boxes in the view frame (corner order of the devkit's `bottom_corners`)."""
        m = self.view_from_global(sample_token)
        bottom = boxes.corners()[:, [2, 3, 7, 6]] @ m[:3, :3].T + m[:3, 3]  # (K, 4, 3)
        return [BoxView(boxes.names[k], bottom[k, :, :2].T, boxes.tokens[k], float(boxes.scores[k]))
                for k in range(len(boxes))]  # fmt: skip

    def points(self, sample_token: str, nsweeps: int = 1) -> np.ndarray:
        """LiDAR points in the view frame of the keyframe's ego, <float32: n, 4> (x, y, z, intensity)."""
        from nuscenes.utils.data_classes import LidarPointCloud

        sample = self.nusc.get("sample", self.check_sample(sample_token))
        sd = self.nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        pc, _ = LidarPointCloud.from_file_multisweep(self.nusc, sample, "LIDAR_TOP", "LIDAR_TOP", nsweeps=nsweeps)
        cs = self.nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        ego_from_lidar = make_pose(quaternion_to_matrix(np.asarray(cs["rotation"])), cs["translation"])
        view = VIEW_FROM_EGO @ ego_from_lidar[:3, :3]
        xyz = pc.points[:3].T @ view.T + VIEW_FROM_EGO @ ego_from_lidar[:3, 3]
        return np.column_stack([xyz, pc.points[3]]).astype(np.float32)

    def lidar(self, sample_token: str, nsweeps: int = 1, boxes: Boxes3D | None = None
              ) -> tuple[np.ndarray, list[BoxView]]:  # fmt: skip
        """LiDAR points (see `points`) and the box footprints (annotations by default) in the same frame."""
        boxes = self.annotation_boxes(self.check_sample(sample_token)) if boxes is None else boxes
        return self.points(sample_token, nsweeps), self.footprints(sample_token, boxes)

    def annotations(self, sample_token: str) -> list[dict]:
        """One row per annotation: class, attribute, distance from the ego, speed, LiDAR points, visibility."""
        sample = self.nusc.get("sample", self.check_sample(sample_token))
        pose = self.nusc.get("ego_pose", self.nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
        rows = []
        for ann_token in sample["anns"]:
            ann = self.nusc.get("sample_annotation", ann_token)
            attrs = [self.nusc.get("attribute", t)["name"] for t in ann["attribute_tokens"]]
            velocity = np.nan_to_num(self.nusc.box_velocity(ann_token)[:2])
            distance = float(np.linalg.norm(np.subtract(ann["translation"][:2], pose["translation"][:2])))
            rows.append({
                "class": self._name(ann["category_name"]), "attribute": ", ".join(attrs),
                "distance_m": round(distance, 1), "speed_mps": round(float(np.linalg.norm(velocity)), 2),
                "lidar_pts": ann["num_lidar_pts"],
                "visibility": self.nusc.get("visibility", ann["visibility_token"])["level"],
            })  # fmt: skip
        return sorted(rows, key=lambda r: r["distance_m"])

    def ego_translation(self, sample_token: str) -> np.ndarray:
        """<float64: 3> the LiDAR keyframe's ego position in the global frame."""
        sd = self.nusc.get("sample_data", self.nusc.get("sample", sample_token)["data"]["LIDAR_TOP"])
        return np.asarray(self.nusc.get("ego_pose", sd["ego_pose_token"])["translation"], np.float64)


__all__ = ["CAMERA_ORDER", "BoxView", "Boxes3D", "Browser", "DatasetError"]
