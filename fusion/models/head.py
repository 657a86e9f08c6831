"""CenterPoint detection head (Yin et al. 2021): per class group, a BEV centre heatmap, box regression and
attribute logits.

Classes that look alike share a branch (CenterPoint's nuScenes task groups), each branch predicting the regression
channels of `box_coder.REGRESSION` and the attribute logits for its classes; `forward` expands them to per-class maps
so that the loss and the decoder index everything by class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from fusion.models.box_coder import REGRESSION
from fusion.models.camera_to_bev import ImageFeatures

# CenterPoint's nuScenes groups, as indices into DETECTION_CLASSES: car | truck, construction_vehicle | bus, trailer |
# barrier | motorcycle, bicycle | pedestrian, traffic_cone
CLASS_GROUPS = ((0,), (1, 2), (3, 4), (5,), (6, 7), (8, 9))


@dataclass(frozen=True)
class HeadOutput:
    """heatmap <B, K, Y, X> logits; regression <B, K, R, Y, X> (R = len(REGRESSION)); attributes <B, K, A, Y, X>
    logits; features <B, C, Y, X>: the BEV map the head ran on (what the second stage samples at its boxes); depth
    <B, cameras, h, w, K>: the camera lift's depth-bin logits per patch, when it estimates depth (`depth_bins`);
    images: the image encoder's patch tokens with the calibrations (what the second stage samples with
    `refine_image`)."""

    heatmap: torch.Tensor
    regression: torch.Tensor
    attributes: torch.Tensor
    features: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    images: ImageFeatures | None = None


def _conv_block(c_in: int, c_out: int, dilation: int = 1, kernel: int = 3) -> nn.Sequential:
    conv = nn.Conv2d(c_in, c_out, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=False)
    return nn.Sequential(conv, nn.GroupNorm(1, c_out), nn.ReLU())


class ResidualBlock(nn.Module):
    """x + conv(conv(x)) on a BEV map <B, C, Y, X> (CenterPoint's BEV neck, one block of it)."""

    def __init__(self, dim: int, dilation: int = 1):
        super().__init__()
        self.body = nn.Sequential(_conv_block(dim, dim, dilation), nn.Conv2d(dim, dim, 3, padding=1, bias=False),
                                  nn.GroupNorm(1, dim))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class DetectionHead(nn.Module):
    """Fused BEV <B, in_dim, Y, X> -> `HeadOutput`.

    `branch_kernel`: the kernel of each class group's own convolution, 3 as CenterPoint's separate heads, or 1, where
    the shared 3x3 convolution (and the neck) give all the spatial context: the branches then cost 1/9 of their FLOPs
    (a quarter of the forward's at the CPU default). It learnt worse at equal steps, so 3 is the default everywhere
    (docs/benchmarks.md, **The floor under the fusion overhead**)."""

    def __init__(self, in_dim: int = 64, hidden: int = 64, groups: tuple[tuple[int, ...], ...] = CLASS_GROUPS,
                 num_attributes: int = 8, prior: float = 0.1, neck_blocks: int = 0,
                 branch_kernel: int = 3):  # fmt: skip
        super().__init__()
        if branch_kernel not in (1, 3):
            raise ValueError(f"head branch_kernel must be 1 or 3, got {branch_kernel}")
        self.groups, self.num_attributes = groups, num_attributes
        self.num_classes = sum(len(g) for g in groups)
        class_to_group = torch.empty(self.num_classes, dtype=torch.long)
        for gi, classes in enumerate(groups):
            class_to_group[list(classes)] = gi
        order = torch.tensor([c for classes in groups for c in classes]).argsort()  # group-major -> class order
        self.register_buffer("class_to_group", class_to_group, persistent=False)
        self.register_buffer("class_order", order, persistent=False)
        # a small convolutional BEV neck: dense local context that the box regression needs (dilations 1, 2, 1, ...)
        self.shared = nn.Sequential(_conv_block(in_dim, hidden),
                                    *(ResidualBlock(hidden, 1 + i % 2) for i in range(neck_blocks)))  # fmt: skip
        self.branches = nn.ModuleList(
            nn.Sequential(
                _conv_block(hidden, hidden, kernel=branch_kernel),
                nn.Conv2d(hidden, len(g) + len(REGRESSION) + num_attributes, 1),
            )
            for g in groups
        )
        for branch, classes in zip(self.branches, groups, strict=True):
            # heatmap logits start at the prior, as in RetinaNet / CenterPoint, so the focal loss starts small
            nn.init.constant_(branch[-1].bias[: len(classes)], -math.log((1 - prior) / prior))

    def forward(self, bev: torch.Tensor) -> HeadOutput:
        x = self.shared(bev)
        heat, reg, attr = [], [], []
        for branch, classes in zip(self.branches, self.groups, strict=True):
            h, r, a = branch(x).split([len(classes), len(REGRESSION), self.num_attributes], dim=1)
            heat.append(h), reg.append(r), attr.append(a)
        heatmap = torch.cat(heat, 1)[:, self.class_order]  # (B, K, Y, X) in class order
        regression = torch.stack(reg, 1)[:, self.class_to_group]  # (B, G, R, Y, X) -> (B, K, R, Y, X)
        attributes = torch.stack(attr, 1)[:, self.class_to_group]  # (B, K, A, Y, X)
        return HeadOutput(heatmap=heatmap, regression=regression, attributes=attributes, features=bev)
