"""The LiDAR second stage: residual coding, point gathering against a per-box loop, targets against the evaluation's
IoU, batched against single samples, and a small fit that must tighten boxes."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from fusion.evaluation.rotated_iou import bev_corners, pair_iou
from fusion.models.bev_grid import BEVGrid
from fusion.models.box_coder import Detections
from fusion.models.camera_to_bev import ImageFeatures
from fusion.models.refine import (
    BoxRefiner,
    box_bev_points,
    decode_residual,
    encode_residual,
    gather_box_points,
    jitter_boxes,
    refinement_loss,
    refinement_targets,
    wrap_half_pi,
    wrap_pi,
)


def random_boxes(gen: torch.Generator, *shape: int) -> torch.Tensor:
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(*shape, generator=gen)  # noqa: E731
    return torch.stack([u(-20, 20), u(-20, 20), u(-1, 1), u(0.5, 3), u(0.5, 10), u(1, 3), u(-math.pi, math.pi)], -1)


def surface_points(gen: torch.Generator, boxes: torch.Tensor, per_box: int) -> torch.Tensor:
    """Points on the BEV outline of each box <K, 7> (at random heights inside it) -> <K * per_box, 5>."""
    k = len(boxes)
    t = torch.rand(k, per_box, generator=gen) * 4
    side = t.floor()
    f = t - side
    sx = torch.where(side == 0, 2 * f - 1, torch.where(side == 1, 1.0, torch.where(side == 2, 1 - 2 * f, -1.0)))
    sy = torch.where(side == 0, -1.0, torch.where(side == 1, 2 * f - 1, torch.where(side == 2, 1.0, 1 - 2 * f)))
    lx, ly = sx * boxes[:, None, 4] / 2, sy * boxes[:, None, 3] / 2
    c, s = boxes[:, None, 6].cos(), boxes[:, None, 6].sin()
    z = boxes[:, None, 2] + (torch.rand(k, per_box, generator=gen) - 0.5) * boxes[:, None, 5]
    x, y = boxes[:, None, 0] + c * lx - s * ly, boxes[:, None, 1] + s * lx + c * ly
    extra = torch.rand(k, per_box, 2, generator=gen) * torch.tensor([255.0, 0.1])
    return torch.cat([torch.stack([x, y, z], -1), extra], -1).reshape(-1, 5)


def test_decode_inverts_encode():
    gen = torch.Generator().manual_seed(0)
    proposals, boxes = random_boxes(gen, 3, 50), random_boxes(gen, 3, 50)
    decoded = decode_residual(proposals, encode_residual(proposals, boxes))
    torch.testing.assert_close(decoded[..., :6], boxes[..., :6], atol=1e-4, rtol=1e-4)
    assert wrap_half_pi(decoded[..., 6] - boxes[..., 6]).abs().max() < 1e-4  # the axis, up to pi


def test_gather_matches_a_per_box_loop():
    gen = torch.Generator().manual_seed(1)
    boxes = random_boxes(gen, 2, 7)
    points = (
        torch.cat([surface_points(gen, boxes[0], 30), torch.randn(500, 5, generator=gen) * 15]),
        torch.cat([surface_points(gen, boxes[1], 30), torch.randn(400, 5, generator=gen) * 15]),
    )
    n = max(len(p) for p in points)
    pts = torch.zeros(2, n, 5)
    mask = torch.zeros(2, n, dtype=torch.bool)
    for b, p in enumerate(points):
        pts[b, : len(p)], mask[b, : len(p)] = p, True
    num, margin, scale = 48, 0.5, 1.2
    local, valid = gather_box_points(pts, mask, boxes, num, margin, scale)
    for b in range(2):
        p = points[b].numpy().astype(np.float64)
        for k in range(boxes.shape[1]):
            x, y, z, w, length, h, yaw = boxes[b, k].double().numpy()
            dx, dy = p[:, 0] - x, p[:, 1] - y
            lx, ly = math.cos(yaw) * dx + math.sin(yaw) * dy, -math.sin(yaw) * dx + math.cos(yaw) * dy
            inside = (
                (abs(lx) <= length * scale / 2 + margin)
                & (abs(ly) <= w * scale / 2 + margin)
                & (abs(p[:, 2] - z) <= h * scale / 2 + margin)
            )
            expected = np.stack([lx, ly, p[:, 2] - z, p[:, 3], p[:, 4]], 1)[inside]
            got = local[b, k][valid[b, k]].double().numpy()
            assert len(got) == min(num, inside.sum())
            # every gathered point is one of the box's points (a crowded box keeps a subset)
            d = np.abs(got[:, None, :] - expected[None]).max(-1).min(-1)
            assert d.max() < 1e-3
    assert (local[~valid] == 0).all()


def test_gather_finds_the_corners_of_turned_boxes():
    """The candidates are each enlarged box's axis-aligned BEV rectangle: points a centimetre inside the corners of
    turned boxes (where a turned box touches its rectangle) are gathered, points a centimetre outside are not."""
    gen = torch.Generator().manual_seed(4)
    boxes = random_boxes(gen, 1, 40)
    boxes[0, :8, 6] = torch.tensor([0.0, math.pi / 2, math.pi / 4, -math.pi / 4, math.pi, 0.01, 1.56, -3.13])
    margin, scale = 0.5, 1.2
    b = boxes[0]
    c, s = b[:, 6].cos(), b[:, 6].sin()
    signs = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])  # (4, 2) along, across
    points = []
    for inset in (0.01, -0.01):  # inside, then outside, each corner
        hl = (b[:, 4] * scale / 2 + margin - inset)[:, None] * signs[:, 0]  # (K, 4)
        hw = (b[:, 3] * scale / 2 + margin - inset)[:, None] * signs[:, 1]
        x, y = b[:, 0, None] + c[:, None] * hl - s[:, None] * hw, b[:, 1, None] + s[:, None] * hl + c[:, None] * hw
        z = b[:, 2, None].expand_as(x)
        points.append(torch.stack([x, y, z, torch.full_like(x, 7.0), torch.zeros_like(x)], -1).reshape(-1, 5))
    pts = torch.cat(points)[None]
    mask = torch.ones(1, pts.shape[1], dtype=torch.bool)
    local, valid = gather_box_points(pts, mask, boxes, 64, margin, scale)
    p = pts[0].double().numpy()
    for k in range(boxes.shape[1]):
        x, y, _z, w, length, _h, yaw = b[k].double().tolist()
        dx, dy = p[:, 0] - x, p[:, 1] - y
        lx, ly = math.cos(yaw) * dx + math.sin(yaw) * dy, -math.sin(yaw) * dx + math.cos(yaw) * dy
        inside = (np.abs(lx) <= length * scale / 2 + margin) & (np.abs(ly) <= w * scale / 2 + margin)
        assert int(valid[0, k].sum()) == int(inside.sum()) >= 4  # its own four inner corners at least
        got = np.sort(local[0, k][valid[0, k]][:, :2].double().numpy(), axis=0)
        want = np.sort(np.stack([lx, ly], 1)[inside], axis=0)
        np.testing.assert_allclose(got, want, atol=1e-4)


GRID = BEVGrid((-25.6, 25.6), (-25.6, 25.6), 1.6)


@pytest.mark.parametrize("bev_dim", [0, 6])
def test_refiner_starts_as_the_identity_and_batches_like_single_samples(bev_dim):
    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(0)
    refiner = BoxRefiner(dim=16, num_points=32, bev_dim=bev_dim, grid=GRID).eval()
    torch.nn.init.normal_(refiner.residual.weight, std=0.1)  # leave the identity, so the comparison means something
    boxes = random_boxes(gen, 2, 5)
    pts = torch.stack([surface_points(gen, boxes[0], 20), surface_points(gen, boxes[1], 20)])  # (2, 100, 5)
    mask = torch.ones(2, 100, dtype=torch.bool)
    mask[1, 60:] = False  # the second sample has fewer points: padding must not leak in
    labels = torch.randint(0, 10, (2, 5), generator=gen)
    bev = torch.randn(2, bev_dim, GRID.ny, GRID.nx, generator=gen) if bev_dim else None
    det = Detections(boxes, torch.rand(2, 5, generator=gen), labels, torch.zeros(2, 5, 2), labels, labels >= 0)
    both = refiner.refine(det, pts, mask, bev)
    for b in range(2):
        sl = slice(b, b + 1)
        n = int(mask[b].sum())
        single = Detections(*(getattr(det, f)[sl] for f in ("boxes", "scores", "labels", "velocity", "attributes",
                                                            "mask")))  # fmt: skip
        one = refiner.refine(single, pts[sl, :n], mask[sl, :n], None if bev is None else bev[sl])
        torch.testing.assert_close(one.boxes, both.boxes[sl], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(one.scores, both.scores[sl], atol=1e-6, rtol=1e-5)
    fresh = BoxRefiner(dim=16, num_points=32, bev_dim=bev_dim, grid=GRID).eval()
    torch.testing.assert_close(fresh.refine(det, pts, mask, bev).boxes, boxes)  # zero-initialised residual


def test_box_bev_points_are_the_centre_and_the_midpoints_of_the_evaluation_sides():
    gen = torch.Generator().manual_seed(5)
    boxes = random_boxes(gen, 40).double()
    got = box_bev_points(boxes).numpy()  # (40, 5, 2)
    corners = bev_corners(boxes[:, :2].numpy(), boxes[:, 3:6].numpy(), boxes[:, 6].numpy())  # (40, 4, 2)
    sides = (corners + np.roll(corners, -1, axis=1)) / 2  # the midpoint of each side, counter-clockwise
    np.testing.assert_allclose(got[:, 0], boxes[:, :2].numpy(), atol=1e-9)
    for k in range(40):  # the four face points are the four side midpoints, in some order
        dist = np.linalg.norm(got[k, 1:, None] - sides[k, None], axis=-1)  # (4, 4)
        assert sorted(dist.argmin(1)) == [0, 1, 2, 3] and dist.min(1).max() < 1e-9
    # front and back lie along l (the box's x axis), left and right along w
    np.testing.assert_allclose(np.linalg.norm(got[:, 1] - got[:, 2], axis=-1), boxes[:, 4].numpy(), atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(got[:, 3] - got[:, 4], axis=-1), boxes[:, 3].numpy(), atol=1e-9)


def test_batched_bev_sampling_matches_each_sample_alone():
    """`BEVGrid.sample` on a batch against the single-map sampler that scene QA tests against a bilinear loop."""
    from fusion.qa.objects import sample_bev

    gen = torch.Generator().manual_seed(6)
    bev = torch.randn(3, 4, GRID.ny, GRID.nx, generator=gen)
    xy = (torch.rand(3, 7, 5, 2, generator=gen) - 0.5) * 60  # some outside the grid
    got = GRID.sample(bev, xy)  # (3, 7, 5, 4)
    for b in range(3):
        torch.testing.assert_close(got[b], sample_bev(bev[b], xy[b], GRID))
    centre = GRID.cell_centres()[10, 20]  # a cell centre reads that cell
    torch.testing.assert_close(GRID.sample(bev, centre.expand(3, 1, 2))[:, 0], bev[:, :, 10, 20])


def test_the_bev_map_informs_the_refinement_and_must_be_given():
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(0)
    refiner = BoxRefiner(dim=16, num_points=32, bev_dim=4, grid=GRID).eval()
    boxes = random_boxes(gen, 1, 6)
    pts = surface_points(gen, boxes[0], 20)[None]
    mask = torch.ones(1, 120, dtype=torch.bool)
    labels = torch.zeros(1, 6, dtype=torch.long)
    bev = torch.randn(1, 4, GRID.ny, GRID.nx, generator=gen)
    with torch.no_grad():
        a = refiner(pts, mask, boxes, labels, bev)
        b = refiner(pts, mask, boxes, labels, bev * 2)
    assert (a.iou_logit - b.iou_logit).abs().max() > 1e-4
    with pytest.raises(ValueError, match="features"):
        refiner(pts, mask, boxes, labels)
    with pytest.raises(ValueError, match="grid"):
        BoxRefiner(bev_dim=4)


def test_the_image_patches_inform_the_refinement_batch_like_single_samples_and_must_be_given(tiny_batch):
    """With `image_dim` each box reads the patch tokens where its five points project (`ImageFeatures.sample`): they
    change its refinement, a camera that sees none of its points does not, and the batch equals its samples alone."""
    gen = torch.Generator().manual_seed(9)
    torch.manual_seed(0)
    refiner = BoxRefiner(dim=16, num_points=32, image_dim=6).eval()
    torch.nn.init.normal_(refiner.residual.weight, std=0.1)
    boxes = random_boxes(gen, 2, 5)
    pts = torch.stack([surface_points(gen, boxes[0], 20), surface_points(gen, boxes[1], 20)])  # (2, 100, 5)
    mask = torch.ones(2, 100, dtype=torch.bool)
    labels = torch.randint(0, 10, (2, 5), generator=gen)
    b = tiny_batch
    patches = torch.randn(2, 6, 6, 10, 6, generator=gen)
    images = ImageFeatures(patches, b.cam_from_lidar, b.intrinsics, b.camera_mask, 16)
    blind = ImageFeatures(patches, b.cam_from_lidar, b.intrinsics, torch.zeros_like(b.camera_mask), 16)
    with torch.no_grad():
        a = refiner(pts, mask, boxes, labels, images=images)
        doubled = refiner(pts, mask, boxes, labels, images=dataclasses.replace(images, patches=2 * patches))
        none = refiner(pts, mask, boxes, labels, images=blind)
        none_doubled = refiner(pts, mask, boxes, labels, images=dataclasses.replace(blind, patches=2 * patches))
        for i in range(2):
            sl = slice(i, i + 1)
            one = refiner(pts[sl], mask[sl], boxes[sl], labels[sl], images=images[sl])
            torch.testing.assert_close(one.residual, a.residual[sl], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(one.iou_logit, a.iou_logit[sl], atol=1e-5, rtol=1e-5)
    assert (a.iou_logit - doubled.iou_logit).abs().max() > 1e-4
    torch.testing.assert_close(none.iou_logit, none_doubled.iou_logit)  # no camera sees: the patches do not matter
    with pytest.raises(ValueError, match="images"):
        refiner(pts, mask, boxes, labels)


def test_targets_use_the_evaluation_iou_and_the_nearest_box():
    gen = torch.Generator().manual_seed(3)
    gt = random_boxes(gen, 1, 6)
    proposals = jitter_boxes(gt[:, [2, 0, 5]])
    t = refinement_targets(proposals, torch.ones(1, 3, dtype=torch.bool), gt, torch.ones(1, 6, dtype=torch.bool))
    matched = gt[0, [2, 0, 5]].double().numpy()
    p = proposals[0].double().numpy()
    bev, _ = pair_iou(p[:, :3], p[:, 3:6], p[:, 6], matched[:, :3], matched[:, 3:6], matched[:, 6])
    np.testing.assert_allclose(t.iou[0].numpy(), bev, atol=1e-6)
    torch.testing.assert_close(decode_residual(proposals, t.residual)[..., :6], gt[:, [2, 0, 5], :6], atol=1e-4,
                               rtol=1e-4)  # fmt: skip
    exact = refinement_targets(gt, torch.ones(1, 6, dtype=torch.bool), gt, torch.ones(1, 6, dtype=torch.bool))
    torch.testing.assert_close(exact.iou, torch.ones(1, 6))
    empty = refinement_targets(proposals, torch.ones(1, 3, dtype=torch.bool), gt[:, :0], torch.ones(1, 0).bool())
    assert empty.iou.eq(0).all() and not empty.regress.any()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_short_fit_tightens_jittered_boxes():
    """Boxes outlined by points, proposals jittered off them: 400 steps must raise their mean IoU well above the
    jittered proposals' (a refiner that learnt nothing keeps it)."""
    gen = torch.Generator().manual_seed(4)
    torch.manual_seed(4)
    refiner = BoxRefiner(dim=32, num_points=32)
    opt = torch.optim.Adam(refiner.parameters(), lr=3e-3)

    def scene(n_boxes: int = 8):
        gt = random_boxes(gen, 2, n_boxes)
        gt[..., 3:6] = gt[..., 3:6].clamp(max=5)
        pts = torch.stack([surface_points(gen, gt[b], 40) for b in range(2)])
        return gt, pts, torch.ones(pts.shape[:2], dtype=torch.bool)

    def mean_iou(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a.reshape(-1, 7).double().numpy(), b.reshape(-1, 7).double().numpy()
        return float(pair_iou(a[:, :3], a[:, 3:6], a[:, 6], b[:, :3], b[:, 3:6], b[:, 6])[0].mean())

    for _ in range(400):
        gt, pts, mask = scene()
        props = jitter_boxes(gt, centre=0.3)
        labels = torch.zeros(2, gt.shape[1], dtype=torch.long)
        t = refinement_targets(props, torch.ones_like(labels, dtype=torch.bool), gt, torch.ones_like(labels).bool())
        loss = sum(refinement_loss(refiner(pts, mask, props, labels), t).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    refiner.eval()
    gt, pts, mask = scene()
    props = jitter_boxes(gt, centre=0.3)
    labels = torch.zeros(2, gt.shape[1], dtype=torch.long)
    det = Detections(props, torch.ones(2, gt.shape[1]), labels, torch.zeros(2, gt.shape[1], 2), labels,
                     torch.ones_like(labels, dtype=torch.bool))  # fmt: skip
    before, after = mean_iou(props, gt), mean_iou(refiner.refine(det, pts, mask).boxes, gt)
    assert after > before + 0.05, (before, after)


def test_training_passes_train_each_pass_on_the_boxes_prediction_gives_it():
    """passes=2: the mean of the one-pass losses on the proposals and on the boxes that `refine` (one pass) makes of
    them, which is what prediction's second pass starts from."""
    gen = torch.Generator().manual_seed(6)
    torch.manual_seed(6)
    refiner = BoxRefiner(dim=16, num_points=16).eval()  # eval: a fixed choice of points, as `refine` makes
    torch.nn.init.normal_(refiner.residual.weight, std=0.05)  # not the identity, so that the passes differ
    gt = random_boxes(gen, 2, 5)
    gt[..., 3:6] = gt[..., 3:6].clamp(max=5)
    pts = torch.stack([surface_points(gen, gt[b], 30) for b in range(2)])
    mask = torch.ones(pts.shape[:2], dtype=torch.bool)
    props = jitter_boxes(gt, centre=0.3)
    props[1, 0, :2] += 200.0  # far from every point: a box without a point stays where it is
    labels = torch.zeros(2, 5, dtype=torch.long)
    gt_mask = torch.ones(2, 5, dtype=torch.bool)

    def det(boxes):
        return Detections(boxes, torch.ones(2, 5), labels, torch.zeros(2, 5, 2), labels, gt_mask.clone())

    def loss(boxes, passes=1):
        return refiner.training_loss(pts, mask, det(boxes), gt, labels, gt_mask, num_jitter=0, passes=passes)

    refined = refiner.refine(det(props), pts, mask).boxes
    assert torch.equal(refined[1, 0], props[1, 0]) and not torch.allclose(refined, props)
    one, two, both = loss(props), loss(refined), loss(props, passes=2)
    assert both.keys() == one.keys()
    for name in one:
        torch.testing.assert_close(both[name], (one[name] + two[name]) / 2, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="passes"):
        loss(props, passes=0)


def test_motion_targets_are_the_matched_box_direction_and_velocity_in_the_proposal_frame():
    gen = torch.Generator().manual_seed(6)
    gt = random_boxes(gen, 1, 6)
    velocity = torch.randn(1, 6, 2, generator=gen) * 5
    proposals = jitter_boxes(gt, yaw=0.3)
    turned = torch.tensor([[True, False, True, False, False, True]])
    proposals[..., 6] = proposals[..., 6] + math.pi * turned
    t = refinement_targets(proposals, torch.ones(1, 6, dtype=torch.bool), gt, torch.ones(1, 6, dtype=torch.bool),
                           gt_velocity=velocity)  # fmt: skip
    torch.testing.assert_close(t.direction, (~turned).float())
    yaw = proposals[0, :, 6]
    for k in range(6):  # the target turned back by the proposal's yaw is the ground truth's velocity
        c, s = math.cos(yaw[k]), math.sin(yaw[k])
        lx, ly = t.velocity[0, k].tolist()
        torch.testing.assert_close(torch.tensor([c * lx - s * ly, s * lx + c * ly]), velocity[0, k], atol=1e-5,
                                   rtol=1e-5)  # fmt: skip
    plain = refinement_targets(proposals, torch.ones(1, 6, dtype=torch.bool), gt, torch.ones(1, 6, dtype=torch.bool))
    assert plain.direction is None and plain.velocity is None
    empty = refinement_targets(proposals, torch.ones(1, 6, dtype=torch.bool), gt[:, :0], torch.ones(1, 0).bool(),
                               gt_velocity=velocity[:, :0])  # fmt: skip
    assert empty.direction.shape == (1, 6) and empty.velocity.abs().sum() == 0


def test_refine_with_motion_turns_boxes_facing_back_and_gives_velocity_in_the_lidar_frame():
    gen = torch.Generator().manual_seed(7)
    refiner = BoxRefiner(dim=16, num_points=16, iterations=2, motion=True).eval()
    boxes = random_boxes(gen, 2, 4)
    pts = torch.stack([surface_points(gen, boxes[0], 20), surface_points(gen, boxes[1], 20)])
    mask = torch.ones(2, 80, dtype=torch.bool)
    mask[1] = False  # the second sample has no point (camera-only): it keeps the first stage's boxes and velocity
    labels = torch.zeros(2, 4, dtype=torch.long)
    first_velocity = torch.randn(2, 4, 2, generator=gen)
    det = Detections(boxes, torch.ones(2, 4), labels, first_velocity, labels, torch.ones(2, 4, dtype=torch.bool))
    with torch.no_grad():  # a fixed answer: facing back, moving, 3 m/s along the box and 1 m/s to its left
        for head in (refiner.direction, refiner.moving, refiner.velocity):
            head.weight.zero_()
        refiner.direction.bias.fill_(-5.0)
        refiner.moving.bias.fill_(5.0)
        refiner.velocity.bias.copy_(torch.tensor([3.0, 1.0]))
    out = refiner.refine(det, pts, mask)
    yaw = boxes[0, :, 6]  # the residual starts at zero: the refined boxes are the proposals
    torch.testing.assert_close(out.boxes[0, :, :6], boxes[0, :, :6])
    torch.testing.assert_close(out.boxes[0, :, 6], wrap_pi(yaw + math.pi))
    want = torch.stack([3 * yaw.cos() - yaw.sin(), 3 * yaw.sin() + yaw.cos()], -1)
    torch.testing.assert_close(out.velocity[0], want)
    torch.testing.assert_close(out.boxes[1], boxes[1])
    torch.testing.assert_close(out.velocity[1], first_velocity[1])
    with torch.no_grad():  # facing the proposal's way, parked
        refiner.direction.bias.fill_(5.0)
        refiner.moving.bias.fill_(-5.0)
    out = refiner.refine(det, pts, mask)
    torch.testing.assert_close(out.boxes[0], boxes[0])
    assert out.velocity[0].abs().sum() == 0


def moving_box_points(gen: torch.Generator, boxes: torch.Tensor, velocity: torch.Tensor, per_sweep: int):
    """Outline points of boxes <K, 7> in three sweeps (lags 0, 0.1, 0.2 s), each sweep's box moved back by its
    velocity <K, 2> x lag, with a roof over the back half (what tells a car's back from its front)."""
    sweeps = []
    for lag in (0.0, 0.1, 0.2):
        moved = boxes.clone()
        moved[:, :2] -= velocity * lag
        p = surface_points(gen, moved, per_sweep)
        roof = moved.clone()
        along = torch.stack([moved[:, 6].cos(), moved[:, 6].sin()], -1)
        roof[:, :2] -= along * moved[:, 4:5] / 4
        roof[:, 4] /= 2
        roof[:, 2] += moved[:, 5] / 2  # points at the top face's height over the back half
        r = surface_points(gen, roof, per_sweep // 2)
        r[:, 2] = (moved[:, 2] + moved[:, 5] / 2).repeat_interleave(per_sweep // 2)
        p[:, 4], r[:, 4] = lag, lag
        sweeps += [p, r]
    return torch.cat(sweeps)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_short_fit_learns_which_way_boxes_face_and_how_fast_they_move():
    """Boxes moving at random velocities (some parked), their points in three sweeps, proposals jittered and half of
    them turned by pi: after a short fit the refined boxes face the right way far more often than chance, and the
    velocity error is well below that of predicting every box parked (or any one speed along the box)."""
    gen = torch.Generator().manual_seed(8)
    torch.manual_seed(8)
    refiner = BoxRefiner(dim=32, num_points=48, motion=True)
    opt = torch.optim.Adam(refiner.parameters(), lr=3e-3)

    def scene(n_boxes: int = 8):
        gt = random_boxes(gen, 2, n_boxes)
        gt[..., 3] = gt[..., 3].clamp(max=2.5)
        gt[..., 4] = gt[..., 3] + 2.0  # longer than wide, so that the axis is clear
        speed = torch.rand(2, n_boxes, 1, generator=gen) * 10 * (torch.rand(2, n_boxes, 1, generator=gen) < 0.6)
        velocity = speed * torch.stack([gt[..., 6].cos(), gt[..., 6].sin()], -1)
        pts = torch.stack([moving_box_points(gen, gt[b], velocity[b], 16) for b in range(2)])
        return gt, velocity, pts, torch.ones(pts.shape[:2], dtype=torch.bool)

    def proposals(gt):
        props = jitter_boxes(gt, centre=0.2, yaw=0.1)
        props[..., 6] += math.pi * (torch.rand(props.shape[:2], generator=gen) < 0.5)
        return props

    for _ in range(300):
        gt, velocity, pts, mask = scene()
        props, labels = proposals(gt), torch.zeros(2, gt.shape[1], dtype=torch.long)
        t = refinement_targets(props, torch.ones_like(labels, dtype=torch.bool), gt, torch.ones_like(labels).bool(),
                               gt_velocity=velocity)  # fmt: skip
        loss = sum(refinement_loss(refiner(pts, mask, props, labels), t).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    refiner.eval()
    right, error, parked = [], [], []
    for _ in range(4):
        gt, velocity, pts, mask = scene()
        props, labels = proposals(gt), torch.zeros(2, gt.shape[1], dtype=torch.long)
        det = Detections(props, torch.ones(2, gt.shape[1]), labels, torch.zeros_like(velocity), labels,
                         torch.ones_like(labels, dtype=torch.bool))  # fmt: skip
        out = refiner.refine(det, pts, mask)
        right.append((out.boxes[..., 6] - gt[..., 6]).cos() > 0)
        error.append((out.velocity - velocity).norm(dim=-1))
        parked.append(velocity.norm(dim=-1))
    right, error, parked = torch.cat(right).float().mean(), torch.cat(error).mean(), torch.cat(parked).mean()
    assert right > 0.8, right
    assert error < 0.65 * parked, (error, parked)  # a constant speed along the box would score about 1


@pytest.mark.parametrize("size", [0.1, 0.2])
def test_jittered_sizes_spread_by_the_size_given(size):
    """The log of each jittered size over the ground truth's is N(0, size) clipped at 2.5 sigma: its standard
    deviation is size x that of a standard normal clipped at +-a, sqrt(P(|X| < a) - 2 a phi(a) + a^2 P(|X| > a))."""
    a = 2.5
    inside = math.erf(a / math.sqrt(2))
    clipped_std = math.sqrt(inside - 2 * a * math.exp(-(a**2) / 2) / math.sqrt(2 * math.pi) + a**2 * (1 - inside))
    torch.manual_seed(0)
    gt = random_boxes(torch.Generator().manual_seed(1), 20000)
    ratio = (jitter_boxes(gt, size=size)[:, 3:6] / gt[:, 3:6]).log()
    assert ratio.abs().max() <= a * size + 1e-5
    torch.testing.assert_close(ratio.std(0), torch.full((3,), clipped_std * size), rtol=0.02, atol=0)


def test_the_system_jitters_sizes_as_configured(tiny_batch, monkeypatch):
    """`refine_jitter_size` reaches `jitter_boxes` through `DetectionSystem` and `BoxRefiner.training_loss`."""
    import fusion.models.refine as refine
    from fusion.models.model import TINY
    from fusion.system import DetectionSystem

    seen = []
    original = refine.jitter_boxes
    monkeypatch.setattr(refine, "jitter_boxes", lambda *a, **k: seen.append(k["size"]) or original(*a, **k))
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, refine=True, refine_dim=16, refine_points=16, refine_jitter_size=0.37)
    system = DetectionSystem(model=cfg, evaluate_every_epoch=False)
    system._losses(tiny_batch, system.model(tiny_batch))
    assert seen == [0.37]


@pytest.mark.parametrize("refine_bev", [False, True])
def test_the_system_trains_both_stages_and_predicts_refined_boxes(tiny_batch, refine_bev):
    """With `refine`, one training step sends a gradient to every parameter of both stages, and prediction returns
    the refined, rescored boxes of `DetectionSystem.detect` (also with every input the second stage can read: BEV
    map, motion, image patches)."""

    from fusion.models.model import TINY
    from fusion.system import DetectionSystem

    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, refine=True, refine_dim=16, refine_points=16, refine_bev=refine_bev,
                              refine_motion=refine_bev, refine_image=refine_bev)  # fmt: skip
    system = DetectionSystem(model=cfg, evaluate_every_epoch=False)
    losses = system._losses(tiny_batch, system.model(tiny_batch))
    assert {"refine_regression", "refine_score"} <= set(losses) and torch.isfinite(losses["total"])
    assert ({"refine_direction", "refine_moving", "refine_velocity"} <= set(losses)) == refine_bev
    losses["total"].backward()
    missing = [n for n, p in system.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    system.eval()
    with torch.no_grad():
        out = system.model(tiny_batch)
        refined = system.detect(tiny_batch, out)
        first = system.box_coder.decode(out.heatmap, out.regression, out.attributes, system.hparams.top_k,
                                        system.hparams.score_threshold)  # fmt: skip
    again = system.model.refiner.refine(first, tiny_batch.points, tiny_batch.point_mask, out.features, out.images)
    torch.testing.assert_close(refined.boxes, again.boxes)
    torch.testing.assert_close(refined.scores, again.scores)


def test_a_crowded_box_keeps_its_points_of_highest_key_in_order():
    """Prediction's fixed subset, against a per-box loop over the points `_near_any_box` keeps: the `num` inside
    points of highest golden-ratio key, highest first, in each box's slots."""
    from fusion.models.refine import _near_any_box

    gen = torch.Generator().manual_seed(3)
    boxes = random_boxes(gen, 1, 6)
    boxes[0, 1, :2] = boxes[0, 0, :2] + 0.3  # two overlapping boxes share points
    pts = torch.cat([surface_points(gen, boxes[0], 90), torch.randn(300, 5, generator=gen) * 10])[None]
    mask = torch.ones(1, len(pts[0]), dtype=torch.bool)
    mask[0, ::7] = False
    num, margin, scale = 16, 0.5, 1.2
    local, valid = gather_box_points(pts, mask, boxes, num, margin, scale)
    near, near_mask = _near_any_box(pts, mask, boxes, margin, scale)
    key = torch.arange(near.shape[1], dtype=torch.float64) * 0.6180339887498949 % 1.0
    for k in range(boxes.shape[1]):
        x, y, z, w, length, h, yaw = boxes[0, k].tolist()
        c, s = math.cos(yaw), math.sin(yaw)
        want = []
        for i in range(near.shape[1]):
            if not near_mask[0, i]:
                continue
            px, py, pz, intensity, lag = near[0, i].tolist()
            lx, ly = c * (px - x) + s * (py - y), -s * (px - x) + c * (py - y)
            if (
                abs(lx) <= length * scale / 2 + margin
                and abs(ly) <= w * scale / 2 + margin
                and abs(pz - z) <= h * scale / 2 + margin
            ):
                want.append((float(key[i]), [lx, ly, pz - z, intensity, lag]))
        want = [v for _, v in sorted(want, key=lambda e: -e[0])[:num]]
        assert int(valid[0, k].sum()) == len(want) and valid[0, k, : len(want)].all()
        if want:
            torch.testing.assert_close(local[0, k, : len(want)], torch.tensor(want), atol=1e-4, rtol=0)
    assert (valid.sum(-1) == num).any()  # some box is crowded


def test_refiner_pointnet_on_gathered_points_matches_every_slot_masked():
    """The reference: the point MLP on every slot of <B, K, M> with the box inputs concatenated, then a max over the
    valid slots (0 for a box without a point). Outputs and gradients agree."""
    from fusion.models.refine import point_features

    gen = torch.Generator().manual_seed(4)
    torch.manual_seed(0)
    refiner = BoxRefiner(dim=16, num_points=8).eval()
    torch.nn.init.normal_(refiner.residual.weight, std=0.1)
    boxes = random_boxes(gen, 2, 5)
    pts = torch.stack([surface_points(gen, boxes[0], 12), surface_points(gen, boxes[1], 12)])
    boxes[1, 4, :2] = 100.0  # a box without a point
    labels = torch.randint(0, 10, (2, 5), generator=gen)
    mask = torch.ones(2, pts.shape[1], dtype=torch.bool)
    got = refiner(pts, mask, boxes, labels)
    local, valid = gather_box_points(pts, mask, boxes, 8, refiner.margin)
    box = torch.cat([boxes[..., 3:6].clamp(min=1e-2).log(), torch.nn.functional.one_hot(labels, 10).float()], -1)
    feats = point_features(local, boxes[..., None, :].expand(-1, -1, 8, -1))
    x = refiner.point_mlp(torch.cat([feats, box[..., None, :].expand(-1, -1, 8, -1)], -1))
    x = x.masked_fill(~valid[..., None], float("-inf")).amax(2)
    x = torch.where(valid.any(-1)[..., None], x, torch.zeros_like(x))
    h = refiner.box_mlp(torch.cat([x, box], -1))
    assert not valid[1, 4].any() and valid.any()
    torch.testing.assert_close(got.residual, refiner.residual(h), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.iou_logit, refiner.iou(h).squeeze(-1), atol=1e-5, rtol=1e-5)
    grads = [torch.autograd.grad(out.square().sum(), list(refiner.point_mlp.parameters()))
             for out in (got.iou_logit, refiner.iou(h).squeeze(-1))]  # fmt: skip
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
