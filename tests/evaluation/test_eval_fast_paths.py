"""The fast paths of the evaluation against their plain equivalents: the streamed results parser against
`json.loads`, windowed pair generation against all pairs of a key, the AP@IoU candidate pairs against the
circumcircle test on every pair, the score order against a stable sort, the VOC AP against its textbook form."""

from __future__ import annotations

import json

import numpy as np
import pytest
from eval_helpers import make_results

from fusion.evaluation import ResultsError, run_evaluation
from fusion.evaluation import results as results_module
from fusion.evaluation.boxes import BoxArrays
from fusion.evaluation.config import DETECTION_NAMES
from fusion.evaluation.iou_ap import candidate_pairs, iou_ap, pr_curve, score_order, voc_ap_rows
from fusion.evaluation.matching import window_pairs


@pytest.fixture(scope="module")
def submission(tiny_nusc) -> dict:
    return make_results(tiny_nusc, "mini_val", seed=3, pos=0.3)


def _same_boxes(a, b) -> None:
    for field in ("sample", "translation", "size", "rotation", "velocity", "label", "score", "attribute"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_streamed_parse_equals_in_memory(chunk, submission, tiny_root, eval_cache, tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(submission, indent=1 if chunk == 7 else None))
    ref = run_evaluation(tiny_root, "v1.0-mini", "mini_val", submission, cache_dir=eval_cache)
    monkeypatch.setattr(results_module, "_CHUNK", chunk)
    monkeypatch.setattr(results_module, "BLOCK", 5)
    got = run_evaluation(tiny_root, "v1.0-mini", "mini_val", path, cache_dir=eval_cache)
    _same_boxes(got.pred, ref.pred)
    assert got.metrics["iou_ap"] == ref.metrics["iou_ap"]


def test_duplicate_token_keeps_first_place_last_list(submission, tiny_root, eval_cache, tmp_path, monkeypatch):
    tokens = [t for t, boxes in submission["results"].items() if boxes]
    first = json.dumps(submission["results"][tokens[0]][:1])  # listed first, replaced by the full list later
    body = ", ".join(
        [f'"{tokens[0]}": {first}'] + [f'"{t}": {json.dumps(b)}' for t, b in submission["results"].items()]
    )
    path = tmp_path / "dup.json"
    path.write_text('{"meta": ' + json.dumps(submission["meta"]) + ', "results": {' + body + "}}")
    monkeypatch.setattr(results_module, "BLOCK", 3)
    ref = run_evaluation(tiny_root, "v1.0-mini", "mini_val", json.loads(path.read_text()), cache_dir=eval_cache)
    got = run_evaluation(tiny_root, "v1.0-mini", "mini_val", path, cache_dir=eval_cache)
    _same_boxes(got.pred, ref.pred)


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"meta": {}, "results": {}} x', "not valid JSON"),
        ('{"meta": {}, "results": {"a": [1, 2]', "not valid JSON"),
        ('{"meta": {}, "results": {"a": 5}}', "not a sample"),
        ('{"meta": {}, "results": 5}', "no `results` object"),
        ("", "not valid JSON"),
    ],
)
def test_malformed_streams(text, expected, tiny_root, eval_cache, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ResultsError, match=expected):
        run_evaluation(tiny_root, "v1.0-mini", "mini_val", path, cache_dir=eval_cache)


def test_item_that_is_no_box(submission, tiny_root, eval_cache, tmp_path):
    bad = json.loads(json.dumps(submission))
    token = next(t for t, boxes in bad["results"].items() if boxes)
    bad["results"][token].insert(1, [1, 2, 3])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ResultsError, match=r"not a box object") as err:
        run_evaluation(tiny_root, "v1.0-mini", "mini_val", path, cache_dir=eval_cache)
    assert f"results[{token}][1]" in str(err.value)


def test_window_pairs_are_a_superset_of_the_close_pairs():
    rng = np.random.default_rng(0)
    kp, kg = rng.integers(0, 30, 400), rng.integers(0, 30, 300)
    xp, xg = rng.uniform(-1e3, 1e3, 400), rng.uniform(-1e3, 1e3, 300)
    xg[:50] = xp[:50] + 5.0  # exactly on the window's edge
    kg[:50] = kp[:50]
    half = rng.uniform(0, 200, 400)
    half[:50] = 5.0
    p, g = window_pairs(kp, xp, kg, xg, half)
    got = set(zip(p.tolist(), g.tolist(), strict=True))
    assert len(got) == len(p)  # no pair twice
    assert all(kp[i] == kg[j] for i, j in got)
    want = {(i, j) for i in range(400) for j in range(300) if kp[i] == kg[j] and abs(xp[i] - xg[j]) <= half[i]}
    assert want <= got
    assert all(abs(xp[i] - xg[j]) <= half[i] + 1e-2 for i, j in got)


def _textbook_voc(is_tp: np.ndarray, num_gt: int) -> tuple[float, np.ndarray, np.ndarray]:
    tp = np.cumsum(is_tp).astype(np.float64)
    fp = np.cumsum(~is_tp).astype(np.float64)
    rec, prec = tp / num_gt, tp / np.maximum(tp + fp, 1.0)
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.maximum.accumulate(np.concatenate([[0.0], prec, [0.0]])[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i])), rec, prec


