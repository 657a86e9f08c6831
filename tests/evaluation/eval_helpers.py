"""Helpers of the evaluation tests: perturbed predictions of the tiny world, and the devkit's own figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from fusion.evaluation.config import DETECTION_NAMES

META = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}
OTHER_ATTRIBUTE = {"pedestrian": "pedestrian.standing", "bicycle": "cycle.with_rider", "motorcycle": "cycle.with_rider"}


def split_samples(nusc, split: str) -> list[dict]:
    """The split's sample records, in sample-table order (predefined or splits.json split)."""
    from nuscenes.utils.splits import create_splits_scenes

    scenes = create_splits_scenes().get(split)
    if scenes is None:
        scenes = json.loads((Path(nusc.dataroot) / nusc.version / "splits.json").read_text())[split]
    return [s for s in nusc.sample if nusc.get("scene", s["scene_token"])["name"] in scenes]


def _yaw_quaternion(q: list[float], dyaw: float) -> list[float]:
    w1, x1, y1, z1 = math.cos(dyaw / 2), 0.0, 0.0, math.sin(dyaw / 2)
    w2, x2, y2, z2 = q
    return [
        w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
        w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
        w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
        w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
    ]


def make_results(
    nusc,
    split: str,
    seed: int = 0,
    pos: float = 0.0,
    size: float = 0.0,
    yaw: float = 0.0,
    vel: float = 0.0,
    attr_flip: float = 0.0,
    drop: float = 0.0,
    false_pos: int = 0,
    empty: float = 0.0,
    scores: str = "random",
) -> dict:
    """A submission made from the GT of `split`, perturbed.

    Args:
        pos, size, yaw, vel: Noise scales (m, relative, rad, m/s).
        attr_flip: Probability of a wrong attribute.
        drop: Probability of dropping a GT box.
        false_pos: Up to this many false positives per sample (random class, some beyond the class range).
        empty: Probability of a sample with no predictions.
        scores: "random", "tied" (all 0.5) or "ordered" (1, 0.99, ...).
    """
    from nuscenes.eval.detection.utils import category_to_detection_name

    rng = np.random.default_rng(seed)
    attrs = {a["token"]: a["name"] for a in nusc.attribute}
    results = {}
    for s in split_samples(nusc, split):
        boxes = []
        for token in s["anns"]:
            ann = nusc.get("sample_annotation", token)
            name = category_to_detection_name(ann["category_name"])
            if name is None or rng.random() < drop:
                continue
            v = np.nan_to_num(nusc.box_velocity(token)[:2]) + rng.normal(0, vel, 2) if vel else [0.0, 0.0]
            attr = attrs[ann["attribute_tokens"][0]] if ann["attribute_tokens"] else ""
            if attr and rng.random() < attr_flip:
                attr = OTHER_ATTRIBUTE.get(name, "vehicle.parked" if attr != "vehicle.parked" else "vehicle.moving")
            box = {
                "sample_token": s["token"],
                "translation": (np.array(ann["translation"]) + rng.normal(0, pos, 3) * (pos > 0)).tolist(),
                "size": (np.array(ann["size"]) * np.exp(rng.normal(0, size, 3) * (size > 0))).tolist(),
                "rotation": _yaw_quaternion(ann["rotation"], float(rng.normal(0, yaw)) if yaw else 0.0),
                "velocity": [float(x) for x in v],
                "detection_name": name,
                "detection_score": 0.0,
                "attribute_name": attr,
            }
            boxes.append(box)
        ego = nusc.get("ego_pose", nusc.get("sample_data", s["data"]["LIDAR_TOP"])["ego_pose_token"])["translation"]
        for _ in range(int(rng.integers(0, false_pos + 1))):
            name = DETECTION_NAMES[int(rng.integers(len(DETECTION_NAMES)))]
            r, a = rng.uniform(0, 60), rng.uniform(-np.pi, np.pi)
            boxes.append({
                "sample_token": s["token"],
                "translation": [ego[0] + r * math.cos(a), ego[1] + r * math.sin(a), 1.0],
                "size": [1.5, 3.0, 1.5],
                "rotation": _yaw_quaternion([1.0, 0.0, 0.0, 0.0], float(a)),
                "velocity": [0.0, 0.0],
                "detection_name": name,
                "detection_score": 0.0,
                "attribute_name": "",
            })  # fmt: skip
        if rng.random() < empty:
            boxes = []
        order = rng.permutation(len(boxes))
        boxes = [boxes[i] for i in order]
        for i, box in enumerate(boxes):
            box["detection_score"] = {"random": float(rng.random()), "tied": 0.5, "ordered": 1.0 - 0.01 * i}[scores]
        results[s["token"]] = boxes
    return {"meta": dict(META), "results": results}


def devkit_summary(nusc, split: str, results_path: Path, out_dir: Path) -> dict:
    """The devkit's `DetectionEval` figures (metrics_summary.json content without eval_time)."""
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    ev = DetectionEval(nusc, config_factory("detection_cvpr_2019"), str(results_path), split, str(out_dir), False)
    metrics, _ = ev.evaluate()
    summary = json.loads(json.dumps(metrics.serialize()))
    summary.pop("eval_time")
    return summary


def assert_same_figures(ours, ref, path: str = "", tol: float = 1e-9) -> None:
    """Every key of `ref` is in `ours`, with the same value (floats to `tol`, NaN equal to NaN)."""
    if isinstance(ref, dict):
        assert isinstance(ours, dict) and set(ref) <= set(ours), f"{path}: keys {set(ref) - set(ours)} missing"
        for key in ref:
            assert_same_figures(ours[key], ref[key], f"{path}/{key}", tol)
    elif isinstance(ref, float):
        if math.isnan(ref):
            assert math.isnan(ours), f"{path}: {ours} != nan"
        else:
            assert abs(ours - ref) <= tol, f"{path}: {ours} != {ref}"
    else:
        assert ours == ref, f"{path}: {ours} != {ref}"
