"""`DetectionSystem`: the LightningModule that trains and evaluates the detector. It holds no model code.

Losses come from `DetectionLoss`, targets and decoding from `BoxCoder`, the network from `build_model`; this module
only wires them to Lightning: optimisation (AdamW, warm-up + cosine), logging, validation metrics every epoch
(nuScenes mAP/NDS and AP at BEV IoU 0.7 from `fusion.evaluation`), and prediction as nuScenes results records.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from fusion.data.submission import MAX_BOXES, best_boxes, to_results
from fusion.data.types import Batch
from fusion.models.model import ModelConfig, build_model, detect

# Under DDP Lightning advises `sync_dist=True` for every epoch-level figure logged without it. The evaluation's
# figures are computed once, on rank 0, from the whole split, and broadcast: every rank logs the same value, so there
# is nothing to average (`_evaluation_epoch_end`). The losses are averaged (`sync_dist=True`) and keep the advice.
warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\('(val|test)/(?!loss')",
                        category=PossibleUserWarning)  # fmt: skip


class DetectionSystem(pl.LightningModule):
    """Args:
    model: every size of the network (`ModelConfig`).
    lr / weight_decay: AdamW.
    warmup_fraction: share of the optimisation steps (or of `max_time`) with a linear warm-up, then a cosine decay to
        1 % at the last step or at `max_time`, whichever comes first.
    top_k / score_threshold: decoding of the heatmap peaks into boxes.
    evaluate_every_epoch: run the nuScenes + AP@IoU evaluation on the validation split after each epoch.
    """

    def __init__(
        self,
        model: ModelConfig = ModelConfig(),  # noqa: B008  (frozen dataclass; LightningCLI reads the default)
        lr: float = 2e-3,
        weight_decay: float = 0.01,
        warmup_fraction: float = 0.05,
        top_k: int = 200,
        score_threshold: float = 0.05,
        evaluate_every_epoch: bool = True,
    ):
        super().__init__()
        if isinstance(model, dict):  # from a checkpoint: hyper-parameters are stored as plain data
            model = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in model.items()})
        # Plain data only, so that checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters(
            {
                "model": asdict(model),
                "lr": lr,
                "weight_decay": weight_decay,
                "warmup_fraction": warmup_fraction,
                "top_k": top_k,
                "score_threshold": score_threshold,
                "evaluate_every_epoch": evaluate_every_epoch,
            }
        )
        detector = build_model(model)
        self.model, self.box_coder, self.loss = detector.model, detector.box_coder, detector.loss
        if model.vit_pretrained_dir is not None and model.vit_config is None:  # checkpoints load without the folder
            self.hparams["model"]["vit_config"] = self.model.image_encoder.pretrained_config()
        self._val_results: dict[str, list[dict]] = {}

    def forward(self, batch: Batch):
        return self.model(batch)

    def _losses(self, batch: Batch, out) -> dict[str, torch.Tensor]:
        targets = self.box_coder.encode(batch.boxes, batch.velocity, batch.labels, batch.attributes, batch.box_mask)
        losses = self.loss(out, targets)
        refiner, cfg = self.model.refiner, self.hparams.model
        if out.depth is not None:  # the camera lift's depth distribution, supervised by the LiDAR returns
            losses["depth"] = self.model.camera_to_bev.depth_loss(
                out.depth, batch.points, batch.point_mask, batch.cam_from_lidar, batch.intrinsics, batch.camera_mask
            )
            losses["total"] = losses["total"] + cfg["depth_weight"] * losses["depth"]
        if refiner is not None:  # the second stage trains on this step's first-stage boxes (detached)
            with torch.no_grad():
                det = self.box_coder.decode(out.heatmap, out.regression, out.attributes, cfg["refine_proposals"], 0.0)
            refine = refiner.training_loss(
                batch.points, batch.point_mask, det, batch.boxes, batch.labels, batch.box_mask,
                num_jitter=cfg["refine_jitter"], jitter_spread=cfg["refine_jitter_spread"],
                jitter_size=cfg["refine_jitter_size"], bev=out.features,
                gt_velocity=batch.velocity, passes=cfg["refine_train_passes"], images=out.images,
            )  # fmt: skip
            losses.update(refine)
            losses["total"] = losses["total"] + cfg["refine_weight"] * sum(refine.values())
        return losses

    def detect(self, batch: Batch, out):
        """The decoded boxes (`Detections`, lidar frame), refined and rescored by the second stage if there is one."""
        return detect(self.model, self.box_coder, out, batch.points, batch.point_mask, self.hparams.top_k,
                      self.hparams.score_threshold)  # fmt: skip

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        losses = self._losses(batch, self.model(batch))
        if writes_step_logs(self):
            self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=len(batch), prog_bar=False)
        self.log("train/loss", losses["total"], batch_size=len(batch), prog_bar=True)
        return losses["total"]

    def results(self, batch: Batch, out) -> dict[str, list[dict]]:
        """nuScenes result records (global frame) of every sample of the batch, at most the format's 500 per sample
        (the best-scored; `top_k` may ask for more)."""
        det = self.detect(batch, out)
        records = {}
        for b, token in enumerate(batch.tokens):
            keep = det.mask[b].cpu().numpy()
            records[token] = to_results(
                token, batch.global_from_lidar[b].double().cpu().numpy(), det.boxes[b].float().cpu().numpy()[keep],
                det.scores[b].float().cpu().numpy()[keep], det.labels[b].cpu().numpy()[keep],
                det.velocity[b].float().cpu().numpy()[keep], det.attributes[b].cpu().numpy()[keep],
            )  # fmt: skip
            if len(records[token]) > MAX_BOXES:
                records[token] = best_boxes(records[token])
        return records

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._evaluation_epoch_end("validate", "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        """`fusion test`: what validation does, on the data module's `test_split` (its `val_split` when unset)."""
        self._evaluation_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._evaluation_epoch_end("test", "test")

    def _evaluation_step(self, batch: Batch, prefix: str) -> None:
        out = self.model(batch)
        losses = self._losses(batch, out)
        self.log(f"{prefix}/loss", losses["total"], batch_size=len(batch), prog_bar=True, sync_dist=True)
        if self.hparams.evaluate_every_epoch:
            self._val_results.update(self.results(batch, out))

    def _evaluation_epoch_end(self, stage: str, prefix: str) -> None:
        """The nuScenes and AP@IoU metrics of the split's results. Under DDP each rank holds part of the split: the
        parts are gathered, rank 0 evaluates, and every rank logs its figures (so that a checkpoint callback
        monitoring them finds them on every rank)."""
        results, self._val_results = self._val_results, {}
        if not self.hparams.evaluate_every_epoch or self.trainer.sanity_checking:
            return
        parts = gather_from_ranks(self.trainer, results)  # every rank's part ([results] on one process)
        results = {token: records for part in parts for token, records in part.items()}  # padding: one entry a token
        metrics = self.evaluate_results(results, stage, prefix) if self.trainer.is_global_zero and results else None
        if self.trainer.world_size > 1:
            metrics = self.trainer.strategy.broadcast(metrics, src=0)
        if metrics is not None:
            self.log_dict(metrics, prog_bar=True, sync_dist=False)

    def evaluate_results(self, results: dict[str, list[dict]], stage: str, prefix: str) -> dict[str, float] | None:
        """nuScenes mAP/NDS and BEV AP@0.7 of the `stage` split ("validate" or "test"; every sample of it)."""
        dm = self.trainer.datamodule
        if dm is None:
            return None
        from fusion.evaluation import evaluate
        from fusion.evaluation.report import nan_to_zero

        h = dm.hparams
        split = dm.splits[stage]
        tokens = dm.dataset(split).index.tokens
        submission = {"meta": dm.meta(), "results": {str(t): results.get(str(t), []) for t in tokens}}
        m = evaluate(h.dataroot, h.version, split, submission)
        bev = m["iou_ap"]["bev"]["global"]["0.7"]
        return {
            f"{prefix}/nds": m["nuscenes"]["nd_score"],
            f"{prefix}/map": m["nuscenes"]["mean_ap"],
            f"{prefix}/ap_bev_0.7": nan_to_zero(bev["mean"]),
            f"{prefix}/car_ap_bev_0.7": nan_to_zero(bev.get("car")),
        }

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, list[dict]]:
        return self.results(batch, self.model(batch))

    def configure_optimizers(self):
        optimizer = adamw(parameter_groups(self, self.hparams.weight_decay), self.hparams.lr, self.trainer)
        scheduler = cosine_schedule(optimizer, self.trainer, self.hparams.warmup_fraction)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def adamw(groups: list[dict], lr: float, trainer: pl.Trainer) -> torch.optim.AdamW:
    """AdamW as one fused kernel for all parameters (5x faster than the per-tensor loop on CPU, where foreach is not
    the default). Lightning's mixed precision refuses to clip the gradients of an optimiser that unscales them itself,
    which a fused one claims to do: there, the multi-tensor (foreach) path."""
    fast = {"fused": True} if "mixed" not in str(trainer.precision) else {"foreach": True}
    return torch.optim.AdamW(groups, lr=lr, **fast)


