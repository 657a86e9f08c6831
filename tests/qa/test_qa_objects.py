"""Object tokens: BEV pooling, corners and image colours against naive loops; GT boxes as the generator sees them."""

from __future__ import annotations

import math

import numpy as np
import torch

from fusion.data.index import load_index
from fusion.data.qa import Scene, synthetic_colours
from fusion.evaluation.rotated_iou import bev_corners as reference_corners
from fusion.models.bev_grid import BEVGrid
from fusion.qa.objects import bev_corners, image_colour, sample_bev


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


def test_image_colour_matches_a_per_object_loop():
    g = torch.Generator().manual_seed(2)
    h, w = 40, 60
    images = torch.randint(0, 256, (6, 3, h, w), generator=g, dtype=torch.uint8)
    k = torch.tensor([[30.0, 0, w / 2], [0, 30.0, h / 2], [0, 0, 1]]).expand(6, 3, 3)
    cam = torch.eye(4).repeat(6, 1, 1)
    for c in range(6):  # camera c looks along lidar direction at angle c * 60 degrees; camera z = that direction
        a = c * math.pi / 3
        fwd, right = np.array([math.cos(a), math.sin(a), 0]), np.array([math.sin(a), -math.cos(a), 0])
        cam[c, :3, :3] = torch.tensor(np.stack([right, [0, 0, -1], fwd]), dtype=torch.float32)
    mask = torch.tensor([True, True, True, True, False, True])
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
