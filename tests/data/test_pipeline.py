"""The data pipeline against the devkit: geometry, multi-sweep points, augmentations, batching, caching, bad input."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from nuscenes.eval.detection.utils import category_to_detection_name
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import BoxVisibility, view_points

from fusion.data.augment import GlobalTransform, ImageTransform, ModalityDropout
from fusion.data.dataset import LoaderConfig, NuScenesDataset
from fusion.data.index import load_index
from fusion.data.io import ImageCache
from fusion.data.summary import DatasetError
from fusion.data.synth.scene import count_points_in_boxes
from fusion.data.types import CAMERAS, DETECTION_CLASSES, collate


@pytest.fixture(scope="module")
def index(tiny_root, tmp_path_factory):
    return load_index(tiny_root, "v1.0-mini", "mini_val", tmp_path_factory.mktemp("cache"))


def _project(points_lidar: np.ndarray, cam_from_lidar: np.ndarray, k: np.ndarray) -> np.ndarray:
    cam = points_lidar @ cam_from_lidar[:3, :3].T + cam_from_lidar[:3, 3]
    uvw = cam @ k.T
    return uvw[:, :2] / uvw[:, 2:3]


def _corners(box: np.ndarray) -> np.ndarray:
    """<8, 3> corners of (x, y, z, w, l, h, yaw)."""
    x, y, z, w, length, h, yaw = box
    local = np.array([[sx * length / 2, sy * w / 2, sz * h / 2] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    rot = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    return local @ rot.T + [x, y, z]


def test_index_is_cached_and_rebuilt_when_the_tables_change(tiny_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(tiny_root, root)
    first = load_index(root, "v1.0-mini", "mini_val", tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("index-*.npz"))) == 1
    again = load_index(root, "v1.0-mini", "mini_val", tmp_path / "cache")
    assert np.array_equal(first.boxes, again.boxes) and list(first.tokens) == list(again.tokens)
    (root / "v1.0-mini" / "scene.json").touch()
    load_index(root, "v1.0-mini", "mini_val", tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("index-*.npz"))) == 2
    assert not list((tmp_path / "cache").glob("*.tmp*"))


def test_boxes_in_the_lidar_frame_match_the_devkit(index, tiny_nusc):
    for i, token in enumerate(index.tokens):
        sample = tiny_nusc.get("sample", token)
        _, boxes, _ = tiny_nusc.get_sample_data(sample["data"]["LIDAR_TOP"])
        by_token = {b.token: b for b in boxes}
        for j in range(index.box_offsets[i], index.box_offsets[i + 1]):
            ref = by_token[index.ann_tokens[j]]
            assert np.allclose(index.boxes[j, :3], ref.center, atol=1e-6)
            assert np.allclose(index.boxes[j, 3:6], ref.wlh, atol=1e-9)
            yaw_diff = (index.boxes[j, 6] - ref.orientation.yaw_pitch_roll[0] + np.pi) % (2 * np.pi) - np.pi
            assert abs(yaw_diff) < 1e-6
            assert category_to_detection_name(ref.name) == DETECTION_CLASSES[index.labels[j]]


def test_box_projection_matches_the_devkit_within_a_pixel(index, tiny_nusc):
    ds = NuScenesDataset(index, LoaderConfig(image_size=(160, 90)))
    checked = 0
    for i in range(len(ds)):
        sample = ds[i]
        nusc_sample = tiny_nusc.get("sample", sample.token)
        for c, channel in enumerate(CAMERAS):
            _, cam_boxes, k = tiny_nusc.get_sample_data(nusc_sample["data"][channel], box_vis_level=BoxVisibility.ANY)
            by_token = {b.token: b for b in cam_boxes}
            b0 = index.box_offsets[i]
            for j, box in enumerate(sample.boxes.numpy().astype(np.float64)):
                ref = by_token.get(index.ann_tokens[b0 + j])
                if ref is None or ref.corners()[2].min() < 1.0:
                    continue
                # The devkit's pixels at 1600x900-scaled resolution, mapped to our 160x90 image (pixel centres).
                sx = 160 / tiny_nusc.get("sample_data", nusc_sample["data"][channel])["width"]
                devkit_uv = (view_points(ref.corners(), np.asarray(k), normalize=True)[:2].T + 0.5) * sx - 0.5
                m, k_ours = sample.cam_from_lidar[c].double().numpy(), sample.intrinsics[c].double().numpy()
                ours = _project(_corners(box), m, k_ours)
                # Same 8 corners up to order: every corner of ours within a pixel of one of the devkit's, and back.
                d = np.linalg.norm(ours[:, None] - devkit_uv[None], axis=-1)
                assert d.min(axis=1).max() < 1.0 and d.min(axis=0).max() < 1.0
                checked += 1
    assert checked > 20


def test_multisweep_points_match_the_devkit(index, tiny_nusc):
    ds = NuScenesDataset(index, LoaderConfig(sweeps=3))
    for i in (0, len(ds) - 1):
        ours = ds.load_points(i)
        sample = tiny_nusc.get("sample", index.tokens[i])
        pc, times = LidarPointCloud.from_file_multisweep(tiny_nusc, sample, "LIDAR_TOP", "LIDAR_TOP", nsweeps=3)
        assert ours.shape == (pc.points.shape[1], 5)
        assert np.allclose(ours[:, :4], pc.points.T, atol=1e-4)
        assert np.allclose(ours[:, 4], times[0], atol=1e-6)


def test_global_augmentation_keeps_points_in_boxes_and_projections(index):
    plain = NuScenesDataset(index, LoaderConfig(sweeps=1))
    aug = NuScenesDataset(index, LoaderConfig(sweeps=1, global_transform=GlobalTransform(translation_std=1.0)))
    for i in range(len(index)):
        torch.manual_seed(i)
        a, b = plain[i], aug[i]
        assert not torch.allclose(a.points[:, :3], b.points[:, :3])
        n_a = count_points_in_boxes(a.points[:, :3].double().numpy(), a.boxes.double().numpy())
        n_b = count_points_in_boxes(b.points[:, :3].double().numpy(), b.boxes.double().numpy())
        assert np.array_equal(n_a, n_b) and n_a.sum() > 0
        for c in range(6):
            m_a, m_b = a.cam_from_lidar[c].double().numpy(), b.cam_from_lidar[c].double().numpy()
            pts_a, pts_b = a.points[:, :3].double().numpy(), b.points[:, :3].double().numpy()
            front = (pts_a @ m_a[:3, :3].T + m_a[:3, 3])[:, 2] > 1.0
            pa = _project(pts_a[front], m_a, a.intrinsics[c].double().numpy())
            pb = _project(pts_b[front], m_b, b.intrinsics[c].double().numpy())
            assert front.sum() > 10 and np.abs(pa - pb).max() < 0.05


def test_image_augmentation_keeps_projections_on_the_same_content(index):
    plain = NuScenesDataset(index, LoaderConfig(image_size=(320, 180)))
    aug = NuScenesDataset(index, LoaderConfig(image_size=(320, 180), image_transform=ImageTransform(flip_prob=1.0)))
    torch.manual_seed(0)
    a, b = plain[0], aug[0]
    pts = a.points[a.points[:, 4] == 0, :3].double().numpy()
    for c in range(6):
        ua = _project(pts, a.cam_from_lidar[c].double().numpy(), a.intrinsics[c].double().numpy())
        ub = _project(pts, b.cam_from_lidar[c].double().numpy(), b.intrinsics[c].double().numpy())
        m = a.cam_from_lidar[c].double().numpy()
        cam_z = (pts @ m[:3, :3].T + m[:3, 3])[:, 2]
        ok = (cam_z > 1) & (ua >= 5).all(1) & (ua[:, 0] < 315) & (ua[:, 1] < 175)
        ok &= (ub >= 5).all(1) & (ub[:, 0] < 315) & (ub[:, 1] < 175)
        if ok.sum() < 20:
            continue
        ia = a.images[c].permute(1, 2, 0).numpy().astype(float)
        ib = b.images[c].permute(1, 2, 0).numpy().astype(float)
        va = ia[ua[ok, 1].round().astype(int), ua[ok, 0].round().astype(int)]
        vb = ib[ub[ok, 1].round().astype(int), ub[ok, 0].round().astype(int)]
        assert np.median(np.abs(va - vb)) < 25  # same surface under the projected point, up to resampling


def test_modality_dropout_serves_one_modality(index):
    cam = NuScenesDataset(index, LoaderConfig(modality=ModalityDropout(fixed="camera")))[0]
    lidar = NuScenesDataset(index, LoaderConfig(modality=ModalityDropout(fixed="lidar")))[0]
    assert cam.points.shape[0] == 0 and cam.has_camera and not cam.has_lidar and cam.camera_mask.all()
    assert lidar.points.shape[0] > 0 and not lidar.has_camera and not lidar.camera_mask.any()
    assert lidar.images.abs().sum() == 0


def test_batched_equals_single(index):
    ds = NuScenesDataset(index, LoaderConfig())
    samples = [ds[i] for i in range(3)]
    batch = collate(samples)
    for b, s in enumerate(samples):
        n, m = s.points.shape[0], s.boxes.shape[0]
        assert torch.equal(batch.points[b, :n], s.points) and batch.point_mask[b].sum() == n
        assert torch.equal(batch.boxes[b, :m], s.boxes) and batch.box_mask[b].sum() == m
        assert torch.equal(batch.labels[b, :m], s.labels) and (batch.labels[b, m:] == -1).all()
        assert torch.equal(batch.images[b], s.images) and batch.tokens[b] == s.token


def test_cached_images_equal_uncached(index, tmp_path):
    uncached = NuScenesDataset(index, LoaderConfig())
    cached = NuScenesDataset(index, LoaderConfig(), cache=ImageCache(tmp_path))
    first, second = cached[1], cached[1]  # the second read comes from the cache
    assert len(list(tmp_path.rglob("*.npy"))) == 6
    assert torch.equal(first.images, uncached[1].images) and torch.equal(second.images, uncached[1].images)


def test_two_writers_of_one_cache_entry_with_the_same_pid(index, tmp_path, monkeypatch):
    """Two nodes filling one shared image cache, their processes with the same pid (each container numbers its own):
    the second writes the same entry between the first's write and rename. Both reads succeed and the entry holds
    the image. With temporary names made from the pid, the second's rename took the first's file away (its rename
    then raised FileNotFoundError)."""
    import fusion.data.io as io

    monkeypatch.setattr(os, "getpid", lambda: 1)
    image = index.camera_files[0][0]
    real_save, other = np.save, ImageCache(tmp_path)

    def save_then_other_node_writes(file, array):
        real_save(file, array)
        if not other_done:  # the first save: the other node writes the entry now, before our rename
            other_done.append(None)
            other_done[0] = other.read(f"{index.dataroot}/{image}", (96, 64))

    other_done: list = []
    monkeypatch.setattr(io.np, "save", save_then_other_node_writes)
    ours = ImageCache(tmp_path).read(f"{index.dataroot}/{image}", (96, 64))
    (entry,) = tmp_path.rglob("*.npy")  # one entry, no temporary file left
    assert np.array_equal(ours, other_done[0]) and np.array_equal(np.load(entry), ours) and ours.shape == (64, 96, 3)


def test_an_atomic_write_that_fails_leaves_the_old_file(tmp_path):
    from fusion.data.io import write_text_atomic
    from fusion.files import atomic_target

    path = write_text_atomic(tmp_path / "a.json", "old")
    with pytest.raises(RuntimeError), atomic_target(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("the writer died")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def _broken_copy(root: str, tmp_path: Path) -> tuple[Path, object]:
    copy = tmp_path / "broken"
    shutil.copytree(root, copy)
    return copy, load_index(copy, "v1.0-mini", "mini_val", tmp_path / "cache")


def test_truncated_or_missing_image_names_the_file(tiny_root, tmp_path):
    root, index = _broken_copy(tiny_root, tmp_path)
    image = root / index.camera_files[0, 0]
    image.write_bytes(image.read_bytes()[:500])
    with pytest.raises(DatasetError, match=rf"{image.name}.*truncated"):
        NuScenesDataset(index)[0]
    image.unlink()
    with pytest.raises(DatasetError, match=rf"{image.name}: camera image is missing"):
        NuScenesDataset(index)[0]


def test_corrupted_point_cloud_names_the_file(tiny_root, tmp_path):
    root, index = _broken_copy(tiny_root, tmp_path)
    cloud = root / index.sweep_files[0]
    cloud.write_bytes(cloud.read_bytes()[:-8])
    with pytest.raises(DatasetError, match=rf"{cloud.name}.*not a whole number of points"):
        NuScenesDataset(index).load_points(0)
    raw = np.zeros((10, 5), np.float32)
    raw[3, 1] = np.nan
    raw.tofile(cloud)
    with pytest.raises(DatasetError, match=rf"{cloud.name}: corrupted point cloud"):
        NuScenesDataset(index).load_points(0)


def test_unknown_split_version_or_layout(tiny_root, tmp_path):
    with pytest.raises(DatasetError, match=r"unknown split 'nope'.*synth_val"):
        load_index(tiny_root, "v1.0-mini", "nope", tmp_path)
    with pytest.raises(DatasetError, match=r"split 'val' does not belong to version 'v1\.0-mini'"):
        load_index(tiny_root, "v1.0-mini", "val", tmp_path)
    with pytest.raises(DatasetError, match=r"no such version folder.*v1\.0-mini"):
        load_index(tiny_root, "v1.0-trainval", "val", tmp_path)
    with pytest.raises(DatasetError, match="dataroot does not exist"):
        load_index(tmp_path / "missing", "v1.0-mini", "mini_val", tmp_path)
    (tmp_path / "fake" / "v1.0-mini").mkdir(parents=True)
    with pytest.raises(DatasetError, match="missing tables"):
        load_index(tmp_path / "fake", "v1.0-mini", "mini_val", tmp_path)
    assert len(load_index(tiny_root, "v1.0-mini", "synth_val", tmp_path)) == 4


def test_datamodule_serves_batches(tiny_root, tmp_path):
    from fusion.data.datamodule import NuScenesDataModule

    dm = NuScenesDataModule(tiny_root, "v1.0-mini", "synth_train", "synth_val", batch_size=2, cache_dir=str(tmp_path),
                            camera_only_prob=0.3, lidar_only_prob=0.3)  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.images.shape == (2, 6, 3, 180, 320) and batch.points.shape[-1] == 5
    val = next(iter(dm.val_dataloader()))
    assert val.camera_mask.all() and len(val) == 2
    assert dm._config(False).global_transform is None


@pytest.mark.parametrize("stage", ["fit", "test"])
def test_datamodule_prepare_data_builds_the_stages_indexes_that_setup_reads(tiny_root, tmp_path, monkeypatch, stage):
    """Lightning runs `prepare_data` on one process per node, then `setup` on every rank: the split indexes are built
    (with the devkit) in the first, so that the other ranks only read them from the cache."""
    from types import SimpleNamespace

    import fusion.data.index as index_module
    from fusion.data.datamodule import NuScenesDataModule
    from lightning.pytorch.trainer.states import TrainerFn

    def make():
        dm = NuScenesDataModule(tiny_root, "v1.0-mini", "synth_train", "synth_val", test_split="mini_train",
                                cache_dir=str(tmp_path))  # fmt: skip
        dm.trainer = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn(stage)))
        return dm

    make().prepare_data()
    built = sorted(p.name.split("-")[3] for p in tmp_path.glob("index-*.npz"))  # index-v1.0-mini-SPLIT-KEY.npz
    assert built == (["synth_train", "synth_val"] if stage == "fit" else ["mini_train"]), built

    def refuse(*_, **__):
        raise AssertionError("setup built an index that prepare_data had built")

    monkeypatch.setattr(index_module, "build_index", refuse)
    rank = make()
    rank.setup(stage)
    assert sorted(rank.datasets) == (["synth_train/True", "synth_val/False"] if stage == "fit" else
                                     ["mini_train/False"])  # fmt: skip


def _worker_state_after(init) -> tuple[int, object]:
    init(0)
    return os.nice(0), signal.getsignal(signal.SIGUSR1)


def test_our_workers_serve_lightnings_batches(tiny_root, tmp_path, monkeypatch):
    """The data workers' own start (`_init_worker`: ignore SLURM's requeue signal, `worker_nice`) changes nothing
    else: under Lightning's worker seeding (`seed_everything(..., workers=True)`, which `fusion fit` uses) the batches
    are those of workers started by Lightning's own `worker_init_fn`."""
    import multiprocessing

    from lightning.fabric.utilities.data import _auto_add_worker_init_fn

    from fusion.data.datamodule import NuScenesDataModule

    monkeypatch.setenv("PL_SEED_WORKERS", "1")
    served = {}
    for nice in (None, 0, 7):  # None: Lightning's worker start in place of ours
        dm = NuScenesDataModule(tiny_root, "v1.0-mini", "synth_train", "synth_val", batch_size=2, num_workers=1,
                                cache_dir=str(tmp_path), lidar_only_prob=0.5, worker_nice=nice or 0)  # fmt: skip
        dm.setup("fit")
        loader = dm.train_dataloader()
        assert loader.worker_init_fn.keywords["nice"] == (nice or 0)
        if nice is None:
            loader.worker_init_fn = None
        _auto_add_worker_init_fn(loader, 0)  # as Lightning's trainer does; it keeps a loader's own init
        torch.manual_seed(0)
        served[nice] = list(loader)
        if nice is not None:
            with multiprocessing.get_context("fork").Pool(1) as pool:
                niceness, usr1 = pool.apply(_worker_state_after, (loader.worker_init_fn,))
            assert niceness == min(os.nice(0) + nice, 19) and usr1 == signal.SIG_IGN  # 19: the cap
    assert len(served[None]) == len(served[0]) == len(served[7]) >= 2
    for ours in (served[0], served[7]):
        for a, b in zip(served[None], ours, strict=True):
            assert torch.equal(a.points, b.points) and torch.equal(a.images, b.images)
            assert torch.equal(a.boxes, b.boxes) and torch.equal(a.camera_mask, b.camera_mask)
    with pytest.raises(ValueError, match="data.worker_nice"):
        NuScenesDataModule(tiny_root, worker_nice=-1)


