"""A real two-sample batch of the tiny synthetic world, at the tiny model's image size."""

from __future__ import annotations

import pytest

from fusion.data.types import Batch, collate


@pytest.fixture(scope="session")
def tiny_batch(tiny_root, tmp_path_factory) -> Batch:
    from fusion.data.dataset import LoaderConfig, NuScenesDataset
    from fusion.data.index import load_index

    idx = load_index(tiny_root, "v1.0-mini", "mini_val", tmp_path_factory.mktemp("model_cache"))
    ds = NuScenesDataset(idx, LoaderConfig(image_size=(160, 96), sweeps=1))
    return collate([ds[0], ds[1]])
