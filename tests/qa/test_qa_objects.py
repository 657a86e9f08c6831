"""Object tokens: BEV pooling, corners and image colours against naive loops; GT boxes as the generator sees them."""

from __future__ import annotations

import math

import numpy as np
import torch

from fusion.data.index import load_index
from fusion.data.qa import Scene, synthetic_colours
from fusion.evaluation.rotated_iou import bev_corners as reference_corners
from fusion.models.bev_grid import BEVGrid
from fusion.qa.objects import (
    APPEARANCE,
    CUES,
    MOTION,
    bev_corners,
    colour_cues,
    image_colour,
    point_appearance,
    point_motion,
    sample_bev,
)


def _bilinear(bev: np.ndarray, x: float, y: float, grid: BEVGrid) -> np.ndarray:
    """Bilinear interpolation between cell centres, zero outside (grid_sample's zero padding)."""
    fx = (x - grid.x_range[0]) / grid.cell - 0.5
    fy = (y - grid.y_range[0]) / grid.cell - 0.5
    x0, y0 = math.floor(fx), math.floor(fy)
    out = np.zeros(bev.shape[0])
    for dx in (0, 1):
        for dy in (0, 1):
            ix, iy = x0 + dx, y0 + dy
            w = (1 - abs(fx - ix)) * (1 - abs(fy - iy))
            if 0 <= ix < bev.shape[2] and 0 <= iy < bev.shape[1]:
                out += w * bev[:, iy, ix]
    return out


def test_sample_bev_is_bilinear_between_cell_centres():
    grid = BEVGrid((-8.0, 8.0), (-4.0, 4.0), 1.0)
    g = torch.Generator().manual_seed(0)
    bev = torch.randn(3, grid.ny, grid.nx, generator=g)
    xy = torch.rand(50, 2, generator=g) * torch.tensor([18.0, 10.0]) - torch.tensor([9.0, 5.0])
    got = sample_bev(bev, xy, grid).numpy()
    want = np.stack([_bilinear(bev.numpy(), float(x), float(y), grid) for x, y in xy])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_bev_corners_match_the_evaluation_corners():
    g = torch.Generator().manual_seed(1)
    boxes = torch.cat([torch.randn(20, 3, generator=g) * 10, torch.rand(20, 3, generator=g) * 4 + 0.5,
                       torch.rand(20, 1, generator=g) * 6 - 3], 1)  # fmt: skip
    got = bev_corners(boxes).numpy()
    want = reference_corners(
        boxes[:, :2].double().numpy(), boxes[:, 3:6].double().numpy(), boxes[:, 6].double().numpy()
    )
    # same four corners, in any order
    for a, b in zip(got, want, strict=True):
        d = np.linalg.norm(a[:, None] - b[None], axis=-1)
        assert d.min(1).max() < 1e-4


def _rig(h: int = 40, w: int = 60):
    """Six pinhole cameras around the origin (camera c looks along the lidar direction at c * 60 degrees)."""
    k = torch.tensor([[30.0, 0, w / 2], [0, 30.0, h / 2], [0, 0, 1]]).expand(6, 3, 3)
    cam = torch.eye(4).repeat(6, 1, 1)
    for c in range(6):
        a = c * math.pi / 3
        fwd, right = np.array([math.cos(a), math.sin(a), 0]), np.array([math.sin(a), -math.cos(a), 0])
        cam[c, :3, :3] = torch.tensor(np.stack([right, [0, 0, -1], fwd]), dtype=torch.float32)
    return k, cam, torch.tensor([True, True, True, True, False, True])


def test_image_colour_matches_a_per_object_loop():
    g = torch.Generator().manual_seed(2)
    h, w = 40, 60
    images = torch.randint(0, 256, (6, 3, h, w), generator=g, dtype=torch.uint8)
    k, cam, mask = _rig(h, w)
    centres = torch.randn(30, 3, generator=g) * torch.tensor([15.0, 15.0, 0.5])
    got = image_colour(images, cam, k, mask, centres, radius=1)
    for m in range(len(centres)):
        best, best_d, uv = None, math.inf, None
        for c in range(6):
            p = cam[c, :3, :3] @ centres[m] + cam[c, :3, 3]
            if not mask[c] or p[2] <= 0.5:
                continue
            q = k[c] @ p
            u, v = float(q[0] / q[2]), float(q[1] / q[2])
            d = (u / w - 0.5) ** 2 + (v / h - 0.5) ** 2
            if 0 <= u < w and 0 <= v < h and d < best_d:
                best, best_d, uv = c, d, (round(u), round(v))
        if best is None:
            assert got[m].tolist() == [0.0, 0.0, 0.0, 0.0]
            continue
        u, v = uv
        patch = [images[best, :, min(max(v + dy, 0), h - 1), min(max(u + dx, 0), w - 1)].float()
                 for dy in (-1, 0, 1) for dx in (-1, 0, 1)]  # fmt: skip
        np.testing.assert_allclose(got[m, :3].numpy(), (torch.stack(patch).mean(0) / 255).numpy(), atol=1e-5)
        assert got[m, 3] == 1.0


