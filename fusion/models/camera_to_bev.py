"""Lift camera patch features to the BEV grid, Simple-BEV style (Harley et al. 2023, "Simple-BEV").

Every BEV cell is sampled at a few heights; each 3D point is projected into every camera with `cam_from_lidar` and
the intrinsics, the patch features are sampled bilinearly there, and the samples are averaged over the (camera, height)
pairs that see the point: camera present, in front of the camera, inside the image. No depth estimate is needed, which
is why we chose it over LSS. Only the pairs that see each other are sampled (a point is in about one of the six
images), and each cell's mean is one weighted bag (`F.embedding_bag`) of its pairs' four bilinear taps, read from the
small patch table: about a sixth of the work of `F.grid_sample` over every camera, with no per-tap tensor.

With `depth_bins` > 0 the lift also estimates depth, BEVDepth style (Li et al. 2023): a linear layer gives every patch
a categorical distribution over depth bins, each tap is weighted by the probability of its sample point's depth bin
(features go where the camera believes the surface is, not all along the ray), the expected probability is a feature
of its own, and `depth_loss` supervises the distribution with the nearest LiDAR return in each patch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fusion.models.bev_grid import DEFAULT_GRID, BEVGrid

_MIN_DEPTH = 0.1  # metres in front of the camera


def to_pixels(cam_from_lidar: torch.Tensor, intrinsics: torch.Tensor,
              xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Points <B, N, 3> of the lidar frame in every camera <B, C, 4, 4> / <B, C, 3, 3>: pixel coordinates <B, C, N, 2>
    (divided by the depth clamped at `_MIN_DEPTH`) and depth <B, C, N>."""
    cam = torch.einsum("bcij,bnj->bcni", cam_from_lidar[..., :3, :3], xyz) + cam_from_lidar[..., None, :3, 3]
    depth = cam[..., 2]
    uvw = torch.einsum("bcij,bcnj->bcni", intrinsics, cam)
    return uvw[..., :2] / depth.clamp(min=_MIN_DEPTH)[..., None], depth


