"""CenterPoint box coding (Yin et al. 2021): boxes <-> BEV centre heatmaps and per-cell regression targets.

Regression channels at a box's centre cell: offset of the centre within the cell (2), z (1), log size w, l, h (3),
sin / cos yaw (2), velocity vx, vy (2), sin / cos of twice the yaw (2). The doubled angle gives the box's axis, which
is unambiguous even where front and back look alike (a parked car in LiDAR): an L1 fit of sin / cos yaw to targets
that are sometimes yaw and sometimes yaw + pi shrinks towards zero and its angle is noise. The decoded yaw is the
axis, turned by pi where the predicted heading (sin / cos yaw) points the other way, as SECOND's direction classifier
does. BEV IoU does not see that pi; nuScenes' orientation error does.

Decoding keeps the local maxima of the heatmap (3x3 max-pool, NMS-free, as CenterPoint), the top-K over all classes
above a score threshold, in the lidar frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fusion.data.types import ATTRIBUTES, CLASS_ATTRIBUTES, DETECTION_CLASSES
from fusion.models.bev_grid import DEFAULT_GRID, BEVGrid

REGRESSION = ("dx", "dy", "z", "log_w", "log_l", "log_h", "sin_yaw", "cos_yaw", "vx", "vy", "sin_2yaw", "cos_2yaw")


@dataclass(frozen=True)
class Targets:
    """heatmap <B, K, Y, X> in [0, 1]; per GT box (padded, `mask` <B, M> says which are used): cell <int64: B, M> flat
    index of the centre cell, regression <B, M, 12>, labels <B, M>, attributes <B, M> (-1 none)."""

    heatmap: torch.Tensor
    cell: torch.Tensor
    regression: torch.Tensor
    labels: torch.Tensor
    attributes: torch.Tensor
    mask: torch.Tensor
    near_cell: torch.Tensor | None = None  # <int64: B, M, N> the N cells around each centre the regression trains at
    near_regression: torch.Tensor | None = None  # <B, M, N, R> the same targets, offsets measured from those cells
    near_mask: torch.Tensor | None = None  # <B, M, N> inside the grid and a real box


@dataclass(frozen=True)
class Detections:
    """Top-K per sample, padded: boxes <B, K, 7> (x, y, z, w, l, h, yaw; lidar frame), scores <B, K>,
    labels <B, K>, velocity <B, K, 2>, attributes <B, K>, mask <B, K> (score above the threshold)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    velocity: torch.Tensor
    attributes: torch.Tensor
    mask: torch.Tensor


def gaussian_radius(length: torch.Tensor, width: torch.Tensor, min_overlap: float = 0.1) -> torch.Tensor:
    """CornerNet's radius (in cells) within which a shifted box keeps IoU >= min_overlap (CenterPoint's version)."""
    b1, c1 = length + width, width * length * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + (b1**2 - 4 * c1).clamp(min=0).sqrt()) / 2
    b2, c2 = 2 * (length + width), (1 - min_overlap) * width * length
    r2 = (b2 + (b2**2 - 16 * c2).clamp(min=0).sqrt()) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (length + width), (min_overlap - 1) * width * length
    r3 = (b3 + (b3**2 - 4 * a3 * c3).clamp(min=0).sqrt()) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


