"""The side-by-side table of `make run` and its learning-target verdict, on hand-made metrics."""

from __future__ import annotations

import math

from fusion.evaluation.config import DETECTION_NAMES
from fusion.evaluation.report import comparison_rows, format_comparison, learning_verdict


def fake_metrics(car: float, mean: float, local_car: float = 0.1) -> dict:
    """The parts of a metrics.json that the comparison reads; every other class has no GT (None)."""
    per_class = {n: None for n in DETECTION_NAMES}

    def ap(car_value: float, mean_value: float) -> dict:
        return {**per_class, "car": car_value, "mean": mean_value}

    iou = {k: {o: {str(t): ap(car, mean) for t in (0.3, 0.5, 0.7)} for o in ("global", "local")} for k in ("bev", "3d")}
    iou["bev"]["local"]["0.7"]["car"] = local_car
    tp = {m: 0.5 for m in ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")}
    return {
        "nuscenes": {
            "mean_ap": mean,
            "nd_score": mean,
            "tp_errors": tp,
            "mean_dist_aps": dict.fromkeys(DETECTION_NAMES, 0.0),
        },
        "iou_ap": iou,
    }


def test_table_has_the_global_and_local_per_class_rows_of_bev_iou_07():
    runs = {
        "camera_only": fake_metrics(0.0, 0.0),
        "lidar_only": fake_metrics(0.5, 0.07),
        "fused": fake_metrics(0.6, 0.09, 0.2),
    }
    rows = dict(comparison_rows(runs))
    assert rows["AP bev global @0.7 car"] == [0.0, 0.5, 0.6]
    assert rows["AP bev local @0.7 car"] == [0.1, 0.1, 0.2]
    assert rows["AP bev global @0.7 bus"] == [None, None, None]
    assert "AP bev global @0.7 car" in format_comparison(runs)


def test_verdict_names_each_target_met_or_missed():
    good = {
        "camera_only": fake_metrics(0.0001, 0.0),
        "lidar_only": fake_metrics(0.60, 0.07),
        "fused": fake_metrics(0.65, 0.09),
    }
    text = learning_verdict(good)
    assert "fused car AP 0.6500 >= 0.6: met" in text
    assert "car AP: fused 0.6500 > lidar_only 0.6000 > camera_only 0.0001: holds" in text
    assert "mean AP over classes: fused 0.0900 > lidar_only 0.0700 > camera_only 0.0000: holds" in text
    assert "MISSED" not in text and "DOES NOT HOLD" not in text

    # below the target, fused behind LiDAR-only on cars, but ahead on the class mean; a NaN counts as 0
    bad = {
        "camera_only": fake_metrics(math.nan, 0.0),
        "lidar_only": fake_metrics(0.50, 0.07),
        "fused": fake_metrics(0.48, 0.09),
    }
    lines = learning_verdict(bad, steps=1234).splitlines()
    assert lines[0] == "learning targets (BEV IoU 0.7, global ordering; the checkpoint trained 1,234 steps):"
    assert lines[1].endswith("0.4800 >= 0.6: MISSED")
    assert lines[2] == "  car AP: fused 0.4800 > lidar_only 0.5000 > camera_only 0.0000: DOES NOT HOLD"
    assert lines[3].endswith(": holds")
