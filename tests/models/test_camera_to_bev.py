import torch

from fusion.models.bev_grid import BEVGrid
from fusion.models.camera_to_bev import CameraToBEV


def _bilinear(feats: torch.Tensor, u: float, v: float, patch: int) -> torch.Tensor:
    """Sample <D, h, w> at pixel (u, v): patch centres at (i + 0.5) * patch, zero outside."""
    d, h, w = feats.shape
    px, py = u / patch - 0.5, v / patch - 0.5
    x0, y0 = int(torch.floor(torch.tensor(px))), int(torch.floor(torch.tensor(py)))
    out = torch.zeros(d)
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            if 0 <= yy < h and 0 <= xx < w:
                out += feats[:, yy, xx] * (1 - abs(px - xx)) * (1 - abs(py - yy))
    return out


def test_lift_matches_a_per_cell_loop(tiny_batch):
    torch.manual_seed(0)
    grid = BEVGrid(x_range=(-20.0, 20.0), y_range=(-20.0, 20.0), cell=8.0, z_range=(-2.0, 2.0))
    lift = CameraToBEV(in_dim=3, out_dim=4, grid=grid, heights=2, patch=16)
    b = tiny_batch
    patches = torch.randn(2, 6, 6, 10, 3)
    camera_mask = b.camera_mask.clone()
    camera_mask[1, :3] = False
    out, seen = lift(patches, b.cam_from_lidar, b.intrinsics, camera_mask)
    assert out.shape == (2, 4, 5, 5) and seen.shape == (2, 5, 5)

    zs = torch.linspace(-2.0, 2.0, 4)[1:-1]
    for bi in range(2):
        for iy in range(5):
            for ix in range(5):
                x, y = -20.0 + (ix + 0.5) * 8.0, -20.0 + (iy + 0.5) * 8.0
                acc, n = torch.zeros(3), 0
                for c in range(6):
                    for z in zs:
                        p = b.cam_from_lidar[bi, c] @ torch.tensor([x, y, float(z), 1.0])
                        if not camera_mask[bi, c] or p[2] <= 0.1:
                            continue
                        u, v, s = b.intrinsics[bi, c] @ p[:3]
                        u, v = float(u / s), float(v / s)
                        if 0 <= u < 160 and 0 <= v < 96:
                            acc += _bilinear(patches[bi, c].permute(2, 0, 1), u, v, 16)
                            n += 1
                assert bool(seen[bi, iy, ix]) == (n > 0)
                want = lift.proj(acc / n) if n else torch.zeros(4)
                torch.testing.assert_close(out[bi, :, iy, ix], want, atol=1e-5, rtol=1e-5)
    assert seen[0].float().mean() > 0.5 and seen[1].any()  # the rig sees most of the grid, half of it still some


def test_no_camera_means_no_cell_is_seen(tiny_batch):
    lift = CameraToBEV(in_dim=3, out_dim=4, grid=BEVGrid(cell=12.8), heights=2)
    b = tiny_batch
    out, seen = lift(torch.randn(2, 6, 6, 10, 3), b.cam_from_lidar, b.intrinsics, torch.zeros(2, 6, dtype=torch.bool))
    assert not seen.any() and out.abs().sum() == 0


def test_lift_gradients_match_finite_differences(tiny_batch):
    """The weighted bags' backward (into the patch features and the projection) against central differences."""
    torch.manual_seed(0)
    grid = BEVGrid(x_range=(-20.0, 20.0), y_range=(-20.0, 20.0), cell=8.0, z_range=(-2.0, 2.0))
    lift = CameraToBEV(in_dim=3, out_dim=4, grid=grid, heights=2, patch=16).double()
    b = tiny_batch
    cam_from_lidar, intrinsics = b.cam_from_lidar.double(), b.intrinsics.double()
    patches = torch.randn(2, 6, 6, 10, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda p: lift(p, cam_from_lidar, intrinsics, b.camera_mask)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (patches,), eps=1e-6, atol=1e-6)


def test_lift_runs_under_bfloat16_autocast(tiny_batch):
    grid = BEVGrid(x_range=(-20.0, 20.0), y_range=(-20.0, 20.0), cell=8.0, z_range=(-2.0, 2.0))
    lift = CameraToBEV(in_dim=3, out_dim=4, grid=grid, heights=2, patch=16)
    b = tiny_batch
    patches = torch.randn(2, 6, 6, 10, 3)
    want, seen = lift(patches, b.cam_from_lidar, b.intrinsics, b.camera_mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, seen_bf16 = lift(patches, b.cam_from_lidar, b.intrinsics, b.camera_mask)
    assert torch.equal(seen, seen_bf16) and torch.isfinite(got).all()
    assert (got.float() - want).abs().mean() < 0.02  # bf16 rounding, amplified at a few cells by the 4-channel norm
