"""benchmarks/train_step.py: variants parsed and built as asked, every variant trains, one JSON line at the end."""

import json
import sys

import pytest
from benchmark_script import load_benchmark

train_step = load_benchmark("train_step")


def test_variants_parse_names_and_yaml_values():
    assert train_step.parse_variant("default") == ("default", {})
    assert train_step.parse_variant("slim:refine_motion=false,dim=16") == ("slim", {"refine_motion": False, "dim": 16})
    with pytest.raises(SystemExit, match="not key=value"):
        train_step.parse_variant("bad:refine_motion")


def test_unknown_model_fields_are_refused():
    with pytest.raises(SystemExit, match="no_such_field"):
        train_step.build({}, {"no_such_field": 1}, 1e-3, 0.0, 0)


def test_runs_every_variant_on_the_tiny_world(tiny_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FUSION_CACHE_DIR", str(tmp_path / "cache"))
    argv = ["train_step.py", "--config", "configs/tiny.yaml", "--dataroot", tiny_root, "--batches", "2",
            "--warmup", "1", "--repeats", "2", "--threads", "1",
            "--variant", "motion", "--variant", "plain:refine_motion=false"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    train_step.main()
    lines = capsys.readouterr().out.strip().splitlines()
    assert sum(line.startswith("round ") for line in lines) == 2
    result = json.loads(lines[-1])
    assert set(result) == {"motion", "plain"}
    for r in result.values():
        assert r["step_s"] > 0 and r["step_s_range"][0] <= r["step_s"] <= r["step_s_range"][1]
    assert result["motion"]["params"] > result["plain"]["params"]  # the motion PointNet and its heads
