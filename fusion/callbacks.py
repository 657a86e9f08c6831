"""Lightning callbacks of `fusion`: writing the nuScenes results JSON after `fusion predict`."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter

from fusion.data.submission import write_results


class ResultsWriter(BasePredictionWriter):
    """Gathers every rank's predictions and writes the official results JSON (all samples of the predict split)."""

    def __init__(self, output: str | Path):
        super().__init__(write_interval="epoch")
        self.output = Path(output)

    def write_on_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions, batch_indices):
        merged: dict[str, list[dict]] = {}
        for part in predictions:
            merged.update(part)
        if dist.is_available() and dist.is_initialized():
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, merged)
            merged = {k: v for p in parts for k, v in p.items()}
        if trainer.global_rank != 0:
            return
        dm = trainer.datamodule
        split = dm.splits["predict"]
        tokens = [str(t) for t in dm.dataset(split).index.tokens]
        write_results(self.output, merged, tokens, dm.meta())
        print(f"wrote predictions for {len(tokens)} samples to {self.output}")
