"""benchmarks/heading_velocity.py: the per-class heading and velocity summary, on rows whose answers are known."""

import numpy as np
import pytest
from benchmark_script import load_benchmark

heading_velocity = load_benchmark("heading_velocity")


def test_summary_counts_headings_and_velocities_the_right_way():
    yaw = np.array([0.3, 1.0, -2.0, 2.5, 0.0, 0.0, np.pi / 2, 0.1])
    # predicted heading vectors (sin, cos): the first three along the box, the fourth reversed, length 0.5
    turn = np.array([0, 0, 0, np.pi, 0, 0, 0, 0])
    sin, cos = 0.5 * np.sin(yaw + turn), 0.5 * np.cos(yaw + turn)
    velocity = np.array([[0, 0], [0.2, 0], [0, 0], [0, 0], [4, 0], [0, 6], [-3, 0], [0, 0]], float)
    pred = np.array([[0, 0], [0, 0], [0, 0], [0, 0], [2, 0], [0, -3], [-6, 0], [0, 0]], float)
    rows = {"label": np.array([0, 0, 0, 0, 0, 0, 0, 8]), "yaw": yaw, "sin": sin, "cos": cos, "velocity": velocity,
            "pred_velocity": pred, "points": np.array([10, 10, 10, 10, 10, 10, 10, 2])}  # fmt: skip
    report = heading_velocity.summarise(rows, min_points=5)
    assert set(report) == {"car/static", "car/moving"}  # the pedestrian has too few points
    static, moving = report["car/static"], report["car/moving"]
    assert static["n"] == 4 and moving["n"] == 3
    assert static["heading_norm"] == pytest.approx(0.5)
    assert static["heading_right"] == pytest.approx(0.75)
    assert moving["heading_right"] == pytest.approx(1.0)
    assert moving["speed_ratio"] == pytest.approx(0.5)  # ratios 0.5, 0.5, 2
    assert moving["velocity_right"] == pytest.approx(2 / 3)  # the second points backwards


def test_detections_are_matched_by_class_within_two_metres_and_summarised_over_the_matched():
    import torch

    from fusion.models.box_coder import Detections

    class System:  # stands in for a DetectionSystem: `detect` returns fixed detections
        def __init__(self, det):
            self.det = det

        def detect(self, batch, out):
            return self.det

    class Batch:
        boxes = torch.tensor([[[0.0, 0, 0, 2, 4, 1.5, 0.0], [10, 0, 0, 2, 4, 1.5, 1.0], [30, 0, 0, 2, 4, 1.5, 0.0]]])
        labels = torch.tensor([[0, 0, 8]])
        box_mask = torch.tensor([[True, True, True]])
        velocity = torch.tensor([[[5.0, 0], [0, 0], [0, 0]]])
        num_points = torch.tensor([[20, 20, 20]])

    det = Detections(
        boxes=torch.tensor([[[0.5, 0, 0, 2, 4, 1.5, 0.1], [11.5, 0, 0, 2, 4, 1.5, 1.0 + np.pi], [9, 0, 0, 2, 4, 1.5, 1],
                             [30, 0, 0, 1, 1, 1, 0.0]]]),
        scores=torch.ones(1, 4), labels=torch.tensor([[0, 0, 0, 0]]),
        velocity=torch.tensor([[[2.5, 0.1], [0, 0], [9, 9], [0, 0]]]), attributes=torch.zeros(1, 4, dtype=torch.long),
        mask=torch.tensor([[True, True, False, True]]),
    )  # fmt: skip
    rows = heading_velocity.detections_at_boxes(System(det), Batch(), None)
    # box 0 -> detection 0; box 1 -> detection 1 (1.5 m; the nearer one is masked out); box 2 (pedestrian): none of
    # its class, the car on top of it does not count
    rows = {k: v.numpy() for k, v in rows.items()}
    np.testing.assert_allclose(rows["pred_velocity"][:2], [[2.5, 0.1], [0, 0]], atol=1e-6)
    assert np.isnan(rows["sin"][2]) and np.isnan(rows["pred_velocity"][2]).all()
    report = heading_velocity.summarise(rows, min_points=5, detections=True)
    assert report["car/moving"] == pytest.approx({"n": 1, "matched": 1.0, "heading_right": 1.0, "speed_ratio": 0.5,
                                                  "velocity_right": 1.0}, abs=1e-3)  # fmt: skip
    assert report["car/static"] == pytest.approx({"n": 1, "matched": 1.0, "heading_right": 0.0})
    assert report["pedestrian/static"] == {"n": 1, "matched": 0.0}


def test_speed_bins_count_what_each_bin_calls_moving():
    speed = np.array([0.0, 0.2, 3.0, 4.0, 4.0, 7.0, 12.0, 4.0])
    velocity = np.stack([speed, np.zeros_like(speed)], 1)
    pred = np.array([[0, 0], [0.6, 0], [0, 0], [3, 4], [4, 0], [7, 1], [np.nan, np.nan], [0, 0]], float)
    rows = {"label": np.array([0, 0, 0, 0, 0, 0, 0, 1]), "velocity": velocity, "pred_velocity": pred,
            "points": np.full(8, 10)}  # fmt: skip
    report = heading_velocity.speed_bins(rows, min_points=5, edges=[0, 0.5, 5])
    # the 12 m/s car found no detection; the truck is a class of its own
    assert set(report) == {"car/0-0.5", "car/0.5-5", "car/5-inf", "truck/0.5-5"}
    assert report["truck/0.5-5"] == pytest.approx({"n": 1, "moving": 0.0, "speed": 0.0, "error": 4.0})
    parked, slow, fast = report["car/0-0.5"], report["car/0.5-5"], report["car/5-inf"]
    assert parked == pytest.approx({"n": 2, "moving": 0.5, "speed": 0.3, "error": 0.2})
    assert slow == pytest.approx({"n": 3, "moving": 2 / 3, "speed": 4.0, "error": 3.0})  # errors 3, 4.12, 0
    assert fast == pytest.approx({"n": 1, "moving": 1.0, "speed": np.hypot(7, 1), "error": 1.0})
    assert report == heading_velocity.speed_bins(rows, 5, [0, 0.5, 5])  # no hidden state