def test_point_appearance_matches_a_per_object_loop():
    """RGB quantiles of the pixels the box's points project to (first camera that sees each), intensity quantiles,
    visible fraction and point count, against a loop over boxes and points with numpy's quantiles."""
    g = torch.Generator().manual_seed(3)
    h, w = 40, 60
    images = torch.randint(0, 256, (6, 3, h, w), generator=g, dtype=torch.uint8)
    k, cam, mask = _rig(h, w)
    centre = torch.cat([torch.randn(12, 2, generator=g) * 12, torch.randn(12, 1, generator=g) * 0.3], 1)
    boxes = torch.cat([centre, torch.rand(12, 3, generator=g) * 3 + 0.8, torch.rand(12, 1, generator=g) * 6 - 3], 1)
    boxes[-1, :2] = 200.0  # far from every point: zeros
    n = 3000
    points = torch.cat([torch.randn(n, 2, generator=g) * 12, torch.randn(n, 1, generator=g),
                        torch.rand(n, 1, generator=g) * 255, torch.zeros(n, 1)], 1)  # fmt: skip
    point_mask = torch.rand(n, generator=g) > 0.1
    got = point_appearance(images, cam, k, mask, points, point_mask, boxes, num_points=4000)
    assert got.shape == (12, APPEARANCE - MOTION)
    for m in range(len(boxes)):
        x, y, z, bw, bl, bh, yaw = boxes[m].tolist()
        dx, dy = points[:, 0] - x, points[:, 1] - y
        lx, ly = math.cos(yaw) * dx + math.sin(yaw) * dy, -math.sin(yaw) * dx + math.cos(yaw) * dy
        inside = (lx.abs() <= bl / 2 + 0.1) & (ly.abs() <= bw / 2 + 0.1) & ((points[:, 2] - z).abs() <= bh / 2 + 0.1)
        inside &= point_mask
        rgbs = []
        for p in points[inside]:
            for c in range(6):
                q = cam[c, :3, :3] @ p[:3] + cam[c, :3, 3]
                if not mask[c] or q[2] <= 0.5:
                    continue
                uvw = k[c] @ q
                u, v = float(uvw[0] / uvw[2]), float(uvw[1] / uvw[2])
                if 0 <= u < w and 0 <= v < h:
                    rgbs.append(images[c, :, int(v), int(u)].double().numpy() / 255)
                    break
        count = int(inside.sum())
        if count == 0:
            assert got[m].abs().max() == 0
            continue
        want = np.zeros(APPEARANCE - MOTION)
        if rgbs:
            want[:9] = np.quantile(np.stack(rgbs), [0.1, 0.5, 0.9], axis=0).reshape(-1)
        want[9:11] = np.quantile(points[inside, 3].double().numpy() / 255, [0.5, 0.9])
        want[11], want[12] = len(rgbs) / count, math.log1p(count) / 5
        np.testing.assert_allclose(got[m].double().numpy(), want, atol=2e-4)


