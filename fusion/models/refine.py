"""Second stage: refine each first-stage box from the LiDAR points inside it, and rescore it by its predicted IoU.

The CenterPoint head places a box from one BEV cell (1.6 m at the CPU config), so its centre is off by a few
decimetres: enough to miss BEV IoU 0.7 on a car, whose width leaves 0.33 m of slack. LiDAR R-CNN (Li et al. 2021,
"LiDAR R-CNN: An Efficient and Universal 3D Object Detector") closes that gap with a PointNet on the raw points of
each proposal, in the proposal's own frame; its boundary offsets (each point's distance to the six faces) tell the
network the proposal's size, which plain centred coordinates hide. CenterPoint's two-stage variant and PV-RCNN score
the refined box by a predicted IoU, which ranks well-placed boxes above poorly placed ones: what AP at a strict IoU
rewards.

`BoxRefiner` is class-agnostic (the class enters as a one-hot feature). It trains on the first stage's own
proposals plus jittered ground-truth boxes (so it learns from the first step, before the first stage proposes
anything useful); `refinement_targets` matches them to the ground truth. Everything is batched: points are gathered
for all proposals of a batch at once, with no loop over boxes.

With `motion=True` the second stage also says which way each box faces and how fast it moves, two things the first
stage's 1.6 m cells barely see: a direction logit (SECOND's direction classifier: does the box face along its
proposal's heading, or the other way), a moving logit (faster than `MOVING_SPEED`) and the velocity of a moving box in
the proposal's frame. They read the points of the box with their time lag: older sweeps trail a moving object by its
velocity x lag, and the cabin of a car sits nearer its back. The velocity is gated by the moving logit rather than
fitted on every box because most boxes are parked: an L1 fit over all of them learns the median, zero, until the
features tell moving from parked with confidence (it did, at 1,100 steps of the CPU config: docs/benchmarks.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fusion.evaluation.rotated_iou import pair_iou
from fusion.models.bev_grid import BEVGrid
from fusion.models.box_coder import Detections
from fusion.models.camera_to_bev import ImageFeatures

_COLUMN = 1.0  # metres: the x columns that `gather_box_points` sorts points by
_COLUMN_SPAN = 1e5  # metres: more than any y range, so that one sort key orders by column, then by y
_INTENSITY_SCALE = 255.0
MOVING_SPEED = 0.5  # m/s: the moving logit's threshold
_TIME_SCALE = 0.1  # seconds: the time lag over one sweep interval, an extra point feature with `motion`
_POINT_FEATURES = 14  # `point_features` per point
RESIDUAL = ("dx", "dy", "dz", "log_w", "log_l", "log_h", "yaw")  # in the proposal's frame, see `encode_residual`


def wrap_pi(angle: torch.Tensor) -> torch.Tensor:
    """Angle in [-pi, pi)."""
    return (angle + math.pi) % (2 * math.pi) - math.pi


def wrap_half_pi(angle: torch.Tensor) -> torch.Tensor:
    """Angle difference modulo pi, in [-pi/2, pi/2): BEV IoU does not see a box turned by pi."""
    return (angle + math.pi / 2) % math.pi - math.pi / 2


def encode_residual(proposals: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Residual <..., 7> that turns proposals <..., 7> into boxes <..., 7> (x, y, z, w, l, h, yaw): the centre shift
    in the proposal's frame over its BEV diagonal (z over its height), log size ratios, the yaw change modulo pi."""
    c, s = proposals[..., 6].cos(), proposals[..., 6].sin()
    d = boxes[..., :2] - proposals[..., :2]
    diag = proposals[..., 3:5].norm(dim=-1).clamp(min=1e-3)
    return torch.stack(
        [
            (c * d[..., 0] + s * d[..., 1]) / diag,
            (-s * d[..., 0] + c * d[..., 1]) / diag,
            (boxes[..., 2] - proposals[..., 2]) / proposals[..., 5].clamp(min=1e-3),
            *(boxes[..., 3:6].clamp(min=1e-3) / proposals[..., 3:6].clamp(min=1e-3)).log().unbind(-1),
            wrap_half_pi(boxes[..., 6] - proposals[..., 6]),
        ],
        -1,
    )


