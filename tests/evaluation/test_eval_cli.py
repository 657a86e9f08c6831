"""`fusion evaluate`: metrics.json schema, the printed table, plots, the modality comparison; the GT cache."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from eval_helpers import devkit_summary, make_results

from fusion.cli import main
from fusion.evaluation import ground_truth, run_evaluation
from fusion.evaluation.config import DETECTION_NAMES, load_config


def run_cli(tiny_root, results_path, out, cache, *extra) -> int:
    args = ["evaluate", "--dataroot", tiny_root, "--version", "v1.0-mini", "--split", "mini_val"]
    return main([*args, "--results", str(results_path), "--out", str(out), "--cache-dir", str(cache), *extra])


def test_metrics_json_schema_and_table(tiny_root, tiny_nusc, eval_cache, write_results, tmp_path, capsys):
    path = write_results(make_results(tiny_nusc, "mini_val", seed=2, pos=0.4, false_pos=3))
    assert run_cli(tiny_root, path, tmp_path / "out", eval_cache) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    ref = devkit_summary(tiny_nusc, "mini_val", path, tmp_path / "devkit")
    assert set(metrics) == {"nuscenes", "iou_ap"}
    assert set(metrics["nuscenes"]) == set(ref) | {"eval_time", "meta"}
    assert set(metrics["iou_ap"]) == {"bev", "3d"}
    for kind in ("bev", "3d"):
        assert set(metrics["iou_ap"][kind]) == {"global", "local"}
        for ordering in ("global", "local"):
            assert set(metrics["iou_ap"][kind][ordering]) == {"0.3", "0.5", "0.7"}
            for table in metrics["iou_ap"][kind][ordering].values():
                assert set(table) == {*DETECTION_NAMES, "mean"}
    printed = capsys.readouterr().out
    assert "mAP" in printed and "NDS" in printed and "pedestrian" in printed
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["metrics.json"]  # no temporary files left


def test_plots(tiny_root, tiny_nusc, eval_cache, write_results, tmp_path):
    path = write_results(make_results(tiny_nusc, "mini_val", seed=4, pos=0.3))
    assert run_cli(tiny_root, path, tmp_path / "out", eval_cache, "--plots", "--plot-samples", "1") == 0
    plots = sorted(p.name for p in (tmp_path / "out" / "plots").iterdir())
    assert "pr_car.png" in plots and "tp_car.png" in plots
    assert sum(p.startswith("bev_") for p in plots) == 1
    assert all((tmp_path / "out" / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)


def test_modality_comparison(tiny_root, tiny_nusc, eval_cache, write_results, tmp_path, capsys):
    runs = {}
    for name, noise in (("camera_only", 1.2), ("lidar_only", 0.4), ("fused", 0.1)):
        path = write_results(make_results(tiny_nusc, "mini_val", seed=5, pos=noise), f"{name}.json")
        assert run_cli(tiny_root, path, tmp_path / name, eval_cache) == 0
        runs[name] = tmp_path / name / "metrics.json"
    capsys.readouterr()
    assert main(["evaluate", "--compare", *(f"{k}={v}" for k, v in runs.items()), "--out", str(tmp_path / "cmp")]) == 0
    table = capsys.readouterr().out
    header = next(line for line in table.splitlines() if line.startswith("metric"))
    assert header.split()[1:] == ["camera_only", "lidar_only", "fused"]
    row = next(line for line in table.splitlines() if line.startswith("mAP "))
    maps = [float(x) for x in row.split()[1:]]
    assert maps[0] < maps[1] < maps[2]
    assert (tmp_path / "cmp" / "comparison.txt").read_text().strip() == table.strip()
    assert main(["evaluate", "--compare", "broken"]) == 2
    assert main(["evaluate", "--compare", f"x={tmp_path / 'nope.json'}"]) == 2
    # evaluating with a bad --compare file, or one under the evaluated run's name, writes nothing: the existing
    # metrics.json stays as it was
    before = (tmp_path / "fused" / "metrics.json").read_bytes()
    path = tmp_path / "fused.json"
    assert run_cli(tiny_root, path, tmp_path / "fused", eval_cache, "--compare", f"x={tmp_path / 'nope.json'}") == 2
    assert run_cli(tiny_root, path, tmp_path / "fused", eval_cache, "--compare", f"this={runs['fused']}") == 2
    assert (tmp_path / "fused" / "metrics.json").read_bytes() == before


def test_gt_matches_devkit_filters(tiny_root, tiny_nusc, tmp_path):
    """The cached GT equals the devkit's filtered `gt_boxes`, box by box; the bicycle-rack filter is exercised."""
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    results = make_results(tiny_nusc, "mini_train", seed=0)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(results))
    ev = DetectionEval(tiny_nusc, config_factory("detection_cvpr_2019"), str(path), "mini_train", str(tmp_path), False)
    gt = ground_truth.build_ground_truth(tiny_root, "v1.0-mini", "mini_train", load_config())
    ref = [b for token in gt.sample_tokens.tolist() for b in ev.gt_boxes[token]]
    assert len(ref) == len(gt.boxes)
    assert np.array_equal(gt.boxes.translation, [b.translation for b in ref])
    assert np.array_equal(gt.boxes.size, [b.size for b in ref])
    assert np.array_equal(gt.boxes.velocity, [b.velocity for b in ref], equal_nan=True)
    assert [DETECTION_NAMES[i] for i in gt.boxes.label] == [b.detection_name for b in ref]
    assert gt.boxes.num_pts.tolist() == [b.num_pts for b in ref]
    # The synthetic world parks bicycles in racks: the devkit's rack filter (which we equal) has work to do.
    from nuscenes.utils.data_classes import Box
    from nuscenes.utils.geometry_utils import points_in_box
    from pyquaternion import Quaternion

    in_racks = 0
    for token in gt.sample_tokens.tolist():
        anns = [tiny_nusc.get("sample_annotation", a) for a in tiny_nusc.get("sample", token)["anns"]]
        racks = [Box(a["translation"], a["size"], Quaternion(a["rotation"])) for a in anns
                 if a["category_name"] == "static_object.bicycle_rack"]  # fmt: skip
        for a in anns:
            if a["category_name"] == "vehicle.bicycle" and a["num_lidar_pts"] + a["num_radar_pts"] > 0:
                in_racks += any(points_in_box(r, np.array(a["translation"])[:, None])[0] for r in racks)
    assert len(gt.racks) > 0 and in_racks > 0


