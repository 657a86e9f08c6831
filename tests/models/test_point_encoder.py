import pytest
import torch

from fusion.models.bev_grid import BEVGrid
from fusion.models.point_encoder import PointEncoder

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
