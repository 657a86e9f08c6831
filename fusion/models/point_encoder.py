"""Point-cloud transformer: points -> pillar tokens -> windowed self-attention over non-empty pillars -> BEV.

Pillars as in PointPillars (Lang et al. 2019): a per-point MLP, averaged over the points of each BEV cell. The
transformer attends only among non-empty pillars of the same window, as in SST (Fan et al. 2022, "Embracing Single
Stride 3D Object Detector with Sparse Transformer"), with Swin-style shifted windows on every other layer. Pillars
are grouped by window id with `torch.unique` and laid into <windows, window^2, C> slots with a key mask, so the cost is
linear in the number of non-empty pillars (each window holds at most window^2 of them) and hence in the points.

With `motion=True` each pillar also carries the least-squares slope of its points' position against their time lag
(`pillar_motion`): the points of older sweeps trail a moving object by its speed x lag, so at the object's ends the
slope is minus its velocity, while a mean of per-point features would have to discover that correlation. The nuScenes
sweeps are motion-compensated for the ego, so static objects give a slope near zero.
"""

from __future__ import annotations

import torch
from torch import nn

from fusion.models.bev_grid import DEFAULT_GRID, BEVGrid
from fusion.models.transformer import Block

_INTENSITY_SCALE = 255.0  # nuScenes intensities are 0-255
_TIME_SCALE = 0.1  # seconds: one sweep interval of the synthetic LiDAR (10 Hz); nuScenes' spins at 20 Hz


def pillar_motion(offset: torch.Tensor, lag: torch.Tensor, inverse: torch.Tensor, n: int,
                  min_spread: float = 0.05) -> torch.Tensor:  # fmt: skip
    """Per pillar, the least-squares fit of the points' position against their time lag.

    Args:
        offset: <N, 2> point x, y (any origin: the slope does not see it; near the pillar keeps float32 exact);
        lag: <N> time lags; inverse: <int64: N> pillar of each point in [0, n).
        min_spread: the lags' standard deviation below which a pillar has no slope (all points of one sweep).

    Returns:
        <n, 5>: slope of x and of y against the lag (position per unit lag; 0 without spread), the mean lag, the
        lags' standard deviation, and 1 where a slope was fitted.
    """
    x, y = offset.unbind(1)
    columns = torch.stack([torch.ones_like(lag), lag, lag * lag, x, y, lag * x, lag * y], 1)
    mean = offset.new_zeros(n, 7).index_add_(0, inverse, columns)
    mean = mean[:, 1:] / mean[:, :1]  # (n, 6) per pillar: E[t], E[t^2], E[x], E[y], E[t x], E[t y]
    mean_t = mean[:, 0]
    var_t = (mean[:, 1] - mean_t.square()).clamp(min=0)
    cov = mean[:, 4:6] - mean_t[:, None] * mean[:, 2:4]  # (n, 2) covariance of the lag and x, y
    fitted = var_t > min_spread**2
    slope = torch.where(fitted[:, None], cov / var_t.clamp(min=min_spread**2)[:, None], 0.0)
    return torch.cat([slope, mean_t[:, None], var_t.sqrt()[:, None], fitted[:, None].to(slope.dtype)], 1)


