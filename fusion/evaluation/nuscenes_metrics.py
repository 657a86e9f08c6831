"""The nuScenes detection metrics (mAP, TP errors, NDS), vectorised, equal to the devkit's `DetectionEval`.

Mirrors `nuscenes/eval/detection/algo.py`: `accumulate` (greedy matching by descending score, ties to the
prediction listed later; centre distance below the threshold; the 101-point recall interpolation; the TP
errors as cumulative means re-sampled on the confidence), `calc_ap` and `calc_tp`, and
`DetectionMetrics.serialize`. The matching itself runs for all classes, thresholds and samples at once
(`matching.greedy_match`); the per-curve arithmetic then repeats the devkit's numpy calls on the same
arrays, so the figures agree to the last bit in practice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion.evaluation.boxes import BoxArrays, quaternion_yaw
from fusion.evaluation.config import DETECTION_NAMES, TP_METRICS, DetectionConfig
from fusion.evaluation.matching import greedy_match, rank_in_group, window_pairs

NELEM = 101  # recall points of the devkit's curves
ERROR_FIELDS = ("trans_err", "vel_err", "scale_err", "orient_err", "attr_err")


@dataclass(frozen=True)
class MetricData:
    """The devkit's `DetectionMetricData`: curves over 101 recall points, each <float64: 101>."""

    recall: np.ndarray
    precision: np.ndarray
    confidence: np.ndarray
    trans_err: np.ndarray
    vel_err: np.ndarray
    scale_err: np.ndarray
    orient_err: np.ndarray
    attr_err: np.ndarray

    @classmethod
    def no_predictions(cls) -> MetricData:
        ones, zeros = np.ones(NELEM), np.zeros(NELEM)
        return cls(np.linspace(0, 1, NELEM), zeros, zeros, ones, ones, ones, ones, ones)

    @property
    def max_recall_ind(self) -> int:
        non_zero = np.nonzero(self.confidence)[0]
        return 0 if len(non_zero) == 0 else int(non_zero[-1])


def _cummean(x: np.ndarray) -> np.ndarray:
    """The devkit's NaN-aware cumulative mean (all NaN -> ones)."""
    if sum(np.isnan(x)) == len(x):
        return np.ones(len(x))
    sum_vals = np.nancumsum(x.astype(float))
    count_vals = np.cumsum(~np.isnan(x))
    return np.divide(sum_vals, count_vals, out=np.zeros_like(sum_vals), where=count_vals != 0)


def _norm2(v: np.ndarray) -> np.ndarray:
    return np.sqrt(v[:, 0] * v[:, 0] + v[:, 1] * v[:, 1])


def match_centre_distance(gt: BoxArrays, pred: BoxArrays, num_samples: int, config: DetectionConfig):
    """Match predictions to GT at every class and distance threshold.

    Returns:
        (order, match): <int64: P> the devkit's processing order (by class, then descending score, ties to the
        later prediction) and <int64: T, P> the matched GT index per threshold and prediction (-1: none).
    """
    n_cls, ths = len(DETECTION_NAMES), np.asarray(config.dist_ths, dtype=np.float64)
    idx = np.arange(len(pred))
    order = np.lexsort((idx, pred.score, pred.label))  # ascending (label, score, index) ...
    order = np.concatenate([order[pred.label[order] == c][::-1] for c in range(n_cls)])  # ... score desc per class
    rank = rank_in_group(pred.sample * n_cls + pred.label, order)
    key_p, key_g = pred.sample * n_cls + pred.label, gt.sample * n_cls + gt.label
    match = np.full((len(ths), len(pred)), -1, dtype=np.int64)
    if len(ths):  # only pairs within the largest threshold along x can match: one window per prediction
        p, g = window_pairs(key_p, pred.translation[:, 0], key_g, gt.translation[:, 0], float(ths.max()))
        dist = _norm2(pred.translation[p, :2] - gt.translation[g, :2])
        near = dist < ths.max()
        p, g, dist = p[near], g[near], dist[near]
        for t, th in enumerate(ths):  # one matching problem at a time: the memory of one
            ok = dist < th
            match[t] = greedy_match(p[ok], g[ok], dist[ok], key_p, rank, len(pred), len(gt))
    return order, match


