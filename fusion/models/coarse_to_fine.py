"""Run the trunk and the fusion on a coarser BEV grid, and come back to the full grid with a skip connection.

Attention cost grows with the number of cells, the encoders' does not: pooling the modality maps `stride x stride`
before the shared trunk and the heterogeneous fusion divides their cost by stride^2, while the windows (in cells)
cover stride^2 times the area. The fused map is brought back to the full grid (nearest neighbour) and a linear skip of
the full-resolution modality maps (their mean over the modalities present at each cell) adds the detail back, as in a
U-Net / FPN; the detection head then works at the full resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def masked_avg_pool(x: torch.Tensor, valid: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BEV map <B, C, Y, X> and its valid cells <B, Y, X> -> the mean of the valid cells of each stride x stride block
    <B, C, Y/s, X/s> and the blocks holding one <B, Y/s, X/s>."""
    w = valid[:, None].to(x.dtype)  # (B, 1, Y, X)
    total = F.avg_pool2d(x * w, stride)  # (B, C, Y/s, X/s): mean over the block, invalid cells as zero
    share = F.avg_pool2d(w, stride)  # (B, 1, Y/s, X/s): the valid fraction of the block
    return total / share.clamp(min=1e-6), share[:, 0] > 0


class CoarseToFine(nn.Module):
    """`down` before the trunk and fusion, `up` after them; `stride` 1 is the identity (no skip weights)."""

    def __init__(self, dim: int, stride: int = 2):
        super().__init__()
        if stride < 1:
            raise ValueError(f"fusion stride must be >= 1, got {stride}")
        self.stride = stride
        self.skip = nn.Conv2d(dim, dim, 1) if stride > 1 else None

    def down(self, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (x, valid) if self.stride == 1 else masked_avg_pool(x, valid, self.stride)

    def up(self, fused: torch.Tensor, full: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]) -> torch.Tensor:
        """fused <B, C, Y/s, X/s>; full: <B, C, Y, X> per node type (zero at invalid cells); valid <B, Y, X> per type.
        Returns <B, C, Y, X>."""
        if self.stride == 1:
            return fused
        fine = fused.repeat_interleave(self.stride, 2).repeat_interleave(self.stride, 3)  # (B, C, Y, X)
        count = sum(v.to(fused.dtype) for v in valid.values()).clamp(min=1)[:, None]  # (B, 1, Y, X)
        return fine + self.skip(sum(full.values()) / count)


class SpaceToDepth(nn.Module):
    """The LiDAR map from the point encoder's fine grid to the coarser grid every later stage works on (`bev_stride`):
    each coarse cell stacks its stride x stride fine cells as channels (`F.pixel_unshuffle`), and a linear layer mixes
    them back to `dim`. Unlike pooling, it keeps where in the coarse cell the points lie, which the box regression
    needs. A coarse cell is valid when one of its fine cells is. `stride` 1 is the identity (no weights)."""

    def __init__(self, dim: int, stride: int = 1):
        super().__init__()
        if stride < 1:
            raise ValueError(f"bev stride must be >= 1, got {stride}")
        self.stride = stride
        self.mix = nn.Conv2d(dim * stride * stride, dim, 1) if stride > 1 else None

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """<B, C, Y, X>, <B, Y, X> -> <B, C, Y/s, X/s> (zero at invalid coarse cells), <B, Y/s, X/s>."""
        if self.mix is None:
            return x, valid
        coarse = F.max_pool2d(valid[:, None].to(x.dtype), self.stride)[:, 0] > 0
        return self.mix(F.pixel_unshuffle(x, self.stride)) * coarse[:, None], coarse
