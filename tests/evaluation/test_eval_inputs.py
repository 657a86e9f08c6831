"""Bad results: each error names the sample token and the field; the CLI exits non-zero and writes nothing."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
from eval_helpers import make_results

from fusion.cli import main
from fusion.evaluation import GroundTruthError, ResultsError, run_evaluation


@pytest.fixture(scope="module")
def good(tiny_nusc) -> dict:
    return make_results(tiny_nusc, "mini_val", seed=1, pos=0.3)


def first_token(results: dict) -> str:
    return next(t for t, boxes in results["results"].items() if boxes)


def set_box(field, value):
    def mutate(r):
        r["results"][first_token(r)][0][field] = value

    return mutate


def del_box(field):
    def mutate(r):
        del r["results"][first_token(r)][0][field]

    return mutate


def too_many(r):
    token = first_token(r)
    r["results"][token] = [dict(r["results"][token][0]) for _ in range(501)]


def other_token(r):
    r["results"]["0123456789abcdef0123456789abcdef"] = []


def wrong_token(r):
    token = first_token(r)
    r["results"][token][0]["sample_token"] = next(t for t in r["results"] if t != token)


# case -> (mutation, field named in the message, whether the message names the first sample with boxes)
CASES = {
    "missing_sample": (lambda r: r["results"].pop(next(iter(r["results"]))), "results", False),
    "too_many_boxes": (too_many, "results[", True),
    "unknown_class": (set_box("detection_name", "spaceship"), "detection_name", True),
    "nan_translation": (set_box("translation", [1.0, float("nan"), 0.0]), "translation", True),
    "inf_velocity": (set_box("velocity", [float("inf"), 0.0]), "velocity", True),
    "nan_score": (set_box("detection_score", float("nan")), "detection_score", True),
    "negative_size": (set_box("size", [1.0, -2.0, 1.0]), "size", True),
    "zero_size": (set_box("size", [0.0, 2.0, 1.0]), "size", True),
    "non_unit_quaternion": (set_box("rotation", [1.0, 1.0, 0.0, 0.0]), "rotation", True),
    "short_translation": (set_box("translation", [1.0, 2.0]), "translation", True),
    "long_velocity": (set_box("velocity", [0.0, 0.0, 0.0]), "velocity", True),
    "short_rotation": (set_box("rotation", [1.0, 0.0, 0.0]), "rotation", True),
    "string_in_size": (set_box("size", [1.0, "2", 1.0]), "size", True),
    "string_score": (set_box("detection_score", "high"), "detection_score", True),
    "missing_score": (del_box("detection_score"), "detection_score", True),
    "missing_velocity": (del_box("velocity"), "velocity", True),
    "unknown_attribute": (set_box("attribute_name", "vehicle.flying"), "attribute_name", True),
    "box_token_mismatch": (wrong_token, "sample_token", True),
    "other_version_meta": (lambda r: r["meta"].update(version="v1.0-trainval"), "meta.version", False),
    "other_version_token": (other_token, "results", False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_results(case, good, tiny_root, eval_cache, tmp_path):
    mutate, field, names_first = CASES[case]
    bad = copy.deepcopy(good)
    token = first_token(bad) if names_first else None
    if case == "missing_sample":
        token = next(iter(bad["results"]))
    if case == "other_version_token":
        token = "0123456789abcdef0123456789abcdef"
    mutate(bad)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ResultsError) as err:
        run_evaluation(tiny_root, "v1.0-mini", "mini_val", path, cache_dir=eval_cache)
    message = str(err.value)
    assert str(path) in message and field in message, message
    if token is not None:
        assert token in message, message
    with pytest.raises(ResultsError):  # the in-memory path validates the same way
        run_evaluation(tiny_root, "v1.0-mini", "mini_val", json.loads(path.read_text()), cache_dir=eval_cache)

    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("previous")
    args = ["evaluate", "--dataroot", tiny_root, "--split", "mini_val", "--results", str(path), "--out", str(out)]
    assert main([*args, "--cache-dir", str(eval_cache)]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]
    assert (out / "metrics.json").read_text() == "previous"
    fresh = tmp_path / "fresh"
    assert main([*args[:-1], str(fresh), "--cache-dir", str(eval_cache)]) == 2
    assert not fresh.exists()


@pytest.mark.parametrize(
    "content, expected",
    [("{not json", "not valid JSON"), ('{"meta": {}}', "results"), ('{"results": {}}', "meta"), ("[]", "results")],
)
def test_malformed_file(content, expected, tiny_root, eval_cache, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ResultsError, match=expected):
        run_evaluation(tiny_root, "v1.0-mini", "mini_val", path, cache_dir=eval_cache)


def test_missing_file_and_bad_split(tiny_root, eval_cache, tmp_path, good):
    with pytest.raises(ResultsError, match="cannot read"):
        run_evaluation(tiny_root, "v1.0-mini", "mini_val", tmp_path / "nope.json", cache_dir=eval_cache)
    with pytest.raises(GroundTruthError, match="no_such_split"):
        run_evaluation(tiny_root, "v1.0-mini", "no_such_split", good, cache_dir=eval_cache)
    with pytest.raises(GroundTruthError, match="trainval"):
        run_evaluation(tiny_root, "v1.0-mini", "val", good, cache_dir=eval_cache)
    with pytest.raises(GroundTruthError, match=r"v1\.0-trainval"):
        run_evaluation(tiny_root, "v1.0-trainval", "val", good, cache_dir=eval_cache)


def test_cli_exit_status_in_a_subprocess(tiny_root, eval_cache, tmp_path, good):
    bad = copy.deepcopy(good)
    set_box("size", [1.0, -1.0, 1.0])(bad)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fusion.cli", "evaluate", "--dataroot", tiny_root, "--split", "mini_val"]
    cmd += ["--results", str(path), "--out", str(out), "--cache-dir", str(eval_cache)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "size" in proc.stderr and first_token(bad) in proc.stderr
    assert not out.exists()
