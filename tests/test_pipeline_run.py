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
    """Also the whole job's time limit: a clock started 175 s ago with a 10-minute limit leaves ~425 s, and the tiny
    fit's 5-minute budget (its one epoch ends far sooner) is cut so that the later steps' reserve (predictions, and
    scene QA's 2 minutes and its work outside them) fits: ~200 s, passed to the fit, not written into run_config."""
    import time

    from fusion.pipeline import FIT_OUTSIDE_BUDGET_S, PREDICT_EVALUATE_S, QA_OUTSIDE_BUDGET_S, max_time_seconds

    monkeypatch.setenv("FUSION_CACHE_DIR", str(tmp_path / "cache"))
    cfg = yaml.safe_load(Path(CONFIG).read_text())
    cfg["trainer"]["max_time"] = "00:00:05:00"
    config = tmp_path / "tiny_timed.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    reserve = FIT_OUTSIDE_BUDGET_S + PREDICT_EVALUATE_S + 120 + QA_OUTSIDE_BUDGET_S
    started = time.time() - (600 - reserve - 200)
    argv = ["run", "--config", str(config), "--dataroot", tiny_root, "--outputs", str(tmp_path / "outputs"),
            "--qa-config", QA_CONFIG, "--time-limit", "10:00", "--started-at", str(started)]  # fmt: skip
    assert main(argv) == 0
    latest = tmp_path / "outputs" / "latest"
    # LightningCLI's copies of what each command ran with: the fit's budget cut, the predictions' as configured
    ran = sorted(max_time_seconds(yaml.safe_load(f.read_text())["trainer"]["max_time"])
                 for f in (latest / "logs").rglob("config.yaml"))  # fmt: skip
    granted = ran[0]
    assert ran[1:] == [300.0] * 3
    assert 170 <= granted <= 200, granted
    assert yaml.safe_load((latest / "run_config.yaml").read_text())["trainer"]["max_time"] == "00:00:05:00"
    timings = json.loads((latest / "timings.json").read_text())
    assert set(timings["stages_s"]) == {"world", "detector_fit", "predict_evaluate", "scene_qa"}
    assert timings["budgets_s"]["detector fit"] == {"configured_s": 300.0, "granted_s": pytest.approx(granted, abs=1)}
    assert timings["budgets_s"]["scene-QA fit"]["granted_s"] == 120.0  # what was left covered QA's whole budget
    assert 175 <= timings["before_command_s"] <= 200 and timings["time_limit_s"] == 600.0
    for label, camera, lidar in (("fused", True, True), ("lidar_only", False, True), ("camera_only", True, False)):
        metrics = json.loads((latest / label / "metrics.json").read_text())
        assert {"nuscenes", "iou_ap"} <= set(metrics)
        meta = json.loads((latest / label / "results.json").read_text())["meta"]
        assert (meta["use_camera"], meta["use_lidar"]) == (camera, lidar)
    # the paired bootstrap's differences on the split itself are the metrics' own
    boot = json.loads((latest / "bootstrap.json").read_text())
    car = {k: json.loads((latest / k / "metrics.json").read_text())["iou_ap"]["bev"]["global"]["0.7"]["car"]
           for k in ("fused", "lidar_only")}  # fmt: skip
    fused_lidar = boot["differences"]["fused-lidar_only"]["car"]
    assert fused_lidar["difference"] == pytest.approx(car["fused"] - car["lidar_only"])
    assert boot["resamples"] == 1000 and set(boot["differences"]) == {"fused-lidar_only", "lidar_only-camera_only"}
    qa = json.loads((latest / "qa" / "qa_metrics.json").read_text())
    assert set(qa["accuracy"]) == set(qa["prior"]) and "overall" in qa["accuracy"]
    assert set(qa["grounding"]) == {"acc@0.25", "acc@0.5"}
    state = torch.load(latest / "qa" / "qa.ckpt", map_location="cpu", weights_only=True)
    assert "qa_tokenizer" in state and (latest / "qa" / "tokenizer.json").exists()
    assert (latest / "qa" / "questions" / "synth_val.jsonl").exists()
    captured = capsys.readouterr()
    assert "the detector fit gets 3:" in captured.err
    printed = captured.out
    assert "camera_only" in printed and "lidar_only" in printed and "fused" in printed
    assert "scene QA" in printed and "acc@0.5" in printed
    assert "AP bev global @0.7 car" in printed
    assert "learning targets (BEV IoU 0.7, global ordering; the checkpoint trained" in printed
    assert "learning targets" in (latest / "modality_table.txt").read_text()
    assert f"1,000 resamples of the {boot['samples']} samples" in printed and "    fused - lidar_only " in printed
    assert "time: before this command " in printed and "(limit 10:00)" in printed
    # A second run finds everything done and only re-evaluates.
    assert main(argv[:-4]) == 0
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


