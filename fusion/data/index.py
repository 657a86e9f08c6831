"""A compact, cached index of one (dataroot, version, split): everything the loader needs, as numpy arrays.

Built once from the devkit tables (the only place that holds a `NuScenes` object) and cached on disk, so training
workers never hold the devkit's tables (about 7 GiB and 70 s to load for v1.0-trainval). The cache key covers the
table files' sizes and modification times, so a changed dataset is re-indexed; the cache file is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from fusion.data.summary import DatasetError, check_layout
from fusion.data.synth.geometry import make_pose, quaternion_to_matrix
from fusion.data.types import ATTRIBUTES, CAMERAS, DETECTION_CLASSES
from fusion.files import atomic_target

INDEX_FORMAT = 2
MAX_SWEEPS = 10  # sweeps indexed per keyframe (the keyframe included); loaders may use fewer


@dataclass(frozen=True)
class SplitIndex:
    """Per-sample arrays (S samples); sweeps and boxes are ragged, addressed by offsets (CSR layout)."""

    dataroot: str
    version: str
    split: str
    tokens: np.ndarray  # <U32: S>
    scenes: np.ndarray  # <U: S> scene name of each sample
    global_from_lidar: np.ndarray  # <float64: S, 4, 4>
    sweep_offsets: np.ndarray  # <int64: S + 1> sweeps of sample i: [sweep_offsets[i], sweep_offsets[i + 1])
    sweep_files: np.ndarray  # <U: T> relative to dataroot; the keyframe first, then older sweeps
    lidar_from_sweep: np.ndarray  # <float64: T, 4, 4> into the keyframe's lidar frame
    sweep_time_lag: np.ndarray  # <float64: T> seconds before the keyframe
    camera_files: np.ndarray  # <U: S, 6> "" where a camera is missing
    cam_from_lidar: np.ndarray  # <float64: S, 6, 4, 4>
    intrinsics: np.ndarray  # <float64: S, 6, 3, 3> of the original image
    image_sizes: np.ndarray  # <int64: S, 6, 2> width, height of the original image
    box_offsets: np.ndarray  # <int64: S + 1>
    boxes: np.ndarray  # <float64: A, 7> x, y, z, w, l, h, yaw in the lidar frame
    velocity: np.ndarray  # <float64: A, 2> in the lidar frame, 0 where unknown
    labels: np.ndarray  # <int64: A> into DETECTION_CLASSES
    attributes: np.ndarray  # <int64: A> into ATTRIBUTES, -1 for none
    num_points: np.ndarray  # <int64: A>
    visibility: np.ndarray  # <int64: A> 1-4
    ann_tokens: np.ndarray  # <U32: A>
    instance_tokens: np.ndarray  # <U32: A>

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f.name).nbytes for f in fields(self) if isinstance(getattr(self, f.name), np.ndarray))


def split_scenes(dataroot: str | os.PathLike, version: str, split: str) -> list[str]:
    """Scene names of a split: the devkit's predefined splits, or a custom one from `<version>/splits.json`."""
    from nuscenes.utils.splits import create_splits_scenes

    predefined = create_splits_scenes(verbose=False)
    compatible = {"v1.0-mini": ("mini_train", "mini_val"), "v1.0-trainval": ("train", "val", "train_detect",
                  "train_track"), "v1.0-test": ("test",)}  # fmt: skip
    if split in predefined:
        if split not in compatible.get(version, ()):
            raise DatasetError(f"split {split!r} does not belong to version {version!r} "
                               f"(it has: {', '.join(compatible.get(version, ())) or 'none'})")  # fmt: skip
        return list(predefined[split])
    path = Path(dataroot) / version / "splits.json"
    custom = json.loads(path.read_text()) if path.exists() else {}
    if split not in custom:
        names = sorted(compatible.get(version, ())) + sorted(custom)
        raise DatasetError(f"{path}: unknown split {split!r} (known: {', '.join(names)})")
    return list(custom[split])


# Predefined splits that together hold every scene of a version.
COVERING_SPLITS = {"v1.0-mini": ("mini_train", "mini_val"), "v1.0-trainval": ("train", "val"), "v1.0-test": ("test",)}


