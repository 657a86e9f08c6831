"""The compact GT cache: the devkit's `load_gt` + `filter_eval_boxes`, once, as numpy arrays on disk.

Built through the devkit (`NuScenes` is the only reader of the raw tables), with the filters of the
devkit's detection evaluation: the config's class ranges, no GT box without LiDAR/radar points, no bicycle
or motorcycle inside a bicycle rack. The racks and ego positions are kept too, since the predictions are
filtered the same way. The cache is keyed by (dataroot, version, split, config, the tables' mtimes and
sizes) and written atomically, so a stale or half-written cache is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path

import numpy as np

from fusion.evaluation.boxes import BoxArrays
from fusion.evaluation.config import (
    ATTRIBUTE_NAMES,
    BIKE_RACK_CATEGORY,
    CATEGORY_TO_DETECTION,
    DETECTION_NAMES,
    DetectionConfig,
)
from fusion.evaluation.errors import GroundTruthError
from fusion.evaluation.filters import filter_boxes
from fusion.files import atomic_target

CACHE_FORMAT = 1
KEY_TABLES = ("sample", "sample_annotation", "scene", "sample_data", "ego_pose", "attribute", "category", "instance")
PREDEFINED_VERSION_SUFFIX = {"train": "trainval", "val": "trainval", "train_detect": "trainval"}
PREDEFINED_VERSION_SUFFIX |= {"train_track": "trainval", "mini_train": "mini", "mini_val": "mini", "test": "test"}


@dataclass(frozen=True)
class GroundTruth:
    """The evaluation GT of one split.

    Attributes:
        version: Dataset version, e.g. `v1.0-mini`.
        split: Split name, e.g. `mini_val`.
        sample_tokens: <str: S> the split's samples, in sample-table order.
        ego_translation: <float64: S, 3> LIDAR_TOP ego position of each sample (global frame).
        boxes: The filtered GT boxes (`score` -1), sample by sample in `sample['anns']` order.
        racks: Every bicycle rack annotated in the split's samples.
        all_sample_tokens: <str: T> every sample of the version, to tell another split from another version.
        predefined: Whether the split is one of the devkit's (which then orders predictions as the results file).
    """

    version: str
    split: str
    sample_tokens: np.ndarray
    ego_translation: np.ndarray
    boxes: BoxArrays
    racks: BoxArrays
    all_sample_tokens: np.ndarray
    predefined: bool


def default_cache_dir() -> Path:
    """`$FUSION_CACHE_DIR`, else `~/.cache/fusion/eval`."""
    return Path(os.environ.get("FUSION_CACHE_DIR", Path.home() / ".cache" / "fusion")) / "eval"


def cache_key(dataroot: str | os.PathLike, version: str, split: str, config: DetectionConfig) -> str:
    """A hash of everything the cached GT depends on."""
    table_root = Path(dataroot).resolve() / version
    stats = {}
    for name in (*KEY_TABLES, "splits"):
        path = table_root / f"{name}.json"
        stats[name] = [path.stat().st_mtime_ns, path.stat().st_size] if path.exists() else None
    key = {
        "format": CACHE_FORMAT,
        "devkit": package_version("nuscenes-devkit"),
        "dataroot": str(Path(dataroot).resolve()),
        "version": version,
        "split": split,
        "config": config.serialize(),
        "tables": stats,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def load_ground_truth(
    dataroot: str | os.PathLike,
    version: str,
    split: str,
    config: DetectionConfig,
    cache_dir: str | os.PathLike | None = None,
) -> GroundTruth:
    """The GT of a split, from the cache when it is fresh, else built through the devkit and cached.

    Args:
        dataroot: nuScenes dataroot (real, or written by `fusion synth`).
        version: Version folder, e.g. `v1.0-mini`.
        split: A devkit split name (`mini_val`, `val`, ...) or one of `<dataroot>/<version>/splits.json`.
        config: Detection config (class ranges).
        cache_dir: Where cache files live (default `default_cache_dir()`); `False`-y string '' disables it.
    """
    table_root = Path(dataroot) / version
    if not (table_root / "sample.json").is_file():
        raise GroundTruthError(f"{table_root}: no nuScenes tables (sample.json) for version {version!r}")
    if cache_dir == "":
        return build_ground_truth(dataroot, version, split, config)
    path = Path(cache_dir or default_cache_dir()) / f"gt_{cache_key(dataroot, version, split, config)}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as arrays:
            return _from_arrays(dict(arrays))
    gt = build_ground_truth(dataroot, version, split, config)
    _save_atomic(path, gt)
    return gt


def split_scene_names(nusc, split: str) -> list[str]:
    """The scene names of a predefined or custom split; checks that a predefined split fits the version."""
    from nuscenes.utils.splits import create_splits_scenes, get_scenes_of_custom_split

    predefined = create_splits_scenes()
    if split in predefined:
        suffix = PREDEFINED_VERSION_SUFFIX.get(split)
        if suffix is not None and not nusc.version.endswith(suffix):
            raise GroundTruthError(f"split {split!r} belongs to a *-{suffix} version, not {nusc.version!r}")
        return list(predefined[split])
    try:
        return list(get_scenes_of_custom_split(split, nusc))
    except ValueError as e:
        raise GroundTruthError(f"unknown split {split!r} (not a devkit split; {e})") from e


def build_ground_truth(dataroot: str | os.PathLike, version: str, split: str, config: DetectionConfig) -> GroundTruth:
    """Read the tables through the devkit and apply the detection evaluation's GT filters."""
    from nuscenes.nuscenes import NuScenes
    from nuscenes.utils.splits import is_predefined_split

    try:
        nusc = NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    except (AssertionError, OSError, KeyError, json.JSONDecodeError) as e:
        raise GroundTruthError(f"{Path(dataroot) / version}: cannot load the nuScenes tables: {e}") from e
    scenes = set(split_scene_names(nusc, split))
    samples = [s for s in nusc.sample if nusc.get("scene", s["scene_token"])["name"] in scenes]
    if not samples:
        raise GroundTruthError(f"{Path(dataroot) / version}: split {split!r} has no samples in this version")
    ego = [nusc.get("ego_pose", nusc.get("sample_data", s["data"]["LIDAR_TOP"])["ego_pose_token"]) for s in samples]
    ego_translation = np.array([e["translation"] for e in ego], dtype=np.float64).reshape(-1, 3)

    anns, ann_sample = [], []
    for i, s in enumerate(samples):
        for token in s["anns"]:
            anns.append(nusc.get("sample_annotation", token))
            ann_sample.append(i)
    ann_sample = np.array(ann_sample, dtype=np.int64)
    is_rack = np.array([a["category_name"] == BIKE_RACK_CATEGORY for a in anns], dtype=bool)
    label = np.array([_label(a["category_name"]) for a in anns], dtype=np.int64)
    keep = label >= 0
    attr_names = {a["token"]: a["name"] for a in nusc.attribute}
    boxes = _annotation_boxes(
        [a for a, k in zip(anns, keep, strict=True) if k],
        ann_sample[keep],
        label[keep],
        velocity=lambda det: _velocities(nusc, det),
        attribute=lambda det: np.array([_attribute(a, attr_names) for a in det], dtype=np.int64),
        num_pts=lambda det: np.array([a["num_lidar_pts"] + a["num_radar_pts"] for a in det], dtype=np.int64),
    )
    rack_anns = [a for a, r in zip(anns, is_rack, strict=True) if r]
    racks = _annotation_boxes(rack_anns, ann_sample[is_rack], np.full(len(rack_anns), -1, dtype=np.int64))
    boxes = boxes.select(boxes.num_pts != 0)
    boxes = filter_boxes(boxes, ego_translation, racks, config)
    return GroundTruth(
        version=version,
        split=split,
        sample_tokens=np.array([s["token"] for s in samples]),
        ego_translation=ego_translation,
        boxes=boxes,
        racks=racks,
        all_sample_tokens=np.array([s["token"] for s in nusc.sample]),
        predefined=is_predefined_split(split),
    )


