"""The bird's-eye-view grid shared by the camera lift, the point encoder, the fusion and the box coder.

Cells are indexed (iy, ix) with iy along the lidar y axis (forward) and ix along x (right); BEV maps are <B, C, Y, X>
and the flat cell index is iy * X + ix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class BEVGrid:
    """An axis-aligned grid over the lidar xy plane, with the z range the camera lift samples."""

    x_range: tuple[float, float] = (-51.2, 51.2)
    y_range: tuple[float, float] = (-51.2, 51.2)
    cell: float = 0.8
    z_range: tuple[float, float] = (-3.0, 3.0)

    @property
    def nx(self) -> int:
        return round((self.x_range[1] - self.x_range[0]) / self.cell)

    @property
    def ny(self) -> int:
        return round((self.y_range[1] - self.y_range[0]) / self.cell)

    def cell_centres(self, device: torch.device | str | None = None) -> torch.Tensor:
        """<float32: Y, X, 2> the (x, y) of every cell centre in the lidar frame."""
        xs = self.x_range[0] + (torch.arange(self.nx, device=device, dtype=torch.float32) + 0.5) * self.cell
        ys = self.y_range[0] + (torch.arange(self.ny, device=device, dtype=torch.float32) + 0.5) * self.cell
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([gx, gy], dim=-1)

    def cell_of(self, xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cells of points <..., 2>: (ix, iy) as int64 and a mask of the points inside the grid."""
        fx = (xy[..., 0] - self.x_range[0]) / self.cell
        fy = (xy[..., 1] - self.y_range[0]) / self.cell
        ix, iy = fx.floor().long(), fy.floor().long()
        inside = (ix >= 0) & (ix < self.nx) & (iy >= 0) & (iy < self.ny)
        return ix, iy, inside

    def sample(self, bev: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
        """Bilinear samples of BEV maps <B, C, Y, X> at lidar-frame points <B, ..., 2> -> <B, ..., C>: a cell's value
        at its centre, 0 outside the grid (`grid_sample`, corners not aligned)."""
        lo = xy.new_tensor([self.x_range[0], self.y_range[0]])
        extent = xy.new_tensor([self.x_range[1] - self.x_range[0], self.y_range[1] - self.y_range[0]])
        g = ((xy - lo) / extent * 2 - 1).reshape(xy.shape[0], 1, -1, 2).to(bev.dtype)  # (B, 1, P, 2)
        out = F.grid_sample(bev, g, align_corners=False, padding_mode="zeros")  # (B, C, 1, P)
        return out[:, :, 0].transpose(1, 2).reshape(*xy.shape[:-1], bev.shape[1])


DEFAULT_GRID = BEVGrid()