def test_point_motion_matches_a_naive_loop_and_sees_a_walking_pedestrian():
    g = torch.Generator().manual_seed(7)
    boxes = torch.tensor([[5.0, 3.0, 0.9, 0.6, 0.7, 1.8, 0.4],  # walking: 1.5 m/s along its heading
                          [-8.0, 6.0, 0.9, 0.6, 0.7, 1.8, 2.0],  # standing
                          [0.0, -12.0, 0.8, 1.9, 4.5, 1.6, -1.0],  # a car seen in one sweep only
                          [40.0, 40.0, 0.9, 0.6, 0.7, 1.8, 0.0]])  # no points: zeros  # fmt: skip
    clouds = []
    for m, speed in ((0, 1.5), (1, 0.0)):
        x, y, z, w, length, h, yaw = boxes[m].tolist()
        for lag in (0.0, 0.1, 0.2):  # each sweep's points on the body where it was `lag` seconds earlier
            local = (torch.rand(12, 3, generator=g) - 0.5) * torch.tensor([length * 0.8, w * 0.8, h * 0.8])
            local[:, 0] -= speed * lag
            clouds.append(torch.cat([local, torch.full((12, 1), 100.0), torch.full((12, 1), lag)], 1))
            clouds[-1][:, 0], clouds[-1][:, 1] = (
                x + math.cos(yaw) * local[:, 0] - math.sin(yaw) * local[:, 1],
                y + math.sin(yaw) * local[:, 0] + math.cos(yaw) * local[:, 1],
            )
            clouds[-1][:, 2] = z + local[:, 2]
        ground = torch.cat([boxes[m, :2] + torch.randn(10, 2, generator=g) * 0.3, torch.full((10, 1), 0.02),
                            torch.zeros(10, 1), torch.full((10, 1), 0.1)], 1)  # fmt: skip
        clouds.append(ground)  # the ground under it: not the object
    car = torch.cat([boxes[2, :3] + torch.randn(20, 3, generator=g) * 0.3, torch.zeros(20, 2)], 1)
    points = torch.cat([*clouds, car])
    point_mask = torch.ones(len(points), dtype=torch.bool)
    got = point_motion(points, point_mask, boxes, num_points=200)
    assert got.shape == (4, MOTION)
    for m in range(4):  # naive: a loop over the points
        x, y, z, w, length, h, yaw = boxes[m].tolist()
        new, old, lags, n = [], [], [], 0
        for p in points.tolist():
            dx, dy = p[0] - x, p[1] - y
            lx, ly = math.cos(yaw) * dx + math.sin(yaw) * dy, -math.sin(yaw) * dx + math.cos(yaw) * dy
            lz = p[2] - z
            if abs(lx) > length / 2 + 0.5 or abs(ly) > w / 2 + 0.5 or abs(lz) > h / 2 + 0.5 or lz <= 0.15 - h / 2:
                continue
            n += 1
            (new if p[4] < 1e-3 else old).append((lx, ly))
            if p[4] >= 1e-3:
                lags.append(p[4])
        want = np.zeros(MOTION)
        if new and old:
            shift = np.mean(new, 0) - np.mean(old, 0)
            want[:2], want[2] = shift, np.linalg.norm(shift) / max(np.mean(lags), 0.05) / 5
        want[3] = len(old) / max(n, 1)
        np.testing.assert_allclose(got[m].double().numpy(), want, atol=1e-4)
    assert got[0, 2] * 5 > 1.0 > got[1, 2] * 5  # walking (1.5 m/s) vs standing, read from the trail


def test_gt_object_tokens_are_the_generators_objects(qa_dm, tiny_root):
    index = load_index(tiny_root, "v1.0-mini", "mini_val", qa_dm.hparams.cache_dir)
    colours = synthetic_colours(tiny_root, "v1.0-mini")
    objects = qa_dm.datasets["mini_val"].objects
    assert set(objects) == {str(t) for t in index.tokens}
    for i, token in enumerate(index.tokens):
        scene, objs = Scene(index, i, colours), objects[str(token)]
        assert list(objs.tokens) == scene.ann
        assert objs.features.shape[0] == len(scene) and torch.isfinite(objs.features).all()
        np.testing.assert_allclose(objs.boxes[:, :2].numpy(), scene.xy, atol=1e-4)


def test_colour_cues_match_a_per_object_loop_and_ignore_the_light():
    g = torch.Generator().manual_seed(0)
    app = torch.rand(2, 5, 4 + APPEARANCE, generator=g)
    cues = colour_cues(app)
    assert cues.shape == (2, 5, CUES)
    for i, j in np.ndindex(2, 5):
        a = app[i, j].tolist()
        readings = [a[0:3], a[4:7], a[7:10], a[10:13]]  # centre patch, then the 10 / 50 / 90 % quantiles
        want = [c / sum(r) for r in readings for c in r]
        want += [sum(r) / 3 for r in readings]
        want += [(max(r) - min(r)) / max(r) for r in readings]
        want += [min(sum(a[7:10]) / 3 / max(a[13], 0.05), 10.0) / 10]
        torch.testing.assert_close(cues[i, j], torch.tensor(want), rtol=1e-5, atol=1e-6)
    # the same surface in the shade: every colour value halved, the LiDAR intensity unchanged
    shade = app.clone()
    shade[..., 0:3] /= 2
    shade[..., 4:13] /= 2
    dark = colour_cues(shade)
    chroma, saturation = slice(0, 12), slice(16, 20)
    torch.testing.assert_close(dark[..., chroma], cues[..., chroma])
    torch.testing.assert_close(dark[..., saturation], cues[..., saturation])
    torch.testing.assert_close(dark[..., 12:16], cues[..., 12:16] / 2)
