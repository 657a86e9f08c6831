"""The synthetic world, checked against the nuScenes devkit rather than against our own assumptions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from nuscenes.eval.detection.utils import category_to_detection_name
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import points_in_box
from pyquaternion import Quaternion

from fusion.data.synth.catalog import CATEGORIES

DETECTION_CLASSES = {"car", "truck", "bus", "trailer", "construction_vehicle", "pedestrian", "motorcycle", "bicycle",
                     "traffic_cone", "barrier"}  # fmt: skip


def test_all_tables_load_with_nuscenes_names(tiny_nusc, tiny_root):
    nusc = tiny_nusc
    for table in nusc.table_names:
        assert len(getattr(nusc, table)) > 0, table
    names = {c["name"] for c in nusc.category}
    assert names == set(CATEGORIES)
    assert {category_to_detection_name(n) for n in names} - {None} == DETECTION_CLASSES
    assert {s["channel"] for s in nusc.sensor} == {"LIDAR_TOP", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT",
                                                   "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"}  # fmt: skip
    assert [s["name"] for s in nusc.scene] == ["scene-0061", "scene-0103"]
    splits = json.loads((Path(tiny_root) / "v1.0-mini" / "splits.json").read_text())
    assert splits == {"synth_train": ["scene-0061"], "synth_val": ["scene-0103"]}
    for sample in nusc.sample:
        assert set(sample["data"]) == {s["channel"] for s in nusc.sensor}


def test_sweeps_chain_between_keyframes(tiny_nusc):
    nusc = tiny_nusc
    scene = nusc.scene[0]
    sd = nusc.get("sample_data", nusc.get("sample", scene["first_sample_token"])["data"]["LIDAR_TOP"])
    chain = [sd]
    while chain[-1]["next"]:
        chain.append(nusc.get("sample_data", chain[-1]["next"]))
    keys = [c["is_key_frame"] for c in chain]
    assert sum(keys) == scene["nbr_samples"]
    assert not all(keys), "LiDAR sweeps between keyframes are missing"
    stamps = np.array([c["timestamp"] for c in chain])
    assert np.all(np.diff(stamps) > 0)
    # Multi-sweep aggregation through the devkit: points from several sweeps with their time lags.
    sample = nusc.get("sample", chain[-1]["sample_token"])
    pc, times = LidarPointCloud.from_file_multisweep(nusc, sample, "LIDAR_TOP", "LIDAR_TOP", nsweeps=5)
    assert pc.points.shape[0] == 4 and len(np.unique(times)) == 5


def _global_points(nusc, sd_token: str) -> np.ndarray:
    sd = nusc.get("sample_data", sd_token)
    pc = LidarPointCloud.from_file(str(Path(nusc.dataroot) / sd["filename"]))
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    pc.rotate(Quaternion(cs["rotation"]).rotation_matrix)
    pc.translate(np.array(cs["translation"]))
    pc.rotate(Quaternion(pose["rotation"]).rotation_matrix)
    pc.translate(np.array(pose["translation"]))
    return pc.points[:3]


def test_num_lidar_pts_matches_devkit_points_in_box(tiny_nusc):
    nusc = tiny_nusc
    with_points = 0
    for sample in nusc.sample:
        points = _global_points(nusc, sample["data"]["LIDAR_TOP"])
        for ann_token in sample["anns"]:
            ann = nusc.get("sample_annotation", ann_token)
            count = int(points_in_box(nusc.get_box(ann_token), points).sum())
            assert count == ann["num_lidar_pts"], (ann_token, count, ann["num_lidar_pts"])
            with_points += count > 0
    assert with_points > 50


def test_lidar_files_are_float32_x5_in_sensor_frame(tiny_nusc):
    nusc = tiny_nusc
    sd = nusc.get("sample_data", nusc.sample[0]["data"]["LIDAR_TOP"])
    raw = np.fromfile(Path(nusc.dataroot) / sd["filename"], dtype=np.float32).reshape(-1, 5)
    rng = np.linalg.norm(raw[:, :3], axis=1)
    assert rng.min() >= 0.9 and rng.max() <= 70.1
    assert set(np.unique(raw[:, 4])) <= set(range(32))
    assert 0 <= raw[:, 3].min() and raw[:, 3].max() <= 255
    # The ground lies about 1.84 m below the sensor (ego poses are on the ground plane, z = 0).
    assert np.percentile(raw[:, 2], 5) == pytest.approx(-1.84, abs=0.1)


def test_velocities_agree_with_box_velocity(tiny_nusc, tiny_root):
    nusc = tiny_nusc
    world = json.loads((Path(tiny_root) / "v1.0-mini" / "synth_world.json").read_text())["instances"]
    moving = 0
    for ann in nusc.sample_annotation:
        v = nusc.box_velocity(ann["token"])[:2]
        truth = np.array(world[ann["instance_token"]]["velocity"])
        assert np.allclose(v, truth, atol=1e-3), (ann["token"], v, truth)
        attrs = [nusc.get("attribute", t)["name"] for t in ann["attribute_tokens"]]
        if np.linalg.norm(truth) > 0.5:
            moving += 1
            assert not {"vehicle.parked", "vehicle.stopped", "pedestrian.standing"} & set(attrs)
        else:
            assert not {"vehicle.moving", "pedestrian.moving"} & set(attrs)
    assert moving > 20


def test_ego_stays_on_the_devkit_map(tiny_nusc):
    nusc = tiny_nusc
    for scene in nusc.scene:
        log = nusc.get("log", scene["log_token"])
        mask = nusc.get("map", log["map_token"])["mask"]
        sample = nusc.get("sample", scene["first_sample_token"])
        pose = nusc.get("ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
        assert mask.is_on_mask(pose["translation"][0], pose["translation"][1])[0]


def test_ground_truth_as_predictions_scores_ap_one(tiny_nusc, tmp_path):
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.common.loaders import add_center_dist, filter_eval_boxes, load_gt
    from nuscenes.eval.detection.data_classes import DetectionBox
    from nuscenes.eval.detection.evaluate import DetectionEval

    nusc = tiny_nusc
    cfg = config_factory("detection_cvpr_2019")
    gt = filter_eval_boxes(nusc, add_center_dist(nusc, load_gt(nusc, "mini_val", DetectionBox, verbose=False)),
                           cfg.class_range, verbose=False)  # fmt: skip
    results = {}
    for token in gt.sample_tokens:
        results[token] = [{
            "sample_token": token, "translation": list(b.translation), "size": list(b.size),
            "rotation": list(b.rotation), "velocity": list(b.velocity), "detection_name": b.detection_name,
            "detection_score": 0.9, "attribute_name": b.attribute_name,
        } for b in gt[token]]  # fmt: skip
    path = tmp_path / "results.json"
    meta = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}
    path.write_text(json.dumps({"meta": meta, "results": results}))
    ev = DetectionEval(nusc, cfg, str(path), "mini_val", str(tmp_path / "eval"), verbose=False)
    metrics, _ = ev.evaluate()
    present = {b.detection_name for b in gt.all}
    assert len(present) >= 4
    for name in present:
        assert metrics.mean_dist_aps[name] == pytest.approx(1.0), name
        assert metrics.get_label_tp(name, "trans_err") == pytest.approx(0.0, abs=1e-6)