def in_view(uv: torch.Tensor, depth: torch.Tensor, image_hw: tuple[int, int],
            camera_mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Which projections <B, C, P> (`to_pixels`) a camera sees: present, in front of it, inside its image."""
    height, width = image_hw
    inside = (uv[..., 0] >= 0) & (uv[..., 0] < width) & (uv[..., 1] >= 0) & (uv[..., 1] < height)
    return inside & (depth > _MIN_DEPTH) & camera_mask[..., None]


@dataclass(frozen=True)
class ImageFeatures:
    """The image encoder's patch tokens <B, C, h, w, D> and what projects a lidar-frame point into them:
    cam_from_lidar <B, C, 4, 4>, intrinsics <B, C, 3, 3> (pixels of the h x w grid of `patch`-pixel patches) and
    camera_mask <B, C>. What the second stage samples at each box (`BoxRefiner`, image_dim)."""

    patches: torch.Tensor
    cam_from_lidar: torch.Tensor
    intrinsics: torch.Tensor
    camera_mask: torch.Tensor
    patch: int

    def __getitem__(self, index: slice) -> ImageFeatures:
        """The samples `index` (a slice of the batch)."""
        return ImageFeatures(self.patches[index], self.cam_from_lidar[index], self.intrinsics[index],
                             self.camera_mask[index], self.patch)  # fmt: skip

    def sample(self, xyz: torch.Tensor, table: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Bilinear samples of the patch tokens (or of `table` <B, C, h, w, D'>, e.g. a projection of them) at
        lidar-frame points <B, ..., 3>, averaged over the cameras that see each point (present, in front of it,
        inside its image): <B, ..., D> (0 where none does) and that count <B, ...>. A patch's value is at its centre;
        taps beyond the patch grid read 0, as in `CameraToBEV`."""
        table = self.patches if table is None else table
        b, c, h, w, d = table.shape
        shape = xyz.shape[:-1]
        uv, depth = to_pixels(self.cam_from_lidar, self.intrinsics, xyz.reshape(b, -1, 3))  # (B, C, P, 2), (B, C, P)
        seen = in_view(uv, depth, (h * self.patch, w * self.patch), self.camera_mask)
        size = uv.new_tensor([w * self.patch, h * self.patch])
        grid = (uv / size * 2 - 1).flatten(0, 1)[:, None].to(table.dtype)  # (B * C, 1, P, 2)
        taps = F.grid_sample(table.flatten(0, 1).permute(0, 3, 1, 2), grid, align_corners=False)  # (B * C, D, 1, P)
        taps = taps.view(b, c, d, -1) * seen[:, :, None]
        count = seen.sum(1)  # (B, P)
        mean = taps.sum(1).transpose(1, 2) / count.clamp(min=1)[..., None]  # (B, P, D)
        return mean.reshape(*shape, d), count.reshape(shape)


class CameraToBEV(nn.Module):
    """Patch tokens <B, C, h, w, in_dim> -> camera BEV <B, out_dim, Y, X> and its validity <B, Y, X>."""

    def __init__(self, in_dim: int, out_dim: int, grid: BEVGrid = DEFAULT_GRID, heights: int = 4, patch: int = 16,
                 depth_bins: int = 0, depth_max: float = 60.0):  # fmt: skip
        super().__init__()
        self.grid, self.patch = grid, patch
        z0, z1 = grid.z_range
        zs = torch.linspace(z0, z1, heights + 2)[1:-1] if heights > 1 else torch.tensor([(z0 + z1) / 2])
        centres = grid.cell_centres()  # (Y, X, 2)
        y, x = centres.shape[:2]
        xyz = torch.cat([centres[:, :, None].expand(y, x, len(zs), 2), zs.view(1, 1, -1, 1).expand(y, x, -1, 1)], -1)
        self.register_buffer("points", xyz.reshape(-1, 3), persistent=False)  # (P = Y * X * Z, 3), lidar frame
        self.heights = len(zs)
        self.proj = nn.Sequential(nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim))
        self.depth_bins, self.depth_max = depth_bins, depth_max  # bins of depth_max / depth_bins metres from 0
        self.depth = nn.Linear(in_dim, depth_bins) if depth_bins else None
        self.occupancy = nn.Parameter(torch.zeros(out_dim)) if depth_bins else None  # x the expected probability

    def depth_logits(self, patches: torch.Tensor) -> torch.Tensor | None:
        """Depth-bin logits <B, C, h, w, K> of the patch tokens <B, C, h, w, in_dim>; None without `depth_bins`."""
        return None if self.depth is None else self.depth(patches)

    def depth_bin(self, depth: torch.Tensor) -> torch.Tensor:
        """The bin of each depth in metres (the last bin holds everything beyond `depth_max`)."""
        width = self.depth_max / self.depth_bins
        return (depth / width).floor().long().clamp(0, self.depth_bins - 1)

    def depth_targets(self, points: torch.Tensor, point_mask: torch.Tensor, cam_from_lidar: torch.Tensor,
                      intrinsics: torch.Tensor, camera_mask: torch.Tensor,
                      hw: tuple[int, int]) -> torch.Tensor:  # fmt: skip
        """The depth bin of the nearest LiDAR return of the newest sweep in each patch <B, C, h, w>; -1 where the
        patch holds none (older sweeps smear moving objects). `hw` is the patch grid."""
        b, c = camera_mask.shape
        h, w = hw
        current = point_mask & (points[..., 4].abs() < 1e-3)  # (B, N)
        uv, depth = to_pixels(cam_from_lidar, intrinsics, points[..., :3])  # (B, C, N, 2), (B, C, N)
        px, py = (uv[..., 0] / self.patch).floor(), (uv[..., 1] / self.patch).floor()
        ok = (px >= 0) & (px < w) & (py >= 0) & (py < h) & (depth > _MIN_DEPTH)
        ok = ok & current[:, None] & camera_mask[..., None]
        bc = torch.arange(b * c, device=points.device).view(b, c, 1)
        flat = ((bc * h + py.long().clamp(0, h - 1)) * w + px.long().clamp(0, w - 1))[ok]
        nearest = torch.full((b * c * h * w,), float("inf"), device=points.device)
        nearest = nearest.scatter_reduce(0, flat, depth[ok].float(), reduce="amin")
        target = torch.where(nearest.isfinite(), self.depth_bin(nearest.clamp(max=1e6)), -1)
        return target.view(b, c, h, w)

    def depth_loss(self, logits: torch.Tensor, points: torch.Tensor, point_mask: torch.Tensor,
                   cam_from_lidar: torch.Tensor, intrinsics: torch.Tensor,
                   camera_mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """Cross-entropy of the depth logits <B, C, h, w, K> at the patches a LiDAR return supervises (0 if none)."""
        target = self.depth_targets(points, point_mask, cam_from_lidar, intrinsics, camera_mask, logits.shape[2:4])
        keep = target >= 0
        if not keep.any():
            return logits.sum() * 0.0  # keeps the graph connected: camera-only or LiDAR-only batches
        return F.cross_entropy(logits[keep].float(), target[keep])

    def project(self, cam_from_lidar: torch.Tensor, intrinsics: torch.Tensor, image_hw: tuple[int, int],
                camera_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """Pixel coordinates <B, C, P, 2> of the sample points in every camera, their validity and depth <B, C, P>."""
        pts = self.points.expand(len(cam_from_lidar), -1, -1)
        uv, depth = to_pixels(cam_from_lidar, intrinsics, pts)  # (B, C, P, 2) pixels of the resized image, (B, C, P)
        return uv, in_view(uv, depth, image_hw, camera_mask), depth

    def forward(self, patches: torch.Tensor, cam_from_lidar: torch.Tensor, intrinsics: torch.Tensor,
                camera_mask: torch.Tensor,
                depth_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """`depth_logits` (`depth_logits(patches)`, required with `depth_bins`) weight each tap by the probability of
        its sample point's depth bin."""
        # The projection's matrix commutes with the bilinear sampling (zero padding included) and with the average
        # below, so it runs first, on the few patch tokens, and the sampling moves out_dim channels instead of
        # in_dim; its bias and the norm follow the average.
        linear = self.proj[0]
        patches = F.linear(patches, linear.weight)  # (B, C, h, w, D)
        b, c, h, w, dim = patches.shape
        uv, valid, depth = self.project(cam_from_lidar, intrinsics, (h * self.patch, w * self.patch), camera_mask)
        # Only the (camera, point) pairs that see each other are sampled: about one camera per point, not six. Pairs
        # come out cell-major (points are cell-major, heights inner; cameras innermost here), so each cell's pairs are
        # one contiguous bag.
        bi, pi, ci = valid.transpose(1, 2).nonzero(as_tuple=True)  # (n,) each
        px = uv[bi, ci, pi] / self.patch - 0.5  # (n, 2) in patch units; patch centres at integers
        corner = px.floor()
        frac = px - corner
        corner = corner.long()
        dx, dy = torch.tensor([0, 1, 0, 1], device=px.device), torch.tensor([0, 0, 1, 1], device=px.device)
        x, y = corner[:, :1] + dx, corner[:, 1:] + dy  # (n, 4) the four bilinear taps of every pair
        weight = torch.where(dx.bool(), frac[:, :1], 1 - frac[:, :1]) * torch.where(
            dy.bool(), frac[:, 1:], 1 - frac[:, 1:]
        )
        weight = weight * ((x >= 0) & (x < w) & (y >= 0) & (y < h))  # zero padding outside the patch grid
        index = ((bi * c + ci)[:, None] * h + y.clamp(0, h - 1)) * w + x.clamp(0, w - 1)  # (n, 4) patch rows
        y_, x_ = self.grid.ny, self.grid.nx
        cell = bi * (y_ * x_) + pi // self.heights  # (n,) flat (batch, cell), non-decreasing
        count = torch.bincount(cell, minlength=b * y_ * x_)  # (B * Y * X,) pairs per cell
        # The mean over each cell's pairs as one weighted bag of its 4 x count taps: the taps are read from the small
        # patch table and summed in place, never materialised as a <4n, D> tensor.
        if self.depth is not None:  # each tap x the probability of the pair's depth bin at that patch
            if depth_logits is None:
                raise ValueError("CameraToBEV with depth_bins needs depth_logits (from depth_logits(patches))")
            prob = depth_logits.softmax(-1).reshape(-1, self.depth_bins)  # (B * C * h * w, K)
            weight = weight * prob[index, self.depth_bin(depth[bi, ci, pi])[:, None]]
        share = (weight / count[cell, None]).to(patches.dtype)
        offsets = 4 * (count.cumsum(0) - count)  # (B * Y * X,) where each cell's taps start
        mean = F.embedding_bag(index.flatten(), patches.reshape(-1, dim), offsets, mode="sum",
                               per_sample_weights=share.flatten()) + linear.bias  # fmt: skip
        seen = count > 0
        out = self.proj[1](mean)
        if self.occupancy is not None:  # the expected depth probability of each cell's pairs, as a feature
            expected = torch.zeros(b * y_ * x_, device=share.device, dtype=share.dtype).index_add(0, cell, share.sum(1))
            out = out + expected[:, None].to(out.dtype) * self.occupancy
        out = out * seen[:, None]  # (B * Y * X, D), zero where no camera sees
        return out.view(b, y_, x_, dim).permute(0, 3, 1, 2).contiguous(), seen.view(b, y_, x_)
