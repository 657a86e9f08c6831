"""AP@IoU against a naive implementation of the protocol (shapely polygons, Python loops), and known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from eval_helpers import make_results
from nuscenes.utils.data_classes import Box
from pyquaternion import Quaternion
from shapely.geometry import Polygon

from fusion.evaluation import run_evaluation
from fusion.evaluation.boxes import BoxArrays
from fusion.evaluation.config import DETECTION_NAMES, IOU_THRESHOLDS
from fusion.evaluation.iou_ap import iou_ap
from fusion.evaluation.rotated_iou import pair_iou


def polygon(translation, size, rotation) -> Polygon:
    return Polygon(Box(list(translation), list(size), Quaternion(list(rotation))).bottom_corners()[:2].T)


def naive_iou(a: dict, b: dict) -> tuple[float, float]:
    pa, pb = polygon(a["t"], a["s"], a["r"]), polygon(b["t"], b["s"], b["r"])
    inter = pa.intersection(pb).area
    bev = inter / (pa.area + pb.area - inter)
    top = min(a["t"][2] + a["s"][2] / 2, b["t"][2] + b["s"][2] / 2)
    bottom = max(a["t"][2] - a["s"][2] / 2, b["t"][2] - b["s"][2] / 2)
    inter3d = inter * max(0.0, top - bottom)
    return bev, inter3d / (pa.area * a["s"][2] + pb.area * b["s"][2] - inter3d)


def naive_voc_ap(tp: list[int], num_gt: int) -> float:
    """OpenCOOD's `calculate_ap` + `voc_ap`, as written there."""
    fp = [1 - x for x in tp]
    cum = 0
    for i, v in enumerate(fp):
        fp[i] += cum
        cum += v
    cum = 0
    for i, v in enumerate(tp):
        tp[i] += cum
        cum += v
    rec = [x / num_gt for x in tp]
    prec = [tp[i] / (fp[i] + tp[i]) for i in range(len(tp))]
    mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])


def as_dicts(boxes: BoxArrays) -> list[dict]:
    return [
        dict(sample=int(boxes.sample[i]), label=int(boxes.label[i]), score=float(boxes.score[i]),
             t=boxes.translation[i].tolist(), s=boxes.size[i].tolist(), r=boxes.rotation[i].tolist())
        for i in range(len(boxes))
    ]  # fmt: skip


def naive_iou_ap(gt: BoxArrays, pred: BoxArrays, num_samples: int) -> dict:
    gts, preds = as_dicts(gt), as_dicts(pred)
    out: dict = {"bev": {"global": {}, "local": {}}, "3d": {"global": {}, "local": {}}}
    for k, kind in enumerate(("bev", "3d")):
        for th in IOU_THRESHOLDS:
            tables = {"global": {}, "local": {}}
            for c, name in enumerate(DETECTION_NAMES):
                num_gt = sum(1 for g in gts if g["label"] == c)
                local = []  # (score, tp) in local order
                for s in range(num_samples):
                    sample_gt = [g for g in gts if g["sample"] == s and g["label"] == c]
                    taken = [False] * len(sample_gt)
                    sample_pred = [p for p in preds if p["sample"] == s and p["label"] == c]
                    for p in sorted(sample_pred, key=lambda p: -p["score"]):  # stable: ties in results order
                        best, best_j = -1.0, -1
                        for j, g in enumerate(sample_gt):
                            if not taken[j]:
                                iou = naive_iou(p, g)[k]
                                if iou > best:
                                    best, best_j = iou, j
                        hit = best_j >= 0 and best >= th
                        if hit:
                            taken[best_j] = True
                        local.append((p["score"], int(hit)))
                ranked = {"local": local, "global": sorted(local, key=lambda x: -x[0])}
                for ordering, items in ranked.items():
                    tables[ordering][name] = naive_voc_ap([t for _, t in items], num_gt) if num_gt else None
            for ordering, table in tables.items():
                present = [v for v in table.values() if v is not None]
                table["mean"] = sum(present) / len(present) if present else None
                out[kind][ordering][str(th)] = table
    return out


def assert_tables_equal(ours: dict, ref: dict) -> None:
    for kind in ref:
        for ordering in ref[kind]:
            for th in ref[kind][ordering]:
                for name, value in ref[kind][ordering][th].items():
                    got = ours[kind][ordering][th][name]
                    where = f"{kind}/{ordering}/{th}/{name}"
                    assert (got is None) == (value is None), where
                    assert value is None or abs(got - value) <= 1e-9, f"{where}: {got} != {value}"


