import torch

from fusion.models.bev_grid import BEVGrid
from fusion.models.box_coder import BoxCoder
from fusion.models.head import DetectionHead, HeadOutput
from fusion.models.losses import DetectionLoss, gaussian_focal_loss


def test_focal_loss_prefers_the_target():
    target = torch.zeros(1, 2, 8, 8)
    target[0, 1, 3, 3] = 1.0
    target[0, 1, 3, 4] = 0.6
    good = torch.where(target == 1, 8.0, -8.0)
    bad = torch.where(target == 1, -8.0, 8.0)
    assert gaussian_focal_loss(good, target) < 0.01 < gaussian_focal_loss(torch.zeros_like(good), target)
    assert gaussian_focal_loss(torch.zeros_like(good), target) < gaussian_focal_loss(bad, target)


def test_losses_vanish_on_perfect_regression_and_count_only_real_boxes():
    grid = BEVGrid(x_range=(-12.8, 12.8), y_range=(-12.8, 12.8), cell=1.6)
    coder = BoxCoder(grid, num_classes=10)
    boxes = torch.tensor([[[1.0, 2.0, -1.0, 2.0, 4.5, 1.6, 0.4], [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]]])
    t = coder.encode(boxes, torch.tensor([[[1.0, -2.0], [0.0, 0.0]]]), torch.tensor([[0, -1]]),
                     torch.tensor([[6, -1]]), torch.tensor([[True, False]]))  # fmt: skip
    reg = torch.zeros(1, 10, 12, 16 * 16)
    reg[0, 0, :, t.cell[0, 0]] = t.regression[0, 0]
    attr = torch.zeros(1, 10, 8, 16 * 16)
    attr[0, 0, 6, t.cell[0, 0]] = 20.0
    out = HeadOutput(torch.zeros(1, 10, 16, 16), reg.view(1, 10, 12, 16, 16), attr.view(1, 10, 8, 16, 16))
    losses = DetectionLoss()(out, t)
    assert losses["regression"] < 1e-6 and losses["attribute"] < 1e-6 and losses["heatmap"] > 0


def test_head_shapes_and_groups_share_regression():
    head = DetectionHead(in_dim=8, hidden=8)
    out = head(torch.randn(2, 8, 16, 16))
    assert out.heatmap.shape == (2, 10, 16, 16) and out.regression.shape == (2, 10, 12, 16, 16)
    assert out.attributes.shape == (2, 10, 8, 16, 16)
    torch.testing.assert_close(out.regression[:, 1], out.regression[:, 2])  # truck / construction vehicle
    assert not torch.allclose(out.regression[:, 0], out.regression[:, 1])
    assert abs(out.heatmap.sigmoid().mean() - 0.1) < 0.05  # the prior bias


def test_regression_loss_over_the_cells_around_each_centre():
    grid = BEVGrid(x_range=(-12.8, 12.8), y_range=(-12.8, 12.8), cell=1.6)
    coder = BoxCoder(grid, num_classes=10, near=1)
    boxes = torch.tensor([[[1.0, 2.0, -1.0, 2.0, 4.5, 1.6, 0.4]]])
    t = coder.encode(boxes, torch.zeros(1, 1, 2), torch.tensor([[0]]), torch.tensor([[-1]]), torch.ones(1, 1).bool())
    reg = torch.zeros(1, 10, 12, 16 * 16)
    reg[0, 0, :, t.near_cell[0, 0]] = t.near_regression[0, 0].T
    out = HeadOutput(torch.zeros(1, 10, 16, 16), reg.view(1, 10, 12, 16, 16), torch.zeros(1, 10, 8, 16, 16))
    assert DetectionLoss()(out, t)["regression"] < 1e-6
    reg[0, 0, 0, t.near_cell[0, 0, 4]] += 0.9  # one neighbour's dx off by 0.9: the mean over 9 cells moves by 0.1
    out = HeadOutput(out.heatmap, reg.view(1, 10, 12, 16, 16), out.attributes)
    torch.testing.assert_close(DetectionLoss()(out, t)["regression"], torch.tensor(0.1))


def test_focal_loss_is_finite_and_unchanged_on_bfloat16_logits():
    """Under bf16 autocast the head's logits arrive in bfloat16, where 1 - 1e-4 rounds to 1: a confident cell must
    not make the loss NaN (log(1 - p) * 0), and the loss is the float32 loss of the same logits."""
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 16, 16, generator=g) ** 4
    target[0, 1, 4, 4] = target[1, 2, 9, 3] = 1.0
    logits = (torch.randn(2, 3, 16, 16, generator=g) * 4).bfloat16()
    logits[0, 1, 4, 5] = 9.0  # a confident cell next to a centre
    want = gaussian_focal_loss(logits.float(), target)
    got = gaussian_focal_loss(logits, target)
    assert torch.isfinite(got) and got.dtype == torch.float32
    torch.testing.assert_close(got, want)