def test_point_filter_against_naive_references(index):
    from fusion.data.pointcloud import PointFilter

    points = NuScenesDataset(index, LoaderConfig(sweeps=1)).load_points(0)
    cropped = PointFilter(xy_range=20.0, z_range=(-1.0, 2.0))(points)
    naive = np.array([p for p in points if abs(p[0]) <= 20 and abs(p[1]) <= 20 and -1 <= p[2] <= 2])
    assert np.array_equal(cropped, naive)
    # Voxel down-sampling: one point per occupied voxel, at the mean of its points (a naive dict of voxels; open3d's
    # grid starts half a voxel below the points' minimum).
    small = cropped[:3000]
    voxels: dict[tuple, list] = {}
    origin = small[:, :3].astype(np.float64).min(0) - 0.25
    for p in small.astype(np.float64):
        voxels.setdefault(tuple(np.floor((p[:3] - origin) / 0.5).astype(int)), []).append(p)
    down = PointFilter(xy_range=None, z_range=None, voxel_size=0.5)(small)
    assert len(down) == len(voxels)
    for p in down.astype(np.float64):  # the mean of a voxel's points lies in that voxel
        key = tuple(np.floor((p[:3] - origin) / 0.5).astype(int))
        assert np.allclose(p, np.mean(voxels[key], axis=0), atol=1e-4)
    # Ground removal: the synthetic ground is the plane z = -1.84 m below the sensor; objects survive.
    sensor_points = NuScenesDataset(index, LoaderConfig(sweeps=1)).load_points(0)
    ground = np.abs(sensor_points[:, 2] + 1.84) < 0.1
    kept = PointFilter(xy_range=None, z_range=None, remove_ground=True)(sensor_points)
    assert len(kept) == pytest.approx((~ground).sum(), rel=0.1)
    # Outlier removal drops an isolated far point.
    lonely = np.vstack([cropped, [[19.0, 19.0, 1.9, 0.0, 0.0]]]).astype(np.float32)
    cleaned = PointFilter(xy_range=None, z_range=None, outlier_neighbours=10, outlier_std=1.0)(lonely)
    assert not np.any(np.all(np.isclose(cleaned[:, :3], [19.0, 19.0, 1.9]), axis=1))


