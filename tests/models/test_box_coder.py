import math

import torch

from fusion.models.bev_grid import BEVGrid
from fusion.models.box_coder import REGRESSION, BoxCoder, decode_yaw, gaussian_radius, yaw_difference

GRID = BEVGrid(x_range=(-51.2, 51.2), y_range=(-51.2, 51.2), cell=0.8)


def _maps_from_targets(targets, b: int, k: int, y: int, x: int):
    """Head outputs that say exactly what the targets say: logits of the heatmap, regression at the centre cells."""
    heat = targets.heatmap.clamp(1e-6, 1 - 1e-6)
    logits = (heat / (1 - heat)).log()
    reg = torch.zeros(b, k, len(REGRESSION), y * x)
    attr = torch.zeros(b, k, 8, y * x)
    bi, mi = targets.mask.nonzero(as_tuple=True)
    reg[bi, targets.labels[bi, mi], :, targets.cell[bi, mi]] = targets.regression[bi, mi]
    attr[bi, targets.labels[bi, mi], targets.attributes[bi, mi].clamp(min=0), targets.cell[bi, mi]] = 10.0
    return logits, reg.view(b, k, len(REGRESSION), y, x), attr.view(b, k, 8, y, x)


def test_encode_decode_recovers_gt_boxes(tiny_batch):
    b = tiny_batch
    coder = BoxCoder(GRID, num_classes=10, min_radius=2)
    t = coder.encode(b.boxes, b.velocity, b.labels, b.attributes, b.box_mask)
    assert t.heatmap.shape == (2, 10, 128, 128) and t.heatmap.max() == 1
    logits, reg, attr = _maps_from_targets(t, 2, 10, 128, 128)
    det = coder.decode(logits, reg, attr, top_k=200, score_threshold=0.99)
    n_found = 0
    for i in range(2):
        gt = t.mask[i].nonzero().squeeze(1)
        # GT boxes of one class sharing a centre cell cannot both be recovered; the tiny world has none
        assert len({(int(t.labels[i, j]), int(t.cell[i, j])) for j in gt}) == len(gt)
        boxes, labels = det.boxes[i][det.mask[i]], det.labels[i][det.mask[i]]
        assert len(boxes) == len(gt) > 5
        for j in gt:
            d = (boxes[:, :2] - b.boxes[i, j, :2]).norm(dim=1).where(labels == b.labels[i, j], math.inf)
            k = int(d.argmin())
            assert d[k] < 0.1 * GRID.cell
            torch.testing.assert_close(boxes[k, 2:6], b.boxes[i, j, 2:6], atol=1e-4, rtol=1e-5)
            assert yaw_difference(boxes[k, 6], b.boxes[i, j, 6]) < 1e-4
            vel = det.velocity[i][det.mask[i]][k]
            torch.testing.assert_close(vel, b.velocity[i, j], atol=1e-5, rtol=0)
            if b.attributes[i, j] >= 0:
                assert det.attributes[i][det.mask[i]][k] == b.attributes[i, j]
            n_found += 1
    assert n_found == int(t.mask.sum())


def test_heatmap_gaussians_and_out_of_grid_boxes():
    coder = BoxCoder(GRID, num_classes=10, min_radius=2)
    boxes = torch.tensor([[[0.4, 0.4, 0.0, 2.0, 4.0, 1.5, 0.3], [90.0, 0.0, 0.0, 2.0, 4.0, 1.5, 0.0]]])
    t = coder.encode(boxes, torch.zeros(1, 2, 2), torch.tensor([[3, 0]]), torch.tensor([[-1, 5]]),
                     torch.ones(1, 2, dtype=torch.bool))  # fmt: skip
    assert t.mask.tolist() == [[True, False]] and t.labels.tolist() == [[3, -1]]
    heat = t.heatmap[0, 3]
    assert heat[64, 64] == 1 and t.cell[0, 0] == 64 * 128 + 64
    assert 0 < heat[64, 66] < heat[64, 65] < 1 and heat[64, 67] == 0  # radius 2 cells, falling off
    assert t.heatmap[0, 0].sum() == 0 and t.heatmap.sum() == heat.sum()
    torch.testing.assert_close(t.regression[0, 0, :2], torch.tensor([0.5, 0.5]))


