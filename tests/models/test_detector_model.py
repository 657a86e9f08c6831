import dataclasses

import pytest
import torch

from fusion.data.types import Batch
from fusion.models.model import TINY, build_model


def _loss(parts, batch: Batch):
    out = parts.model(batch)
    t = parts.box_coder.encode(batch.boxes, batch.velocity, batch.labels, batch.attributes, batch.box_mask)
    return out, parts.loss(out, t)


def test_forward_shapes_and_every_parameter_gets_a_gradient(tiny_batch):
    torch.manual_seed(0)
    parts = build_model(TINY)
    out, losses = _loss(parts, tiny_batch)
    assert out.heatmap.shape == (2, 10, 16, 16) and out.regression.shape == (2, 10, 12, 16, 16)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    missing = [n for n, p in parts.model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in parts.model.parameters())


@pytest.mark.parametrize("modality", ["camera", "lidar"])
def test_single_modality_input_runs(tiny_batch, modality):
    torch.manual_seed(0)
    parts = build_model(dataclasses.replace(TINY, fusion_backend="graph"))
    b = tiny_batch
    if modality == "camera":
        b = dataclasses.replace(b, point_mask=torch.zeros_like(b.point_mask))
    else:
        b = dataclasses.replace(b, camera_mask=torch.zeros_like(b.camera_mask))
    out, losses = _loss(parts, b)
    assert all(torch.isfinite(v).all() for v in (out.heatmap, out.regression, out.attributes))
    losses["total"].backward()
    # the branch of the missing modality got nothing from the loss
    absent = parts.model.point_encoder if modality == "camera" else parts.model.image_encoder
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in absent.parameters())
    # the dense backend gives the same output
    parts.model.fusion.backend = "dense"
    torch.testing.assert_close(parts.model(b).heatmap, out.heatmap, atol=1e-4, rtol=1e-4)


def test_build_rejects_grids_that_windows_do_not_tile():
    with pytest.raises(ValueError, match="window"):
        build_model(dataclasses.replace(TINY, cell=3.0))


def test_forward_features_returns_the_fused_map_the_head_reads(tiny_batch):
    torch.manual_seed(0)
    parts = build_model(TINY).model.eval()
    with torch.no_grad():
        fused, out = parts.forward_features(tiny_batch)
        assert fused.shape == (2, TINY.dim, 16, 16)
        torch.testing.assert_close(parts.head(fused).heatmap, out.heatmap)
        torch.testing.assert_close(parts(tiny_batch).heatmap, out.heatmap)


def test_masked_avg_pool_matches_a_loop():
    from fusion.models.coarse_to_fine import masked_avg_pool

    g = torch.Generator().manual_seed(0)
    x, valid = torch.randn(2, 3, 8, 6, generator=g), torch.rand(2, 8, 6, generator=g) > 0.6
    pooled, seen = masked_avg_pool(x, valid, 2)
    assert pooled.shape == (2, 3, 4, 3) and seen.shape == (2, 4, 3)
    for b in range(2):
        for i in range(4):
            for j in range(3):
                m = valid[b, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
                assert bool(seen[b, i, j]) == bool(m.any())
                if m.any():
                    want = x[b, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2][:, m].mean(1)
                    torch.testing.assert_close(pooled[b, :, i, j], want)


def test_coarse_fusion_stride_runs_both_backends_and_every_parameter_learns(tiny_batch):
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, fusion_stride=2, trunk_window=2, fusion_window=2, neck_blocks=1)
    parts = build_model(cfg)
    out, losses = _loss(parts, tiny_batch)
    assert out.heatmap.shape == (2, 10, 16, 16)
    losses["total"].backward()
    assert not [n for n, p in parts.model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    parts.model.eval()
    with torch.no_grad():
        dense = parts.model(tiny_batch).heatmap
        parts.model.fusion.backend = "graph"
        torch.testing.assert_close(parts.model(tiny_batch).heatmap, dense, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="window"):
        build_model(dataclasses.replace(TINY, fusion_stride=3))  # windows of 4 coarse cells: 12 cells do not tile 16


def test_space_to_depth_stacks_each_coarse_cells_fine_cells():
    from fusion.models.coarse_to_fine import SpaceToDepth

    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 6)
    valid = torch.rand(2, 4, 6) < 0.3
    valid[0, 2:, :2] = False  # a coarse cell without a point
    layer = SpaceToDepth(3, 2)
    out, coarse = layer(x, valid)
    assert out.shape == (2, 3, 2, 3) and coarse.shape == (2, 2, 3)
    w, bias = layer.mix.weight[:, :, 0, 0], layer.mix.bias  # (3, 3 * 4)
    for b in range(2):
        for i in range(2):
            for j in range(3):
                block = x[b, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2]  # (C, 2, 2): channel-major, then rows, columns
                want_valid = bool(valid[b, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].any())
                assert bool(coarse[b, i, j]) == want_valid
                want = (w @ block.reshape(-1) + bias) * want_valid
                torch.testing.assert_close(out[b, :, i, j], want)
    same, same_valid = SpaceToDepth(3, 1)(x, valid)
    assert same is x and same_valid is valid


