"""`fusion run` (the main job of `make run`) on the tiny world: three metrics.json files, the table, and scene QA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from fusion.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CONFIG, QA_CONFIG = str(CONFIGS / "tiny.yaml"), str(CONFIGS / "qa_tiny.yaml")


def test_run_leaves_three_evaluations_and_scene_qa_in_outputs_latest(tiny_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FUSION_CACHE_DIR", str(tmp_path / "cache"))
    argv = ["run", "--config", CONFIG, "--dataroot", tiny_root, "--outputs", str(tmp_path / "outputs"),
            "--qa-config", QA_CONFIG]  # fmt: skip
    assert main(argv) == 0
    latest = tmp_path / "outputs" / "latest"
    for label, camera, lidar in (("fused", True, True), ("lidar_only", False, True), ("camera_only", True, False)):
        metrics = json.loads((latest / label / "metrics.json").read_text())
        assert {"nuscenes", "iou_ap"} <= set(metrics)
        meta = json.loads((latest / label / "results.json").read_text())["meta"]
        assert (meta["use_camera"], meta["use_lidar"]) == (camera, lidar)
    qa = json.loads((latest / "qa" / "qa_metrics.json").read_text())
    assert set(qa["accuracy"]) == set(qa["prior"]) and "overall" in qa["accuracy"]
    assert set(qa["grounding"]) == {"acc@0.25", "acc@0.5"}
    state = torch.load(latest / "qa" / "qa.ckpt", map_location="cpu", weights_only=True)
    assert "qa_tokenizer" in state and (latest / "qa" / "tokenizer.json").exists()
    assert (latest / "qa" / "questions" / "synth_val.jsonl").exists()
    printed = capsys.readouterr().out
    assert "camera_only" in printed and "lidar_only" in printed and "fused" in printed
    assert "scene QA" in printed and "acc@0.5" in printed
    assert "AP bev global @0.7 car" in printed
    assert "learning targets (BEV IoU 0.7, global ordering; the checkpoint trained" in printed
    assert "learning targets" in (latest / "modality_table.txt").read_text()
    # A second run finds everything done and only re-evaluates.
    assert main(argv) == 0
    assert "scene QA" in capsys.readouterr().out


def test_a_run_trained_with_another_config_is_set_aside_not_reused(tmp_path, capsys):
    from fusion.pipeline import set_aside_if_changed

    run_dir = tmp_path / "runs" / "synthetic_cpu"
    (run_dir / "checkpoints").mkdir(parents=True)
    old = {"model": {"model": {"dim": 32, "point_scale_inputs": False}}, "trainer": {"callbacks": [{"a": 1}]}}
    (run_dir / "run_config.yaml").write_text(yaml.safe_dump(old))
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    assert set_aside_if_changed(run_dir, old) == []  # same config: resume / reuse as before
    assert (run_dir / "checkpoints" / "last.ckpt").exists()

    new = {"model": {"model": {"dim": 32, "point_scale_inputs": True}}, "trainer": {"callbacks": [{"a": 2}]}}
    assert set_aside_if_changed(run_dir, new) == ["model.model.point_scale_inputs", "trainer.callbacks.0.a"]
    assert not run_dir.exists()
    aside = tmp_path / "runs" / "synthetic_cpu.1"
    assert (aside / "checkpoints" / "last.ckpt").read_bytes() == b"weights"  # moved, not deleted
    assert "point_scale_inputs: False -> True" in capsys.readouterr().err

    # a folder that never trained (config written, no checkpoint, no fit.done) is left where it is
    run_dir.mkdir()
    (run_dir / "run_config.yaml").write_text(yaml.safe_dump(old))
    assert set_aside_if_changed(run_dir, new) == [] and run_dir.exists()
    # a second stale run goes to the next free name
    (run_dir / "fit.done").touch()
    assert set_aside_if_changed(run_dir, new) and (tmp_path / "runs" / "synthetic_cpu.2" / "fit.done").exists()


def test_a_scene_qa_fit_with_another_qa_config_is_set_aside(tmp_path, capsys):
    from fusion.pipeline import set_aside_if_changed

    qa_dir = tmp_path / "runs" / "synthetic_cpu" / "qa"
    qa_dir.mkdir(parents=True)
    old = {"trainer": {"max_time": "00:00:02:00"}, "data": {"init_args": {"train_per_sample": 36}}}
    (qa_dir / "qa_config.yaml").write_text(yaml.safe_dump(old))
    (qa_dir / "qa.ckpt").write_bytes(b"qa weights")  # the QA checkpoint lies in the folder itself
    assert set_aside_if_changed(qa_dir, old, "qa_config.yaml") == [] and qa_dir.exists()
    new = {"trainer": {"max_time": "00:00:03:00"}, "data": {"init_args": {"train_per_sample": 36}}}
    assert set_aside_if_changed(qa_dir, new, "qa_config.yaml") == ["trainer.max_time"]
    assert (qa_dir.with_name("qa.1") / "qa.ckpt").read_bytes() == b"qa weights" and not qa_dir.exists()
    assert "qa_config.yaml: the config changed" in capsys.readouterr().err


def test_a_stage_in_a_fresh_process_that_fails_says_which_command(tmp_path):
    """`fusion run` fits scene QA in its own process: a failure there stops the run with the command and its exit
    status, not a silent success."""
    from fusion.pipeline import run_in_fresh_process

    missing = str(tmp_path / "missing.yaml")
    with pytest.raises(RuntimeError, match=f"`fusion fit --config {missing}` failed \\(exit status [1-9]"):
        run_in_fresh_process(["fit", "--config", missing])
