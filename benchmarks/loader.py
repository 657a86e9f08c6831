"""Benchmark the data pipeline against a naive per-sample devkit loader on the same samples, in the same run.

Naive: for each sample, the devkit's `from_file_multisweep` for the LiDAR, `get_sample_data` for boxes and
calibrations, and every JPEG decoded and resized again. Ours: the cached `SplitIndex` and `NuScenesDataset` with the
image cache warm (epochs after the first), with 1 and 2 DataLoader workers. Also: the index's memory against the
devkit's `NuScenes` object (tracemalloc).

Usage: python benchmarks/loader.py [--dataroot data/synthetic] [--split mini_val] [--repeats 5]
Last line: one JSON object with speedup (ours, 1 worker / naive), identical, index_memory_ratio, ...
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import tracemalloc

import numpy as np
import torch
from torch.utils.data import DataLoader

from fusion.data.dataset import LoaderConfig, NuScenesDataset
from fusion.data.index import load_index
from fusion.data.io import ImageCache
from fusion.data.types import CAMERAS, collate


def naive_sample(nusc, token: str, size: tuple[int, int], sweeps: int) -> dict:
    from nuscenes.utils.data_classes import LidarPointCloud
    from PIL import Image

    sample = nusc.get("sample", token)
    pc, times = LidarPointCloud.from_file_multisweep(nusc, sample, "LIDAR_TOP", "LIDAR_TOP", nsweeps=sweeps)
    _, boxes, _ = nusc.get_sample_data(sample["data"]["LIDAR_TOP"])
    images = []
    for channel in CAMERAS:
        path, _, _ = nusc.get_sample_data(sample["data"][channel])
        images.append(np.asarray(Image.open(path).convert("RGB").resize(size, Image.BILINEAR)))
    return {"points": np.concatenate([pc.points.T, times.T], axis=1), "images": np.stack(images),
            "boxes": np.array([[*b.center, *b.wlh] for b in boxes])}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataroot", default="data/synthetic")
    parser.add_argument("--version", default="v1.0-mini")
    parser.add_argument("--split", default="mini_val")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sweeps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    size = (320, 180)
    from nuscenes.nuscenes import NuScenes

    tracemalloc.start()
    nusc = NuScenes(args.version, dataroot=args.dataroot, verbose=False)
    devkit_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    with tempfile.TemporaryDirectory() as cache_dir:
        load_index(args.dataroot, args.version, args.split, cache_dir)  # build once; the figures use the cache
        tracemalloc.start()
        index = load_index(args.dataroot, args.version, args.split, cache_dir)
        index_bytes = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        config = LoaderConfig(image_size=size, sweeps=args.sweeps)
        ds = NuScenesDataset(index, config, ImageCache(f"{cache_dir}/images"))
        tokens = list(index.tokens)

        # Identity: every sample of the split, ours against naive.
        identical = True
        for i, token in enumerate(tokens):
            ours, ref = ds[i], naive_sample(nusc, token, size, args.sweeps)
            b0, b1 = index.box_offsets[i], index.box_offsets[i + 1]
            ref_boxes = {t: b for t, b in zip([b.token for b in nusc.get_sample_data(
                nusc.get("sample", token)["data"]["LIDAR_TOP"])[1]], ref["boxes"], strict=True)}  # fmt: skip
            identical &= np.array_equal(ours.images.permute(0, 2, 3, 1).numpy(), ref["images"])
            identical &= np.allclose(ours.points.numpy(), ref["points"], atol=1e-4)
            identical &= np.allclose(ours.boxes[:, :6].numpy(), [ref_boxes[t] for t in index.ann_tokens[b0:b1]],
                                     atol=1e-4)  # fmt: skip

        def run_naive() -> float:
            start = time.perf_counter()
            for token in tokens:
                naive_sample(nusc, token, size, args.sweeps)
            return len(tokens) / (time.perf_counter() - start)

        # Loaders are built once (persistent workers) and warmed by one pass, as in training after the first epoch.
        loaders = {w: DataLoader(ds, batch_size=1, num_workers=w, collate_fn=collate, persistent_workers=w > 0)
                   for w in (0, 2)}  # fmt: skip

        def run_ours(workers: int) -> float:
            start = time.perf_counter()
            for _ in loaders[workers]:
                pass
            return len(tokens) / (time.perf_counter() - start)

        run_ours(0), run_ours(2)
        naive, ours1, ours2 = [], [], []
        for _ in range(args.repeats):  # interleaved
            naive.append(run_naive())
            ours1.append(run_ours(0))
            ours2.append(run_ours(2))
    result = {
        "samples": len(tokens),
        "sweeps": args.sweeps,
        "image_size": list(size),
        "naive_samples_per_s": round(statistics.median(naive), 2),
        "ours_samples_per_s_1_worker": round(statistics.median(ours1), 2),  # loading in the main process
        "ours_samples_per_s_2_workers": round(statistics.median(ours2), 2),
        "speedup": round(statistics.median(ours1) / statistics.median(naive), 2),
        "speedup_2_workers": round(statistics.median(ours2) / statistics.median(naive), 2),
        "identical": bool(identical),
        "devkit_memory_mb": round(devkit_bytes / 1e6, 1),
        "index_memory_mb": round(index_bytes / 1e6, 2),
        "index_memory_ratio": round(index_bytes / devkit_bytes, 4),
        "repeats": args.repeats,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
