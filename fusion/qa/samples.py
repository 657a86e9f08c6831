"""Where the QA model gets its scenes: the frozen detector loaded from a detection checkpoint, samples of a dataroot
by token, and a per-split cache of object features (the detector runs once per sample; QA training reads the cache).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

import torch

from fusion.data.augment import ModalityDropout
from fusion.data.dataset import LoaderConfig, NuScenesDataset
from fusion.data.index import SplitIndex, covering_splits, default_cache_dir, load_index
from fusion.data.summary import DatasetError
from fusion.data.types import Batch, collate
from fusion.files import atomic_target
from fusion.models.model import Detector
from fusion.qa.objects import ObjectExtractor, SceneObjects
from fusion.system import load_system


class LoadedDetector(NamedTuple):
    """A detector from a checkpoint and how its inputs were loaded: image size (H, W) and LiDAR sweeps."""

    detector: Detector
    image_size: tuple[int, int]
    sweeps: int


def load_detector(ckpt: str | os.PathLike) -> LoadedDetector:
    """The detector of a `DetectionSystem` checkpoint (weights only, `fusion.system.load_system`), in eval mode."""
    system, data = load_system(ckpt)
    detector = Detector(system.model, system.box_coder, system.loss)
    return LoadedDetector(detector, tuple(system.hparams["model"]["image_size"]), int(data.get("sweeps", 3)))


def loader_config(image_size_hw: tuple[int, int], sweeps: int) -> LoaderConfig:
    """Evaluation loading (no augmentation, both modalities) at the detector's image size."""
    return LoaderConfig(image_size=(image_size_hw[1], image_size_hw[0]), sweeps=sweeps,
                        modality=ModalityDropout(fixed="fused"))  # fmt: skip


def ann_tokens(index: SplitIndex, i: int) -> list[str]:
    return [str(t) for t in index.ann_tokens[index.box_offsets[i] : index.box_offsets[i + 1]]]


def extract_split(extractor: ObjectExtractor, index: SplitIndex, config: LoaderConfig,
                  batch_size: int = 4) -> dict[str, SceneObjects]:  # fmt: skip
    """Object tokens of every sample of a split, one detector pass per sample."""
    dataset = NuScenesDataset(index, config)
    out: dict[str, SceneObjects] = {}
    for start in range(0, len(dataset), batch_size):
        ids = range(start, min(start + batch_size, len(dataset)))
        batch = collate([dataset[i] for i in ids])
        for token, objects in zip(batch.tokens, extractor(batch, [ann_tokens(index, i) for i in ids]), strict=True):
            out[token] = objects
    return out


def cached_split(detector_ckpt: str, dataroot: str, version: str, split: str, boxes: str = "gt",
                 score_threshold: float = 0.2, cache_dir: str | None = None) -> dict[str, SceneObjects]:  # fmt: skip
    """`extract_split`, cached on disk per (checkpoint file identity, split, box source); the detector is loaded only
    when the cache misses."""
    st = Path(detector_ckpt).stat()
    key = f"{Path(detector_ckpt).resolve()}|{st.st_size}|{st.st_mtime_ns}|{Path(dataroot).resolve()}|{version}|"
    key += f"{split}|{boxes}|{score_threshold}|v4"  # the object features' version: bump when they change
    path = Path(cache_dir or default_cache_dir()) / "qa_features" / f"{hashlib.sha1(key.encode()).hexdigest()}.pt"
    if path.exists():
        data = torch.load(path, map_location="cpu", weights_only=True)
        return {t: SceneObjects.from_dict(d) for t, d in data.items()}
    loaded = load_detector(detector_ckpt)
    extractor = ObjectExtractor(loaded.detector.model, loaded.detector.box_coder, boxes, score_threshold)
    config = loader_config(loaded.image_size, loaded.sweeps)
    objects = extract_split(extractor, load_index(dataroot, version, split, cache_dir), config)
    with atomic_target(path) as tmp:  # each node's prepare_data, maybe into one shared cache
        torch.save({t: o.to_dict() for t, o in objects.items()}, tmp)
    return objects


class SampleSource:
    """Samples of every split of a dataroot, by token (the app asks about any sample it shows)."""

    def __init__(self, dataroot: str, version: str, config: LoaderConfig):
        from fusion.data.index import split_scenes

        splits = covering_splits(dataroot, version)
        self.where: dict[str, tuple[NuScenesDataset, int]] = {}
        for split in splits:
            try:
                split_scenes(dataroot, version, split)
                index = load_index(dataroot, version, split)
            except DatasetError:
                continue
            dataset = NuScenesDataset(index, config)
            for i, token in enumerate(index.tokens):
                self.where.setdefault(str(token), (dataset, i))
        if not self.where:
            raise DatasetError(f"{dataroot}/{version}: no sample found in splits {', '.join(splits)}")

    def _find(self, token: str) -> tuple[NuScenesDataset, int]:
        if token not in self.where:
            raise ValueError(f"unknown sample token {token!r} (not in the dataroot's splits)")
        return self.where[token]

    def batch(self, token: str) -> tuple[Batch, list[list[str]]]:
        dataset, i = self._find(token)
        return collate([dataset[i]]), [ann_tokens(dataset.index, i)]

    def global_from_lidar(self, token: str):
        dataset, i = self._find(token)
        return dataset.index.global_from_lidar[i]