def parameter_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices, none on biases, norms and embeddings."""
    decay, no_decay = [], []
    for n, p in module.named_parameters():
        (decay if p.ndim >= 2 and "embed" not in n else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def writes_step_logs(module: pl.LightningModule) -> bool:
    """Whether Lightning writes this training step's `on_step` values: every `log_every_n_steps`-th step (and one it
    already knows to be the last). A `self.log` call costs ~0.65 ms of Python on the 2-core CPU whether or not its
    value is written (docs/benchmarks.md, **Logging only what is written**), so the training steps log their loss
    breakdown only when it is written, and their total every step, for the progress bar. The CSV and TensorBoard logs
    are the same, except on a step that a time limit stops after (the Timer decides at the step's end): it keeps its
    total, not its breakdown. True outside a trainer (a step called by hand logs as before)."""
    try:
        trainer = module.trainer
    except RuntimeError:  # not attached to a Trainer
        return True
    return trainer._logger_connector.should_update_logs


def cosine_schedule(optimizer: torch.optim.Optimizer, trainer: pl.Trainer, warmup_fraction: float):
    """`lr_factor` as a per-step `LambdaLR`, over the trainer's steps or its `max_time`, whichever ends first (the
    detector and the scene-QA encoder both train against a clock on CPU)."""
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)  # set by `max_time`
    estimate = trainer.estimated_stepping_batches  # inf with neither max_steps nor max_epochs
    if math.isinf(estimate) and (timer is None or timer._duration is None):
        raise ValueError("trainer: the learning-rate schedule needs an end: set max_steps, max_epochs or max_time")
    total = None if math.isinf(estimate) else max(int(estimate), 1)

    def factor(step: int) -> float:
        elapsed = None
        if timer is not None and timer._duration is not None:
            elapsed = shared_clock(timer.time_elapsed("train") / timer._duration, trainer)
        return lr_factor(step, total, warmup_fraction, elapsed)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def gather_from_ranks(trainer: pl.Trainer, obj) -> list:
    """Every rank's `obj` (picklable), in rank order, on every rank (`all_gather_object`); [obj] without DDP."""
    if trainer.world_size < 2:
        return [obj]
    parts = [None] * trainer.world_size
    torch.distributed.all_gather_object(parts, obj)
    return parts