def test_bev_stride_puts_lift_trunk_fusion_and_head_on_the_coarse_grid(tiny_batch):
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, bev_stride=2, trunk_window=2, fusion_window=2)
    parts = build_model(cfg)
    assert parts.model.point_encoder.grid.nx == 16 and parts.box_coder.grid.nx == 8
    assert parts.model.camera_to_bev.grid == parts.box_coder.grid
    out, losses = _loss(parts, tiny_batch)
    assert out.heatmap.shape == (2, 10, 8, 8) and out.regression.shape == (2, 10, 12, 8, 8)
    losses["total"].backward()
    assert not [n for n, p in parts.model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    with pytest.raises(ValueError, match="bev_stride"):
        build_model(dataclasses.replace(TINY, bev_stride=3))  # 16 pillars do not make whole cells of 3


@pytest.mark.parametrize("modality", ["fused", "camera", "lidar"])
def test_depth_estimating_lift_trains_every_parameter(tiny_batch, modality):
    """`depth_bins`: the head output carries the lift's depth logits, the system adds their LiDAR-supervised loss,
    and every parameter learns; without points or cameras the depth loss is zero and the graph stays whole."""
    from fusion.system import DetectionSystem

    torch.manual_seed(0)
    system = DetectionSystem(model=dataclasses.replace(TINY, depth_bins=8, depth_max=40.0))
    b = tiny_batch
    if modality == "camera":
        b = dataclasses.replace(b, point_mask=torch.zeros_like(b.point_mask))
    elif modality == "lidar":
        b = dataclasses.replace(b, camera_mask=torch.zeros_like(b.camera_mask))
    out = system.model(b)
    assert out.depth.shape == (2, 6, 6, 10, 8)
    losses = system._losses(b, out)
    assert torch.isfinite(losses["total"]) and (losses["depth"] > 0) == (modality == "fused")
    losses["total"].backward()
    if modality == "fused":
        missing = [n for n, p in system.model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing


def test_head_branch_kernel_one_keeps_shapes_and_learns(tiny_batch):
    torch.manual_seed(0)
    three, one = build_model(TINY), build_model(dataclasses.replace(TINY, head_branch_kernel=1))
    out, losses = _loss(one, tiny_batch)
    assert out.heatmap.shape == (2, 10, 16, 16) and out.regression.shape == (2, 10, 12, 16, 16)
    losses["total"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in one.model.head.parameters())
    # six branch convolutions of hidden x hidden x 3 x 3 become 1 x 1: 8 of every 9 of their weights gone
    hidden = TINY.head_hidden
    n_three = sum(p.numel() for p in three.model.head.parameters())
    assert n_three - sum(p.numel() for p in one.model.head.parameters()) == 6 * hidden * hidden * 8
    with pytest.raises(ValueError, match="branch_kernel"):
        build_model(dataclasses.replace(TINY, head_branch_kernel=5))


def test_results_keep_the_formats_500_best_boxes_per_sample(tiny_batch, monkeypatch):
    """`top_k` above 500 (validation's evaluation rejects a sample with more): the 500 best-scored boxes are kept."""
    from fusion.models.box_coder import Detections
    from fusion.models.model import TINY
    from fusion.system import DetectionSystem

    system = DetectionSystem(model=TINY)
    b, k = len(tiny_batch), 640
    scores = torch.rand(b, k, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([0.0, 0.0, 0.0, 2.0, 4.0, 1.5, 0.0]).expand(b, k, 7)
    det = Detections(boxes=boxes, scores=scores, labels=torch.zeros(b, k, dtype=torch.long),
                     velocity=torch.zeros(b, k, 2), attributes=torch.full((b, k), -1),
                     mask=torch.ones(b, k, dtype=torch.bool))  # fmt: skip
    monkeypatch.setattr(system, "detect", lambda batch, out: det)
    records = system.results(tiny_batch, None)
    for i, token in enumerate(tiny_batch.tokens):
        got = sorted((r["detection_score"] for r in records[token]), reverse=True)
        assert got == pytest.approx(scores[i].sort(descending=True).values[:500].tolist())
