"""The paired bootstrap of AP@IoU: each resample's AP is the evaluator's on the split with its samples repeated."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from eval_helpers import make_results
from test_eval_iou import naive_voc_ap

from fusion.evaluation import run_evaluation
from fusion.evaluation.bootstrap import bootstrap_ap, compare, sample_weights, weighted_ap
from fusion.evaluation.iou_ap import iou_ap
from fusion.evaluation.report import bootstrap_summary, learning_verdict


def repeated(boxes, weights: np.ndarray):
    """The boxes of a split whose sample s is drawn weights[s] times: each draw a new sample, in order."""
    index, sample = [], []
    new = 0
    for s, w in enumerate(weights):
        rows = np.flatnonzero(boxes.sample == s)
        for _ in range(w):
            index.append(rows)
            sample.append(np.full(len(rows), new))
            new += 1
    index = np.concatenate(index) if index else np.zeros(0, np.int64)
    sample = np.concatenate(sample) if sample else np.zeros(0, np.int64)
    return dataclasses.replace(boxes.select(index), sample=sample.astype(np.int64))


@pytest.mark.parametrize("seed", range(5))
def test_weighted_ap_is_the_ap_of_the_list_with_each_detection_repeated(seed, monkeypatch):
    if seed % 2:  # a few resamples at a time, as on a split with many detections
        monkeypatch.setattr("fusion.evaluation.bootstrap.CHUNK_ELEMENTS", 100)
    rng = np.random.default_rng(seed)
    num_samples, num_det = 7, 40
    sample = rng.integers(0, num_samples, num_det)
    is_tp = rng.random(num_det) < 0.5
    gt = rng.integers(0, 4, num_samples)
    weights = np.vstack([np.ones(num_samples, np.int64), sample_weights(num_samples, 30, seed), np.zeros(num_samples)])
    weights = weights.astype(np.int64)
    weights[-1, sample[0]] = 2  # one sample twice, the rest never drawn
    ours = weighted_ap(is_tp, sample, gt, weights)
    for row, w in zip(ours, weights, strict=True):
        num_gt = int(w @ gt)
        if num_gt == 0:
            assert np.isnan(row)
            continue
        expanded = np.repeat(is_tp, w[sample]).astype(int).tolist()
        assert row == pytest.approx(naive_voc_ap(expanded, num_gt), abs=1e-12)


def test_weighted_ap_without_detections():
    ap = weighted_ap(np.zeros(0, bool), np.zeros(0, np.int64), np.array([1, 0]), np.array([[1, 1], [0, 2]]))
    assert ap[0] == 0.0 and np.isnan(ap[1])


def test_each_resample_is_the_evaluators_ap_on_the_repeated_split(tiny_root, tiny_nusc, eval_cache):
    """Two runs of the tiny world, the same resamples: every resample's car AP and class mean at BEV / 3D IoU 0.7
    equal `iou_ap` on the split rebuilt with each sample repeated as many times as it was drawn."""
    noise = {
        "a": dict(seed=3, pos=0.2, yaw=0.1, false_pos=3, drop=0.2),
        "b": dict(seed=4, pos=0.3, size=0.1, false_pos=2),
    }
    evals = {}
    for name, kw in noise.items():
        results = make_results(tiny_nusc, "mini_train", **kw)
        evals[name] = run_evaluation(tiny_root, "v1.0-mini", "mini_train", results, cache_dir=eval_cache)
    gt, n = evals["a"].gt.boxes, len(evals["a"].gt.sample_tokens)
    for kind in ("bev", "3d"):
        boot = bootstrap_ap(gt, {k: e.pred for k, e in evals.items()}, n, resamples=6, kind=kind, seed=1)
        weights = np.vstack([np.ones(n, np.int64), sample_weights(n, 6, seed=1)])
        for name, ev in evals.items():
            assert boot.values(name, "car")[0] == pytest.approx(ev.metrics["iou_ap"][kind]["global"]["0.7"]["car"])
            for r, w in enumerate(weights):
                ref, _ = iou_ap(repeated(gt, w), repeated(ev.pred, w), int(w.sum()))
                table = ref[kind]["global"]["0.7"]
                for what in ("car", "pedestrian", "mean"):
                    expected = table[what]
                    got = boot.values(name, what)[r]
                    assert (np.isnan(got) and expected is None) or got == pytest.approx(expected, abs=1e-12)
    differences = compare(boot, "a", "b", "car")
    assert differences["difference"] == pytest.approx(boot.values("a", "car")[0] - boot.values("b", "car")[0])
    assert differences["low"] <= differences["high"] and differences["resamples"] == 6


def test_a_run_against_itself():
    from test_eval_iou import boxes

    gt = boxes([(0, 0, 0, 0, -1), (1, 10, 0, 0, -1), (2, 5, 5, 0, -1)])
    pred = boxes([(0, 0, 0, 0, 0.9), (1, 10.5, 0, 0, 0.8), (2, 30, 30, 0, 0.7)])
    boot = bootstrap_ap(gt, {"x": pred, "y": pred}, 3, resamples=200)
    c = compare(boot, "x", "y", "car")
    assert (c["difference"], c["low"], c["high"], c["ahead"]) == (0.0, 0.0, 0.0, 0.0)
    assert boot.resamples == 200 and boot.values("x", "car").shape == (201,)


def test_the_verdict_gives_each_step_of_the_order_its_interval():
    from test_eval_iou import boxes

    gt = boxes([(s, 0, 0, 0, -1) for s in range(4)])
    good = boxes([(s, 0, 0, 0, 0.9) for s in range(4)])  # every car found
    half = boxes([(s, 0.0 if s % 2 else 3.0, 0, 0, 0.9) for s in range(4)])  # two of four, each after a miss: 1/4
    none = boxes([(s, 20, 20, 0, 0.5) for s in range(4)])
    boot = bootstrap_ap(gt, {"fused": good, "lidar_only": half, "camera_only": none}, 4, resamples=100)
    runs = {}
    for name in ("fused", "lidar_only", "camera_only"):
        car = float(boot.values(name, "car")[0])
        runs[name] = {"iou_ap": {"bev": {"global": {"0.7": {"car": car, "mean": car}}}}}
    lines = learning_verdict(runs, boot=boot).splitlines()
    summary = bootstrap_summary(boot)
    car = summary["differences"]["fused-lidar_only"]["car"]
    assert car["difference"] == pytest.approx(0.75) and car["ahead"] > 0.9  # tied when no even sample is drawn
    assert lines[2] == "  car AP: fused 1.0000 > lidar_only 0.2500 > camera_only 0.0000: holds"
    assert (
        lines[3]
        == f"    fused - lidar_only +0.7500 [{car['low']:+.4f}, {car['high']:+.4f}], ahead in {car['ahead']:.0%}"
    )
    assert lines[4].startswith("    lidar_only - camera_only +0.2500 [")
    assert lines[-1].startswith("  [low, high]: 95% of the differences over 100 resamples of the 4 samples")
    assert summary["samples"] == 4 and summary["resamples"] == 100


def test_fusion_evaluate_bootstrap(tiny_root, tiny_nusc, eval_cache, write_results, tmp_path, capsys):
    from fusion.cli import main

    paths = {}
    for name, pos in (("sharp", 0.1), ("blurred", 0.4)):
        paths[name] = write_results(make_results(tiny_nusc, "mini_val", seed=6, pos=pos, false_pos=2), f"{name}.json")
    base = ["evaluate", "--dataroot", tiny_root, "--split", "mini_val", "--cache-dir", str(eval_cache)]
    runs = [f"{k}={v}" for k, v in paths.items()]
    out = tmp_path / "out"
    assert main([*base, "--bootstrap", *runs, "--resamples", "200", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "bootstrap.json").read_text())
    assert (out / "bootstrap.txt").read_text().strip() == printed.strip()
    assert summary["resamples"] == 200 and summary["samples"] == 4 and summary["threshold"] == 0.7
    car = summary["differences"]["sharp-blurred"]["car"]
    evs = {
        k: run_evaluation(tiny_root, "v1.0-mini", "mini_val", str(p), cache_dir=eval_cache) for k, p in paths.items()
    }
    aps = {k: e.metrics["iou_ap"]["bev"]["global"]["0.7"] for k, e in evs.items()}
    assert car["difference"] == pytest.approx(aps["sharp"]["car"] - aps["blurred"]["car"])
    assert set(summary["differences"]["sharp-blurred"]) == {k for k, v in aps["sharp"].items() if v is not None}
    row = next(line for line in printed.splitlines() if line.startswith("car "))
    assert row.split()[1:4] == [
        f"{aps['sharp']['car']:.4f}",
        f"{aps['blurred']['car']:.4f}",
        f"{car['difference']:+.4f}",
    ]
    # bad input: exit status 2, nothing written
    bad = [[runs[0]], ["broken", runs[1]], [*runs, "--results", "x"], [*runs, "--resamples", "0"]]
    for extra in bad:
        assert main([*base, "--bootstrap", *extra, "--out", str(tmp_path / "bad")]) == 2
    assert main(["evaluate", "--dataroot", tiny_root, "--bootstrap", *runs, "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
    assert "--bootstrap needs --split" in capsys.readouterr().err


def test_an_undefined_comparison_is_none_and_printed_as_a_dash():
    from fusion.evaluation.bootstrap import BootstrapAP
    from fusion.evaluation.config import DETECTION_NAMES
    from fusion.evaluation.report import format_bootstrap, format_difference

    ap = np.full((4, len(DETECTION_NAMES)), np.nan)
    ap[:, 0] = [0.5, 0.4, 0.6, 0.5]  # cars in the split and every resample; no truck anywhere
    boot = BootstrapAP({"x": ap, "y": ap * 0.5}, tuple(DETECTION_NAMES), 3, "bev", 0.7)
    truck = compare(boot, "x", "y", "truck")
    assert truck == {"difference": None, "low": None, "high": None, "ahead": None, "level": 0.95, "resamples": 0}
    json.dumps(truck, allow_nan=False)  # valid JSON
    assert format_difference(truck).startswith("- (no GT box")
    assert compare(boot, "x", "y", "car")["ahead"] == 1.0
    table = format_bootstrap(boot)
    assert "car " in table and "truck" not in table  # only the split's classes, and the mean