def test_gt_cache_reused_and_invalidated(tiny_root, tmp_path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    for name in os.listdir(tiny_root):
        if name != "v1.0-mini":
            (root / name).symlink_to(Path(tiny_root) / name)
    shutil.copytree(Path(tiny_root) / "v1.0-mini", root / "v1.0-mini")
    cache = tmp_path / "cache"
    results = {"meta": {}, "results": {}}
    gt = run_evaluation(root, "v1.0-mini", "mini_val", _empty(root), cache_dir=cache).gt
    assert len(list(cache.glob("gt_*.npz"))) == 1 and not list(cache.glob("*.tmp*"))

    def no_build(*args, **kwargs):
        raise AssertionError("the GT cache should have been used")

    monkeypatch.setattr(ground_truth, "build_ground_truth", no_build)
    again = run_evaluation(root, "v1.0-mini", "mini_val", _empty(root), cache_dir=cache).gt
    assert np.array_equal(again.boxes.translation, gt.boxes.translation)
    assert again.sample_tokens.tolist() == gt.sample_tokens.tolist() and again.predefined == gt.predefined
    table = root / "v1.0-mini" / "sample_annotation.json"
    os.utime(table, ns=(table.stat().st_atime_ns, table.stat().st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="GT cache"):
        run_evaluation(root, "v1.0-mini", "mini_val", results, cache_dir=cache)


def _empty(root) -> dict:
    from eval_helpers import split_samples
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes("v1.0-mini", dataroot=str(root), verbose=False)
    return {"meta": {}, "results": {s["token"]: [] for s in split_samples(nusc, "mini_val")}}
