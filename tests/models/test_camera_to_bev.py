import torch

from fusion.models.bev_grid import BEVGrid
from fusion.models.camera_to_bev import CameraToBEV, ImageFeatures


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


def _pixel(b, bi: int, c: int, xyz: torch.Tensor, camera_mask: torch.Tensor) -> tuple[float, float] | None:
    """Pixel (u, v) of lidar-frame point `xyz` in camera c of sample bi of batch `b`, or None if the camera does not
    see it (absent, behind it, outside the 160 x 96 image), one point at a time."""
    p = b.cam_from_lidar[bi, c] @ torch.cat([xyz, torch.ones(1)])
    if not camera_mask[bi, c] or p[2] <= 0.1:
        return None
    u, v, s = b.intrinsics[bi, c] @ p[:3]
    u, v = float(u / s), float(v / s)
    return (u, v) if 0 <= u < 160 and 0 <= v < 96 else None


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
                        uv = _pixel(b, bi, c, torch.tensor([x, y, float(z)]), camera_mask)
                        if uv is not None:
                            acc += _bilinear(patches[bi, c].permute(2, 0, 1), *uv, 16)
                            n += 1
                assert bool(seen[bi, iy, ix]) == (n > 0)
                want = lift.proj(acc / n) if n else torch.zeros(4)
                torch.testing.assert_close(out[bi, :, iy, ix], want, atol=1e-5, rtol=1e-5)
    assert seen[0].float().mean() > 0.5 and seen[1].any()  # the rig sees most of the grid, half of it still some


