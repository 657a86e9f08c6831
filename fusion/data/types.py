"""Typed, frozen containers for what flows from the data layer to the model: `Sample` and `Batch`.

Everything is in the reference frame of the sample's LiDAR keyframe ("lidar" frame: x right, y forward, z up on the
nuScenes car); `global_from_lidar` takes predictions back to the nuScenes global frame.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

DETECTION_CLASSES = (
    "car",
    "truck",
    "construction_vehicle",
    "bus",
    "trailer",
    "barrier",
    "motorcycle",
    "bicycle",
    "pedestrian",
    "traffic_cone",
)  # fmt: skip  (the nuScenes detection classes, devkit order)
ATTRIBUTES = ("cycle.with_rider", "cycle.without_rider", "pedestrian.moving", "pedestrian.standing",
              "pedestrian.sitting_lying_down", "vehicle.moving", "vehicle.parked", "vehicle.stopped")  # fmt: skip
# the attributes nuScenes defines for each detection class (barriers and traffic cones have none: "" in results)
CLASS_ATTRIBUTES = {
    **dict.fromkeys(("car", "truck", "construction_vehicle", "bus", "trailer"), ATTRIBUTES[5:8]),
    **dict.fromkeys(("motorcycle", "bicycle"), ATTRIBUTES[0:2]),
    "pedestrian": ATTRIBUTES[2:5],
    "barrier": (),
    "traffic_cone": (),
}
CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")


@dataclass(frozen=True)
class Sample:
    """One keyframe, ready for the model.

    points: <float32: N, 5> x, y, z, intensity, time lag (s) of all sweeps, in the lidar frame.
    images: <uint8: C, 3, H, W> the C = 6 cameras in `CAMERAS` order, resized.
    camera_mask: <bool: C> which cameras are present (False: missing file or camera dropped).
    cam_from_lidar: <float32: C, 4, 4> lidar frame -> camera frame (each camera with its own ego pose).
    intrinsics: <float32: C, 3, 3> of the resized images.
    boxes: <float32: M, 7> x, y, z (centre), w, l, h, yaw in the lidar frame; yaw about z from the x axis.
    velocity: <float32: M, 2> vx, vy in the lidar frame (m/s; 0 where the devkit gives nan).
    labels: <int64: M> index into DETECTION_CLASSES.
    attributes: <int64: M> index into ATTRIBUTES, -1 for none.
    num_points: <int64: M> LiDAR + radar points in each box.
    visibility: <int64: M> nuScenes visibility level 1-4 (0-40 % ... 80-100 % visible in the cameras).
    global_from_lidar: <float64: 4, 4>.
    has_lidar / has_camera: modality flags after modality dropout.
    """

    token: str
    points: torch.Tensor
    images: torch.Tensor
    camera_mask: torch.Tensor
    cam_from_lidar: torch.Tensor
    intrinsics: torch.Tensor
    boxes: torch.Tensor
    velocity: torch.Tensor
    labels: torch.Tensor
    attributes: torch.Tensor
    num_points: torch.Tensor
    visibility: torch.Tensor
    global_from_lidar: torch.Tensor
    has_lidar: bool = True
    has_camera: bool = True


@dataclass(frozen=True)
class Batch:
    """Samples padded to a common size, with masks.

    points <B, Nmax, 5> + point_mask <B, Nmax>; images <B, C, 3, H, W> + camera_mask <B, C>; boxes <B, Mmax, 7>,
    velocity <B, Mmax, 2>, labels / attributes / num_points / visibility <B, Mmax> + box_mask <B, Mmax>; cam_from_lidar
    <B, C, 4, 4>; intrinsics <B, C, 3, 3>; global_from_lidar <B, 4, 4>; tokens: B sample tokens.
    """

    tokens: tuple[str, ...]
    points: torch.Tensor
    point_mask: torch.Tensor
    images: torch.Tensor
    camera_mask: torch.Tensor
    cam_from_lidar: torch.Tensor
    intrinsics: torch.Tensor
    boxes: torch.Tensor
    velocity: torch.Tensor
    labels: torch.Tensor
    attributes: torch.Tensor
    num_points: torch.Tensor
    visibility: torch.Tensor
    box_mask: torch.Tensor
    global_from_lidar: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{f.name: (v.to(device) if isinstance(v := getattr(self, f.name), torch.Tensor) else v)
                        for f in fields(self)})  # fmt: skip

    def __len__(self) -> int:
        return len(self.tokens)


def _pad(tensors: list[torch.Tensor], fill: float = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack tensors of shape <n_i, ...> into <B, max n_i, ...> and a mask <B, max n_i> (one C++ call, not a loop)."""
    out = torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True, padding_value=fill)
    lengths = torch.tensor([t.shape[0] for t in tensors])
    return out, torch.arange(out.shape[1]) < lengths[:, None]


def collate(samples: list[Sample]) -> Batch:
    """Pad and stack samples; the masks say what is real."""
    points, point_mask = _pad([s.points for s in samples])
    boxes, box_mask = _pad([s.boxes for s in samples])
    return Batch(
        tokens=tuple(s.token for s in samples),
        points=points,
        point_mask=point_mask,
        images=torch.stack([s.images for s in samples]),
        camera_mask=torch.stack([s.camera_mask for s in samples]),
        cam_from_lidar=torch.stack([s.cam_from_lidar for s in samples]),
        intrinsics=torch.stack([s.intrinsics for s in samples]),
        boxes=boxes,
        velocity=_pad([s.velocity for s in samples])[0],
        labels=_pad([s.labels for s in samples], fill=-1)[0],
        attributes=_pad([s.attributes for s in samples], fill=-1)[0],
        num_points=_pad([s.num_points for s in samples])[0],
        visibility=_pad([s.visibility for s in samples])[0],
        box_mask=box_mask,
        global_from_lidar=torch.stack([s.global_from_lidar for s in samples]),
    )