@pytest.mark.parametrize(
    "noise",
    [dict(pos=0.3, size=0.1, yaw=0.2), dict(pos=0.15, yaw=0.1, false_pos=4, drop=0.2, scores="tied")],
    ids=["noisy", "tied_with_false_positives"],
)
def test_iou_ap_equals_naive_protocol(noise, tiny_root, tiny_nusc, eval_cache):
    results = make_results(tiny_nusc, "mini_train", seed=11, **noise)
    ev = run_evaluation(tiny_root, "v1.0-mini", "mini_train", results, cache_dir=eval_cache)
    ref = naive_iou_ap(ev.gt.boxes, ev.pred, len(ev.gt.sample_tokens))
    assert_tables_equal(ev.metrics["iou_ap"], ref)
    assert 0 < ev.metrics["iou_ap"]["bev"]["global"]["0.5"]["mean"] < 1


def yaw_quaternions(yaw: np.ndarray) -> np.ndarray:
    return np.c_[np.cos(yaw / 2), np.zeros((len(yaw), 2)), np.sin(yaw / 2)]


def test_pair_iou_equals_shapely():
    rng = np.random.default_rng(0)
    n = 500
    ta = np.c_[np.array([1200.0, 800.0]) + rng.uniform(-3, 3, (n, 2)), rng.uniform(-1, 1, n)]
    tb = np.c_[np.array([1200.0, 800.0]) + rng.uniform(-3, 3, (n, 2)), rng.uniform(-1, 1, n)]
    sa, sb = rng.uniform(0.3, 5.0, (n, 3)), rng.uniform(0.3, 5.0, (n, 3))
    ya, yb = rng.uniform(-np.pi, np.pi, n), rng.uniform(-np.pi, np.pi, n)
    tb[:20], sb[:20], yb[:20] = ta[:20], sa[:20], ya[:20]  # identical
    tb[20:40], sb[20:40], yb[20:40] = ta[20:40], sa[20:40] * 0.5, ya[20:40]  # inside, 1/4 of the area
    tb[40:60], sb[40:60], yb[40:60] = ta[40:60], sa[40:60], ya[40:60] + np.pi / 2  # turned by 90 degrees
    tb[60:80], sb[60:80], yb[60:80] = ta[60:80], sa[60:80], ya[60:80]  # touching end to end
    tb[60:80, :2] += sa[60:80, 1:2] * np.c_[np.cos(ya[60:80]), np.sin(ya[60:80])]
    tb[80:100, 0] += 50  # far apart
    bev, iou3d = pair_iou(ta, sa, ya, tb, sb, yb)
    qa, qb = yaw_quaternions(ya), yaw_quaternions(yb)
    for i in range(n):
        ref = naive_iou(dict(t=ta[i], s=sa[i], r=qa[i]), dict(t=tb[i], s=sb[i], r=qb[i]))
        assert bev[i] == pytest.approx(ref[0], abs=1e-9), i
        assert iou3d[i] == pytest.approx(ref[1], abs=1e-9), i
    assert np.allclose(bev[:20], 1.0) and np.allclose(bev[20:40], 0.25)
    assert np.allclose(bev[60:80], 0.0, atol=1e-9) and np.all(bev[80:100] == 0)
    assert 0.1 < np.mean(bev[100:] > 0) < 0.9  # the random pairs mix overlaps and misses


def test_pair_iou_on_shared_edge_lines_equals_shapely():
    """Edges on the other box's edge lines: turned by pi, sliding along a shared side, side by side, inset."""
    rng = np.random.default_rng(5)
    n = 40
    ta = np.c_[rng.uniform(-50, 50, (n, 2)), np.zeros(n)]
    sa = np.c_[rng.uniform(0.5, 3, n), rng.uniform(1, 6, n), np.ones(n)]
    ya = rng.choice([0.0, np.pi / 2, -np.pi, 0.3], n)
    axis_l, axis_w = np.c_[np.cos(ya), np.sin(ya)], np.c_[-np.sin(ya), np.cos(ya)]
    tb, sb, yb = ta.copy(), sa.copy(), ya.copy()
    yb[:10] += np.pi  # the same rectangle, edges listed from the opposite corner
    tb[10:20, :2] += axis_l[10:20] * sa[10:20, 1:2] / 2  # half a length along: both long sides shared in part
    tb[20:30, :2] += axis_w[20:30] * sa[20:30, 0:1]  # side by side: one whole side shared, no area
    sb[30:40, 0] /= 2  # half as wide, sharing one long side from the inside
    tb[30:40, :2] += axis_w[30:40] * sa[30:40, 0:1] / 4
    bev, iou3d = pair_iou(ta, sa, ya, tb, sb, yb)
    back, _ = pair_iou(tb, sb, yb, ta, sa, ya)
    qa, qb = yaw_quaternions(ya), yaw_quaternions(yb)
    for i in range(n):
        ref = naive_iou(dict(t=ta[i], s=sa[i], r=qa[i]), dict(t=tb[i], s=sb[i], r=qb[i]))
        assert bev[i] == pytest.approx(ref[0], abs=1e-9) and back[i] == pytest.approx(ref[0], abs=1e-9), i
        assert iou3d[i] == pytest.approx(ref[1], abs=1e-9), i
    assert np.allclose(bev[:10], 1.0) and np.allclose(bev[10:20], 1 / 3) and np.allclose(bev[20:30], 0.0)
    assert np.allclose(bev[30:40], 0.5)


