"""Shared fixtures: a tiny synthetic world, generated once per test session."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest

from fusion.data.synth.generate import synthesize
from fusion.data.synth.presets import get_preset


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> str:
    """Dataroot of the `tiny` preset (v1.0-mini layout, scene-0061 in mini_train, scene-0103 in mini_val)."""
    root = tmp_path_factory.mktemp("synth") / "tiny"
    synthesize(root, get_preset("tiny"), seed=0, workers=1, log=lambda *_: None)
    return str(root)


@pytest.fixture(scope="session")
def tiny_nusc(tiny_root):
    from nuscenes.nuscenes import NuScenes

    return NuScenes("v1.0-mini", dataroot=tiny_root, verbose=False)
