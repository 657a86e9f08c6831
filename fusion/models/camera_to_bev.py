"""Lift camera patch features to the BEV grid, Simple-BEV style (Harley et al. 2023, "Simple-BEV").

Every BEV cell is sampled at a few heights; each 3D point is projected into every camera with `cam_from_lidar` and
the intrinsics, the patch features are sampled bilinearly there (`F.grid_sample`), and the samples are averaged over
the (camera, height) pairs that see the point: camera present, in front of the camera, inside the image. No depth
estimate is needed, which is why we chose it over LSS: on a CPU budget it costs one gather per camera and height.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fusion.models.bev_grid import DEFAULT_GRID, BEVGrid

_MIN_DEPTH = 0.1  # metres in front of the camera


class CameraToBEV(nn.Module):
    """Patch tokens <B, C, h, w, in_dim> -> camera BEV <B, out_dim, Y, X> and its validity <B, Y, X>."""

    def __init__(self, in_dim: int, out_dim: int, grid: BEVGrid = DEFAULT_GRID, heights: int = 4, patch: int = 16):
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

    def project(self, cam_from_lidar: torch.Tensor, intrinsics: torch.Tensor, image_hw: tuple[int, int],
                camera_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Pixel coordinates <B, C, P, 2> of the sample points in every camera and their validity <B, C, P>."""
        pts = self.points
        cam = torch.einsum("bcij,pj->bcpi", cam_from_lidar[..., :3, :3], pts) + cam_from_lidar[..., None, :3, 3]
        depth = cam[..., 2]  # (B, C, P)
        uvw = torch.einsum("bcij,bcpj->bcpi", intrinsics, cam)
        uv = uvw[..., :2] / depth.clamp(min=_MIN_DEPTH)[..., None]  # (B, C, P, 2) pixels of the resized image
        height, width = image_hw
        inside = (uv[..., 0] >= 0) & (uv[..., 0] < width) & (uv[..., 1] >= 0) & (uv[..., 1] < height)
        valid = inside & (depth > _MIN_DEPTH) & camera_mask[..., None]
        return uv, valid

    def forward(self, patches: torch.Tensor, cam_from_lidar: torch.Tensor, intrinsics: torch.Tensor,
                camera_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        # The projection's matrix commutes with the bilinear sampling (zero padding included) and with the average
        # below, so it runs first, on the few patch tokens, and the sampling moves out_dim channels instead of
        # in_dim; its bias and the norm follow the average.
        linear = self.proj[0]
        patches = F.linear(patches, linear.weight)  # (B, C, h, w, out_dim)
        b, c, h, w, dim = patches.shape
        height, width = h * self.patch, w * self.patch  # the image area the patch grid covers
        uv, valid = self.project(cam_from_lidar, intrinsics, (height, width), camera_mask)
        # grid_sample with align_corners=False maps -1 / +1 to the outer edges of the patch grid = image pixels 0 / W
        norm = torch.stack([uv[..., 0] / width, uv[..., 1] / height], dim=-1) * 2 - 1  # (B, C, P, 2)
        feats = patches.permute(0, 1, 4, 2, 3).reshape(b * c, dim, h, w)  # (B*C, D, h, w)
        sampled = F.grid_sample(feats, norm.reshape(b * c, 1, -1, 2), mode="bilinear", align_corners=False)
        sampled = sampled.reshape(b, c, dim, -1) * valid[:, :, None]  # (B, C, D, P), zero where unseen
        y, x = self.grid.ny, self.grid.nx
        total = sampled.sum(1).reshape(b, dim, y, x, self.heights).sum(-1)  # (B, D, Y, X)
        count = valid.sum(1).reshape(b, y, x, self.heights).sum(-1)  # (B, Y, X)
        mean = total / count.clamp(min=1)[:, None]
        seen = count > 0
        out = (
            self.proj[1](mean.permute(0, 2, 3, 1) + linear.bias) * seen[..., None]
        )  # (B, Y, X, out_dim), zero where unseen
        return out.permute(0, 3, 1, 2).contiguous(), seen