def test_heatmap_matches_a_per_box_loop_over_cells():
    """Every box's Gaussian computed cell by cell (radius and sigma as CenterPoint's), max-combined per class."""
    torch.manual_seed(0)
    coder = BoxCoder(GRID, num_classes=4, min_radius=1)
    m = 12
    xy = (torch.rand(2, m, 2) - 0.5) * 140  # some outside the +-51.2 m grid
    boxes = torch.cat([xy, torch.zeros(2, m, 1), torch.rand(2, m, 3) * 4 + 0.5, torch.rand(2, m, 1) * 6], -1)
    labels = torch.randint(0, 4, (2, m))
    box_mask = torch.rand(2, m) > 0.2
    t = coder.encode(boxes, torch.zeros(2, m, 2), labels, torch.full((2, m), -1), box_mask)
    expected = torch.zeros(2, 4, GRID.ny, GRID.nx)
    for b in range(2):
        for j in range(m):
            if not t.mask[b, j]:
                continue
            r = float(gaussian_radius(boxes[b, j, 4] / GRID.cell, boxes[b, j, 3] / GRID.cell, 0.1).floor().clamp(min=1))
            sigma = (2 * r + 1) / 6
            cy, cx = divmod(int(t.cell[b, j]), GRID.nx)
            for y in range(max(cy - int(r), 0), min(cy + int(r), GRID.ny - 1) + 1):
                for x in range(max(cx - int(r), 0), min(cx + int(r), GRID.nx - 1) + 1):
                    value = math.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
                    expected[b, labels[b, j], y, x] = max(float(expected[b, labels[b, j], y, x]), value)
    assert t.mask.any() and not t.mask.all()
    torch.testing.assert_close(t.heatmap, expected, rtol=1e-6, atol=1e-6)


def test_yaw_is_the_axis_turned_by_the_heading():
    """The doubled angle fixes the axis; the heading only decides between yaw and yaw + pi, and an undecided
    heading (sin, cos ~ 0, what an L1 fit to front/back-ambiguous targets gives) still yields the right axis."""
    yaw = torch.linspace(-math.pi + 1e-3, math.pi, 97)
    s2, c2 = (2 * yaw).sin(), (2 * yaw).cos()
    assert yaw_difference(decode_yaw(yaw.sin(), yaw.cos(), s2, c2), yaw).max() < 1e-5
    noisy = decode_yaw(0.3 * yaw.sin() + 0.05, 0.3 * yaw.cos() - 0.05, s2, c2)  # shrunk, biased heading
    assert yaw_difference(noisy, yaw).max() < 1e-5
    undecided = decode_yaw(torch.full_like(yaw, 1e-4), torch.zeros_like(yaw), s2, c2)
    axis_error = yaw_difference(undecided, yaw)
    assert torch.minimum(axis_error, math.pi - axis_error).max() < 1e-5  # right axis, either heading
    assert (undecided > -math.pi).all() and (undecided <= math.pi).all()


def test_ground_truth_through_the_coder_scores_ap_one_at_bev_iou_07(tiny_root, tmp_path):
    """GT boxes -> encode -> decode -> nuScenes results JSON (global frame) -> `fusion.evaluation`: every class's AP
    at BEV IoU 0.7 is 1 (boxes with no LiDAR point are left out: the evaluation drops them from the GT)."""
    from dataclasses import replace

    from fusion.data.dataset import LoaderConfig, NuScenesDataset
    from fusion.data.index import load_index
    from fusion.data.submission import to_results
    from fusion.data.types import collate
    from fusion.evaluation import evaluate

    ds = NuScenesDataset(load_index(tiny_root, "v1.0-mini", "mini_val", tmp_path), LoaderConfig(image_size=(64, 36)))
    grid = BEVGrid(x_range=(-51.2, 51.2), y_range=(-51.2, 51.2), cell=1.6)
    coder = BoxCoder(grid, num_classes=10, min_radius=1)
    results = {}
    for i in range(len(ds)):
        b = collate([ds[i]])
        b = replace(b, box_mask=b.box_mask & (b.num_points > 0))
        t = coder.encode(b.boxes, b.velocity, b.labels, b.attributes, b.box_mask)
        det = coder.decode(*_maps_from_targets(t, 1, 10, grid.ny, grid.nx), top_k=500, score_threshold=0.99)
        k = det.mask[0]
        results[b.tokens[0]] = to_results(
            b.tokens[0], b.global_from_lidar[0].double().numpy(), det.boxes[0][k].numpy(), det.scores[0][k].numpy(),
            det.labels[0][k].numpy(), det.velocity[0][k].numpy(), det.attributes[0][k].numpy(),
        )  # fmt: skip
    meta = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}
    m = evaluate(tiny_root, "v1.0-mini", "mini_val", {"meta": meta, "results": results}, cache_dir="")
    bev = m["iou_ap"]["bev"]["global"]["0.7"]
    assert bev["car"] == 1.0
    assert all(v == 1.0 for v in bev.values() if v is not None)