def covering_splits(dataroot: str | os.PathLike, version: str) -> tuple[str, ...]:
    """Splits that together hold every sample of a version: the predefined ones, or for another version every split
    of `<version>/splits.json` (the app and scene QA look samples up by token across all of them)."""
    if version in COVERING_SPLITS:
        return COVERING_SPLITS[version]
    path = Path(dataroot) / version / "splits.json"
    return tuple(json.loads(path.read_text())) if path.exists() else ()


def _cache_key(dataroot: Path, version: str, split: str) -> str:
    from fusion.data.synth.generate import TABLES

    stats = []
    for name in [*(f"{t}.json" for t in TABLES), "splits.json"]:
        p = dataroot / version / name
        st = p.stat() if p.exists() else None
        stats.append((name, st.st_size if st else -1, st.st_mtime_ns if st else -1))
    blob = json.dumps([INDEX_FORMAT, MAX_SWEEPS, str(dataroot.resolve()), version, split, stats])
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


def default_cache_dir() -> Path:
    return Path(os.environ.get("FUSION_CACHE_DIR", Path.home() / ".cache" / "fusion"))


def load_index(dataroot: str | os.PathLike, version: str, split: str, cache_dir: str | os.PathLike | None = None,
               ) -> SplitIndex:  # fmt: skip
    """The index of a split, from the cache when it is up to date, else built with the devkit and cached."""
    root = Path(dataroot)
    check_layout(root, version)
    scenes = split_scenes(root, version, split)  # validates the split name before any work
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"index-{version}-{split}-{_cache_key(root, version, split)}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        return SplitIndex(dataroot=str(root), version=version, split=split, **arrays)
    index = build_index(root, version, split, scenes)
    arrays = {f.name: getattr(index, f.name) for f in fields(index) if f.name not in ("dataroot", "version", "split")}
    with atomic_target(path) as tmp:  # each node's prepare_data, maybe into one shared cache
        np.savez(tmp, **arrays)
    return index


def _pose(translation, rotation) -> np.ndarray:
    """<4, 4> from a nuScenes record's translation and (w, x, y, z) rotation."""
    return make_pose(quaternion_to_matrix(rotation), translation)


