"""Object tokens for scene QA: boxes -> features pooled from the frozen detector (3D-VisTA's object tokens, with our
detector in place of the point-cloud backbone).

Per box (lidar frame): the fused BEV map sampled bilinearly at the centre and at the mean of its four BEV corners
(2C), the detection head at the centre cell — class probabilities (K), attribute probabilities of the most likely
class (A), velocity (2) — and the mean RGB of the image pixels around the centre's projection into the camera that
sees it best (3 + a visible flag), because colours live in the images, not in the BEV map; then what the box's own
LiDAR points show: their colours and intensities (`point_appearance`) and the trail older sweeps leave behind a
moving object (`point_motion`). Geometry (centre, size, yaw) is kept apart and embedded by the QA model. Boxes are
the GT boxes (oracle setting, as the question generator sees them: LiDAR points and within 50 m) or the detector's
own detections.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fusion.data.qa import MAX_DISTANCE
from fusion.data.types import DETECTION_CLASSES, Batch
from fusion.models.bev_grid import BEVGrid
from fusion.models.box_coder import REGRESSION, BoxCoder
from fusion.models.head import HeadOutput
from fusion.models.model import FusionDetector, detect

NAMES = tuple(c.replace("_", " ") for c in DETECTION_CLASSES)


@dataclass(frozen=True)
class SceneObjects:
    """The objects of one sample. boxes <M, 7> x, y, z, w, l, h, yaw (lidar frame); features <M, F>; labels <M>
    (GT class or detected class); tokens: annotation tokens ("" for detections); scores <M> (1 for GT boxes)."""

    boxes: torch.Tensor
    features: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    tokens: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(NAMES[int(k)] for k in self.labels)

    def __len__(self) -> int:
        return len(self.tokens)

    def to_dict(self) -> dict:
        return {"boxes": self.boxes, "features": self.features, "labels": self.labels, "scores": self.scores,
                "tokens": list(self.tokens)}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> SceneObjects:
        return cls(d["boxes"], d["features"], d["labels"], d["scores"], tuple(d["tokens"]))


MOTION = 4  # `point_motion`: shift of the newest sweep's points from the older sweeps' (along, across), speed, share
APPEARANCE = 13 + MOTION  # `point_appearance`: RGB quantiles (9), intensity quantiles (2), visible fraction, log point
# count; then `point_motion`


def colour_cues(appearance: torch.Tensor) -> torch.Tensor:
    """Lighting-free colour cues <..., CUES> from an object's appearance features <..., 4 + APPEARANCE>
    (`image_colour`, then `point_appearance` and `point_motion`).

    Of four colour readings (the centre patch and the 10/50/90 % quantiles of the LiDAR points' pixels): the
    chromaticity (each channel's share of R + G + B), the brightness and the saturation ((max - min) / max); and the
    median pixel's brightness over the median LiDAR intensity: how lit the surface is, since a pixel follows surface
    times light and the intensity the surface alone. Sun and shade scale R, G and B together, so the shares and the
    saturation hold where the raw values do not (white in the shade is darker, not less white). On the cached
    `mini_train` objects a tree ensemble read `mini_val` colours at 0.825 with such cues, 0.814 from the raw values.
    """
    quantiles = appearance[..., 4:13].unflatten(-1, (3, 3)).unbind(-2)  # 10 / 50 / 90 %, each (..., RGB)
    rgb = torch.stack([appearance[..., 0:3], *quantiles], -2)  # (..., 4, 3)
    total = rgb.sum(-1, keepdim=True)
    chroma = rgb / total.clamp(min=1e-3)
    top = rgb.amax(-1)
    saturation = (top - rgb.amin(-1)) / top.clamp(min=1e-3)
    light = total[..., 2, :] / 3 / appearance[..., 13:14].clamp(min=0.05)  # median pixel / median intensity
    return torch.cat([chroma.flatten(-2), total[..., 0] / 3, saturation, light.clamp(max=10.0) / 10], -1)


CUES = 4 * 3 + 4 + 4 + 1  # `colour_cues`: chromaticity, brightness and saturation of 4 colour readings; light


def feature_dim(dim: int, num_classes: int = 10, num_attributes: int = 8) -> int:
    return 2 * dim + num_classes + num_attributes + 2 + 4 + APPEARANCE


def bev_corners(boxes: torch.Tensor) -> torch.Tensor:
    """<M, 7> -> <M, 4, 2> the BEV corners (x axis of the box along l)."""
    c, s = boxes[:, 6].cos(), boxes[:, 6].sin()
    half_l, half_w = boxes[:, 4] / 2, boxes[:, 3] / 2
    sx = torch.tensor([1.0, 1.0, -1.0, -1.0]) * half_l[:, None]
    sy = torch.tensor([1.0, -1.0, -1.0, 1.0]) * half_w[:, None]
    return torch.stack(
        [boxes[:, :1] + c[:, None] * sx - s[:, None] * sy, boxes[:, 1:2] + s[:, None] * sx + c[:, None] * sy], -1
    )


def sample_bev(bev: torch.Tensor, xy: torch.Tensor, grid: BEVGrid) -> torch.Tensor:
    """Bilinear samples of a BEV map <C, Y, X> at lidar-frame points <..., 2> -> <..., C> (0 outside the grid)."""
    return grid.sample(bev[None], xy[None])[0]


def project_to_cameras(
    xyz: torch.Tensor, cam_from_lidar: torch.Tensor, intrinsics: torch.Tensor, camera_mask: torch.Tensor, h: int, w: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lidar-frame points <P, 3> in the six images (H x W): pixel coordinates u, v <6, P> and whether each camera
    sees each point <6, P> (more than 0.5 m in front of it, inside the image, camera present)."""
    homo = torch.cat([xyz, torch.ones_like(xyz[:, :1])], -1)  # (P, 4)
    cam = torch.einsum("cij,pj->cpi", cam_from_lidar, homo)[..., :3]  # (6, P, 3)
    uvz = torch.einsum("cij,cpj->cpi", intrinsics, cam)
    depth = uvz[..., 2].clamp(min=1e-6)
    u, v = uvz[..., 0] / depth, uvz[..., 1] / depth
    ok = (cam[..., 2] > 0.5) & (u >= 0) & (u < w) & (v >= 0) & (v < h) & camera_mask[:, None]
    return u, v, ok


def image_colour(images: torch.Tensor, cam_from_lidar: torch.Tensor, intrinsics: torch.Tensor,
                 camera_mask: torch.Tensor, centres: torch.Tensor, radius: int = 2) -> torch.Tensor:  # fmt: skip
    """Mean RGB in [0, 1] of a (2r+1)^2 pixel patch around each centre's projection, in the camera where it lies
    nearest the image centre, and a visible flag: images <6, 3, H, W> uint8, centres <M, 3> -> <M, 4>."""
    _, _, h, w = images.shape
    u, v, ok = project_to_cameras(centres, cam_from_lidar, intrinsics, camera_mask, h, w)  # (6, M) each
    off_centre = ((u / w - 0.5) ** 2 + (v / h - 0.5) ** 2).where(ok, torch.inf)
    best = off_centre.argmin(0)  # (M,)
    m = torch.arange(len(centres))
    visible = ok[best, m]
    d = torch.arange(-radius, radius + 1)
    px = (u[best, m].round().long()[:, None, None] + d[None, None, :]).clamp(0, w - 1)  # (M, 1, P)
    py = (v[best, m].round().long()[:, None, None] + d[None, :, None]).clamp(0, h - 1)  # (M, P, 1)
    patch = images[best[:, None, None], :, py, px]  # (M, P, P, 3)
    rgb = patch.float().mean((1, 2)) / 255.0 * visible[:, None]
    return torch.cat([rgb, visible[:, None].float()], -1)


def point_appearance(images: torch.Tensor, cam_from_lidar: torch.Tensor, intrinsics: torch.Tensor,
                     camera_mask: torch.Tensor, points: torch.Tensor, point_mask: torch.Tensor, boxes: torch.Tensor,
                     num_points: int = 64) -> torch.Tensor:  # fmt: skip
    """What an object looks like where the LiDAR hit it: <M, APPEARANCE - MOTION>.

    A box's LiDAR points lie on its visible surface, so the pixels they project to show the object itself, not
    whatever stands in front of its centre. Per box, over up to `num_points` of its points: the 10/50/90 %
    quantiles of the R, G and B of their pixels (in the first camera that sees each point), the median and 90 %
    quantile of their LiDAR intensity (which follows the surface's albedo and not the sun, unlike the pixels: it tells
    white from grey in the shade), the fraction of the points some camera sees, and log(1 + points) / 5. Zeros for
    a box without a point.

    Args:
        images <6, 3, H, W> uint8; cam_from_lidar <6, 4, 4>; intrinsics <6, 3, 3>; camera_mask <6>;
        points <N, 5> (x, y, z, intensity, time lag) and point_mask <N>; boxes <M, 7> (lidar frame).
    """
    from fusion.models.refine import gather_box_points

    m = len(boxes)
    if m == 0:
        return images.new_zeros(0, APPEARANCE - MOTION, dtype=torch.float32)
    local, valid = gather_box_points(points[None].float(), point_mask[None], boxes[None].float(), num_points,
                                     margin=0.1, scale=1.0)  # fmt: skip
    local, valid = local[0], valid[0]  # (M, P, 5), (M, P)
    c, s = boxes[:, 6].cos()[:, None], boxes[:, 6].sin()[:, None]
    x = boxes[:, None, 0] + c * local[..., 0] - s * local[..., 1]
    y = boxes[:, None, 1] + s * local[..., 0] + c * local[..., 1]
    z = boxes[:, None, 2] + local[..., 2]
    _, _, h, w = images.shape
    xyz = torch.stack([x, y, z], -1).reshape(-1, 3)  # (M P, 3)
    u, v, ok = project_to_cameras(xyz, cam_from_lidar.float(), intrinsics.float(), camera_mask, h, w)  # (6, M P)
    seen = ok.any(0) & valid.reshape(-1)
    first = ok.float().argmax(0)  # the first camera that sees each point
    n = torch.arange(len(first))
    px = u[first, n].long().clamp(0, w - 1)
    py = v[first, n].long().clamp(0, h - 1)
    rgb = images[first, :, py, px].float() / 255.0  # (M P, 3)
    rgb = rgb.where(seen[:, None], torch.nan).reshape(m, -1, 3)
    intensity = local[..., 3].where(valid, torch.nan) / 255.0  # (M, P)
    q = torch.tensor([0.1, 0.5, 0.9])
    colour = torch.nanquantile(rgb, q, dim=1).permute(1, 0, 2).reshape(m, 9)  # (M, 3 quantiles x RGB)
    reflect = torch.nanquantile(intensity, q[1:], dim=1).T  # (M, 2)
    count = valid.sum(1).float()
    visible = seen.reshape(m, -1).sum(1) / count.clamp(min=1)
    out = torch.cat([colour, reflect, visible[:, None], (count.log1p() / 5)[:, None]], 1)  # (M, 13)
    return out.nan_to_num(0.0)


def point_motion(points: torch.Tensor, point_mask: torch.Tensor, boxes: torch.Tensor, num_points: int = 96,
                 margin: float = 0.5) -> torch.Tensor:  # fmt: skip
    """How an object moved over the LiDAR sweeps: <M, MOTION>.

    The sweeps are in the keyframe's frame, so a static object's points from older sweeps fall where its newest ones
    do, while a moving object leaves a trail behind it. Per box, over up to `num_points` points within `margin`
    metres of it (the trail reaches beyond the box): the mean position of the newest sweep's points minus that of the
    older sweeps' points, along and across the box (metres), that shift's length over the older points' mean time
    lag (m/s, / 5), and the older points' share. Zeros where either set is empty. A walking pedestrian (0.8-1.7 m/s)
    moves 0.1-0.3 m between sweeps; a standing one does not.
    """
    from fusion.models.refine import gather_box_points

    m = len(boxes)
    if m == 0:
        return points.new_zeros(0, MOTION, dtype=torch.float32)
    local, valid = gather_box_points(points[None].float(), point_mask[None], boxes[None].float(), num_points,
                                     margin=margin, scale=1.0)  # fmt: skip
    local, valid = local[0], valid[0]  # (M, P, 5)
    lag = local[..., 4]
    valid = valid & (local[..., 2] > 0.15 - boxes[:, None, 5] / 2)  # not the ground the box stands on
    newest = valid & (lag < 1e-3)
    older = valid & (lag >= 1e-3)

    def mean(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (x * mask).sum(1) / mask.sum(1).clamp(min=1)

    both = (newest.any(1) & older.any(1)).float()
    shift = torch.stack([mean(newest, local[..., k]) - mean(older, local[..., k]) for k in (0, 1)], -1) * both[:, None]
    speed = shift.norm(dim=1) / mean(older, lag).clamp(min=0.05) * both
    share = older.sum(1) / valid.sum(1).clamp(min=1)
    return torch.cat([shift, (speed / 5.0)[:, None], share[:, None]], 1)


def gt_objects(batch: Batch, b: int, ann_tokens: list[str]) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """The GT boxes of sample b that the question generator sees (LiDAR points, within 50 m): boxes, labels, tokens."""
    n = int(batch.box_mask[b].sum())
    boxes, labels = batch.boxes[b, :n], batch.labels[b, :n]
    keep = (batch.num_points[b, :n] > 0) & (boxes[:, :2].norm(dim=1) <= MAX_DISTANCE) & (labels >= 0)
    idx = keep.nonzero()[:, 0]
    return boxes[idx], labels[idx], tuple(ann_tokens[int(i)] for i in idx)


class ObjectExtractor:
    """The frozen detector + how boxes are chosen: `boxes="gt"` (needs annotation tokens) or `"predicted"`."""

    def __init__(self, detector: FusionDetector, box_coder: BoxCoder, boxes: str = "gt", score_threshold: float = 0.2,
                 max_objects: int = 80):  # fmt: skip
        if boxes not in ("gt", "predicted"):
            raise ValueError(f"boxes must be 'gt' or 'predicted', got {boxes!r}")
        self.detector, self.box_coder, self.boxes = detector, box_coder, boxes
        self.score_threshold, self.max_objects = score_threshold, max_objects

    @torch.inference_mode()
    def __call__(self, batch: Batch, ann_tokens: list[list[str]] | None = None) -> list[SceneObjects]:
        self.detector.eval()
        fused, head = self.detector.forward_features(batch)
        out = []
        for b in range(len(batch)):
            if self.boxes == "gt":
                if ann_tokens is None:
                    raise ValueError("ObjectExtractor(boxes='gt') needs the annotation tokens of every sample")
                boxes, labels, tokens = gt_objects(batch, b, ann_tokens[b])
                scores = torch.ones(len(boxes))
            else:
                boxes, labels, scores = self._detections(batch, head, b)
                tokens = ("",) * len(boxes)
            feats = self._features(batch, b, fused[b], head, boxes)
            out.append(SceneObjects(boxes.float().cpu(), feats.cpu(), labels.cpu(), scores.float().cpu(), tokens))
        return out

    def _detections(self, batch: Batch, head: HeadOutput, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sl = slice(b, b + 1)
        one = HeadOutput(head.heatmap[sl], head.regression[sl], head.attributes[sl],
                         None if head.features is None else head.features[sl],
                         images=None if head.images is None else head.images[sl])  # fmt: skip
        det = detect(self.detector, self.box_coder, one, batch.points[sl], batch.point_mask[sl], self.max_objects,
                     self.score_threshold)  # fmt: skip
        keep = det.mask[0] & (det.boxes[0, :, :2].norm(dim=-1) <= MAX_DISTANCE)
        return det.boxes[0][keep], det.labels[0][keep], det.scores[0][keep]

    def _features(self, batch: Batch, b: int, fused: torch.Tensor, head: HeadOutput, boxes: torch.Tensor):
        grid = self.box_coder.grid
        centre = sample_bev(fused, boxes[:, :2], grid)  # (M, C)
        corners = sample_bev(fused, bev_corners(boxes), grid).mean(1)  # (M, C)
        heat = sample_bev(head.heatmap[b], boxes[:, :2], grid).sigmoid()  # (M, K)
        cls = heat.argmax(-1)
        m = torch.arange(len(boxes))
        k, a = head.attributes.shape[1:3]
        attr = sample_bev(head.attributes[b].flatten(0, 1), boxes[:, :2], grid).view(-1, k, a)[m, cls].softmax(-1)
        r, vx = head.regression.shape[2], REGRESSION.index("vx")
        reg = sample_bev(head.regression[b].flatten(0, 1), boxes[:, :2], grid).view(-1, k, r)[m, cls]  # (M, r)
        colour = image_colour(batch.images[b], batch.cam_from_lidar[b], batch.intrinsics[b], batch.camera_mask[b],
                              boxes[:, :3])  # fmt: skip
        look = point_appearance(batch.images[b], batch.cam_from_lidar[b], batch.intrinsics[b], batch.camera_mask[b],
                                batch.points[b], batch.point_mask[b], boxes)  # fmt: skip
        motion = point_motion(batch.points[b], batch.point_mask[b], boxes)
        return torch.cat([centre, corners, heat, attr, reg[:, vx : vx + 2], colour, look, motion], -1)