def test_voc_ap_rows_bit_identical_to_the_textbook_form():
    rng = np.random.default_rng(1)
    for trial in range(400):
        rows = rng.random((3, int(rng.integers(0, 200)))) < rng.random()
        num_gt = int(max(rows.sum(axis=1).max(), 1) + (0 if trial % 3 == 0 else rng.integers(0, 5)))
        for r, (ap, rec, prec) in enumerate(voc_ap_rows(rows, num_gt)):
            ref = _textbook_voc(rows[r], num_gt)
            assert ap == ref[0] and np.array_equal(rec, ref[1]) and np.array_equal(prec, ref[2])


def _random_boxes(rng, n: int, labels: list[int], samples: int = 4) -> BoxArrays:
    yaw = rng.uniform(-np.pi, np.pi, n)
    return BoxArrays(
        sample=np.sort(rng.integers(0, samples, n)),
        translation=np.c_[rng.uniform(-20, 20, (n, 2)), rng.uniform(0, 2, n)],
        size=rng.uniform(0.3, 12.0, (n, 3)),
        rotation=np.c_[np.cos(yaw / 2), np.zeros((n, 2)), np.sin(yaw / 2)],
        velocity=np.zeros((n, 2)),
        label=rng.choice(labels, n),
        score=rng.random(n),
        attribute=np.full(n, -1),
        num_pts=np.full(n, -1),
    )


def test_candidate_pairs_equal_the_circumcircle_test_on_every_pair():
    rng = np.random.default_rng(2)
    for trial in range(5):
        gt = _random_boxes(rng, 300, [0, 1, 8])  # classes 2, 3 have predictions but no GT box
        pred = _random_boxes(rng, 400, [0, 1, 2, 3, 8])
        if trial == 0:  # circumcircles exactly touching: dx = (diag_p + diag_g) / 2 along x, same key
            pred.translation[:50] = (
                gt.translation[:50]
                + np.c_[
                    (np.hypot(pred.size[:50, 0], pred.size[:50, 1]) + np.hypot(gt.size[:50, 0], gt.size[:50, 1])) / 2,
                    np.zeros((50, 2)),
                ]
            )
            pred.sample[:50], pred.label[:50] = gt.sample[:50], gt.label[:50]
        key_p, key_g = pred.sample * 10 + pred.label, gt.sample * 10 + gt.label
        p, g = candidate_pairs(pred, gt, key_p, key_g)
        got = set(zip(p.tolist(), g.tolist(), strict=True))
        assert len(got) == len(p)  # no pair twice
        d = pred.translation[:, None, :2] - gt.translation[None, :, :2]
        reach = (np.hypot(pred.size[:, 0], pred.size[:, 1])[:, None] + np.hypot(gt.size[:, 0], gt.size[:, 1])) / 2
        close = (key_p[:, None] == key_g[None]) & (d[..., 0] ** 2 + d[..., 1] ** 2 <= reach**2)
        assert got == set(zip(*np.nonzero(close), strict=True))
        assert trial > 0 or sum((i, i) in got for i in range(50)) >= 10  # on the boundary (up to rounding)
        # every pair left out has IoU 0, so the AP does not depend on the gate: all pairs of a key give the same
        summary, _ = iou_ap(gt, pred, 4)
        assert 0 < summary["bev"]["global"]["0.3"]["mean"] < 1


def test_score_order_equals_a_stable_sort():
    rng = np.random.default_rng(3)
    for score in (rng.random(1000), rng.integers(0, 20, 1000) / 20, np.array([0.0, -0.0, 0.5, 0.0]), np.zeros(0)):
        assert np.array_equal(score_order(score), np.argsort(-score, kind="stable"))


def test_pr_curves_are_read_on_demand_and_agree_with_the_ap():
    rng = np.random.default_rng(4)
    gt, pred = _random_boxes(rng, 200, [0, 1]), _random_boxes(rng, 300, [0, 1, 2])
    pred.translation[:150] = gt.translation[:150] + rng.normal(0, 0.3, (150, 3))
    pred.size[:150], pred.label[:150], pred.sample[:150] = gt.size[:150], gt.label[:150], gt.sample[:150]
    summary, curves = iou_ap(gt, pred, 4)
    assert len(curves) == 2 * 2 * 3 * 2  # kinds x orderings x thresholds x the classes with GT boxes
    assert curves.get(("bev", "global", 0.5, "bus")) is None  # predictions, no GT box
    for (kind, ordering, th, name), (rec, prec) in curves.items():
        c = DETECTION_NAMES.index(name)
        num_gt, n = np.count_nonzero(gt.label == c), np.count_nonzero(pred.label == c)
        tp = np.round(rec * num_gt)
        assert len(rec) == len(prec) == n and np.all(np.diff(np.r_[0, tp]) >= 0) and np.all(tp <= num_gt)
        assert np.array_equal(prec, tp / np.arange(1, n + 1))
        mrec, mpre = np.r_[0.0, rec, 1.0], np.maximum.accumulate(np.r_[0.0, prec, 0.0][::-1])[::-1]
        steps = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
        ap = float(np.sum((mrec[steps] - mrec[steps - 1]) * mpre[steps]))
        assert ap == summary[kind][ordering][str(th)][name]
        assert np.array_equal(pr_curve(np.diff(np.r_[0, tp]) > 0, num_gt)[0], rec)
