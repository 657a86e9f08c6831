"""Fixtures of the app tests: a freshly initialised tiny detector saved as a weights-only checkpoint, a run folder
with real metrics of it, a reference scene-QA model, and the app served on a free localhost port."""

from __future__ import annotations

import json

import pytest
import torch
from app_helpers import ReferenceQA, free_port

from fusion.models.model import TINY


@pytest.fixture(scope="session")
def app_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("app_cache"))


@pytest.fixture(scope="session")
def app_ckpt(tmp_path_factory) -> str:
    """A Lightning-style checkpoint of a fresh tiny `DetectionSystem` (plain data: loads with weights_only=True)."""
    from fusion.system import DetectionSystem

    torch.manual_seed(0)
    system = DetectionSystem(model=TINY, score_threshold=0.0, top_k=50)
    path = tmp_path_factory.mktemp("app_ckpt") / "last.ckpt"
    torch.save({"hyper_parameters": dict(system.hparams), "state_dict": system.state_dict(),
                "datamodule_hyper_parameters": {"image_size": [160, 96], "sweeps": 2}}, path)  # fmt: skip
    return str(path)


@pytest.fixture(scope="session")
def app_run(tiny_root, app_ckpt, app_cache, tmp_path_factory) -> str:
    """A `make run`-like folder: fused/results.json of the checkpoint on mini_val and its metrics.json (no plots)."""
    from fusion.app.predictor import Predictor
    from fusion.data.index import load_index
    from fusion.evaluation import evaluate

    run = tmp_path_factory.mktemp("run")
    predictor = Predictor.from_checkpoint(app_ckpt, tiny_root, "v1.0-mini", cache_dir=app_cache)
    tokens = [str(t) for t in load_index(tiny_root, "v1.0-mini", "mini_val", app_cache).tokens]
    meta = {"use_camera": True, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}
    results = {"meta": meta, "results": {t: predictor.predict(t) for t in tokens}}
    (run / "fused").mkdir()
    (run / "fused" / "results.json").write_text(json.dumps(results))
    evaluate(tiny_root, "v1.0-mini", "mini_val", results, out_dir=str(run / "fused"), cache_dir=app_cache)
    return str(run)


@pytest.fixture(scope="session")
def app_server(tiny_root, app_ckpt, app_run, app_cache):
    """The app on a free localhost port: (url, state); the QA model is `ReferenceQA`."""
    from fusion.app.server import create_app, launch
    from fusion.app.state import AppConfig
    from fusion.data.browse import Browser

    browser = Browser(tiny_root, "v1.0-mini")
    config = AppConfig(dataroot=tiny_root, run_dir=app_run, checkpoint=app_ckpt, cache_dir=app_cache)
    app, state = create_app(config, browser=browser, qa=ReferenceQA(browser.nusc, delay=0.01))
    port = free_port()
    launch(app, state, "127.0.0.1", port, block=False)
    yield f"http://127.0.0.1:{port}/", state
    app.close()


@pytest.fixture(scope="session")
def first_sample(app_server) -> str:
    state = app_server[1]
    return state.browser.samples(state.browser.scenes()[0]["token"])[0]
