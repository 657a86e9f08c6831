import numpy as np
import pytest
import torch

from fusion.models.bev_grid import BEVGrid
from fusion.models.point_encoder import PointEncoder, pillar_motion

GRID = BEVGrid(x_range=(-25.6, 25.6), y_range=(-25.6, 25.6), cell=1.6)


def _points(n: int = 600, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # x, y, z, intensity and the time lag of one of three sweeps 0.05 s apart
    pts = torch.cat([torch.rand(2, n, 2, generator=g) * 60 - 30, torch.randn(2, n, 1, generator=g),
                     torch.rand(2, n, 1, generator=g) * 255, torch.randint(0, 3, (2, n, 1), generator=g) * 0.05],
                    -1)  # fmt: skip
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, n // 2 :] = False
    return pts, mask


@pytest.mark.parametrize("scale_inputs", [False, True])
def test_pillars_are_the_mean_of_their_points(scale_inputs):
    torch.manual_seed(0)
    enc = PointEncoder(GRID, dim=16, layers=1, heads=2, window=4, scale_inputs=scale_inputs)
    pts, mask = _points()
    # scaled: x, y over the grid's half extent (25.6 m), z over the z range's (3 m), time lag over 0.1 s
    xyz_scale, lag_scale = (torch.tensor([25.6, 25.6, 3.0]), 0.1) if scale_inputs else (torch.ones(3), 1.0)
    feats, coords = enc.pillarize(pts, mask)
    for k in torch.randperm(len(coords))[:20]:
        b, iy, ix = coords[k].tolist()
        p = pts[b][mask[b]]
        inside = ((p[:, 0] + 25.6) / 1.6).floor().long().eq(ix) & ((p[:, 1] + 25.6) / 1.6).floor().long().eq(iy)
        q = p[inside]
        cx, cy = -25.6 + (ix + 0.5) * 1.6, -25.6 + (iy + 0.5) * 1.6
        f = torch.cat([q[:, :3] / xyz_scale, q[:, 3:4] / 255, q[:, 4:] / lag_scale, (q[:, 0:1] - cx) / 1.6,
                       (q[:, 1:2] - cy) / 1.6], 1)  # fmt: skip
        torch.testing.assert_close(feats[k], enc.point_mlp(f).mean(0), atol=1e-5, rtol=1e-5)
    # padded points and points outside the grid make no pillar
    assert coords[:, 0].eq(1).sum() < coords[:, 0].eq(0).sum()
    assert len(coords) == len(torch.unique(coords, dim=0))


def test_pillar_motion_is_a_per_pillar_least_squares_fit():
    g = torch.Generator().manual_seed(0)
    n, pillars = 400, 30
    inverse = torch.randint(0, pillars, (n,), generator=g)
    inverse[:pillars] = torch.arange(pillars)  # every pillar holds a point
    lag = torch.randint(0, 3, (n,), generator=g).float()
    lag[inverse == 7] = 2.0  # one pillar of a single sweep: no slope
    offset = torch.rand(n, 2, generator=g) - 0.5
    out = pillar_motion(offset, lag, inverse, pillars)
    assert out.shape == (pillars, 5)
    for k in range(pillars):
        t, xy = lag[inverse == k].double().numpy(), offset[inverse == k].double().numpy()
        fitted = t.std() > 0.05
        slope = [np.polyfit(t, xy[:, j], 1)[0] for j in range(2)] if fitted else [0.0, 0.0]
        ref = torch.tensor([*slope, t.mean(), t.std(), float(fitted)], dtype=torch.float32)
        torch.testing.assert_close(out[k], ref, atol=1e-4, rtol=1e-4)
    assert out[7, 4] == 0 and out[7, :2].abs().sum() == 0


def test_pillar_motion_of_a_moving_object_is_minus_its_velocity():
    """Older sweeps see a moving object further back, by its velocity x lag: the slope is minus the velocity."""
    torch.manual_seed(0)
    enc = PointEncoder(GRID, dim=16, layers=1, heads=2, window=4, scale_inputs=True, motion=True)
    surface = torch.rand(40, 2) * 0.3  # an object's surface points, well inside one cell
    velocity = torch.tensor([2.0, -1.0])  # m/s
    lags = torch.tensor([0.0, 0.05, 0.1])
    xy = (surface[None] + torch.tensor([0.5, 0.5]) - velocity * lags[:, None, None]).reshape(-1, 2)
    pts = torch.cat([xy, torch.zeros(len(xy), 2), lags.repeat_interleave(len(surface))[:, None]], 1)[None]
    feats, coords = enc.pillarize(pts, torch.ones(1, len(xy), dtype=torch.bool))
    assert len(coords) == 1
    offset = (xy - torch.tensor([0.8, 0.8])) / 1.6  # from the pillar centre, in cells
    motion = pillar_motion(offset, pts[0, :, 4] / 0.1, torch.zeros(len(xy), dtype=torch.long), 1)
    torch.testing.assert_close(motion[0, :2], -velocity * 0.1 / 1.6)  # cells per 0.1 s
    base = enc.point_mlp(torch.cat([pts[0, :, :3] / torch.tensor([25.6, 25.6, 3.0]), pts[0, :, 3:4] / 255,
                                    pts[0, :, 4:] / 0.1, offset], 1)).mean(0)  # fmt: skip
    torch.testing.assert_close(feats[0], base + enc.motion(motion[0]), atol=1e-5, rtol=1e-5)
    feats.sum().backward()
    assert enc.motion.weight.grad.abs().sum() > 0


def test_windowed_attention_equals_a_per_window_loop():
    torch.manual_seed(0)
    enc = PointEncoder(GRID, dim=16, layers=2, heads=2, window=4).eval()
    pts, mask = _points()
    x, coords = enc.pillarize(pts, mask)
    for shift in (0, 2):
        out = enc.attend(enc.blocks[0], x, coords, shift)
        key = torch.stack([coords[:, 0], (coords[:, 1] + shift) // 4, (coords[:, 2] + shift) // 4], 1)
        windows = torch.unique(key, dim=0)
        assert len(windows) > 10
        for w in windows[torch.randperm(len(windows), generator=torch.Generator().manual_seed(shift))[:25]]:
            members = (key == w).all(1)
            ref = enc.blocks[0](x[members][None])[0]  # plain attention among the pillars of one window
            torch.testing.assert_close(out[members], ref, atol=1e-5, rtol=1e-5)


def test_dense_bev_occupancy_and_empty_input():
    enc = PointEncoder(GRID, dim=16, layers=2, heads=2, window=4)
    pts, mask = _points()
    bev, occ = enc(pts, mask)
    assert bev.shape == (2, 16, 32, 32) and occ.shape == (2, 32, 32)
    _, coords = enc.pillarize(pts, mask)
    assert occ.sum() == len(coords) and bool(occ[coords[:, 0], coords[:, 1], coords[:, 2]].all())
    assert bev.abs().sum(1)[~occ].max() == 0 and torch.isfinite(bev).all()
    bev, occ = enc(pts, torch.zeros_like(mask))
    assert not occ.any() and bev.abs().sum() == 0
