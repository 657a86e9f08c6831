"""`NuScenesDataModule`: train/val/test/predict splits of a nuScenes dataroot as Lightning data loaders."""

from __future__ import annotations

import os
import signal
from functools import partial

import lightning.pytorch as pl
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader

from fusion.data.augment import GlobalTransform, ImageTransform, ModalityDropout
from fusion.data.dataset import LoaderConfig, NuScenesDataset
from fusion.data.index import default_cache_dir, load_index
from fusion.data.io import ImageCache
from fusion.data.types import collate


# Signals a data worker ignores. SLURM's `--signal` reaches every process of a job step, the data workers too, and
# SIGUSR1 is the one Lightning's SLURM environment saves and requeues on (SIGUSR2 that of submitit). By default it
# kills the process; a worker killed by it makes the main process raise at once ("DataLoader worker ... is killed by
# signal"), while it saves and requeues (docs/training.md, **Requeued jobs**).
_WORKER_IGNORES = (signal.SIGUSR1, signal.SIGUSR2)


def _init_worker(worker_id: int, nice: int) -> None:
    """A data worker's start: ignore the requeue signals, lower its priority by `nice`, then seed it as Lightning
    would have (a loader that has its own `worker_init_fn` gets none of Lightning's), so the batches are the same with
    or without this function."""
    for signum in _WORKER_IGNORES:
        signal.signal(signum, signal.SIG_IGN)
    if nice:
        os.nice(nice)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        pl_worker_init_function(worker_id)


class NuScenesDataModule(pl.LightningDataModule):
    """Splits are the devkit's predefined names (mini_train, val, ...) or custom ones from `<version>/splits.json`.

    Args:
        dataroot: folder holding `<version>/`, `samples/`, `sweeps/`, `maps/` (real nuScenes or `fusion synth`).
        image_size: (width, height) the images are resized to.
        sweeps: LiDAR sweeps aggregated per keyframe.
        augment: global LiDAR-scene and image augmentations on the training split.
        camera_only_prob / lidar_only_prob: modality dropout on the training split.
        eval_modality: "fused", "camera" or "lidar" for the validation/test/predict splits.
        image_cache: keep decoded, resized images on disk under the cache directory.
        worker_nice: niceness added to each data worker process (`os.nice`). Where the training threads fill
            every core, as on 2 cores, a worker at the same priority preempts them mid-step and the step waits
            for the thread it interrupted; a niced worker loads in the gaps instead (docs/benchmarks.md, **A niced
            data worker**). 0 leaves the workers as they are.
    """

    def __init__(
        self,
        dataroot: str = "data/synthetic",
        version: str = "v1.0-mini",
        train_split: str = "mini_train",
        val_split: str = "mini_val",
        test_split: str | None = None,
        predict_split: str | None = None,
        batch_size: int = 2,
        num_workers: int = 0,
        image_size: tuple[int, int] = (320, 180),
        sweeps: int = 3,
        augment: bool = True,
        camera_only_prob: float = 0.0,
        lidar_only_prob: float = 0.0,
        eval_modality: str = "fused",
        image_cache: bool = True,
        cache_dir: str | None = None,
        seed: int = 0,
        worker_nice: int = 0,
    ):
        super().__init__()
        if worker_nice < 0:
            raise ValueError(f"data.worker_nice: {worker_nice} < 0 (raising a worker's priority needs privileges)")
        self.save_hyperparameters()
        self.splits = {"fit": train_split, "validate": val_split, "test": test_split or val_split,
                       "predict": predict_split or val_split}  # fmt: skip
        self.datasets: dict[str, NuScenesDataset] = {}

    def _config(self, train: bool) -> LoaderConfig:
        h = self.hparams
        return LoaderConfig(
            image_size=tuple(h.image_size),
            sweeps=h.sweeps,
            global_transform=GlobalTransform() if train and h.augment else None,
            image_transform=ImageTransform() if train and h.augment else None,
            modality=ModalityDropout(h.camera_only_prob, h.lidar_only_prob) if train
            else ModalityDropout(fixed=h.eval_modality),
        )  # fmt: skip

    def dataset(self, split: str, train: bool = False) -> NuScenesDataset:
        h = self.hparams
        key = f"{split}/{train}"
        if key not in self.datasets:
            cache_dir = h.cache_dir or default_cache_dir()
            index = load_index(h.dataroot, h.version, split, cache_dir)
            cache = ImageCache(f"{cache_dir}/images") if h.image_cache else None
            self.datasets[key] = NuScenesDataset(index, self._config(train), cache, h.seed)
        return self.datasets[key]

    def meta(self, modality: str | None = None) -> dict[str, bool]:
        """The results JSON's `meta` for the modality served at evaluation."""
        modality = modality or self.hparams.eval_modality
        return {"use_camera": modality in ("fused", "camera"), "use_lidar": modality in ("fused", "lidar"),
                "use_radar": False, "use_map": False, "use_external": False}  # fmt: skip

    def _stage_splits(self, stage: str) -> list[str]:
        return [self.splits["fit"], self.splits["validate"]] if stage == "fit" else [self.splits[stage]]

    def prepare_data(self) -> None:
        """Builds the stage's split indexes into the cache, once per node: Lightning calls this on local rank 0 only,
        then `setup` on every rank, which reads them (each of 8 ranks would otherwise load the devkit's tables)."""
        trainer = self.trainer
        stage = trainer.state.fn.value if trainer is not None and trainer.state.fn is not None else "fit"
        h = self.hparams
        for split in self._stage_splits(stage):
            load_index(h.dataroot, h.version, split, h.cache_dir or default_cache_dir())

    def setup(self, stage: str) -> None:
        for i, split in enumerate(self._stage_splits(stage)):
            self.dataset(split, train=stage == "fit" and i == 0)

    def _loader(self, split: str, train: bool) -> DataLoader:
        h = self.hparams
        init = partial(_init_worker, nice=h.worker_nice) if h.num_workers else None
        return DataLoader(self.dataset(split, train), batch_size=h.batch_size, shuffle=train,
                          num_workers=h.num_workers, collate_fn=collate, persistent_workers=h.num_workers > 0,
                          drop_last=train, worker_init_fn=init)  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.splits["fit"], train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.splits["validate"], train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.splits["test"], train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.splits["predict"], train=False)