def test_pad_matches_a_naive_loop():
    """`_pad` (one `pad_sequence` call) against filling a preallocated batch row by row, with empty rows, extra
    dimensions, a fill value and booleans."""
    from fusion.data.types import _pad

    g = torch.Generator().manual_seed(0)
    for rows, fill in (([3, 0, 5], 0.0), ([0, 0], -1), ([2, 7, 1, 4], 0.5)):
        tensors = [torch.randn(n, 4, 2, generator=g) for n in rows]
        out, mask = _pad(tensors, fill)
        n = max(rows)
        naive, naive_mask = torch.full((len(rows), n, 4, 2), float(fill)), torch.zeros(len(rows), n, dtype=torch.bool)
        for i, t in enumerate(tensors):
            naive[i, : len(t)], naive_mask[i, : len(t)] = t, True
        assert torch.equal(out, naive) and torch.equal(mask, naive_mask)
    flags, mask = _pad([torch.tensor([True, True]), torch.tensor([], dtype=torch.bool)], fill=False)
    assert flags.dtype == torch.bool and flags.tolist() == [[True, True], [False, False]]
    assert mask.tolist() == [[True, True], [False, False]]
    labels, _ = _pad([torch.tensor([3]), torch.tensor([1, 2])], fill=-1)
    assert labels.dtype == torch.long and labels.tolist() == [[3, -1], [1, 2]]