class BoxCoder:
    """`near` > 0 also trains the regression at the cells up to `near` cells from each centre (offsets measured from
    each of them), so that when the heatmap peaks one cell off, which on coarse cells costs IoU, the regression read
    there still points at the centre; 0 is CenterPoint's centre cell only."""

    def __init__(self, grid: BEVGrid = DEFAULT_GRID, num_classes: int = 10, min_radius: int = 2,
                 min_overlap: float = 0.1, near: int = 0):  # fmt: skip
        self.grid, self.num_classes, self.min_radius, self.min_overlap = grid, num_classes, min_radius, min_overlap
        self.near = near

    def encode(self, boxes: torch.Tensor, velocity: torch.Tensor, labels: torch.Tensor, attributes: torch.Tensor,
               box_mask: torch.Tensor) -> Targets:  # fmt: skip
        """boxes <B, M, 7>, velocity <B, M, 2>, labels / attributes / box_mask <B, M> (a `Batch`'s fields)."""
        g = self.grid
        b = boxes.shape[0]
        fx = (boxes[..., 0] - g.x_range[0]) / g.cell
        fy = (boxes[..., 1] - g.y_range[0]) / g.cell
        ix, iy, inside = g.cell_of(boxes[..., :2])
        mask = box_mask & inside & (labels >= 0)
        ix, iy = ix.clamp(0, g.nx - 1), iy.clamp(0, g.ny - 1)
        regression = torch.stack(
            [
                fx - ix,
                fy - iy,
                boxes[..., 2],
                *boxes[..., 3:6].clamp(min=1e-3).log().unbind(-1),
                boxes[..., 6].sin(),
                boxes[..., 6].cos(),
                velocity[..., 0],
                velocity[..., 1],
                (2 * boxes[..., 6]).sin(),
                (2 * boxes[..., 6]).cos(),
            ],
            -1,
        )

        # Gaussian splats, max over the boxes of each class: (B, M, Y*X) -> (B, K, Y*X)
        radius = gaussian_radius(boxes[..., 4] / g.cell, boxes[..., 3] / g.cell, self.min_overlap)
        radius = radius.floor().clamp(min=self.min_radius)  # (B, M) cells
        sigma = (2 * radius + 1) / 6
        # separable: exp(-(dx^2 + dy^2) / 2 s^2) = exp(-dx^2 / 2 s^2) exp(-dy^2 / 2 s^2), and so is the square
        # window |dx|, |dy| <= radius, so the exponentials run per row and per column, not per cell
        two_var, r = 2 * sigma[..., None] ** 2, radius[..., None]
        dx = torch.arange(g.nx, device=boxes.device) - ix[..., None]  # (B, M, X) offsets from the centre cell
        dy = torch.arange(g.ny, device=boxes.device) - iy[..., None]  # (B, M, Y)
        wx = torch.exp(-dx.square() / two_var) * (dx.abs() <= r)
        wy = torch.exp(-dy.square() / two_var) * ((dy.abs() <= r) & mask[..., None])
        gauss = (wy[..., :, None] * wx[..., None, :]).flatten(2)  # (B, M, Y*X)
        heatmap = boxes.new_zeros(b, self.num_classes, g.ny * g.nx)
        heatmap = heatmap.scatter_reduce(1, labels.clamp(min=0)[..., None].expand_as(gauss), gauss, "amax")
        # the cells around each centre: (B, M, N) with N = (2 near + 1)^2, the centre first
        steps = torch.arange(-self.near, self.near + 1, device=boxes.device)
        oy, ox = (v.flatten() for v in torch.meshgrid(steps, steps, indexing="ij"))
        order = (oy.abs() + ox.abs()).argsort(stable=True)
        oy, ox = oy[order], ox[order]
        ny, nx = iy[..., None] + oy, ix[..., None] + ox
        near_mask = mask[..., None] & (nx >= 0) & (nx < g.nx) & (ny >= 0) & (ny < g.ny)
        near_regression = regression[:, :, None].repeat(1, 1, len(ox), 1)  # (B, M, N, R)
        near_regression[..., 0] -= ox
        near_regression[..., 1] -= oy
        return Targets(heatmap=heatmap.view(b, self.num_classes, g.ny, g.nx), cell=iy * g.nx + ix,
                       regression=regression * mask[..., None], labels=labels.where(mask, -1),
                       attributes=attributes.where(mask, -1), mask=mask,
                       near_cell=(ny.clamp(0, g.ny - 1) * g.nx + nx.clamp(0, g.nx - 1)),
                       near_regression=near_regression * near_mask[..., None], near_mask=near_mask)  # fmt: skip

    def decode(self, heatmap: torch.Tensor, regression: torch.Tensor, attributes: torch.Tensor, top_k: int = 100,
               score_threshold: float = 0.1) -> Detections:  # fmt: skip
        """heatmap <B, K, Y, X> logits; regression <B, K, 12, Y, X> and attributes <B, K, A, Y, X> per class (a
        class reads its group's maps: `DetectionHead` expands them). Decodes in float32 (in bfloat16 neighbouring
        scores round to one value and all pass the peak test). A box's attribute is the best of those its class has
        in nuScenes (-1 for barriers and cones, which have none)."""
        g = self.grid
        heatmap, regression, attributes = heatmap.float(), regression.float(), attributes.float()
        b, k, y, x = heatmap.shape
        scores = heatmap.sigmoid()
        peaks = scores * (F.max_pool2d(scores, 3, stride=1, padding=1) == scores)  # keep local maxima only
        top, flat = peaks.flatten(1).topk(min(top_k, k * y * x))  # (B, K') over classes and cells
        label, cell = flat // (y * x), flat % (y * x)
        gather = lambda maps: maps.flatten(3)[torch.arange(b)[:, None], label, :, cell]  # noqa: E731 (B, K', C)
        r = gather(regression)
        cx = g.x_range[0] + ((cell % x).float() + r[..., 0]) * g.cell
        cy = g.y_range[0] + ((cell // x).float() + r[..., 1]) * g.cell
        yaw = decode_yaw(r[..., 6], r[..., 7], r[..., 10], r[..., 11])
        boxes = torch.stack([cx, cy, r[..., 2], *r[..., 3:6].exp().unbind(-1), yaw], -1)  # (B, K', 7)
        allowed = class_attribute_mask(k, attributes.shape[2], heatmap.device)[label]  # (B, K', A)
        attr = gather(attributes).masked_fill(~allowed, -math.inf).argmax(-1).where(allowed.any(-1), -1)
        return Detections(boxes=boxes, scores=top, labels=label, velocity=r[..., 8:10], attributes=attr,
                          mask=top > score_threshold)  # fmt: skip


# <bool: classes, attributes> which attributes each class of `DETECTION_CLASSES` may take
_CLASS_ATTRIBUTE_MASK = torch.tensor([[a in CLASS_ATTRIBUTES[c] for a in ATTRIBUTES] for c in DETECTION_CLASSES])


def class_attribute_mask(num_classes: int, num_attributes: int, device: torch.device | None = None) -> torch.Tensor:
    """<bool: num_classes, num_attributes> which attributes each class of `DETECTION_CLASSES` may take; every
    attribute for a class vocabulary other than nuScenes' (a test's, say)."""
    if (num_classes, num_attributes) != tuple(_CLASS_ATTRIBUTE_MASK.shape):
        return torch.ones(num_classes, num_attributes, dtype=torch.bool, device=device)
    return _CLASS_ATTRIBUTE_MASK.to(device)


def decode_yaw(sin: torch.Tensor, cos: torch.Tensor, sin2: torch.Tensor, cos2: torch.Tensor) -> torch.Tensor:
    """The axis from the doubled angle, in (-pi/2, pi/2], turned by pi where the heading (cos, sin) points against it;
    in (-pi, pi]."""
    axis = torch.atan2(sin2, cos2) / 2
    flip = axis.cos() * cos + axis.sin() * sin < 0
    return torch.where(flip, axis + torch.where(axis > 0, -math.pi, math.pi), axis)


def yaw_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Smallest absolute difference of two angles, in [0, pi]."""
    return ((a - b + math.pi) % (2 * math.pi) - math.pi).abs()