def build_index(root: Path, version: str, split: str, scenes: list[str]) -> SplitIndex:
    """Walk the devkit tables once. Per-sample Python here is fine: it runs once per dataset version."""
    from nuscenes.eval.detection.utils import category_to_detection_name
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes(version=version, dataroot=str(root), verbose=False)
    wanted = set(scenes)
    scene_of = {s["token"]: s["name"] for s in nusc.scene}
    samples = [s for s in nusc.sample if scene_of[s["scene_token"]] in wanted]
    if not samples:
        raise DatasetError(f"{root / version}: split {split!r} has no samples in this dataroot")
    cls_index = {c: i for i, c in enumerate(DETECTION_CLASSES)}
    attr_index = {a: i for i, a in enumerate(ATTRIBUTES)}
    out: dict[str, list] = {f.name: [] for f in fields(SplitIndex)}
    sweep_offsets, box_offsets = [0], [0]

    def sensor_pose(sd) -> np.ndarray:
        """global_from_sensor of one sample_data, through its own ego pose."""
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        ego = nusc.get("ego_pose", sd["ego_pose_token"])
        return _pose(ego["translation"], ego["rotation"]) @ _pose(cs["translation"], cs["rotation"])

    for s in samples:
        lidar_sd = nusc.get("sample_data", s["data"]["LIDAR_TOP"])
        global_from_lidar = sensor_pose(lidar_sd)
        lidar_from_global = np.linalg.inv(global_from_lidar)
        out["tokens"].append(s["token"])
        out["scenes"].append(scene_of[s["scene_token"]])
        out["global_from_lidar"].append(global_from_lidar)
        sd = lidar_sd
        for _ in range(MAX_SWEEPS):
            out["sweep_files"].append(sd["filename"])
            out["lidar_from_sweep"].append(lidar_from_global @ sensor_pose(sd))
            out["sweep_time_lag"].append(1e-6 * lidar_sd["timestamp"] - 1e-6 * sd["timestamp"])
            if not sd["prev"]:
                break
            sd = nusc.get("sample_data", sd["prev"])
        sweep_offsets.append(len(out["sweep_files"]))
        files, cam_from_lidar, intrinsics, sizes = [], [], [], []
        for channel in CAMERAS:
            if channel not in s["data"]:
                files.append("")
                cam_from_lidar.append(np.eye(4))
                intrinsics.append(np.eye(3))
                sizes.append((0, 0))
                continue
            cam_sd = nusc.get("sample_data", s["data"][channel])
            files.append(cam_sd["filename"])
            cam_from_lidar.append(np.linalg.inv(sensor_pose(cam_sd)) @ global_from_lidar)
            intrinsics.append(np.asarray(nusc.get("calibrated_sensor", cam_sd["calibrated_sensor_token"])
                                         ["camera_intrinsic"]))  # fmt: skip
            sizes.append((cam_sd["width"], cam_sd["height"]))
        out["camera_files"].append(files)
        out["cam_from_lidar"].append(cam_from_lidar)
        out["intrinsics"].append(intrinsics)
        out["image_sizes"].append(sizes)
        for ann_token in s["anns"]:
            ann = nusc.get("sample_annotation", ann_token)
            name = category_to_detection_name(ann["category_name"])
            if name is None:
                continue
            box_global = _pose(ann["translation"], ann["rotation"])
            box = lidar_from_global @ box_global
            yaw = np.arctan2(box[1, 0], box[0, 0])
            w, length, h = ann["size"]
            out["boxes"].append([*box[:3, 3], w, length, h, yaw])
            v = np.nan_to_num(nusc.box_velocity(ann_token))
            out["velocity"].append((lidar_from_global[:3, :3] @ v)[:2])
            out["labels"].append(cls_index[name])
            attrs = [nusc.get("attribute", t)["name"] for t in ann["attribute_tokens"]]
            out["attributes"].append(attr_index[attrs[0]] if attrs else -1)
            out["num_points"].append(ann["num_lidar_pts"] + ann["num_radar_pts"])
            out["visibility"].append(int(ann["visibility_token"]) if ann["visibility_token"] else 0)
            out["ann_tokens"].append(ann_token)
            out["instance_tokens"].append(ann["instance_token"])
        box_offsets.append(len(out["boxes"]))

    def arr(name, dtype, shape_tail=()):
        values = out[name]
        return np.asarray(values, dtype=dtype).reshape(len(values), *shape_tail) if values else np.zeros(
            (0, *shape_tail), dtype)  # fmt: skip

    return SplitIndex(
        dataroot=str(root), version=version, split=split,
        tokens=np.asarray(out["tokens"]), scenes=np.asarray(out["scenes"]),
        global_from_lidar=arr("global_from_lidar", np.float64, (4, 4)),
        sweep_offsets=np.asarray(sweep_offsets, np.int64), sweep_files=np.asarray(out["sweep_files"]),
        lidar_from_sweep=arr("lidar_from_sweep", np.float64, (4, 4)),
        sweep_time_lag=arr("sweep_time_lag", np.float64),
        camera_files=np.asarray(out["camera_files"]), cam_from_lidar=arr("cam_from_lidar", np.float64, (6, 4, 4)),
        intrinsics=arr("intrinsics", np.float64, (6, 3, 3)), image_sizes=arr("image_sizes", np.int64, (6, 2)),
        box_offsets=np.asarray(box_offsets, np.int64), boxes=arr("boxes", np.float64, (7,)),
        velocity=arr("velocity", np.float64, (2,)), labels=arr("labels", np.int64),
        attributes=arr("attributes", np.int64), num_points=arr("num_points", np.int64),
        visibility=arr("visibility", np.int64), ann_tokens=np.asarray(out["ann_tokens"], dtype="<U32"),
        instance_tokens=np.asarray(out["instance_tokens"], dtype="<U32"),
    )  # fmt: skip