def accumulate(
    gt: BoxArrays, pred: BoxArrays, label: int, order: np.ndarray, match: np.ndarray, gt_yaw, pred_yaw
) -> MetricData:
    """The devkit's `accumulate` for one class and threshold, from the matching's result.

    Args:
        gt, pred: All GT and prediction boxes.
        label: Class index.
        order: <int64: P> processing order (`match_centre_distance`).
        match: <int64: P> matched GT index per prediction at this threshold.
        gt_yaw, pred_yaw: <float64: G>, <float64: P> yaws.
    """
    npos = int(np.count_nonzero(gt.label == label))
    if npos == 0:
        return MetricData.no_predictions()
    p = order[pred.label[order] == label]
    m = match[p]
    is_tp = m >= 0
    if not is_tp.any():
        return MetricData.no_predictions()
    tp = np.cumsum(is_tp).astype(float)
    fp = np.cumsum(~is_tp).astype(float)
    conf = pred.score[p]
    prec = tp / (fp + tp)
    rec = tp / float(npos)
    rec_interp = np.linspace(0, 1, NELEM)
    prec = np.interp(rec_interp, rec, prec, right=0)
    conf_interp = np.interp(rec_interp, rec, conf, right=0)

    pm, gm = p[is_tp], m[is_tp]
    period = np.pi if DETECTION_NAMES[label] == "barrier" else 2 * np.pi
    diff = (gt_yaw[gm] - pred_yaw[pm] + period / 2) % period - period / 2
    diff = np.where(diff > np.pi, diff - 2 * np.pi, diff)
    gs, ps = gt.size[gm], pred.size[pm]
    inter = np.prod(np.minimum(gs, ps), axis=1)
    union = gs[:, 0] * gs[:, 1] * gs[:, 2] + ps[:, 0] * ps[:, 1] * ps[:, 2] - inter
    gt_attr = gt.attribute[gm]
    errors = {
        "trans_err": _norm2(pred.translation[pm, :2] - gt.translation[gm, :2]),
        "vel_err": _norm2(pred.velocity[pm] - gt.velocity[gm]),
        "scale_err": 1 - inter / union,
        "orient_err": np.abs(diff),
        "attr_err": 1 - np.where(gt_attr < 0, np.nan, (gt_attr == pred.attribute[pm]).astype(float)),
    }
    match_conf = pred.score[pm]
    curves = {k: np.interp(conf_interp[::-1], match_conf[::-1], _cummean(v)[::-1])[::-1] for k, v in errors.items()}
    return MetricData(recall=rec_interp, precision=prec, confidence=conf_interp, **curves)


def calc_ap(md: MetricData, min_recall: float, min_precision: float) -> float:
    """The devkit's `calc_ap`: mean clipped precision above `min_recall`."""
    prec = np.copy(md.precision)
    prec = prec[round(100 * min_recall) + 1 :]
    prec -= min_precision
    prec[prec < 0] = 0
    return float(np.mean(prec)) / (1.0 - min_precision)


def calc_tp(md: MetricData, min_recall: float, metric_name: str) -> float:
    """The devkit's `calc_tp`: mean TP error between `min_recall` and the highest recall reached."""
    first_ind = round(100 * min_recall) + 1
    last_ind = md.max_recall_ind
    if last_ind < first_ind:
        return 1.0
    return float(np.mean(getattr(md, metric_name)[first_ind : last_ind + 1]))


def nuscenes_metrics(
    gt: BoxArrays, pred: BoxArrays, num_samples: int, config: DetectionConfig
) -> tuple[dict, dict[tuple[str, float], MetricData]]:
    """Every figure of `metrics_summary.json` but `eval_time` and `meta`, and the curves behind them.

    Args:
        gt: Filtered GT boxes of the split.
        pred: Filtered predictions, in the devkit's order.
        num_samples: Samples of the split.
        config: Detection config.

    Returns:
        (summary, curves): the summary dict (JSON keys) and `MetricData` per (class, distance threshold).
    """
    order, match = match_centre_distance(gt, pred, num_samples, config)
    gt_yaw, pred_yaw = quaternion_yaw(gt.rotation), quaternion_yaw(pred.rotation)
    curves: dict[tuple[str, float], MetricData] = {}
    label_aps: dict[str, dict[str, float]] = {}
    label_tp: dict[str, dict[str, float]] = {}
    for c, name in enumerate(DETECTION_NAMES):
        for t, th in enumerate(config.dist_ths):
            curves[(name, th)] = accumulate(gt, pred, c, order, match[t], gt_yaw, pred_yaw)
        label_aps[name] = {
            str(float(th)): calc_ap(curves[(name, th)], config.min_recall, config.min_precision)
            for th in config.dist_ths
        }
        md = curves[(name, config.dist_th_tp)]
        label_tp[name] = {}
        for metric in TP_METRICS:
            if (name == "traffic_cone" and metric in ("attr_err", "vel_err", "orient_err")) or (
                name == "barrier" and metric in ("attr_err", "vel_err")
            ):
                label_tp[name][metric] = float("nan")
            else:
                label_tp[name][metric] = calc_tp(md, config.min_recall, metric)
    mean_dist_aps = {name: float(np.mean(list(d.values()))) for name, d in label_aps.items()}
    mean_ap = float(np.mean(list(mean_dist_aps.values())))
    tp_errors = {m: float(np.nanmean([label_tp[name][m] for name in DETECTION_NAMES])) for m in TP_METRICS}
    tp_scores = {m: max(0.0, 1.0 - tp_errors[m]) for m in TP_METRICS}
    nd_score = float(config.mean_ap_weight * mean_ap + np.sum(list(tp_scores.values())))
    nd_score = nd_score / float(config.mean_ap_weight + len(tp_scores))
    summary = {
        "label_aps": label_aps,
        "mean_dist_aps": mean_dist_aps,
        "mean_ap": mean_ap,
        "label_tp_errors": label_tp,
        "tp_errors": tp_errors,
        "tp_scores": tp_scores,
        "nd_score": nd_score,
    }
    return summary, curves
