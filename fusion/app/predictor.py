"""The detector behind the app: loaded once from a weights-only checkpoint, run on one sample per call, cached.

Samples are served by the same `NuScenesDataset` as training (the checkpoint's image size and sweeps), from the cached
split indices that together cover the dataroot; the modality switch serves a sample fused, LiDAR-only or camera-only
exactly as `fusion predict --data.eval_modality` does.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict

import torch

from fusion.data.augment import ModalityDropout
from fusion.data.dataset import LoaderConfig, NuScenesDataset
from fusion.data.index import SplitIndex, covering_splits, load_index
from fusion.data.types import collate
from fusion.system import CheckpointError, load_system  # noqa: F401  (CheckpointError: the app's error type)

MODALITIES = ("fused", "lidar", "camera")


def covering_indices(dataroot: str, version: str, cache_dir: str | None = None) -> list[SplitIndex]:
    return [load_index(dataroot, version, s, cache_dir) for s in covering_splits(dataroot, version)]


class Predictor:
    """Args:
    system: a `DetectionSystem` in eval mode.
    indices: split indices covering the samples the app shows.
    image_size / sweeps: how samples are served (the checkpoint's data settings).
    cache_size: per-(sample, modality) results kept.
    """

    def __init__(self, system, indices: list[SplitIndex], image_size: tuple[int, int], sweeps: int,
                 cache_size: int = 512):  # fmt: skip
        self.system = system
        self.device = next(system.parameters()).device
        self._where: dict[str, tuple[int, int]] = {}
        self._datasets: dict[tuple[int, str], NuScenesDataset] = {}
        for k, index in enumerate(indices):
            for i, token in enumerate(index.tokens):
                self._where.setdefault(str(token), (k, i))
            for modality in MODALITIES:
                config = LoaderConfig(image_size=tuple(image_size), sweeps=sweeps,
                                      modality=ModalityDropout(fixed=modality))  # fmt: skip
                self._datasets[(k, modality)] = NuScenesDataset(index, config)
        self._cache: OrderedDict[tuple[str, str], list[dict]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.last_seconds = 0.0  # model time of the latest uncached call

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, dataroot: str, version: str, device: str = "cpu",
                        cache_dir: str | None = None) -> Predictor:  # fmt: skip
        system, data = load_system(path, device)
        hw = system.hparams["model"]["image_size"]  # (H, W) the network was built for
        image_size = tuple(data.get("image_size") or (hw[1], hw[0]))
        return cls(system, covering_indices(dataroot, version, cache_dir), image_size, int(data.get("sweeps", 3)))

    def knows(self, sample_token: str) -> bool:
        return sample_token in self._where

    def batch(self, sample_token: str, modality: str = "fused"):
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
        if sample_token not in self._where:
            raise KeyError(f"sample {sample_token!r} is in none of the indexed splits")
        k, i = self._where[sample_token]
        return collate([self._datasets[(k, modality)][i]])

    def predict(self, sample_token: str, modality: str = "fused") -> list[dict]:
        """nuScenes result records (global frame) of one sample, as `fusion predict` writes them; cached."""
        key = (sample_token, modality)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            batch = self.batch(sample_token, modality).to(self.device)
            start = time.perf_counter()
            with torch.inference_mode():
                records = self.system.results(batch, self.system.model(batch))[sample_token]
            self.last_seconds = time.perf_counter() - start
            self._cache[key] = records
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return records