def decode_residual(proposals: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Inverse of `encode_residual` (up to the pi the yaw keeps from the proposal's heading)."""
    c, s = proposals[..., 6].cos(), proposals[..., 6].sin()
    diag = proposals[..., 3:5].norm(dim=-1)
    lx, ly = residual[..., 0] * diag, residual[..., 1] * diag
    return torch.stack(
        [
            proposals[..., 0] + c * lx - s * ly,
            proposals[..., 1] + s * lx + c * ly,
            proposals[..., 2] + residual[..., 2] * proposals[..., 5],
            *(proposals[..., 3:6] * residual[..., 3:6].clamp(max=3.0).exp()).unbind(-1),
            proposals[..., 6] + residual[..., 6],
        ],
        -1,
    )


def gather_box_points(points: torch.Tensor, point_mask: torch.Tensor, boxes: torch.Tensor, num: int,
                      margin: float = 0.5, scale: float = 1.2,
                      random: bool = False) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Up to `num` points inside each box, enlarged by `scale` and then by `margin` metres per side.

    Args:
        points: <B, N, 5> (x, y, z, intensity, time lag), lidar frame; point_mask <B, N>.
        boxes: <B, K, 7> proposals (x, y, z, w, l, h, yaw).
        random: a random choice of the points of a crowded box (training); False picks a fixed pseudo-random
            subset, so that prediction is deterministic.

    Returns:
        (local <B, K, num, 5>: x, y, z in the box's frame and the intensity and time lag, the box's points of
        highest key first; valid <B, K, num>).

    Only (box, point) pairs whose point lies in the enlarged box's axis-aligned BEV bounding rectangle are tested:
    the points of each sample are sorted once by 1 m column of x, then by y, and the rectangle is one range of them
    per column it spans (`searchsorted`), so the work is the rectangles' points, not boxes x points.
    """
    points, point_mask = _near_any_box(points, point_mask, boxes, margin, scale)
    b, n, _ = points.shape
    k = boxes.shape[1]
    local = points.new_zeros(b * k, num, 5)
    valid = torch.zeros(b * k, num, dtype=torch.bool, device=points.device)
    if random:
        key = torch.rand(b, n, device=points.device, dtype=torch.float32)  # float32: its bits order it below
    else:  # a fixed permutation-like key: the fractional part of i * golden ratio
        key = (torch.arange(n, device=points.device, dtype=torch.float64) * 0.6180339887498949 % 1.0).float()
        key = key.expand(b, n)
    if k and n:
        half = boxes[..., 3:6] * (scale / 2) + margin  # (B, K, 3): w, l, h
        # the enlarged box's axis-aligned BEV half extents (a millimetre wider than exact, so that rounding in the
        # float32 inside test below cannot admit a point the rectangle left out); within the circumcircle's square
        cos, sin = boxes[..., 6].double().cos().abs(), boxes[..., 6].double().sin().abs()
        hw, hl = half[..., 0].double(), half[..., 1].double()
        rx, ry = cos * hl + sin * hw + 1e-3, sin * hl + cos * hw + 1e-3  # (B, K)
        # points sorted by (column of x, y): a box's points lie in one y-range of each column its rectangle spans
        col = (points[..., 0] / _COLUMN).floor().double()
        order_key = (col * _COLUMN_SPAN + points[..., 1].double()).masked_fill(~point_mask, math.inf)
        xs, order = order_key.sort(dim=1)  # (B, N) masked points last, in no range
        cx, cy = boxes[..., 0].double(), boxes[..., 1].double()
        n_cols = int((2 * rx.max() / _COLUMN).ceil()) + 2  # the most columns a box's rectangle spans
        cols = ((cx - rx) / _COLUMN).floor()[..., None] + torch.arange(n_cols, device=points.device)  # (B, K, C)
        spans = (cols * _COLUMN <= (cx + rx)[..., None]).flatten(1)  # (B, K * C) the columns it does span
        lo, hi = (cols * _COLUMN_SPAN + (cy + side * ry)[..., None] for side in (-1, 1))
        first = torch.searchsorted(xs, lo.flatten(1))  # (B, K * C)
        count = ((torch.searchsorted(xs, hi.flatten(1), right=True) - first) * spans).flatten()
        first = first.flatten()
        ranges = torch.repeat_interleave(torch.arange(len(count), device=points.device), count)  # (E,) per pair
        start = (count.cumsum(0) - count).repeat_interleave(count)
        at = first[ranges] + torch.arange(len(ranges), device=points.device) - start  # (E,) in sorted order
        box = ranges // n_cols  # (E,) flat (batch, box)
        row = torch.div(box, k, rounding_mode="floor") * n  # (E,) the pair's sample's first point, flat
        point = row + order.flatten().index_select(0, row + at)  # (E,) the pair's point, flat over (B, N)
        p = points.reshape(-1, 5).index_select(0, point)
        # each box's centre, cos / sin yaw and enlarged half sizes, read once per pair (index_select: rows of a small
        # table; advanced indexing is several times slower here)
        yaw = boxes[..., 6]
        table = torch.stack([boxes[..., 0], boxes[..., 1], boxes[..., 2], yaw.cos(), yaw.sin(), half[..., 0],
                             half[..., 1], half[..., 2]], -1).reshape(-1, 8)  # fmt: skip
        bx = table.index_select(0, box)
        c, s = bx[:, 3], bx[:, 4]
        dx, dy = p[:, 0] - bx[:, 0], p[:, 1] - bx[:, 1]
        lx, ly, lz = c * dx + s * dy, -s * dx + c * dy, p[:, 2] - bx[:, 2]
        inside = ((lx.abs() <= bx[:, 6]) & (ly.abs() <= bx[:, 5]) & (lz.abs() <= bx[:, 7])).nonzero().squeeze(1)
        box = box.index_select(0, inside)
        # each box's points by decreasing key; the first `num` of them are kept. One integer sort key (a radix sort,
        # several times faster than sorting floats): the box, then the key's bits flipped (a float in [0, 1) orders
        # as its bit pattern does)
        bits = key.reshape(-1).index_select(0, point.index_select(0, inside)).view(torch.int32).long()
        rank_order = (box * 2**31 + (0x3F800000 - bits)).argsort(stable=True)
        box = box.index_select(0, rank_order)
        inner = torch.bincount(box, minlength=b * k)  # (B * K,) inside points per box
        rank = torch.arange(len(box), device=points.device) - (inner.cumsum(0) - inner).index_select(0, box)
        keep = (rank < num).nonzero().squeeze(1)
        pick = inside.index_select(0, rank_order.index_select(0, keep))  # (kept,) the kept pairs, in slot order
        pair = torch.stack([lx.index_select(0, pick), ly.index_select(0, pick), lz.index_select(0, pick),
                            p[:, 3].index_select(0, pick), p[:, 4].index_select(0, pick)], 1)  # fmt: skip
        slot = box.index_select(0, keep) * num + rank.index_select(0, keep)
        local.view(-1, 5).index_copy_(0, slot, pair)
        valid.view(-1)[slot] = True
    return local.view(b, k, num, 5), valid.view(b, k, num)


def _near_any_box(points: torch.Tensor, point_mask: torch.Tensor, boxes: torch.Tensor, margin: float, scale: float,
                  cell: float = 1.0, max_reach: float = 15.0) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The points near some (enlarged) box, compacted to the front of <B, N', 5> (N' the most any sample keeps):
    most of a sweep is ground and walls far from every box, and the per-box test costs boxes x points.

    Near: in a `cell`-metre BEV cell that some box's circumcircle (capped at `max_reach` metres) touches. The cells
    are marked by a scatter of each box's window of cells and looked up per point, so the cost is points + boxes x
    window, not points x boxes. A superset of the points inside any box: the exact test follows in the caller."""
    b, n, _ = points.shape
    k = boxes.shape[1]
    if k == 0 or n == 0:
        return points, point_mask
    reach = (boxes[..., 3:5].norm(dim=-1) * (scale / 2) + margin * math.sqrt(2)).clamp(max=max_reach)  # (B, K)
    centre = boxes[..., :2].float()
    lo = (centre - reach[..., None]).amin(1) - cell  # (B, 2) grid origin per sample
    span = (centre + reach[..., None]).amax(1) + cell - lo
    size = (span / cell).ceil().long().amax(0).clamp(min=1)  # (2,) the same grid size for every sample
    gx, gy = int(size[0]), int(size[1])
    w = math.ceil(float(reach.max()) / cell) + 1
    steps = torch.arange(-w, w + 1, device=points.device)
    oy, ox = torch.meshgrid(steps, steps, indexing="ij")
    home = ((centre - lo[:, None]) / cell).floor().long()  # (B, K, 2) the cell of each box centre
    cx, cy = home[..., 0, None] + ox.flatten(), home[..., 1, None] + oy.flatten()  # (B, K, W^2)
    # a cell is marked when its nearest point to the box centre lies within reach (a conservative test)
    near_x = (lo[:, 0, None, None] + cx * cell) - centre[..., 0, None]
    near_x = torch.maximum(near_x, -(near_x + cell)).clamp(min=0)  # distance along x from the centre to the cell
    near_y = (lo[:, 1, None, None] + cy * cell) - centre[..., 1, None]
    near_y = torch.maximum(near_y, -(near_y + cell)).clamp(min=0)
    hit = (near_x**2 + near_y**2 <= reach[..., None] ** 2) & (cx >= 0) & (cx < gx) & (cy >= 0) & (cy < gy)
    batch = torch.arange(b, device=points.device)[:, None, None].expand_as(cx)
    marked = torch.zeros(b, gy * gx, dtype=torch.bool, device=points.device)
    marked[batch[hit], (cy * gx + cx)[hit]] = True
    px = ((points[..., 0] - lo[:, 0, None]) / cell).floor().long()  # (B, N)
    py = ((points[..., 1] - lo[:, 1, None]) / cell).floor().long()
    inside = (px >= 0) & (px < gx) & (py >= 0) & (py < gy)
    flat = py.clamp(0, gy - 1) * gx + px.clamp(0, gx - 1)
    keep = point_mask & inside & marked.gather(1, flat)
    order = masked_first(keep)
    return points.gather(1, order[..., None].expand(-1, -1, points.shape[-1])), keep.gather(1, order)


def masked_first(mask: torch.Tensor) -> torch.Tensor:
    """Indices <B, n> that put each row's True entries of `mask` <B, K> first, in their order, cut to the largest
    count n in the batch (rows with fewer continue with False entries)."""
    n = int(mask.sum(1).max()) if mask.numel() else 0
    return (~mask).to(torch.uint8).argsort(dim=1, stable=True)[:, :n]


def point_features(local: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Per-point inputs <..., 14> of points <..., 5> in the frame of their boxes <..., 7>: coordinates (metres and
    over the half size), the distances to the six faces (LiDAR R-CNN's boundary offsets), intensity and time lag."""
    half = boxes[..., [4, 3, 5]].clamp(min=1e-2) / 2  # (..., 3) half l, w, h along the local x, y, z
    xyz = local[..., :3]
    return torch.cat([xyz, xyz / half, half - xyz, half + xyz, local[..., 3:4] / _INTENSITY_SCALE, local[..., 4:5]],
                     -1)  # fmt: skip


def box_bev_points(boxes: torch.Tensor) -> torch.Tensor:
    """The centre and the four side-face centres <..., 5, 2> of boxes <..., 7> in BEV: where CenterPoint's second
    stage reads the BEV map (front and back along l, the box's local x; left and right along w)."""
    c, s = boxes[..., 6].cos(), boxes[..., 6].sin()
    along = torch.stack([c, s], -1) * boxes[..., 4:5] / 2  # (..., 2) half l along the heading
    across = torch.stack([-s, c], -1) * boxes[..., 3:4] / 2  # (..., 2) half w across it
    centre = boxes[..., :2]
    return torch.stack([centre, centre + along, centre - along, centre + across, centre - across], -2)


def _point_mlp(in_dim: int, dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, dim), nn.LayerNorm(dim), nn.ReLU(),
        nn.Linear(dim, dim), nn.LayerNorm(dim), nn.ReLU(),
        nn.Linear(dim, 2 * dim),
    )  # fmt: skip


@dataclass(frozen=True)
class Refinement:
    """residual <B, K, 7> (see `encode_residual`), iou_logit <B, K>, has_points <B, K>; with motion, direction_logit
    <B, K> (> 0: the box faces along its proposal's heading), moving_logit <B, K> (> 0: faster than `MOVING_SPEED`)
    and velocity <B, K, 2> if it moves, in the proposal's frame (m/s along its heading, across it)."""

    residual: torch.Tensor
    iou_logit: torch.Tensor
    has_points: torch.Tensor
    direction_logit: torch.Tensor | None = None
    moving_logit: torch.Tensor | None = None
    velocity: torch.Tensor | None = None


class BoxRefiner(nn.Module):
    """Proposals <B, K, 7> + their labels + LiDAR points (+ the head's BEV map) -> `Refinement`; `refine` applies it
    to `Detections`.

    With `bev_dim` (and the `grid` of the BEV map), each box also reads the fused BEV map at its centre and its four
    side faces, as CenterPoint's second stage does: the one way the camera informs where a box goes and how it
    scores, since the PointNet sees LiDAR points only. The map is not detached: the second stage's losses also train
    the features (camera lift, trunk, fusion) it reads.

    With `image_dim` (the image encoder's width), each box also reads the image patch tokens where the same five
    points, at the box's centre height, project into the cameras (averaged over the cameras that see a point, with a
    flag for a point no camera sees): the camera's own view of the box's extent, rather than its lift to 1.6 m BEV
    cells. Not detached either: the refinement losses also train the ViT."""

    def __init__(self, num_classes: int = 10, dim: int = 64, num_points: int = 64, margin: float = 0.5,
                 score_power: float = 0.5, iterations: int = 1, bev_dim: int = 0, grid: BEVGrid | None = None,
                 motion: bool = False, image_dim: int = 0):  # fmt: skip
        super().__init__()
        self.num_classes, self.num_points, self.margin, self.score_power = num_classes, num_points, margin, score_power
        self.iterations = iterations
        if bev_dim and grid is None:
            raise ValueError("BoxRefiner(bev_dim=...) needs the grid of the BEV map it samples")
        self.grid = grid
        self.bev = None
        if bev_dim:
            self.bev = nn.Sequential(nn.Linear(5 * bev_dim, dim), nn.LayerNorm(dim), nn.ReLU())
        self.point_mlp = _point_mlp(_POINT_FEATURES + 3 + num_classes, dim)  # point features, log size, class
        # image: the patch tokens projected to dim, then five points' samples and seen flags -> dim
        self.image_proj = nn.Linear(image_dim, dim, bias=False) if image_dim else None
        self.image = nn.Sequential(nn.Linear(5 * (dim + 1), dim), nn.LayerNorm(dim), nn.ReLU()) if image_dim else None
        box_in = 2 * dim + 3 + num_classes + (dim if bev_dim else 0) + (dim if image_dim else 0)
        self.box_mlp = nn.Sequential(nn.Linear(box_in, 2 * dim), nn.ReLU(),
                                     nn.Linear(2 * dim, dim), nn.ReLU())  # fmt: skip
        self.residual = nn.Linear(dim, len(RESIDUAL))
        self.iou = nn.Linear(dim, 1)
        nn.init.zeros_(self.residual.weight)  # starts as the identity: refined = proposal
        nn.init.zeros_(self.residual.bias)
        # motion: a PointNet of its own (the box regression learnt worse sharing one with it), whose points also
        # carry the time lag over _TIME_SCALE; its heads read its max-pool with the box inputs
        self.motion_mlp = _point_mlp(_POINT_FEATURES + 1 + 3 + num_classes, dim) if motion else None
        self.motion_box = nn.Sequential(nn.Linear(2 * dim + 3 + num_classes, dim), nn.ReLU()) if motion else None
        self.direction = nn.Linear(dim, 1) if motion else None
        self.moving = nn.Linear(dim, 1) if motion else None
        self.velocity = nn.Linear(dim, 2) if motion else None

    @staticmethod
    def _pointnet(mlp: nn.Sequential, feats: torch.Tensor, box: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        """Max-pool per box of `mlp` on the gathered points' features <n, F> with their box's inputs <B * K, C>:
        <B * K, 2 dim> (0 for a box without a point). The first layer's box half (the same for all of a box's points)
        runs once per box."""
        first = mlp[0]
        w_point, w_box = first.weight.split([feats.shape[1], box.shape[1]], 1)
        # index_select, not [owner]: the gradient of an index with repeats is an index_put that adds float atomics
        # from both threads in whatever order they land (a busy machine changed the weights); index_add's is fixed
        h = mlp[1:](F.linear(feats, w_point) + F.linear(box, w_box, first.bias).index_select(0, owner))  # (n, 2 dim)
        return h.new_zeros(len(box), h.shape[1]).scatter_reduce(0, owner[:, None].expand_as(h), h, "amax",
                                                                include_self=False)  # fmt: skip

    def forward(self, points: torch.Tensor, point_mask: torch.Tensor, proposals: torch.Tensor, labels: torch.Tensor,
                bev: torch.Tensor | None = None, images: ImageFeatures | None = None) -> Refinement:  # fmt: skip
        """Points <B, N, 5> + mask <B, N>, proposals <B, K, 7> (detached: no gradient flows back into the first
        stage through the boxes) and their labels <B, K>; `bev` <B, C, Y, X> the map to sample, when it reads one;
        `images` the patch tokens to sample, when it reads them."""
        proposals = proposals.detach()
        if self.bev is not None and bev is None:
            raise ValueError("this BoxRefiner reads the BEV map (bev_dim > 0): pass the head's `features`")
        if self.image is not None and images is None:
            raise ValueError("this BoxRefiner reads the image patches (image_dim > 0): pass the head's `images`")
        with torch.no_grad():
            local, valid = gather_box_points(points, point_mask, proposals, self.num_points, self.margin,
                                             random=self.training)  # fmt: skip
        box = torch.cat(
            [
                proposals[..., 3:6].clamp(min=1e-2).log(),
                F.one_hot(labels.clamp(0, self.num_classes - 1), self.num_classes).to(local.dtype),
            ],
            -1,
        )  # (B, K, 13)
        # The MLP runs on the gathered points only, not on every slot; then a max-pool per box (PointNet).
        b, k, _, _ = local.shape
        owner, slot = valid.flatten(0, 1).nonzero(as_tuple=True)  # (n,) flat (batch, box) and slot of each point
        gathered = local.flatten(0, 1)[owner, slot]
        feats = point_features(gathered, proposals.flatten(0, 1)[owner])  # (n, 14)
        x = self._pointnet(self.point_mlp, feats, box.flatten(0, 1), owner).view(b, k, -1)
        has_points = valid.any(-1)
        parts = [x, box]
        if self.bev is not None:  # (B, K, 5, C) -> (B, K, dim)
            parts.append(self.bev(self.grid.sample(bev, box_bev_points(proposals)).flatten(-2).to(x.dtype)))
        if self.image is not None:  # five points at the box's centre height, in every camera -> (B, K, dim)
            xyz = torch.cat([box_bev_points(proposals), proposals[..., None, 2:3].expand(-1, -1, 5, 1)], -1)
            sampled, seen = images.sample(xyz, self.image_proj(images.patches))  # (B, K, 5, dim), (B, K, 5)
            parts.append(self.image(torch.cat([sampled, (seen > 0)[..., None].to(sampled.dtype)], -1).flatten(-2)))
        h = self.box_mlp(torch.cat(parts, -1))
        motion = {}
        if self.motion_mlp is not None:
            lag = torch.cat([feats, gathered[:, 4:5] / _TIME_SCALE], 1)
            m = self._pointnet(self.motion_mlp, lag, box.flatten(0, 1), owner).view(b, k, -1)
            m = self.motion_box(torch.cat([m, box], -1))
            motion = {"direction_logit": self.direction(m).squeeze(-1), "moving_logit": self.moving(m).squeeze(-1),
                      "velocity": self.velocity(m)}  # fmt: skip
        return Refinement(residual=self.residual(h), iou_logit=self.iou(h).squeeze(-1), has_points=has_points,
                          **motion)  # fmt: skip

    def training_loss(self, points: torch.Tensor, point_mask: torch.Tensor, det: Detections, gt: torch.Tensor,
                      gt_labels: torch.Tensor, gt_mask: torch.Tensor, num_jitter: int = 32, jitter_spread: float = 0.0,
                      jitter_size: float = 0.1, bev: torch.Tensor | None = None,
                      gt_velocity: torch.Tensor | None = None, passes: int = 1,
                      images: ImageFeatures | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
        """The refinement losses on the first stage's detections `det` (all of them: decode with the number of
        proposals wanted and no score threshold) plus `num_jitter` ground-truth boxes per sample jittered by
        `jitter_boxes` (sizes by `jitter_size`, per-box levels by `jitter_spread`), drawn with replacement (none for
        a sample without a box). A refiner with motion needs `gt_velocity` <B, M, 2>.

        With `passes` > 1 the refiner also trains on its own refined boxes: each further pass starts from the last
        one's boxes (detached, as at prediction) and adds its losses; the result is the mean over the passes. The
        later passes are what prediction's second and third passes start from: boxes a few centimetres off, which
        the jitter covers only sparsely."""
        b = gt.shape[0]
        if gt.shape[1] and num_jitter:
            weights = gt_mask.float() + 1e-6  # a sample without a box draws padding, masked out below
            pick = torch.multinomial(weights, num_jitter, replacement=True)  # (B, J)
            jittered = jitter_boxes(gt.gather(1, pick[..., None].expand(-1, -1, 7)), size=jitter_size,
                                    spread=jitter_spread)  # fmt: skip
            if self.direction is not None:  # half of them turned by pi (same IoU), else every one faces the right way
                turn = torch.rand(jittered.shape[:2], device=gt.device) < 0.5
                jittered = torch.cat([jittered[..., :6], jittered[..., 6:] + math.pi * turn[..., None]], -1)
            proposals = torch.cat([det.boxes, jittered], 1)
            labels = torch.cat([det.labels, gt_labels.gather(1, pick).clamp(min=0)], 1)
            mask = torch.cat([torch.ones_like(det.labels, dtype=torch.bool), gt_mask.gather(1, pick)], 1)
        else:
            proposals, labels = det.boxes, det.labels
            mask = torch.ones(b, det.boxes.shape[1], dtype=torch.bool, device=gt.device)
        if self.direction is not None and gt_velocity is None:
            raise ValueError("a BoxRefiner with motion trains on the ground truth's velocity: pass gt_velocity")
        if passes < 1:
            raise ValueError(f"BoxRefiner.training_loss: passes must be at least 1, got {passes}")
        gt_mask = gt_mask & (gt_labels >= 0)
        gt_velocity = gt_velocity if self.direction is not None else None
        losses: dict[str, torch.Tensor] = {}
        for i in range(passes):
            r = self(points, point_mask, proposals, labels, bev, images)
            for name, value in refinement_loss(r, refinement_targets(proposals, mask, gt, gt_mask,
                                                                      gt_velocity=gt_velocity)).items():  # fmt: skip
                losses[name] = losses.get(name, 0) + value / passes
            if i + 1 < passes:  # the next pass starts where this one put the boxes (a box without a point stays)
                proposals = torch.where(r.has_points[..., None], decode_residual(proposals, r.residual),
                                        proposals).detach()  # fmt: skip
        return losses

    @torch.no_grad()
    def refine(self, det: Detections, points: torch.Tensor, point_mask: torch.Tensor,
               bev: torch.Tensor | None = None, images: ImageFeatures | None = None) -> Detections:  # fmt: skip
        """Refined boxes, `iterations` times (each pass starts from the last one's boxes, as Cascade R-CNN's stages but
        with shared weights), scored first-stage score^(1 - p) * the last pass's predicted IoU^p (p = `score_power`).
        A box without a point keeps its box; its score is scaled by the predicted IoU all the same. A sample without
        any point (camera-only input) keeps the first stage's boxes and scores. Only the boxes of `det.mask` (above
        the first stage's score threshold: what prediction keeps) are refined; the others keep the first stage's.
        With motion, a refined box with points is turned by pi where the last pass's direction logit is negative,
        and takes that pass's velocity (turned from its input box's frame into the lidar frame) if its moving logit is
        positive, else zero."""
        idx = masked_first(det.mask)  # (B, k) the masked boxes of each sample first
        if idx.shape[1] == 0:
            return det
        first = det.boxes.gather(1, idx[..., None].expand(-1, -1, 7))
        labels, scores = det.labels.gather(1, idx), det.scores.gather(1, idx)
        boxes = first
        for _ in range(self.iterations):
            r = self(points, point_mask, boxes, labels, bev, images)
            inputs = boxes
            boxes = torch.where(r.has_points[..., None], decode_residual(boxes, r.residual), boxes)
        rescored = scores ** (1 - self.score_power) * r.iou_logit.sigmoid() ** self.score_power
        keep = det.mask.gather(1, idx) & point_mask.any(-1)[:, None]  # camera-only samples keep the first stage's
        velocity = det.velocity
        if r.direction_logit is not None:
            moved = keep & r.has_points  # boxes the last pass saw points of
            turn = moved & (r.direction_logit < 0)
            yaw = boxes[..., 6:].where(~turn[..., None], wrap_pi(boxes[..., 6:] + math.pi))
            boxes = torch.cat([boxes[..., :6], yaw], -1)
            c, s = inputs[..., 6].cos(), inputs[..., 6].sin()
            vx, vy = (r.velocity * (r.moving_logit > 0)[..., None]).unbind(-1)
            lidar = torch.stack([c * vx - s * vy, s * vx + c * vy], -1).to(velocity.dtype)
            old = velocity.gather(1, idx[..., None].expand(-1, -1, 2))
            velocity = velocity.scatter(1, idx[..., None].expand(-1, -1, 2), lidar.where(moved[..., None], old))
        boxes = torch.where(keep[..., None], boxes, first)
        rescored = rescored.where(keep, scores)
        out_boxes = det.boxes.scatter(1, idx[..., None].expand(-1, -1, 7), boxes)
        return replace(det, boxes=out_boxes, scores=det.scores.scatter(1, idx, rescored), velocity=velocity)


def jitter_boxes(boxes: torch.Tensor, centre: float = 0.4, size: float = 0.1, yaw: float = 0.15,
                 spread: float = 0.0) -> torch.Tensor:  # fmt: skip
    """Ground-truth boxes <..., 7> moved by N(0, centre) metres per axis (at most 2.5 sigma), scaled by
    exp(N(0, size)) and turned by N(0, yaw) radians: the kind of proposal the first stage makes (and, with `spread`,
    the nearly-right boxes that a second refinement pass starts from)."""
    noise = torch.randn(*boxes.shape[:-1], 7, device=boxes.device).clamp(-2.5, 2.5)
    if spread:  # a per-box noise level in [1 - spread, 1 + spread]: coarse proposals and nearly-right ones
        noise = noise * (1 + spread * (2 * torch.rand(*boxes.shape[:-1], 1, device=boxes.device) - 1))
    return torch.cat(
        [
            boxes[..., :2] + noise[..., :2] * centre,
            boxes[..., 2:3] + noise[..., 2:3] * centre / 2,
            boxes[..., 3:6] * (noise[..., 3:6] * size).exp(),
            boxes[..., 6:7] + noise[..., 6:7] * yaw,
        ],
        -1,
    )


@dataclass(frozen=True)
class RefinementTargets:
    """residual <B, K, 7> towards each proposal's matched box; iou <B, K> the proposal's BEV IoU with it;
    regress <B, K> (IoU above the regression threshold) and mask <B, K> (a real proposal); given the ground truth's
    velocity, also direction <B, K> (1: the matched box faces along the proposal's heading, 0: against it) and
    velocity <B, K, 2> (the matched box's, in the proposal's frame; it moves if faster than `MOVING_SPEED`)."""

    residual: torch.Tensor
    iou: torch.Tensor
    regress: torch.Tensor
    mask: torch.Tensor
    direction: torch.Tensor | None = None
    velocity: torch.Tensor | None = None


def refinement_targets(proposals: torch.Tensor, proposal_mask: torch.Tensor, gt: torch.Tensor, gt_mask: torch.Tensor,
                       regress_iou: float = 0.3,
                       gt_velocity: torch.Tensor | None = None) -> RefinementTargets:  # fmt: skip
    """Match each proposal <B, K, 7> to the ground-truth box <B, M, 7> with the nearest centre and measure their BEV
    IoU (the evaluation's rotated IoU); with `gt_velocity` <B, M, 2>, also the direction and velocity targets."""
    b, k, _ = proposals.shape
    if gt.shape[1] == 0:
        zeros = proposals.new_zeros(b, k)
        motion = {}
        if gt_velocity is not None:
            motion = {"direction": zeros, "velocity": proposals.new_zeros(b, k, 2)}
        return RefinementTargets(proposals.new_zeros(b, k, 7), zeros, zeros.bool(), proposal_mask, **motion)
    dist = torch.cdist(proposals[..., :2].float(), gt[..., :2].float())  # (B, K, M)
    dist = dist.masked_fill(~gt_mask[:, None], float("inf"))
    nearest = dist.argmin(-1)  # (B, K)
    matched = gt.gather(1, nearest[..., None].expand(-1, -1, 7))  # (B, K, 7)
    has_gt = gt_mask.any(-1, keepdim=True).expand(-1, k)
    p = proposals.detach().double().cpu().numpy().reshape(-1, 7)
    g = matched.detach().double().cpu().numpy().reshape(-1, 7)
    bev, _ = pair_iou(p[:, :3], p[:, 3:6], p[:, 6], g[:, :3], g[:, 3:6], g[:, 6])
    iou = torch.from_numpy(np.nan_to_num(bev)).view(b, k).to(proposals.device, proposals.dtype)
    iou = iou * has_gt * proposal_mask
    motion = {}
    if gt_velocity is not None:
        yaw = proposals[..., 6]
        v = gt_velocity.gather(1, nearest[..., None].expand(-1, -1, 2)).to(proposals.dtype)  # (B, K, 2)
        c, s = yaw.cos(), yaw.sin()
        motion = {
            "direction": ((matched[..., 6] - yaw).cos() > 0).to(proposals.dtype),
            "velocity": torch.stack([c * v[..., 0] + s * v[..., 1], -s * v[..., 0] + c * v[..., 1]], -1),
        }
    return RefinementTargets(residual=encode_residual(proposals, matched), iou=iou,
                             regress=(iou >= regress_iou) & proposal_mask, mask=proposal_mask, **motion)  # fmt: skip


def refinement_loss(r: Refinement, targets: RefinementTargets,
                    velocity_weight: float = 0.2) -> dict[str, torch.Tensor]:  # fmt: skip
    """Smooth-L1 on the residuals of the proposals that overlap a box; binary cross-entropy of the predicted IoU
    against PV-RCNN's quality target clip(2 IoU - 0.5, 0, 1) on every proposal. With motion, on the proposals that
    overlap a box: binary cross-entropy of the direction and of moving; on those whose box moves, L1 on the velocity
    (m/s, weighted `velocity_weight`, CenterPoint's weight on velocity)."""
    regress = targets.regress.float()
    reg = F.smooth_l1_loss(r.residual, targets.residual, beta=0.05, reduction="none").sum(-1)
    regression = (reg * regress).sum() / regress.sum().clamp(min=1)
    quality = (2 * targets.iou - 0.5).clamp(0, 1)
    mask = targets.mask.float()
    bce = F.binary_cross_entropy_with_logits(r.iou_logit, quality, reduction="none")
    score = (bce * mask).sum() / mask.sum().clamp(min=1)
    losses = {"refine_regression": regression, "refine_score": score}
    if r.direction_logit is not None:
        if targets.direction is None:
            raise ValueError("a refinement with motion needs motion targets: refinement_targets(..., gt_velocity=...)")
        n = regress.sum().clamp(min=1)
        direction = F.binary_cross_entropy_with_logits(r.direction_logit, targets.direction, reduction="none")
        losses["refine_direction"] = (direction * regress).sum() / n
        moving = targets.velocity.norm(dim=-1) > MOVING_SPEED
        bce = F.binary_cross_entropy_with_logits(r.moving_logit, moving.to(r.moving_logit.dtype), reduction="none")
        losses["refine_moving"] = (bce * regress).sum() / n
        moving = regress * moving
        velocity = (r.velocity - targets.velocity).abs().sum(-1)
        losses["refine_velocity"] = velocity_weight * (velocity * moving).sum() / moving.sum().clamp(min=1)
    return losses