def window_slots(coords: torch.Tensor, window: int, shift: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Group pillars by window.

    Args:
        coords: <int64: P, 3> (batch, iy, ix) of the non-empty pillars.
        window: window side in cells; shift: offset of the window grid in cells (Swin's shifted windows).

    Returns:
        (window index <P> in [0, n), slot <P> in [0, window^2), n windows that hold a pillar).
    """
    iy, ix = coords[:, 1] + shift, coords[:, 2] + shift
    wy, wx = iy // window, ix // window
    key = (coords[:, 0] * (int(wy.max()) + 1 if len(wy) else 1) + wy) * (int(wx.max()) + 1 if len(wx) else 1) + wx
    windows, index = torch.unique(key, return_inverse=True)  # sorted by window id
    slot = (iy % window) * window + ix % window
    return index, slot, len(windows)


class PointEncoder(nn.Module):
    """Points <B, N, 5> + mask <B, N> -> LiDAR BEV <B, dim, Y, X> and pillar occupancy <B, Y, X>."""

    def __init__(self, grid: BEVGrid = DEFAULT_GRID, in_dim: int = 5, dim: int = 64, layers: int = 2, heads: int = 4,
                 window: int = 8, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 scale_inputs: bool = False, motion: bool = False):  # fmt: skip
        super().__init__()
        self.grid, self.window, self.out_dim = grid, window, dim
        # what each point feature is divided by before the MLP: intensity by _INTENSITY_SCALE; with scale_inputs also
        # x, y, z by the grid's half extents and the time lag by _TIME_SCALE, so that every input is of order 1 (raw,
        # the coordinates reach tens of metres and swamp the rest at initialisation)
        scale = torch.ones(in_dim)
        scale[3] = _INTENSITY_SCALE
        if scale_inputs:
            scale[:3] = torch.tensor([max(abs(v) for v in r) for r in (grid.x_range, grid.y_range, grid.z_range)])
            scale[4:] = _TIME_SCALE
        self.register_buffer("input_scale", scale, persistent=False)  # (in_dim,)
        # per point: its features plus its offset from the pillar centre (x, y)
        self.point_mlp = nn.Sequential(nn.Linear(in_dim + 2, dim), nn.LayerNorm(dim), nn.GELU(), nn.Linear(dim, dim))
        self.pos = nn.Linear(2, dim)  # pillar centre, normalised to [-1, 1]
        # the pillar's position-against-lag fit (`pillar_motion`), in cells per _TIME_SCALE, added to its token
        if motion and in_dim < 5:
            raise ValueError(f"motion needs the time lag as the fifth point feature; in_dim is {in_dim}")
        self.motion = nn.Linear(5, dim) if motion else None
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def pillarize(self, points: torch.Tensor, point_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scatter-mean of the per-point MLP: pillar tokens <P, dim> and their (batch, iy, ix) <int64: P, 3>."""
        g = self.grid
        b, n, _ = points.shape
        ix, iy, inside = g.cell_of(points[..., :2])
        keep = point_mask & inside  # (B, N)
        batch = torch.arange(b, device=points.device)[:, None].expand(b, n)
        flat = ((batch * g.ny + iy) * g.nx + ix)[keep]  # (n kept,)
        cells, inverse = torch.unique(flat, return_inverse=True)
        p = points[keep]
        centre_x = g.x_range[0] + (ix[keep] + 0.5) * g.cell
        centre_y = g.y_range[0] + (iy[keep] + 0.5) * g.cell
        feats = torch.cat(
            [
                p / self.input_scale,
                (p[:, 0:1] - centre_x[:, None]) / g.cell,
                (p[:, 1:2] - centre_y[:, None]) / g.cell,
            ],
            1,
        )
        # The MLP's last layer is linear, so the pillar mean of its outputs is its output on the pillar mean of its
        # inputs: it runs once per pillar instead of once per point. The same function; that layer held dim / (dim + 7)
        # of the MLP's per-point multiply-adds (0.82 at dim 32)
        f = self.point_mlp[:-1](feats)
        total = f.new_zeros(len(cells), f.shape[1]).index_add_(0, inverse, f)
        count = f.new_zeros(len(cells)).index_add_(0, inverse, torch.ones_like(inverse, dtype=f.dtype))
        coords = torch.stack([cells // (g.ny * g.nx), cells // g.nx % g.ny, cells % g.nx], dim=1)
        tokens = self.point_mlp[-1](total / count[:, None])
        if self.motion is not None:
            tokens = tokens + self.motion(pillar_motion(feats[:, -2:], p[:, 4] / _TIME_SCALE, inverse, len(cells)))
        return tokens, coords

    def attend(self, block: Block, x: torch.Tensor, coords: torch.Tensor, shift: int) -> torch.Tensor:
        """One transformer block inside the windows: pillar tokens <P, C> -> <P, C>."""
        index, slot, n = window_slots(coords, self.window, shift)
        t = self.window * self.window
        slots = x.new_zeros(n, t, x.shape[1]).index_put((index, slot), x)  # (nW, window^2, C)
        mask = torch.zeros(n, t, dtype=torch.bool, device=x.device).index_put(
            (index, slot), torch.ones_like(index).bool()
        )
        return block(slots, key_mask=mask)[index, slot]  # every window holds >= 1 pillar: no empty softmax

    def forward(self, points: torch.Tensor, point_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.grid
        b = points.shape[0]
        x, coords = self.pillarize(points, point_mask)
        centre = torch.stack([coords[:, 2].float() / (g.nx - 1), coords[:, 1].float() / (g.ny - 1)], 1) * 2 - 1
        x = x + self.pos(centre)
        if len(x):
            for i, block in enumerate(self.blocks):
                x = self.attend(block, x, coords, shift=(self.window // 2) * (i % 2))
        flat = (coords[:, 0] * g.ny + coords[:, 1]) * g.nx + coords[:, 2]
        bev = x.new_zeros(b * g.ny * g.nx, self.out_dim).index_put((flat,), self.norm(x))
        occupancy = torch.zeros(b * g.ny * g.nx, dtype=torch.bool, device=x.device).index_fill(0, flat, True)
        bev = bev.view(b, g.ny, g.nx, self.out_dim).permute(0, 3, 1, 2).contiguous()  # (B, C, Y, X)
        return bev, occupancy.view(b, g.ny, g.nx)
