"""`NuScenesDataModule`: train/val/test/predict splits of a nuScenes dataroot as Lightning data loaders."""

from __future__ import annotations

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from fusion.data.augment import GlobalTransform, ImageTransform, ModalityDropout
from fusion.data.dataset import LoaderConfig, NuScenesDataset
from fusion.data.index import default_cache_dir, load_index
from fusion.data.io import ImageCache
from fusion.data.types import collate


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
    ):
        super().__init__()
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

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.dataset(self.splits["fit"], train=True)
            self.dataset(self.splits["validate"])
        else:
            self.dataset(self.splits[stage])

    def _loader(self, split: str, train: bool) -> DataLoader:
        h = self.hparams
        return DataLoader(self.dataset(split, train), batch_size=h.batch_size, shuffle=train,
                          num_workers=h.num_workers, collate_fn=collate, persistent_workers=h.num_workers > 0,
                          drop_last=train)  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.splits["fit"], train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.splits["validate"], train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.splits["test"], train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.splits["predict"], train=False)