def test_image_features_sample_matches_a_per_point_loop(tiny_batch):
    """`ImageFeatures.sample` (what the second stage reads at its boxes) against a loop over points and cameras."""
    gen = torch.Generator().manual_seed(4)
    b = tiny_batch
    patches = torch.randn(2, 6, 6, 10, 3, generator=gen)
    camera_mask = b.camera_mask.clone()
    camera_mask[1, :3] = False
    images = ImageFeatures(patches, b.cam_from_lidar, b.intrinsics, camera_mask, 16)
    xyz = torch.cat([torch.rand(2, 4, 5, 2, generator=gen) * 60 - 30, torch.rand(2, 4, 5, 1, generator=gen) * 3 - 2],
                    -1)  # fmt: skip
    got, count = images.sample(xyz)
    assert got.shape == (2, 4, 5, 3) and count.shape == (2, 4, 5)
    table = torch.randn(2, 6, 6, 10, 2, generator=gen)
    other, _ = images.sample(xyz, table)  # a table of its own width, the same points
    for bi in range(2):
        for k in range(4):
            for j in range(5):
                acc, acc_t, n = torch.zeros(3), torch.zeros(2), 0
                for c in range(6):
                    uv = _pixel(b, bi, c, xyz[bi, k, j], camera_mask)
                    if uv is not None:
                        acc += _bilinear(patches[bi, c].permute(2, 0, 1), *uv, 16)
                        acc_t += _bilinear(table[bi, c].permute(2, 0, 1), *uv, 16)
                        n += 1
                assert int(count[bi, k, j]) == n
                torch.testing.assert_close(got[bi, k, j], acc / max(n, 1), atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(other[bi, k, j], acc_t / max(n, 1), atol=1e-5, rtol=1e-5)
    assert (count > 0).float().mean() > 0.5 and (count > 1).any()  # most points seen, some by two cameras
    torch.testing.assert_close(images[1:].sample(xyz[1:])[0], got[1:])  # a slice of the batch samples alike


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


def _depth_lift(tiny_batch):
    torch.manual_seed(0)
    grid = BEVGrid(x_range=(-20.0, 20.0), y_range=(-20.0, 20.0), cell=8.0, z_range=(-2.0, 2.0))
    lift = CameraToBEV(in_dim=3, out_dim=4, grid=grid, heights=2, patch=16, depth_bins=5, depth_max=40.0)
    with torch.no_grad():
        lift.occupancy.normal_()
    return lift


def test_depth_lift_weights_each_tap_by_its_bins_probability(tiny_batch):
    """Against a per-cell loop: each (camera, height) sample is the bilinear mix of its taps, each tap x the softmax
    probability of the sample's depth bin there; plus the occupancy vector x the mean of those weights."""
    lift, b = _depth_lift(tiny_batch), tiny_batch
    patches = torch.randn(2, 6, 6, 10, 3)
    logits = torch.randn(2, 6, 6, 10, 5)
    out, seen = lift(patches, b.cam_from_lidar, b.intrinsics, b.camera_mask, logits)
    prob = logits.softmax(-1)
    zs = torch.linspace(-2.0, 2.0, 4)[1:-1]
    checked = 0
    for bi in range(2):
        for iy in range(5):
            for ix in range(5):
                x, y = -20.0 + (ix + 0.5) * 8.0, -20.0 + (iy + 0.5) * 8.0
                acc, mass, n = torch.zeros(3), 0.0, 0
                for c in range(6):
                    for z in zs:
                        p = b.cam_from_lidar[bi, c] @ torch.tensor([x, y, float(z), 1.0])
                        if not b.camera_mask[bi, c] or p[2] <= 0.1:
                            continue
                        u, v, s = b.intrinsics[bi, c] @ p[:3]
                        u, v = float(u / s), float(v / s)
                        if not (0 <= u < 160 and 0 <= v < 96):
                            continue
                        k = min(int(float(p[2]) // 8.0), 4)
                        px, py = u / 16 - 0.5, v / 16 - 0.5
                        x0, y0 = int(torch.floor(torch.tensor(px))), int(torch.floor(torch.tensor(py)))
                        for yy in (y0, y0 + 1):
                            for xx in (x0, x0 + 1):
                                if 0 <= yy < 6 and 0 <= xx < 10:
                                    wt = (1 - abs(px - xx)) * (1 - abs(py - yy)) * float(prob[bi, c, yy, xx, k])
                                    acc += patches[bi, c, yy, xx] * wt
                                    mass += wt
                        n += 1
                assert bool(seen[bi, iy, ix]) == (n > 0)
                want = lift.proj(acc / n) + mass / n * lift.occupancy if n else torch.zeros(4)
                torch.testing.assert_close(out[bi, :, iy, ix], want, atol=1e-5, rtol=1e-5)
                checked += n > 0
    assert checked > 10


def test_depth_lift_gradients_reach_the_depth_logits(tiny_batch):
    lift, b = _depth_lift(tiny_batch), tiny_batch
    lift = lift.double()
    cam_from_lidar, intrinsics = b.cam_from_lidar.double(), b.intrinsics.double()
    patches = torch.randn(2, 6, 6, 10, 3, dtype=torch.float64)
    logits = torch.randn(2, 6, 6, 10, 5, dtype=torch.float64, requires_grad=True)
    fn = lambda g: lift(patches, cam_from_lidar, intrinsics, b.camera_mask, g)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (logits,), eps=1e-6, atol=1e-6, fast_mode=True)


def test_depth_targets_are_the_nearest_current_return_per_patch(tiny_batch):
    lift, b = _depth_lift(tiny_batch), tiny_batch
    keep = torch.arange(b.points.shape[1]) % 25 == 0  # every 25th point: the loop below stays quick
    points, point_mask = b.points[:, keep].clone(), b.point_mask[:, keep]
    points[0, ::3, 4] = 0.05  # an older sweep's points: not targets
    camera_mask = b.camera_mask.clone()
    camera_mask[1, 2] = False
    target = lift.depth_targets(points, point_mask, b.cam_from_lidar, b.intrinsics, camera_mask, (6, 10))
    want = torch.full((2, 6, 6, 10), float("inf"))
    for bi in range(2):
        for c in range(6):
            if not camera_mask[bi, c]:
                continue
            for pt, ok in zip(points[bi], point_mask[bi], strict=True):
                if not ok or abs(float(pt[4])) >= 1e-3:
                    continue
                p = b.cam_from_lidar[bi, c] @ torch.cat([pt[:3], torch.ones(1)])
                if p[2] <= 0.1:
                    continue
                u, v, s = b.intrinsics[bi, c] @ p[:3]
                col, row = int(float(u / s) // 16), int(float(v / s) // 16)
                if 0 <= col < 10 and 0 <= row < 6:
                    want[bi, c, row, col] = min(float(want[bi, c, row, col]), float(p[2]))
    want_bins = torch.where(want.isfinite(), (want.clamp(max=1e6) / 8.0).floor().clamp(0, 4), -1).long()
    assert torch.equal(target, want_bins)
    assert (target >= 0).sum() > 20 and not (target[1, 2] >= 0).any()
    logits = torch.zeros(2, 6, 6, 10, 5, requires_grad=True)
    loss = lift.depth_loss(logits, points, point_mask, b.cam_from_lidar, b.intrinsics, camera_mask)
    torch.testing.assert_close(loss, torch.tensor(5.0).log())  # uniform logits: log K
    loss.backward()
    assert logits.grad[target < 0].abs().sum() == 0 and logits.grad.abs().sum() > 0
