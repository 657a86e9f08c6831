"""Lightning callbacks of `fusion`: writing the nuScenes results JSON after `fusion predict`; SLURM's requeue signal
handled at the end of a training step."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import lightning.pytorch as pl
import torch.distributed as dist
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector
from lightning.pytorch.utilities import rank_zero_warn

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


class RequeueAtStepEnd(pl.Callback):
    """SLURM's requeue signal (`#SBATCH --signal=SIGUSR1@90`), handled where every rank is at the same point.

    Lightning's SLURM environment saves the HPC checkpoint and requeues the job inside its signal handler, which runs
    wherever the signal finds the main thread: between the parameter groups of an optimiser step, or on one rank
    while another waits in a collective for it, where its save's barrier can meet the other's gradient all-reduce
    (Lightning-AI/pytorch-lightning#21406; 2 of 18 signalled two-rank CPU jobs hung in it here). This callback takes
    over that signal in a fit on SLURM with auto-requeue (Lightning's default there). Its handler only notes the
    signal. At the end of each training step the ranks agree whether any got it (one boolean all-reduce). If one did,
    every rank saves `hpc_ckpt_N.ckpt` into `trainer.default_root_dir`, as Lightning's handler would have, rank 0 asks
    `scontrol requeue`, and the fit stops. A signal during validation is acted on at the next training step. The
    requeued job resumes from that checkpoint through Lightning's own path (`ckpt_path` None on SLURM with an HPC
    checkpoint there). Outside SLURM it does nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.signalled = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the environment Lightning's own signal connector reads (registered before this hook, replaced here; the
        # trainer's teardown restores what was there before either)
        env = trainer._accelerator_connector.cluster_environment
        if not (isinstance(env, SLURMEnvironment) and env.auto_requeue):
            return
        self.signum = env.requeue_signal or signal.SIGUSR1
        signal.signal(self.signum, self._note)

    def _note(self, signum, frame) -> None:
        self.signalled = True  # nothing else in a handler: it may run between any two lines of a step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        if self.signum is None or not trainer.strategy.reduce_boolean_decision(self.signalled, all=False):
            return
        self.signalled = False
        trainer.save_checkpoint(_CheckpointConnector.hpc_save_path(trainer.default_root_dir))
        if trainer.is_global_zero:
            requeue_slurm_job()
        trainer.should_stop = True


def requeue_slurm_job() -> None:
    """`scontrol requeue` this job (the array task, in a job array), as Lightning's SLURM handler asks it."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    if not re.fullmatch(r"[0-9_]+", job):
        raise ValueError(f"SLURM job id {job!r} (SLURM_JOB_ID / SLURM_ARRAY_*): not a job id")
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    except FileNotFoundError:  # a container without SLURM's tools: the checkpoint is there, the requeue is not
        rank_zero_warn(f"scontrol not found: SLURM job {job} was not requeued; resume it from the HPC checkpoint")
        return
    if done.returncode:
        rank_zero_warn(f"scontrol requeue {job} failed ({done.returncode}): {done.stderr.strip()}")
    else:
        print(f"requeued SLURM job {job}; it resumes from the HPC checkpoint", flush=True)