def test_regression_trained_around_the_centre_decodes_the_centre_from_a_neighbour_cell():
    grid = BEVGrid(x_range=(-12.8, 12.8), y_range=(-12.8, 12.8), cell=1.6)
    coder = BoxCoder(grid, num_classes=10, min_radius=1, near=1)
    boxes = torch.tensor([[[1.0, 2.3, -1.0, 2.0, 4.5, 1.6, 0.4], [-12.0, 0.5, 0.0, 2.0, 4.5, 1.6, 0.0]]])
    t = coder.encode(boxes, torch.zeros(1, 2, 2), torch.tensor([[0, 0]]), torch.tensor([[-1, -1]]),
                     torch.ones(1, 2, dtype=torch.bool))  # fmt: skip
    assert t.near_cell.shape == (1, 2, 9) and t.near_mask[0, 0].all() and t.near_mask[0, 1].sum() == 6  # grid edge
    assert (t.near_cell[0, :, 0] == t.cell[0]).all()  # the centre cell first
    n = grid.ny * grid.nx
    for j in range(9):  # a heatmap peaking at neighbour j of the first box
        reg = torch.zeros(1, 10, len(REGRESSION), n)
        reg[0, 0, :, t.near_cell[0, 0]] = t.near_regression[0, 0].T
        heat = torch.full((1, 10, n), -10.0)
        heat[0, 0, t.near_cell[0, 0, j]] = 10.0
        shape = (1, 10, grid.ny, grid.nx)
        det = coder.decode(heat.view(shape), reg.view(1, 10, len(REGRESSION), grid.ny, grid.nx),
                           torch.zeros(1, 10, 8, grid.ny, grid.nx), top_k=1)  # fmt: skip
        torch.testing.assert_close(det.boxes[0, 0, :6], boxes[0, 0, :6], atol=1e-4, rtol=1e-5)


def test_decoded_attributes_are_those_of_the_class():
    """A box takes the best attribute its class has in nuScenes, whatever the other logits say; barriers and cones,
    which have none, get -1 (an empty `attribute_name` in the results)."""
    from fusion.data.submission import to_results
    from fusion.data.types import ATTRIBUTES, CLASS_ATTRIBUTES, DETECTION_CLASSES

    grid = BEVGrid(x_range=(-6.4, 6.4), y_range=(-6.4, 6.4), cell=1.6)  # 8 x 8
    coder = BoxCoder(grid, num_classes=10, min_radius=1)
    heat = torch.full((1, 10, 8, 8), -9.0)
    attr = torch.zeros(1, 10, 8, 8, 8)
    for c in range(10):  # class c peaks at its own cell; its highest logit is an attribute of another family
        heat[0, c, c // 4 * 3, c % 4 * 2] = 5.0
        attr[0, c, :, c // 4 * 3, c % 4 * 2] = torch.arange(8.0)  # vehicle.stopped (7) highest, cycle.* lowest
        attr[0, c, 1, c // 4 * 3, c % 4 * 2] = 3.5  # cycle.without_rider beats the pedestrian and lower ones
    det = coder.decode(heat, torch.zeros(1, 10, 12, 8, 8), attr, top_k=10, score_threshold=0.5)
    assert int(det.mask.sum()) == 10
    want = {"car": "vehicle.stopped", "bus": "vehicle.stopped", "bicycle": "cycle.without_rider",
            "motorcycle": "cycle.without_rider", "pedestrian": "pedestrian.sitting_lying_down"}  # fmt: skip
    for label, a in zip(det.labels[0].tolist(), det.attributes[0].tolist(), strict=True):
        name = DETECTION_CLASSES[label]
        if not CLASS_ATTRIBUTES[name]:
            assert a == -1, name
        else:
            assert ATTRIBUTES[a] in CLASS_ATTRIBUTES[name] and ATTRIBUTES[a] == want.get(name, ATTRIBUTES[a]), name
    records = to_results("s", torch.eye(4).double().numpy(), det.boxes[0].numpy(), det.scores[0].numpy(),
                         det.labels[0].numpy(), det.velocity[0].numpy(), det.attributes[0].numpy())  # fmt: skip
    for r in records:
        assert (r["attribute_name"] == "") == (r["detection_name"] in ("barrier", "traffic_cone"))


def test_decoding_bfloat16_maps_matches_float32():
    """Mixed-precision validation hands the decoder bfloat16 maps: neighbouring scores that round to one value must
    not all pass the peak test, and the boxes equal float32 decoding of the same (rounded) logits."""
    grid = BEVGrid(x_range=(-6.4, 6.4), y_range=(-6.4, 6.4), cell=1.6)
    coder = BoxCoder(grid, num_classes=10, min_radius=1)
    heat = torch.full((1, 10, 8, 8), -9.0)
    heat[0, 0, 3, 2:5] = torch.tensor([6.0, 5.8, 5.7])  # one peak and two shoulders: sigmoid 0.9975 / 0.9970 / 0.9967
    reg, attr = torch.randn(1, 10, 12, 8, 8) * 0.1, torch.randn(1, 10, 8, 8, 8)
    maps = (heat, reg, attr)
    full = coder.decode(*(m.bfloat16().float() for m in maps), top_k=20, score_threshold=0.5)
    half = coder.decode(*(m.bfloat16() for m in maps), top_k=20, score_threshold=0.5)
    assert int(full.mask.sum()) == int(half.mask.sum()) == 1
    for field in ("boxes", "scores", "labels", "attributes"):
        torch.testing.assert_close(getattr(half, field), getattr(full, field))
