"""The app on what `fusion run` (the job behind `make run`) leaves in outputs/latest, on the tiny world: the detector
and the scene-QA model load from the run's defaults, the three metrics rows and the PR curves come from its files.
Slow (the run itself takes about 40 s): `make test-slow`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fusion.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def run_latest(tiny_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("app_run_outputs")
    mp = pytest.MonkeyPatch()
    mp.setenv("FUSION_CACHE_DIR", str(out / "cache"))
    try:
        argv = ["run", "--config", str(CONFIGS / "tiny.yaml"), "--dataroot", tiny_root, "--outputs", str(out),
                "--qa-config", str(CONFIGS / "qa_tiny.yaml")]  # fmt: skip
        assert main(argv) == 0
    finally:
        mp.undo()
    return out / "latest"


@pytest.mark.slow
def test_the_app_loads_a_make_run_output(run_latest, tiny_root, tmp_path):
    from fusion.app.chat import WARNING, ask
    from fusion.app.metrics import difference_rows, metric_rows, pr_curves
    from fusion.app.state import AppConfig, AppState

    state = AppState(AppConfig(dataroot=tiny_root, run_dir=str(run_latest), cache_dir=str(tmp_path / "cache")))
    assert state.predictor is not None, state.model_message
    assert state.qa is not None, state.qa_message
    assert [r[0] for r in metric_rows(run_latest)] == ["fused", "LiDAR-only", "camera-only"]
    fused = json.loads((run_latest / "fused" / "metrics.json").read_text())["nuscenes"]
    assert metric_rows(run_latest)[0][1:3] == [round(fused["mean_ap"], 4), round(fused["nd_score"], 4)]
    assert [r[0] for r in difference_rows(run_latest)] == ["fused − LiDAR-only"] * 2 + ["LiDAR-only − camera-only"] * 2
    assert pr_curves(run_latest, tiny_root, "v1.0-mini", state.tmp)  # from results.json (the run wrote no plots)

    results = json.loads((run_latest / "fused" / "results.json").read_text())["results"]
    token = sorted(results)[0]
    # The app reruns the run's checkpoint on the sample: the boxes `fusion predict` wrote.
    # Batched prediction and the app's single sample differ in float rounding only (~1e-6 on a score).
    mine = sorted((r["detection_name"], r["detection_score"]) for r in state.predictor.predict(token))
    theirs = sorted((r["detection_name"], r["detection_score"]) for r in results[token])
    assert [n for n, _ in mine] == [n for n, _ in theirs]
    assert [s for _, s in mine] == pytest.approx([s for _, s in theirs], abs=1e-4)
    text, score, grounded = ask(state, token, "How many cars are there?")
    assert text and 0.0 <= score <= 1.0 and (not text.startswith(WARNING) or grounded["message"])