def _label(category_name: str) -> int:
    name = CATEGORY_TO_DETECTION.get(category_name)
    return -1 if name is None else DETECTION_NAMES.index(name)


def _attribute(ann: dict, attr_names: dict[str, str]) -> int:
    tokens = ann["attribute_tokens"]
    if len(tokens) > 1:
        raise GroundTruthError(f"sample_annotation {ann['token']}: field attribute_tokens: more than one attribute")
    if not tokens:
        return -1
    name = attr_names[tokens[0]]
    if name not in ATTRIBUTE_NAMES:
        raise GroundTruthError(f"sample_annotation {ann['token']}: field attribute_tokens: unknown attribute {name!r}")
    return ATTRIBUTE_NAMES.index(name)


def _annotation_boxes(anns: list[dict], sample: np.ndarray, label: np.ndarray, velocity=None, attribute=None,
                      num_pts=None) -> BoxArrays:  # fmt: skip
    """`BoxArrays` of annotation records; velocity / attribute / point count are computed by the given functions of
    the records, or left empty (zeros, -1) when not given."""
    n = len(anns)

    def column(name: str, width: int) -> np.ndarray:
        return np.array([a[name] for a in anns], dtype=np.float64).reshape(-1, width)

    return BoxArrays(
        sample=sample,
        translation=column("translation", 3),
        size=column("size", 3),
        rotation=column("rotation", 4),
        velocity=velocity(anns) if velocity else np.zeros((n, 2)),
        label=label,
        score=np.full(n, -1.0),
        attribute=attribute(anns) if attribute else np.full(n, -1, dtype=np.int64),
        num_pts=num_pts(anns) if num_pts else np.full(n, -1, dtype=np.int64),
    )


