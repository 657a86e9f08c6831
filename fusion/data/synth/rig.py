"""The sensor rig: six cameras and a 32-beam spinning LiDAR, calibrated like the nuScenes vehicles.

Extrinsics are `ego_from_sensor` transforms (sensor frame to ego frame). The ego frame is x forward, y left, z up;
camera frames are x right, y down, z forward; the LiDAR frame is x right, y forward, z up, so that `ego_from_lidar`
is a -90 degree yaw, as on the nuScenes car. Each log gets its own small calibration offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion.data.synth.geometry import make_pose, rotation_zyx

# (channel, translation in ego, yaw in degrees, focal length and principal point at 1600 x 900, trigger offset in s)
# Trigger offsets: each camera fires when the LiDAR's beam sweeps across its field of view.
CAMERAS = [
    ("CAM_FRONT", (1.70, 0.02, 1.51), 0.0, (1266.4, 816.3, 491.5), 0.012),
    ("CAM_FRONT_RIGHT", (1.55, -0.49, 1.50), -55.0, (1260.8, 807.9, 495.3), 0.020),
    ("CAM_BACK_RIGHT", (1.04, -0.81, 1.49), -110.0, (1259.5, 807.3, 501.2), 0.029),
    ("CAM_BACK", (0.03, 0.00, 1.57), 180.0, (809.2, 829.2, 481.8), 0.037),
    ("CAM_BACK_LEFT", (1.04, 0.81, 1.49), 110.0, (1256.7, 817.8, 451.9), -0.021),
    ("CAM_FRONT_LEFT", (1.52, 0.49, 1.51), 55.0, (1272.6, 826.6, 479.8), -0.012),
]
FULL_WIDTH, FULL_HEIGHT = 1600, 900

LIDAR_CHANNEL = "LIDAR_TOP"
LIDAR_TRANSLATION = (0.94, 0.0, 1.84)
LIDAR_ELEVATIONS = np.deg2rad(np.linspace(-30.67, 10.67, 32))  # HDL-32E beams, ring 0 lowest
LIDAR_MAX_RANGE = 70.0
LIDAR_MIN_RANGE = 1.0

# Camera frame (x right, y down, z forward) to a forward-looking ego frame (x forward, y left, z up).
_EGO_FROM_CAM_AXES = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class Camera:
    channel: str
    ego_from_cam: np.ndarray  # <float64: 4, 4>
    intrinsic: np.ndarray  # <float64: 3, 3>
    width: int
    height: int
    time_offset: float  # seconds after the LiDAR keyframe


@dataclass(frozen=True)
class Rig:
    cameras: tuple[Camera, ...]
    ego_from_lidar: np.ndarray  # <float64: 4, 4>


def make_rig(rng: np.random.Generator, image_scale: float) -> Rig:
    """A rig with per-log calibration noise (about 1 cm and 0.2 degrees), images scaled by `image_scale`."""
    width, height = round(FULL_WIDTH * image_scale), round(FULL_HEIGHT * image_scale)
    cams = []
    for channel, t, yaw, (f, cx, cy), offset in CAMERAS:
        jitter = np.deg2rad(rng.normal(0.0, 0.2, size=3))
        rot = rotation_zyx(np.deg2rad(yaw) + jitter[0], jitter[1], jitter[2]) @ _EGO_FROM_CAM_AXES
        trans = np.asarray(t) + rng.normal(0.0, 0.01, size=3)
        k = np.array([[f * image_scale, 0.0, cx * image_scale], [0.0, f * image_scale, cy * image_scale], [0, 0, 1]])
        cams.append(Camera(channel, make_pose(rot, trans), k, width, height, offset))
    jitter = np.deg2rad(rng.normal(0.0, 0.1, size=3))
    lidar_rot = rotation_zyx(-np.pi / 2 + jitter[0], jitter[1], jitter[2])
    lidar = make_pose(lidar_rot, np.asarray(LIDAR_TRANSLATION) + rng.normal(0.0, 0.01, size=3))
    return Rig(tuple(cams), lidar)


def lidar_directions(azimuth_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit ray directions in the LiDAR frame, in firing order (azimuth-major), and the ring of each.

    Returns (<float64: 32 * azimuth_steps, 3>, <int64: 32 * azimuth_steps>).
    """
    az = np.linspace(0.0, 2 * np.pi, azimuth_steps, endpoint=False)
    a, e = np.meshgrid(az, LIDAR_ELEVATIONS, indexing="ij")  # (A, 32)
    dirs = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], axis=-1)
    rings = np.broadcast_to(np.arange(len(LIDAR_ELEVATIONS)), a.shape)
    return dirs.reshape(-1, 3), rings.reshape(-1).copy()


def camera_directions(cam: Camera, stride: int = 1) -> np.ndarray:
    """Unit ray directions in the camera frame through pixel centres. <float64: H/stride, W/stride, 3>."""
    u = np.arange(0, cam.width, stride) + 0.5
    v = np.arange(0, cam.height, stride) + 0.5
    uu, vv = np.meshgrid(u, v)
    pix = np.stack([uu, vv, np.ones_like(uu)], axis=-1)
    d = pix @ np.linalg.inv(cam.intrinsic).T
    return d / np.linalg.norm(d, axis=-1, keepdims=True)