def test_durations_parse_and_print_in_lightnings_form():
    from fusion.pipeline import lightning_duration, max_time_seconds, parse_duration

    assert parse_duration("14:45") == 885 and parse_duration("1:02:03") == 3723 and parse_duration("90") == 90
    assert max_time_seconds("00:00:08:00") == 480 and max_time_seconds({"minutes": 2, "seconds": 10}) == 130
    assert max_time_seconds(None) is None
    assert lightning_duration(463.9) == "00:00:07:43" and max_time_seconds(lightning_duration(93784)) == 93784
    for bad in ("", "ten", "1:2:3:4:5", "-5"):
        with pytest.raises(ValueError, match="is not a duration"):
            parse_duration(bad)


def test_the_job_clock_cuts_a_fit_to_what_the_limit_leaves_but_not_below_half(monkeypatch, capsys):
    import fusion.pipeline as pipeline

    now = [1000.0]
    monkeypatch.setattr(pipeline.time, "time", lambda: now[0])
    clock = pipeline.JobClock(limit_s=900, started_at=800)  # 200 s gone: 700 s left
    assert clock.grant("detector fit", 480, reserve_s=200) == 480  # 700 - 200 = 500 >= 480: untouched
    assert "detector fit" not in capsys.readouterr().err
    assert clock.grant("detector fit", 480, reserve_s=250) == 450
    assert "the detector fit gets 7:30 of its 8:00" in capsys.readouterr().err
    # a resumed fit's trained seconds count against its max_time: they are added back
    assert clock.grant("detector fit", 480, reserve_s=250, elapsed_before=20) == 470
    assert clock.grant("detector fit", 480, reserve_s=600) == 240  # never below half its budget ...
    assert "so the run will end after the limit" in capsys.readouterr().err  # ... and it says the limit will be missed
    assert pipeline.JobClock().grant("detector fit", 480, reserve_s=10_000) == 480  # no limit, no cut
    now[0] = 1030.0
    clock.stage("world")
    now[0] = 1100.0
    clock.stage("detector_fit")
    assert clock.stages == {"world": 30.0, "detector_fit": 70.0}


def test_scene_qa_gets_what_the_limit_leaves(tmp_path, monkeypatch):
    """The scene-QA fit's budget is set when its step starts, from the clock as it then stands."""
    import time

    import fusion.pipeline as pipeline

    seen = []

    def fake_fit(args):
        seen.append(args)
        metrics = {"accuracy": {"overall": 0.5}, "prior": {"overall": 0.4}, "grounding": {"acc@0.25": 1, "acc@0.5": 1}}
        (tmp_path / "run" / "qa" / "qa_metrics.json").write_text(json.dumps(metrics))

    monkeypatch.setattr(pipeline, "run_in_fresh_process", fake_fit)
    clock = pipeline.JobClock(limit_s=600, started_at=time.time() - 600 + pipeline.QA_OUTSIDE_BUDGET_S + 90)
    pipeline.scene_qa(QA_CONFIG, tmp_path / "run", "root", "v1.0-mini", tmp_path / "last.ckpt", clock=clock)
    (args,) = seen
    assert args[-2] == "--trainer.max_time" and 85 <= pipeline.max_time_seconds(args[-1]) <= 90
    assert "max_time: 00:00:02:00" in (tmp_path / "run" / "qa" / "qa_config.yaml").read_text()  # config as given


def test_make_run_passes_its_start_and_the_limit():
    """`make run` counts from make's own start (set-up and world included); `RUN_LIMIT=` turns the limit off."""
    import re
    import subprocess
    import time

    root = Path(__file__).resolve().parents[1]
    before = int(time.time())
    dry = subprocess.run(["make", "-n", "run"], cwd=root, capture_output=True, text=True, check=True).stdout
    started = re.search(r"fusion run --config \S+ --dataroot \S+\s*\\?\s*--time-limit 14:50 --started-at (\d+)", dry)
    assert started and before <= int(started.group(1)) <= time.time(), dry
    off = subprocess.run(["make", "-n", "run", "RUN_LIMIT="], cwd=root, capture_output=True, text=True, check=True)
    assert "fusion run --config" in off.stdout and "--time-limit" not in off.stdout
