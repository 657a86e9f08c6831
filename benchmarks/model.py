"""Benchmark the detector on this machine: fusion overhead, ViT efficiency, point-encoder scaling, frames/s.

- fusion_overhead: full forward time / (image encoder + point encoder alone), same batch (target <= 1.2).
- vit_mm_fraction: the ViT encoder's achieved GFLOP/s (FLOPs counted by torch's FlopCounterMode) / `torch.mm`'s
  GFLOP/s on square matrices, both measured here (target >= 0.5).
- points_exponent: slope of log(time) against log(points) of the point encoder over 10k-300k points (target ~1).
- fps: full forward passes per second at the config's sizes, batch 1.

Medians of interleaved repeats on `--threads` CPU threads. Usage: python benchmarks/model.py [--config
configs/synthetic_cpu.yaml] [--repeats 5]. Last line of output: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from fusion.data.types import Batch
from fusion.models.model import ModelConfig, build_model


def _time(fn, repeats: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def synthetic_batch(cfg: ModelConfig, n_points: int, seed: int = 0) -> Batch:
    """A batch of one sample with random points in range and six cameras looking around (as the rig does)."""
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.image_size
    points = torch.rand(1, n_points, 5, generator=g)
    points[..., 0] = points[..., 0] * (cfg.x_range[1] - cfg.x_range[0]) + cfg.x_range[0]
    points[..., 1] = points[..., 1] * (cfg.y_range[1] - cfg.y_range[0]) + cfg.y_range[0]
    points[..., 2] = points[..., 2] * 4 - 2
    cams = []
    for yaw in np.deg2rad([0, -55, -110, 180, 110, 55]):
        # lidar frame (x right, y forward) -> camera (x right, y down, z forward), turned by yaw about z.
        c, s = np.cos(yaw), np.sin(yaw)
        rot = np.array([[c, s, 0], [0, 0, -1], [-s, c, 0]]) @ np.eye(3)
        m = np.eye(4)
        m[:3, :3] = rot
        cams.append(m)
    k = torch.tensor([[w * 0.8, 0, w / 2], [0, w * 0.8, h / 2], [0, 0, 1]], dtype=torch.float32)
    n_boxes = 1
    return Batch(tokens=("bench",), points=points, point_mask=torch.ones(1, n_points, dtype=torch.bool),
                 images=torch.randint(0, 255, (1, 6, 3, h, w), dtype=torch.uint8, generator=g),
                 camera_mask=torch.ones(1, 6, dtype=torch.bool),
                 cam_from_lidar=torch.tensor(np.stack(cams), dtype=torch.float32)[None],
                 intrinsics=k.expand(1, 6, 3, 3).clone(), boxes=torch.zeros(1, n_boxes, 7),
                 velocity=torch.zeros(1, n_boxes, 2), labels=torch.zeros(1, n_boxes, dtype=torch.long),
                 attributes=torch.full((1, n_boxes), -1), num_points=torch.zeros(1, n_boxes, dtype=torch.long),
                 visibility=torch.zeros(1, n_boxes, dtype=torch.long), box_mask=torch.zeros(1, n_boxes, dtype=bool),
                 global_from_lidar=torch.eye(4, dtype=torch.float64)[None])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/synthetic_cpu.yaml")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--points", type=int, default=45_000, help="points per sample (3 sweeps of the world)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    raw = yaml.safe_load(open(args.config))
    sizes = raw["model"]["model"]
    w, h = raw["data"]["image_size"]
    cfg = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in sizes.items()}, image_size=(h, w))
    model = build_model(cfg).model.eval()
    batch = synthetic_batch(cfg, args.points)
    params = sum(p.numel() for p in model.parameters())

    with torch.no_grad():
        full = lambda: model(batch)  # noqa: E731
        image = lambda: model.image_encoder(batch.images, batch.camera_mask)  # noqa: E731
        points = lambda: model.point_encoder(batch.points, batch.point_mask)  # noqa: E731
        for fn in (full, image, points):
            fn()  # warm-up
        t_full, t_img, t_pts = [], [], []
        for _ in range(args.repeats):
            t_full.append(_time(full))
            t_img.append(_time(image))
            t_pts.append(_time(points))
        with FlopCounterMode(display=False) as counter:
            image()
        vit_flops = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            full()
        total_flops = counter.get_total_flops()
        a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
        torch.mm(a, b)
        t_mm = statistics.median(_time(lambda: torch.mm(a, b), 5) for _ in range(args.repeats))
        mm_gflops = 2 * 1024**3 / t_mm / 1e9
        counts = [10_000, 30_000, 100_000, 300_000]
        t_scale = []
        for n in counts:
            big = synthetic_batch(cfg, n, seed=1)
            run = lambda b=big: model.point_encoder(b.points, b.point_mask)  # noqa: E731
            run()
            t_scale.append(statistics.median(_time(run) for _ in range(3)))
    exponent = float(np.polyfit(np.log(counts), np.log(t_scale), 1)[0])
    med = statistics.median
    vit_gflops = vit_flops / med(t_img) / 1e9
    result = {
        "config": args.config,
        "threads": args.threads,
        "params_m": round(params / 1e6, 3),
        "forward_gflop": round(total_flops / 1e9, 2),
        "full_forward_s": round(med(t_full), 4),
        "image_encoder_s": round(med(t_img), 4),
        "point_encoder_s": round(med(t_pts), 4),
        "fusion_overhead": round(med(t_full) / (med(t_img) + med(t_pts)), 3),
        "vit_gflops": round(vit_gflops, 2),
        "mm_gflops": round(mm_gflops, 2),
        "vit_mm_fraction": round(vit_gflops / mm_gflops, 3),
        "points_exponent": round(exponent, 3),
        "point_encoder_s_by_points": dict(zip(map(str, counts), [round(t, 4) for t in t_scale], strict=True)),
        "fps": round(1.0 / med(t_full), 2),
        "repeats": args.repeats,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
