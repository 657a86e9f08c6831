"""Detection losses (CenterPoint): Gaussian focal loss on the heatmap, L1 on the regression at GT centres,
cross-entropy on the attributes of the boxes that have one."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fusion.models.box_coder import REGRESSION, Targets
from fusion.models.head import HeadOutput

# CenterPoint's nuScenes code weights (velocity counts less than the box itself), and the doubled yaw angle's
CODE_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2, 1.0, 1.0)


def gaussian_focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0
) -> torch.Tensor:
    """CornerNet / CenterNet focal loss on heatmaps <B, K, Y, X>; positives are the cells where target == 1,
    normalised by their number. In float32 whatever the logits' dtype: in bfloat16 1 - 1e-4 rounds to 1, the clamp
    no longer keeps p below 1, and a confident cell's log(1 - p) * 0 is NaN."""
    p = logits.float().sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_loss = p.log() * (1 - p) ** alpha * pos
    neg_loss = (1 - p).log() * p**alpha * (1 - target) ** beta * (1 - pos)
    return -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1)


class DetectionLoss(nn.Module):
    """`HeadOutput` + `Targets` -> {"heatmap", "regression", "attribute", "total"}."""

    def __init__(self, heatmap_weight: float = 1.0, regression_weight: float = 0.25, attribute_weight: float = 0.2,
                 code_weights: tuple[float, ...] = CODE_WEIGHTS):  # fmt: skip
        super().__init__()
        assert len(code_weights) == len(REGRESSION)
        self.heatmap_weight, self.regression_weight, self.attribute_weight = (
            heatmap_weight,
            regression_weight,
            attribute_weight,
        )
        self.register_buffer("code_weights", torch.tensor(code_weights), persistent=False)

    def forward(self, out: HeadOutput, targets: Targets) -> dict[str, torch.Tensor]:
        b = out.heatmap.shape[0]
        batch = torch.arange(b, device=out.heatmap.device)[:, None]
        labels = targets.labels.clamp(min=0)
        mask = targets.mask.float()  # (B, M)
        n_boxes = mask.sum().clamp(min=1)

        heatmap = gaussian_focal_loss(out.heatmap, targets.heatmap)
        if targets.near_cell is None:  # centre cells only
            reg = out.regression.flatten(3)[batch, labels, :, targets.cell]  # (B, M, R) at each box's class and cell
            regression = ((reg - targets.regression).abs() * self.code_weights * mask[..., None]).sum() / n_boxes
        else:  # every trained cell around each centre, each counted once
            near = targets.near_mask.float()  # (B, M, N)
            reg = out.regression.flatten(3)[batch[..., None], labels[..., None], :, targets.near_cell]  # (B, M, N, R)
            regression = ((reg - targets.near_regression).abs() * self.code_weights * near[..., None]).sum()
            regression = regression / near.sum().clamp(min=1)
        has_attr = targets.mask & (targets.attributes >= 0)
        if has_attr.any():
            logits = out.attributes.flatten(3)[batch, labels, :, targets.cell]  # (B, M, A)
            attribute = F.cross_entropy(logits[has_attr].float(), targets.attributes[has_attr])
        else:
            attribute = out.attributes.sum() * 0.0  # keeps the graph connected when no box has an attribute
        total = self.heatmap_weight * heatmap + self.regression_weight * regression + self.attribute_weight * attribute
        return {"heatmap": heatmap, "regression": regression, "attribute": attribute, "total": total}
