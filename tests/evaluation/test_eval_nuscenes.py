"""Our nuScenes metrics against the devkit's own `DetectionEval`, figure by figure."""

from __future__ import annotations

import json

import numpy as np
import pytest
from eval_helpers import assert_same_figures, devkit_summary, make_results

from fusion.evaluation import config as ev_config
from fusion.evaluation import run_evaluation
from fusion.evaluation.config import ATTRIBUTE_NAMES, DETECTION_NAMES

PERTURBATIONS = {
    "position": dict(pos=0.7),
    "size": dict(size=0.2),
    "yaw": dict(yaw=0.6),
    "velocity": dict(vel=1.5),
    "attribute": dict(attr_flip=0.4),
    "dropped": dict(pos=0.3, drop=0.4),
    "false_positives": dict(pos=0.3, false_pos=8),
    "empty_samples": dict(pos=0.3, empty=0.5),
    "everything": dict(pos=0.8, size=0.2, yaw=0.8, vel=1.0, attr_flip=0.3, drop=0.3, false_pos=5, empty=0.2),
    "tied_scores": dict(pos=0.5, yaw=0.3, false_pos=3, scores="tied"),
    "gt_tied": dict(scores="tied"),
}


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
@pytest.mark.parametrize("split", ["mini_val", "mini_train"])
def test_equal_to_devkit(name, split, tiny_root, tiny_nusc, eval_cache, write_results, tmp_path):
    results = make_results(tiny_nusc, split, seed=sorted(PERTURBATIONS).index(name), **PERTURBATIONS[name])
    path = write_results(results)
    ours = run_evaluation(tiny_root, "v1.0-mini", split, path, cache_dir=eval_cache).metrics["nuscenes"]
    ref = devkit_summary(tiny_nusc, split, path, tmp_path / "devkit")
    assert_same_figures(ours, ref)
    assert ours["meta"] == results["meta"]


def test_equal_to_devkit_custom_split(tiny_root, tiny_nusc, eval_cache, write_results, tmp_path):
    """A splits.json split: the devkit reads the results in sample-table order; so do we."""
    results = make_results(tiny_nusc, "synth_val", seed=7, pos=0.6, yaw=0.5, false_pos=4, scores="tied")
    results["results"] = dict(reversed(list(results["results"].items())))
    path = write_results(results)
    ours = run_evaluation(tiny_root, "v1.0-mini", "synth_val", path, cache_dir=eval_cache).metrics["nuscenes"]
    assert_same_figures(ours, devkit_summary(tiny_nusc, "synth_val", path, tmp_path / "devkit"))


def test_in_memory_results_equal_file(tiny_root, tiny_nusc, eval_cache, write_results):
    results = make_results(tiny_nusc, "mini_val", seed=3, pos=0.5, false_pos=3)
    from_file = run_evaluation(tiny_root, "v1.0-mini", "mini_val", write_results(results), cache_dir=eval_cache)
    in_memory = run_evaluation(tiny_root, "v1.0-mini", "mini_val", results, cache_dir=eval_cache)
    a, b = from_file.metrics, in_memory.metrics
    a["nuscenes"].pop("eval_time"), b["nuscenes"].pop("eval_time")
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def gt_submission(gt) -> dict:
    """The evaluation GT itself (after the devkit's filters) as a submission, scores tied."""
    results = {token: [] for token in gt.sample_tokens.tolist()}
    b = gt.boxes
    for i in range(len(b)):
        token = str(gt.sample_tokens[b.sample[i]])
        results[token].append({
            "sample_token": token,
            "translation": b.translation[i].tolist(),
            "size": b.size[i].tolist(),
            "rotation": b.rotation[i].tolist(),
            "velocity": np.nan_to_num(b.velocity[i]).tolist(),
            "detection_name": DETECTION_NAMES[b.label[i]],
            "detection_score": 0.5,
            "attribute_name": ATTRIBUTE_NAMES[b.attribute[i]] if b.attribute[i] >= 0 else "",
        })  # fmt: skip
    return {"meta": {"use_lidar": True}, "results": results}


@pytest.mark.parametrize("split", ["mini_val", "mini_train"])
def test_gt_as_predictions_is_perfect(split, tiny_root, eval_cache):
    gt = run_evaluation(tiny_root, "v1.0-mini", split, make_empty(tiny_root, split), cache_dir=eval_cache).gt
    ev = run_evaluation(tiny_root, "v1.0-mini", split, gt_submission(gt), cache_dir=eval_cache)
    present = {DETECTION_NAMES[c] for c in np.unique(gt.boxes.label)}
    assert len(present) >= 4, "the tiny world has GT of several classes"
    for name in DETECTION_NAMES:
        aps = ev.metrics["nuscenes"]["label_aps"][name].values()
        assert list(aps) == pytest.approx([1.0 if name in present else 0.0] * 4, abs=1e-12), name
        for kind in ("bev", "3d"):
            for ordering in ("global", "local"):
                for th in ("0.3", "0.5", "0.7"):
                    ap = ev.metrics["iou_ap"][kind][ordering][th][name]
                    assert ap == pytest.approx(1.0, abs=1e-12) if name in present else ap is None
    for name in present:
        errors = ev.metrics["nuscenes"]["label_tp_errors"][name]
        assert [errors[m] for m in ("trans_err", "scale_err")] == pytest.approx([0.0, 0.0], abs=1e-12), name


def make_empty(root: str, split: str) -> dict:
    """A submission with no boxes for every sample of the split."""
    from eval_helpers import split_samples
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes("v1.0-mini", dataroot=root, verbose=False)
    return {"meta": {}, "results": {s["token"]: [] for s in split_samples(nusc, split)}}


def test_vocabulary_matches_devkit():
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection import constants

    assert list(ev_config.DETECTION_NAMES) == constants.DETECTION_NAMES
    assert list(ev_config.ATTRIBUTE_NAMES) == constants.ATTRIBUTE_NAMES
    assert list(ev_config.TP_METRICS) == constants.TP_METRICS
    assert ev_config.load_config().serialize() == config_factory("detection_cvpr_2019").serialize()