def _velocities(nusc, anns: list[dict], max_time_diff: float = 1.5) -> np.ndarray:
    """The devkit's `NuScenes.box_velocity` for many annotations, xy only: <float64: N, 2>."""
    has_prev = np.array([a["prev"] != "" for a in anns], dtype=bool)
    has_next = np.array([a["next"] != "" for a in anns], dtype=bool)
    first = [nusc.get("sample_annotation", a["prev"]) if a["prev"] else a for a in anns]
    last = [nusc.get("sample_annotation", a["next"]) if a["next"] else a for a in anns]
    pos_diff = np.array([b["translation"] for b in last], dtype=np.float64).reshape(-1, 3)
    pos_diff = pos_diff - np.array([b["translation"] for b in first], dtype=np.float64).reshape(-1, 3)
    t_last = 1e-6 * np.array([nusc.get("sample", b["sample_token"])["timestamp"] for b in last], dtype=np.float64)
    t_first = 1e-6 * np.array([nusc.get("sample", b["sample_token"])["timestamp"] for b in first], dtype=np.float64)
    time_diff = t_last - t_first
    limit = np.where(has_prev & has_next, 2 * max_time_diff, max_time_diff)
    valid = (has_prev | has_next) & ~(time_diff > limit)
    with np.errstate(divide="ignore", invalid="ignore"):
        vel = pos_diff / time_diff[:, None]
    vel[~valid] = np.nan
    return vel[:, :2].copy()


def _save_atomic(path: Path, gt: GroundTruth) -> None:
    with atomic_target(path) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            version=np.array(gt.version),
            split=np.array(gt.split),
            sample_tokens=gt.sample_tokens,
            ego_translation=gt.ego_translation,
            all_sample_tokens=gt.all_sample_tokens,
            predefined=np.array(gt.predefined),
            **gt.boxes.to_arrays("gt_"),
            **gt.racks.to_arrays("rack_"),
        )


def _from_arrays(arrays: dict) -> GroundTruth:
    return GroundTruth(
        version=str(arrays["version"]),
        split=str(arrays["split"]),
        sample_tokens=arrays["sample_tokens"],
        ego_translation=arrays["ego_translation"],
        boxes=BoxArrays.from_arrays(arrays, "gt_"),
        racks=BoxArrays.from_arrays(arrays, "rack_"),
        all_sample_tokens=arrays["all_sample_tokens"],
        predefined=bool(arrays["predefined"]),
    )
