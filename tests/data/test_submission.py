"""Lidar-frame boxes -> nuScenes results JSON: the devkit scores ground truth written this way perfectly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fusion.data.index import load_index
from fusion.data.submission import MAX_BOXES, to_results, write_results

META = {"use_camera": True, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}


def test_ground_truth_through_the_lidar_frame_scores_ap_one(tiny_root, tiny_nusc, tmp_path):
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    index = load_index(tiny_root, "v1.0-mini", "mini_val", tmp_path / "cache")
    results = {}
    for i, token in enumerate(index.tokens):
        b0, b1 = index.box_offsets[i], index.box_offsets[i + 1]
        keep = index.num_points[b0:b1] > 0  # the devkit drops GT boxes without points; a prediction there is an FP
        sl = np.arange(b0, b1)[keep]
        results[str(token)] = to_results(str(token), index.global_from_lidar[i], index.boxes[sl],
                                         np.full(len(sl), 0.8), index.labels[sl], index.velocity[sl],
                                         index.attributes[sl])  # fmt: skip
    path = write_results(tmp_path / "results.json", results, [str(t) for t in index.tokens], META)
    ev = DetectionEval(tiny_nusc, config_factory("detection_cvpr_2019"), str(path), "mini_val", str(tmp_path / "ev"),
                       verbose=False)  # fmt: skip
    metrics, _ = ev.evaluate()
    present = {n for n, ap in metrics.mean_dist_aps.items() if not np.isnan(ap) and ap > 0}
    assert len(present) >= 4
    for name in present:
        assert metrics.mean_dist_aps[name] == pytest.approx(1.0)
        assert metrics.get_label_tp(name, "trans_err") < 1e-6
        assert metrics.get_label_tp(name, "orient_err") < 0.01 or name == "traffic_cone"
        assert metrics.get_label_tp(name, "vel_err") < 1e-4 or np.isnan(metrics.get_label_tp(name, "vel_err"))
        assert metrics.get_label_tp(name, "attr_err") < 1e-6 or np.isnan(metrics.get_label_tp(name, "attr_err"))


def test_write_results_checks_and_trims(tmp_path):
    box = to_results("a", np.eye(4), np.zeros((1, 7)), np.ones(1), np.zeros(1, int))[0]
    many = {"a": [dict(box, detection_score=float(s)) for s in np.linspace(0, 1, 600)], "b": []}
    path = write_results(tmp_path / "r.json", many, ["a", "b"], META)
    written = json.loads(path.read_text())["results"]
    assert len(written["a"]) == MAX_BOXES and written["a"][0]["detection_score"] == 1.0
    assert written["a"][0]["attribute_name"] == "vehicle.parked"
    with pytest.raises(ValueError, match="no predictions for 1 samples"):
        write_results(tmp_path / "x.json", {"a": []}, ["a", "b"], META)
    with pytest.raises(ValueError, match="outside the split"):
        write_results(tmp_path / "x.json", many, ["a"], META)
    assert not (tmp_path / "x.json").exists()
