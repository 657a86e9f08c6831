"""`fusion run` (the main job of `make run`) on the tiny world: three metrics.json files and the table."""

from __future__ import annotations

import json
from pathlib import Path

from fusion.cli import main

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")


def test_run_leaves_three_evaluations_in_outputs_latest(tiny_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FUSION_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["run", "--config", CONFIG, "--dataroot", tiny_root, "--outputs", str(tmp_path / "outputs")]) == 0
    latest = tmp_path / "outputs" / "latest"
    for label, camera, lidar in (("fused", True, True), ("lidar_only", False, True), ("camera_only", True, False)):
        metrics = json.loads((latest / label / "metrics.json").read_text())
        assert {"nuscenes", "iou_ap"} <= set(metrics)
        meta = json.loads((latest / label / "results.json").read_text())["meta"]
        assert (meta["use_camera"], meta["use_lidar"]) == (camera, lidar)
    printed = capsys.readouterr().out
    assert "camera_only" in printed and "lidar_only" in printed and "fused" in printed
    # A second run finds everything done and only re-evaluates.
    assert main(["run", "--config", CONFIG, "--dataroot", tiny_root, "--outputs", str(tmp_path / "outputs")]) == 0
