"""The camera + LiDAR detector: cameras -> BEV, LiDAR -> BEV, shared trunk, heterogeneous fusion, CenterPoint head.

`FusionDetector` gets its parts by constructor injection (DETR style); `build_model` is the only place where a
`ModelConfig` meets the parts. A missing modality (no camera present, or no point) yields no nodes of that type, so
one checkpoint serves fused, camera-only and LiDAR-only input.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import nn

from fusion.data.types import ATTRIBUTES, DETECTION_CLASSES, Batch
from fusion.models.bev_grid import BEVGrid
from fusion.models.box_coder import BoxCoder, Detections
from fusion.models.camera_to_bev import CameraToBEV, ImageFeatures
from fusion.models.coarse_to_fine import CoarseToFine, SpaceToDepth
from fusion.models.head import CLASS_GROUPS, DetectionHead, HeadOutput
from fusion.models.hetero_fusion import HeteroFusion
from fusion.models.image_encoder import ImageEncoder
from fusion.models.losses import DetectionLoss
from fusion.models.node_types import CAMERA, LIDAR, NODE_TYPES
from fusion.models.point_encoder import PointEncoder
from fusion.models.refine import BoxRefiner
from fusion.models.trunk import Trunk


class FusionDetector(nn.Module):
    def __init__(self, image_encoder: ImageEncoder, camera_to_bev: CameraToBEV, point_encoder: PointEncoder,
                 trunk: Trunk, fusion: HeteroFusion, head: DetectionHead,
                 scale: CoarseToFine | None = None, refiner: BoxRefiner | None = None,
                 lidar_to_bev: SpaceToDepth | None = None):  # fmt: skip
        super().__init__()
        self.image_encoder, self.camera_to_bev, self.point_encoder = image_encoder, camera_to_bev, point_encoder
        self.trunk, self.fusion, self.head = trunk, fusion, head
        self.scale = scale if scale is not None else CoarseToFine(trunk.out_dim, 1)
        # the point encoder's grid -> the grid of the lift, trunk, fusion and head (`bev_stride`; identity at 1)
        self.lidar_to_bev = lidar_to_bev if lidar_to_bev is not None else SpaceToDepth(trunk.out_dim, 1)
        self.refiner = refiner  # the second stage, applied to decoded boxes (`BoxRefiner.refine`); None: one stage

    def forward(self, batch: Batch) -> HeadOutput:
        return self.forward_features(batch)[1]

    def forward_features(self, batch: Batch) -> tuple[torch.Tensor, HeadOutput]:
        """The fused BEV map <B, C, Y, X> (what the scene-QA head pools object tokens from) and the head output."""
        patches = self.image_encoder(batch.images, batch.camera_mask)  # (B, 6, h, w, C_img)
        depth = self.camera_to_bev.depth_logits(patches)  # (B, 6, h, w, K) or None (no depth estimate)
        camera, camera_valid = self.camera_to_bev(patches, batch.cam_from_lidar, batch.intrinsics, batch.camera_mask,
                                                  depth)  # fmt: skip
        lidar, lidar_valid = self.lidar_to_bev(*self.point_encoder(batch.points, batch.point_mask))  # (B, C, Y, X)
        full, valid = {CAMERA: camera, LIDAR: lidar}, {CAMERA: camera_valid, LIDAR: lidar_valid}
        coarse = {t: self.scale.down(full[t], valid[t]) for t in full}  # (B, C, Y/s, X/s), (B, Y/s, X/s)
        tokens = {t: self.trunk.forward_bev(x, v, t) for t, (x, v) in coarse.items()}
        fused = self.fusion(tokens, {t: v for t, (_, v) in coarse.items()})  # (B, C, Y/s, X/s)
        fused = self.scale.up(fused, full, valid)  # (B, C, Y, X)
        images = ImageFeatures(patches, batch.cam_from_lidar, batch.intrinsics, batch.camera_mask,
                               self.image_encoder.patch)  # fmt: skip
        return fused, replace(self.head(fused), depth=depth, images=images)


def detect(model: FusionDetector, box_coder: BoxCoder, head: HeadOutput, points: torch.Tensor,
           point_mask: torch.Tensor, top_k: int, score_threshold: float) -> Detections:  # fmt: skip
    """The head's decoded boxes (lidar frame), refined and rescored by the model's second stage when it has one:
    the boxes that prediction, validation, the app and scene QA all use."""
    det = box_coder.decode(head.heatmap, head.regression, head.attributes, top_k, score_threshold)
    return det if model.refiner is None else model.refiner.refine(det, points, point_mask, head.features, head.images)


@dataclass(frozen=True)
class ModelConfig:
    """Every size of the detector. BEV sides (grid extent / cell) must be divisible by both windows."""

    x_range: tuple[float, float] = (-51.2, 51.2)
    y_range: tuple[float, float] = (-51.2, 51.2)
    z_range: tuple[float, float] = (-3.0, 3.0)
    cell: float = 0.8  # the point encoder's pillars; the BEV grid of every later stage has cells of cell x bev_stride
    image_size: tuple[int, int] = (180, 320)  # (H, W) of the images the loader serves
    vit_hidden: int = 192
    vit_layers: int = 6
    vit_heads: int = 3
    vit_patch: int = 16
    vit_pretrained_dir: str | None = None
    # what a checkpoint keeps of the pretrained folder (`ImageEncoder.pretrained_config`: its ViT config and pixel
    # normalisation), filled in by `DetectionSystem`: the checkpoint then loads without the folder
    vit_config: dict | None = None
    lift_heights: int = 4
    depth_bins: int = 0  # > 0: the lift estimates depth per patch (BEVDepth), supervised by LiDAR (`depth_weight`)
    depth_max: float = 60.0  # metres covered by the depth bins
    depth_weight: float = 1.0
    dim: int = 64
    point_layers: int = 2
    point_window: int = 8
    point_scale_inputs: bool = False  # the point MLP's inputs scaled to order 1 (`PointEncoder`, scale_inputs)
    point_motion: bool = False  # each pillar's fit of position against time lag (`PointEncoder`, motion)
    trunk_depth: int = 2
    trunk_shared: bool = True
    trunk_window: int = 8
    trunk_shift: bool = False  # Swin's shifted windows in the trunk, half a window off the other stages' (`Trunk`)
    heads: int = 4
    fusion_depth: int = 1
    fusion_window: int = 8
    fusion_backend: str = "dense"
    fusion_merge: str = "mean"  # the node types at a cell: "mean", or "project" (`HeteroFusion`, merge)
    bev_stride: int = 1  # camera lift, trunk, fusion and head on cells of bev_stride x cell (`SpaceToDepth`)
    fusion_stride: int = 1  # trunk and fusion on a grid pooled this many (BEV) cells per side (`CoarseToFine`)
    head_hidden: int = 64
    neck_blocks: int = 0
    head_branch_kernel: int = 3  # each class group's own convolution: 3x3 (CenterPoint) or 1x1 (`DetectionHead`)
    min_radius: int = 2
    regression_weight: float = 0.25
    regression_near: int = 0  # also train the regression this many cells around each centre (`BoxCoder.near`)
    refine: bool = False  # the LiDAR second stage (`BoxRefiner`): refines and rescores the decoded boxes
    refine_dim: int = 64
    refine_points: int = 64  # points per proposal
    refine_proposals: int = 32  # first-stage boxes per sample it trains on
    refine_jitter: int = 32  # jittered ground-truth boxes per sample it trains on
    refine_weight: float = 1.0
    refine_jitter_spread: float = 0.75  # per-box jitter level in [1 - s, 1 + s] x the base (`jitter_boxes`)
    refine_jitter_size: float = 0.1  # the base: sizes scaled by exp(N(0, this)) (`jitter_boxes`)
    refine_score_power: float = 0.7  # score = first-stage score^(1 - p) * predicted IoU^p
    refine_iterations: int = 3  # passes of the refiner at prediction (shared weights)
    refine_train_passes: int = 1  # passes in training, each from the last one's boxes (`BoxRefiner.training_loss`)
    refine_bev: bool = False  # the second stage also reads the fused BEV map at each box (CenterPoint's two stages)
    refine_image: bool = False  # the second stage also reads the image patch tokens where each box projects
    refine_motion: bool = False  # the second stage also says which way each box faces and its velocity


TINY = ModelConfig(x_range=(-25.6, 25.6), y_range=(-25.6, 25.6), cell=3.2, image_size=(96, 160), vit_hidden=32,
                   vit_layers=1, vit_heads=2, lift_heights=2, dim=16, point_layers=2, point_window=4, trunk_depth=1,
                   trunk_window=4, heads=2, fusion_depth=1, fusion_window=4, fusion_merge="project", head_hidden=16,
                   min_radius=1)  # fmt: skip


class Detector(NamedTuple):
    """What training and prediction need: the network, the box coder (targets / decoding) and the loss."""

    model: FusionDetector
    box_coder: BoxCoder
    loss: DetectionLoss


def build_model(cfg: ModelConfig) -> Detector:
    pillars = BEVGrid(cfg.x_range, cfg.y_range, cfg.cell, cfg.z_range)  # the point encoder's grid
    grid = BEVGrid(cfg.x_range, cfg.y_range, cfg.cell * cfg.bev_stride, cfg.z_range)  # every later stage's
    if any(n % cfg.bev_stride or n % cfg.point_window for n in (pillars.nx, pillars.ny)):
        raise ValueError(f"pillar grid {pillars.ny}x{pillars.nx} is not divisible by bev_stride {cfg.bev_stride} and "
                         f"point_window {cfg.point_window}")  # fmt: skip
    for window in (cfg.trunk_window * cfg.fusion_stride, cfg.fusion_window * cfg.fusion_stride):
        if grid.nx % window or grid.ny % window:
            raise ValueError(f"BEV grid {grid.ny}x{grid.nx} is not divisible by window {window} (in BEV cells)")
    image_encoder = ImageEncoder(cfg.vit_hidden, cfg.vit_layers, cfg.vit_heads, cfg.vit_patch, cfg.image_size,
                                 cfg.vit_pretrained_dir, vit_config=cfg.vit_config)  # fmt: skip
    camera_to_bev = CameraToBEV(image_encoder.out_dim, cfg.dim, grid, cfg.lift_heights, image_encoder.patch,
                                cfg.depth_bins, cfg.depth_max)  # fmt: skip
    point_encoder = PointEncoder(pillars, dim=cfg.dim, layers=cfg.point_layers, heads=cfg.heads,
                                 window=cfg.point_window, scale_inputs=cfg.point_scale_inputs,
                                 motion=cfg.point_motion)  # fmt: skip
    trunk = Trunk(cfg.dim, cfg.trunk_depth, cfg.heads, kinds=NODE_TYPES, shared=cfg.trunk_shared,
                  window=cfg.trunk_window, shift=cfg.trunk_shift)  # fmt: skip
    fusion = HeteroFusion(cfg.dim, cfg.fusion_depth, cfg.heads, cfg.fusion_window, backend=cfg.fusion_backend,
                          merge=cfg.fusion_merge)  # fmt: skip
    head = DetectionHead(
        cfg.dim,
        cfg.head_hidden,
        CLASS_GROUPS,
        num_attributes=len(ATTRIBUTES),
        neck_blocks=cfg.neck_blocks,
        branch_kernel=cfg.head_branch_kernel,
    )
    scale = CoarseToFine(cfg.dim, cfg.fusion_stride)
    refiner = None
    if cfg.refine:
        refiner = BoxRefiner(len(DETECTION_CLASSES), cfg.refine_dim, cfg.refine_points,
                             score_power=cfg.refine_score_power, iterations=cfg.refine_iterations,
                             bev_dim=cfg.dim if cfg.refine_bev else 0, grid=grid, motion=cfg.refine_motion,
                             image_dim=image_encoder.out_dim if cfg.refine_image else 0)  # fmt: skip
    model = FusionDetector(image_encoder, camera_to_bev, point_encoder, trunk, fusion, head, scale, refiner,
                           SpaceToDepth(cfg.dim, cfg.bev_stride))  # fmt: skip
    return Detector(
        model,
        BoxCoder(grid, len(DETECTION_CLASSES), cfg.min_radius, near=cfg.regression_near),
        DetectionLoss(regression_weight=cfg.regression_weight),
    )