def shared_clock(fraction: float, trainer: pl.Trainer) -> float:
    """Rank 0's share of the time budget on every rank. Each rank's own clock differs by a little, and a learning
    rate read off it would differ too: the replicas of a DDP fit bounded by `max_time` would drift apart, as the same
    averaged gradient moves them by different steps. One scalar broadcast per optimiser step (every rank steps its
    scheduler at the same point)."""
    if trainer.world_size < 2 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return fraction
    value = torch.tensor([fraction], dtype=torch.float64, device=trainer.strategy.root_device)
    torch.distributed.broadcast(value, src=0)
    return float(value.item())


def lr_factor(step: int, total: int | None, warmup_fraction: float, time_fraction: float | None = None) -> float:
    """Linear warm-up, then cosine decay to 1 %, over the steps or over the time budget (`time_fraction` = elapsed /
    max_time), whichever is further along: a fit stopped by `max_time` still ends at a low learning rate, whatever
    the speed of the machine. The warm-up rises over `warmup_fraction` of the planned steps; in a fit the clock stops
    first, it ends when the clock's share passes `warmup_fraction`, and the rate steps up to the peak there (in
    `make run`'s fits from about a third of it, at step ~55 of ~1,300). A warm-up that follows the clock instead, so
    that it meets the peak smoothly, was tried and not kept: it scored lower in the scene-QA fit (docs/training.md).
    `total` None: no step budget (a fit bounded by `max_time` alone), so the clock alone."""
    if total is None and time_fraction is None:
        raise ValueError("lr_factor: neither a step budget (total) nor a time budget (time_fraction)")
    progress = max(step / total if total is not None else 0.0, time_fraction or 0.0)
    if progress < warmup_fraction:
        if total is None:
            return min(time_fraction / warmup_fraction, 1.0)
        return min((step + 1) / max(int(total * warmup_fraction), 1), 1.0)
    progress = min((progress - warmup_fraction) / (1 - warmup_fraction), 1.0)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))


class CheckpointError(ValueError):
    """A detection checkpoint that cannot be loaded; the message names the file and the field."""


def load_system(path: str | os.PathLike, device: str = "cpu"):
    """A `DetectionSystem` from a Lightning checkpoint, read with `torch.load(weights_only=True)` (no unpickling of
    objects). Returns (system in eval mode, the datamodule's hyper-parameters or {})."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint (train one with `make run`)")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # truncated file, pickled objects, not a checkpoint at all
        raise CheckpointError(f"{path}: not a weights-only checkpoint ({type(e).__name__}: {e})") from e
    for key in ("hyper_parameters", "state_dict"):
        if not isinstance(state, dict) or key not in state:
            raise CheckpointError(f"{path}: field {key!r} missing (not a DetectionSystem checkpoint)")
    try:  # a field this version does not know (a checkpoint of a newer or an experimental build), or a bad value
        system = DetectionSystem(**state["hyper_parameters"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: field 'hyper_parameters' does not build this version's detector: {e}") from e
    try:
        system.load_state_dict(state["state_dict"])
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: field 'state_dict' does not fit the stored hyper_parameters: {e}") from e
    return system.eval().to(device), dict(state.get("datamodule_hyper_parameters") or {})