def boxes(rows: list[tuple]) -> BoxArrays:
    """Boxes from (sample, x, y, yaw, score) rows: cars 1.9 x 4.5 x 1.6."""
    n = len(rows)
    r = np.array(rows, dtype=float).reshape(n, 5)
    return BoxArrays(
        sample=r[:, 0].astype(np.int64),
        translation=np.c_[r[:, 1:3], np.full(n, 0.8)],
        size=np.tile([1.9, 4.5, 1.6], (n, 1)),
        rotation=np.c_[np.cos(r[:, 3] / 2), np.zeros((n, 2)), np.sin(r[:, 3] / 2)],
        velocity=np.zeros((n, 2)),
        label=np.zeros(n, dtype=np.int64),
        score=r[:, 4],
        attribute=np.full(n, -1, dtype=np.int64),
        num_pts=np.full(n, -1, dtype=np.int64),
    )


def test_perfect_predictions():
    gt = boxes([(0, 0, 0, 0.3, -1), (0, 10, 0, 1.0, -1), (1, 5, 5, 2.0, -1)])
    pred = boxes([(0, 0, 0, 0.3, 0.9), (0, 10, 0, 1.0, 0.8), (1, 5, 5, 2.0, 0.7)])
    summary, _ = iou_ap(gt, pred, 2)
    for kind in ("bev", "3d"):
        for ordering in ("global", "local"):
            for th in ("0.3", "0.5", "0.7"):
                assert summary[kind][ordering][th]["car"] == pytest.approx(1.0)
                assert summary[kind][ordering][th]["mean"] == pytest.approx(1.0)
                assert summary[kind][ordering][th]["truck"] is None


def test_shift_by_one_metre():
    """Shifted 1 m along its length, a 1.9 x 4.5 box overlaps 3.5/4.5: IoU = 3.5 / (2 * 4.5 - 3.5) = 7/11."""
    yaw = 0.7
    gt = boxes([(0, 0, 0, yaw, -1), (0, 20, 0, yaw, -1)])
    pred = boxes([(0, math.cos(yaw), math.sin(yaw), yaw, 0.9), (0, 20 + math.cos(yaw), math.sin(yaw), yaw, 0.8)])
    bev, iou3d = pair_iou(pred.translation, pred.size, np.full(2, yaw), gt.translation, gt.size, np.full(2, yaw))
    assert bev == pytest.approx([7 / 11] * 2, abs=1e-12) and iou3d == pytest.approx([7 / 11] * 2, abs=1e-12)
    summary, _ = iou_ap(gt, pred, 1)
    assert summary["bev"]["global"]["0.3"]["car"] == pytest.approx(1.0)
    assert summary["bev"]["global"]["0.5"]["car"] == pytest.approx(1.0)
    assert summary["bev"]["global"]["0.7"]["car"] == 0.0


def test_one_false_positive_ranked_first():
    """TP list [0, 1, 1] over 2 GT boxes: precision 0, 1/2, 2/3 -> VOC AP = 1/2 * 2/3 + 1/2 * 2/3 = 2/3."""
    gt = boxes([(0, 0, 0, 0, -1), (0, 10, 0, 0, -1)])
    pred = boxes([(0, 30, 30, 0, 0.9), (0, 0, 0, 0, 0.8), (0, 10, 0, 0, 0.7)])
    summary, _ = iou_ap(gt, pred, 1)
    assert summary["bev"]["global"]["0.7"]["car"] == pytest.approx(2 / 3)
    assert summary["3d"]["local"]["0.5"]["car"] == pytest.approx(2 / 3)


def test_global_and_local_ordering_differ():
    """Sample 0: an FP at 0.3; sample 1: a TP at 0.9. local keeps [FP, TP] (AP 1/2), global ranks [TP, FP] (AP 1)."""
    gt = boxes([(1, 0, 0, 0, -1)])
    pred = boxes([(0, 0, 0, 0, 0.3), (1, 0, 0, 0, 0.9)])
    summary, _ = iou_ap(gt, pred, 2)
    assert summary["bev"]["local"]["0.7"]["car"] == pytest.approx(0.5)
    assert summary["bev"]["global"]["0.7"]["car"] == pytest.approx(1.0)


def test_greedy_matching_takes_highest_iou_first_come():
    """Two predictions on one GT box: the higher-scored one takes it even with the lower IoU."""
    gt = boxes([(0, 0, 0, 0, -1)])
    pred = boxes([(0, 0.5, 0, 0, 0.9), (0, 0, 0, 0, 0.8)])
    summary, _ = iou_ap(gt, pred, 1)
    assert summary["bev"]["global"]["0.7"]["car"] == pytest.approx(1.0)  # [TP, FP]: recall 1 at precision 1
    assert summary["bev"]["global"]["0.3"]["car"] == pytest.approx(1.0)
