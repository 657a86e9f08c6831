"""benchmarks/class_confusion.py: the best detection near each ground-truth box, against a loop, and its summary."""

import numpy as np
import torch
from benchmark_script import load_benchmark

from fusion.data.types import DETECTION_CLASSES
from fusion.models.box_coder import Detections

class_confusion = load_benchmark("class_confusion")


def test_best_nearby_is_the_highest_score_within_the_radius_against_a_loop():
    gen = torch.Generator().manual_seed(0)
    gt = torch.rand(2, 6, 7, generator=gen) * 20
    boxes = torch.rand(2, 30, 7, generator=gen) * 20
    scores, mask = torch.rand(2, 30, generator=gen), torch.rand(2, 30, generator=gen) < 0.8
    index, found = class_confusion.best_nearby(gt, boxes, scores, mask, radius=4.0)
    for b in range(2):
        for m in range(6):
            near = [k for k in range(30) if mask[b, k] and (boxes[b, k, :2] - gt[b, m, :2]).norm() <= 4.0]
            assert bool(found[b, m]) == bool(near)
            if near:
                assert int(index[b, m]) == max(near, key=lambda k: float(scores[b, k]))


def test_rows_and_summary_name_the_class_length_and_centre_of_the_best_detection():
    bus, truck, car = (DETECTION_CLASSES.index(c) for c in ("bus", "truck", "car"))
    gt = torch.tensor(
        [[[0.0, 0, 0, 3, 11, 3, 0], [20, 0, 0, 3, 11, 3, 0], [40, 0, 0, 2, 6, 3, 0], [60, 0, 0, 2, 4, 2, 0]]]
    )
    labels = torch.tensor([[bus, bus, truck, car]])
    keep = torch.tensor([[True, True, True, False]])  # the car is not asked about
    det = Detections(
        boxes=torch.tensor([[[1.0, 0, 0, 2.5, 7, 3, 0], [0, 1, 0, 1, 1, 1, 0], [40, 0.5, 0, 2, 6.5, 3, 0]]]),
        scores=torch.tensor([[0.9, 0.5, 0.8]]), labels=torch.tensor([[truck, car, truck]]),
        velocity=torch.zeros(1, 3, 2), attributes=torch.zeros(1, 3, dtype=torch.long),
        mask=torch.tensor([[True, True, True]]),
    )  # fmt: skip
    rows = class_confusion.rows_of_batch(gt, keep, labels, det, radius=4.0)
    np.testing.assert_array_equal(rows["det_label"], [truck, -1, truck])  # the second bus has nothing near
    report = class_confusion.summarise(rows, [bus, truck])
    assert report["bus"] == {"n": 2, "none": 1, "classes": {"truck": 1}, "length": [7.0, 11.0], "centre": 1.0}
    assert report["truck"]["classes"] == {"truck": 1} and report["truck"]["centre"] == 0.5


def test_window_edge_crossing_against_points_sampled_over_each_box():
    """The reference: 61 x 61 points spread over each rotated footprint; it crosses an edge when they fall in more
    than one window. Boxes whose extent ends within a sample spacing of an edge are left out (the sampling is coarse
    there)."""
    gen = torch.Generator().manual_seed(0)
    n = 400
    boxes = torch.zeros(n, 7)
    boxes[:, :2] = torch.rand(n, 2, generator=gen) * 60 - 30
    boxes[:, 3] = 1 + torch.rand(n, generator=gen) * 2  # width
    boxes[:, 4] = 2 + torch.rand(n, generator=gen) * 10  # length, along the heading
    boxes[:, 6] = torch.rand(n, generator=gen) * 2 * torch.pi
    origin, period = (-51.2, -51.2), 12.8
    got = class_confusion.crosses_window_edge(boxes, origin, period)
    u = torch.linspace(-0.5, 0.5, 61)
    along, across = torch.meshgrid(u, u, indexing="ij")
    checked = 0
    for box, crosses in zip(boxes, got, strict=True):
        c, s = torch.cos(box[6]), torch.sin(box[6])
        px = box[0] + along * box[4] * c - across * box[3] * s
        py = box[1] + along * box[4] * s + across * box[3] * c
        wx, wy = ((px + 51.2) // period).flatten().tolist(), ((py + 51.2) // period).flatten().tolist()
        windows = set(zip(wx, wy, strict=True))
        spacing = float(max(box[3], box[4])) / 60
        ends = torch.stack([px.min(), px.max(), py.min(), py.max()]) + 51.2
        if ((ends / period - (ends / period).round()).abs() * period < 2 * spacing).any():
            continue
        assert bool(crosses) == (len(windows) > 1)
        checked += 1
    assert checked > 300 and 0 < int(got.sum()) < n
