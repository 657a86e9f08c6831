"""benchmarks/heading_velocity.py: the per-class heading and velocity summary, on rows whose answers are known."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).parents[2] / "benchmarks" / "heading_velocity.py"
_spec = importlib.util.spec_from_file_location("heading_velocity", _PATH)
heading_velocity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(heading_velocity)


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
