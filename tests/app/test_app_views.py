"""The app's views against the devkit and independent references: projections, footprints, IoU, predictions, 3D."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from app_helpers import glb_json

from fusion.app.views import Overlay, best_gt_iou, render_sample
from fusion.data.browse import CAMERA_ORDER, Boxes3D, Browser
from fusion.data.submission import to_results


@pytest.fixture(scope="module")
def browser(tiny_root) -> Browser:
    return Browser(tiny_root, "v1.0-mini")


@pytest.fixture(scope="module")
def token(browser) -> str:
    return browser.samples(browser.scenes()[1]["token"])[1]


def test_camera_projection_is_the_devkits(browser, token):
    from nuscenes.utils.geometry_utils import BoxVisibility, view_points

    total = 0
    for channel in CAMERA_ORDER:
        _, views = browser.camera(token, channel)
        sd = browser.nusc.get("sample", token)["data"][channel]
        _, boxes, k = browser.nusc.get_sample_data(sd, box_vis_level=BoxVisibility.ANY)
        ref = {b.token: view_points(b.corners(), np.asarray(k), normalize=True)[:2] for b in boxes
               if b.corners()[2].min() > 0.1}  # fmt: skip
        mine = {v.token: v.corners for v in views}
        assert set(mine) == set(ref), channel
        for t in ref:
            np.testing.assert_allclose(mine[t], ref[t], atol=1e-6)
        total += len(ref)
    assert total > 0


def test_bev_footprints_and_points(browser, token):
    from pyquaternion import Quaternion

    points, footprints = browser.lidar(token, nsweeps=3)
    assert abs(np.percentile(points[:, 2], 25)) < 0.05  # the ground lies at z = 0 of the flat ego frame
    sample = browser.nusc.get("sample", token)
    pose = browser.nusc.get("ego_pose", browser.nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
    yaw = Quaternion(pose["rotation"]).yaw_pitch_roll[0]
    for view, ann in zip(footprints, sample["anns"], strict=True):  # the devkit's Box, turned by hand
        corners = browser.nusc.get_box(ann).bottom_corners() - np.asarray(pose["translation"])[:, None]
        c, s = np.cos(-yaw), np.sin(-yaw)
        x, y = c * corners[0] - s * corners[1], s * corners[0] + c * corners[1]  # ego frame: x forward, y left
        np.testing.assert_allclose(view.corners, np.stack([-y, x]), atol=1e-6)  # view: x right, y forward


def test_predictions_round_trip_through_result_records(browser, token):
    from nuscenes.utils.data_classes import Box
    from pyquaternion import Quaternion

    rng = np.random.default_rng(0)
    boxes = np.column_stack([rng.uniform(-20, 20, (5, 2)), rng.uniform(-1, 1, 5), rng.uniform(0.5, 3, (5, 3)),
                             rng.uniform(-np.pi, np.pi, 5)])  # fmt: skip
    global_from_lidar = np.eye(4)
    global_from_lidar[:3, :3] = Quaternion(axis=[0, 0, 1], angle=0.7).rotation_matrix
    global_from_lidar[:3, 3] = [100.0, 50.0, 1.0]
    records = to_results(token, global_from_lidar, boxes, rng.uniform(0, 1, 5), np.arange(5))
    mine = Boxes3D.from_records(records).corners()
    for k, r in enumerate(records):
        ref = Box(r["translation"], r["size"], Quaternion(r["rotation"])).corners().T
        np.testing.assert_allclose(mine[k], ref, atol=1e-9)


def test_best_gt_iou_is_shapely_polygon_iou():
    from shapely.geometry import Polygon

    rng = np.random.default_rng(1)

    def boxes(n, names):
        yaw = rng.uniform(-np.pi, np.pi, n)
        rot = np.zeros((n, 3, 3))
        c, s = np.cos(yaw), np.sin(yaw)
        rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1], rot[:, 2, 2] = c, -s, s, c, 1
        return Boxes3D(tuple(names), tuple(map(str, range(n))), rng.uniform(-3, 3, (n, 3)), rng.uniform(1, 4, (n, 3)),
                       rot, np.zeros((n, 2)), rng.uniform(0, 1, n))  # fmt: skip

    preds, gt = boxes(12, ["car", "pedestrian"] * 6), boxes(9, ["car", "pedestrian", "car"] * 3)
    iou, names = best_gt_iou(preds, gt)
    poly = [[Polygon(b.corners()[k, [2, 3, 7, 6], :2]) for k in range(len(b))] for b in (preds, gt)]
    for p in range(len(preds)):
        ref = [poly[0][p].intersection(g).area / poly[0][p].union(g).area if gt.names[j] == preds.names[p] else 0.0
               for j, g in enumerate(poly[1])]  # fmt: skip
        assert iou[p] == pytest.approx(max(ref), abs=1e-9)
        assert names[p] == (gt.names[int(np.argmax(ref))] if max(ref) > 0 else "")
    assert iou.max() > 0


def test_predictor_is_lightning_predict_and_caches(tiny_root, app_ckpt, app_cache):
    from fusion.app.predictor import Predictor, load_system
    from fusion.data.datamodule import NuScenesDataModule

    predictor = Predictor.from_checkpoint(app_ckpt, tiny_root, "v1.0-mini", cache_dir=app_cache)
    system, data = load_system(app_ckpt)
    for modality in ("fused", "camera"):
        dm = NuScenesDataModule(tiny_root, predict_split="mini_val", batch_size=1, image_size=tuple(data["image_size"]),
                                sweeps=data["sweeps"], eval_modality=modality, cache_dir=app_cache)  # fmt: skip
        dm.setup("predict")
        batch = next(iter(dm.predict_dataloader()))
        with torch.inference_mode():
            ref = system.predict_step(batch, 0)[batch.tokens[0]]
        got = predictor.predict(batch.tokens[0], modality)
        assert len(got) == len(ref) > 0
        for a, b in zip(got, ref, strict=True):
            assert a["detection_name"] == b["detection_name"]
            np.testing.assert_allclose(a["translation"], b["translation"], atol=1e-5)
            assert a["detection_score"] == pytest.approx(b["detection_score"], abs=1e-6)
        assert predictor.predict(batch.tokens[0], modality) is got  # cached: the model ran once
    fused, camera = (predictor.predict(batch.tokens[0], m) for m in ("fused", "camera"))
    assert [r["detection_score"] for r in fused] != [r["detection_score"] for r in camera]


def test_checkpoints_load_weights_only(tmp_path, tiny_root, app_cache):
    from fusion.app.predictor import CheckpointError, load_system
    from fusion.app.state import AppConfig, AppState

    class Payload:  # an object that would run code when unpickled by a full torch.load
        def __reduce__(self):
            return (print, ("unpickled!",))

    bad = tmp_path / "pickled.ckpt"
    torch.save({"hyper_parameters": {}, "state_dict": {}, "extra": Payload()}, bad)
    with pytest.raises(CheckpointError, match=r"pickled\.ckpt"):
        load_system(bad)
    with pytest.raises(CheckpointError, match="make run"):
        load_system(tmp_path / "missing.ckpt")
    # a checkpoint of another build: a model field this version does not know, or weights this model does not have
    from dataclasses import asdict

    from fusion.models.model import TINY
    from fusion.system import DetectionSystem

    weights = DetectionSystem(model=TINY).state_dict()
    newer = tmp_path / "newer.ckpt"
    torch.save({"hyper_parameters": {"model": {**asdict(TINY), "refine_motion_bins": 3}}, "state_dict": weights}, newer)
    with pytest.raises(CheckpointError, match=r"newer\.ckpt: field 'hyper_parameters'.*refine_motion_bins"):
        load_system(newer)
    other = tmp_path / "other.ckpt"
    torch.save(
        {"hyper_parameters": {"model": asdict(TINY)}, "state_dict": {**weights, "model.head.hidden": torch.zeros(1)}},
        other,
    )
    with pytest.raises(CheckpointError, match=r"(?s)other\.ckpt: field 'state_dict'.*model\.head\.hidden"):
        load_system(other)
    state = AppState(AppConfig(dataroot=tiny_root, run_dir=str(tmp_path), cache_dir=app_cache))
    assert state.predictor is None and "make run" in state.model_message and state.browser is not None
    assert state.qa is None and "make run" in state.qa_message


def test_render_sample_views_and_3d(browser, token, tmp_path):
    gt = browser.annotation_boxes(token)
    preds = gt.select(np.arange(len(gt)) % 2 == 0)
    preds = Boxes3D(preds.names, tuple(f"p{i}" for i in range(len(preds))), preds.centre + 0.05, preds.size,
                    preds.rotation, preds.velocity, np.linspace(1, 0.1, len(preds)))  # fmt: skip
    plain = render_sample(browser, token, Overlay(), glb_dir=str(tmp_path))
    views = render_sample(browser, token, Overlay(preds, None, frozenset(gt.tokens[:1])), glb_dir=str(tmp_path))
    assert [c for _, c in views.cameras] == list(CAMERA_ORDER) and views.cameras[0][0].shape == (180, 320, 3)
    assert views.bev.shape == (600, 600, 3) and not np.array_equal(views.bev, plain.bev)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(views.cameras, plain.cameras, strict=True))
    assert len(views.detections) == len(preds) and len(views.annotations) == len(gt)
    assert [r[1] for r in views.detections] == sorted((r[1] for r in views.detections), reverse=True)
    assert all(r[4] > 0.5 and r[5] == r[0] for r in views.detections)  # shifted by 5 cm: overlaps its own GT box
    meta = glb_json(views.glb)
    n_vertices = meta["accessors"][1]["count"]
    points = browser.points(token)
    assert n_vertices > 12 * 8 * (len(gt) + len(preds)) and n_vertices <= 4 * len(points) + 12 * 8 * 100
    assert n_vertices - glb_json(plain.glb)["accessors"][1]["count"] == 12 * 8 * len(preds)


def test_grounded_payloads_annotations_lit_others_drawn_malformed_ignored(browser, token):
    from fusion.app.chat import grounded_boxes

    anns = set(browser.nusc.get("sample", token)["anns"])
    ann = sorted(anns)[0]
    payload = {"sample_token": token, "boxes": [
        {"token": ann, "name": "car", "center": [0, 0, 0], "size": [1, 2, 1], "yaw": 0.0, "score": 0.9},
        {"token": None, "name": "car", "center": [1, 2, 3], "size": [2, 4, 1.5], "yaw": 0.5, "score": 0.7},
    ]}  # fmt: skip
    extra, lit = grounded_boxes(payload, token, anns)
    assert lit == {ann} and extra.tokens == ("qa-0",) and extra.yaw[0] == pytest.approx(0.5)
    np.testing.assert_allclose(extra.centre, [[1, 2, 3]])
    assert grounded_boxes({**payload, "sample_token": "other"}, token, anns) == (None, frozenset())
    for bad in ({"sample_token": token, "boxes": [{"token": [1], "center": "x"}]},
                {"sample_token": token, "boxes": [{"name": "car", "center": [float("nan")] * 3, "size": [1, 1, 1],
                                                   "yaw": 0, "score": 1}]}, "text", None):  # fmt: skip
        assert grounded_boxes(bad, token, anns) == (None, frozenset())


def test_default_checkpoints_of_a_run(tmp_path):
    from fusion.app.state import AppConfig

    config = AppConfig(run_dir=str(tmp_path))
    assert config.detector_checkpoint() == tmp_path / "checkpoints" / "last.ckpt"
    assert config.scene_qa_checkpoint() is None
    (tmp_path / "qa").mkdir()
    (tmp_path / "qa" / "last.ckpt").write_bytes(b"")
    assert config.scene_qa_checkpoint() == tmp_path / "qa" / "last.ckpt"
    (tmp_path / "qa" / "qa.ckpt").write_bytes(b"")  # what `fusion run` writes wins
    assert config.scene_qa_checkpoint() == tmp_path / "qa" / "qa.ckpt"
    assert AppConfig(qa_checkpoint="x.ckpt").scene_qa_checkpoint().name == "x.ckpt"
