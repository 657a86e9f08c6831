"""The bird's-eye-view grid shared by the camera lift, the point encoder, the fusion and the box coder.

Cells are indexed (iy, ix) with iy along the lidar y axis (forward) and ix along x (right); BEV maps are <B, C, Y, X>
and the flat cell index is iy * X + ix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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


DEFAULT_GRID = BEVGrid()
