"""Benchmark the detector on this machine: fusion overhead, ViT efficiency, point-encoder scaling, frames/s.

- fusion_overhead: full forward time / (image encoder + point encoder alone), same batch (target <= 1.2);
  fusion_overhead_flops: the same ratio of FLOPs (torch's FlopCounterMode), what the time ratio would be if every
  stage ran at the encoders' rate: the floor that no speed-up of lift, trunk, fusion and head alone gets below;
  fusion_overhead_all_pillars: the same on the frame with a point in every pillar (`fill_pillars`), the worst case
  for the packed windows; lidar_cells_filled: the share of pillars the frame itself fills.
- vit_mm_fraction: the ViT encoder's achieved GFLOP/s (FLOPs counted by torch's FlopCounterMode) / `torch.mm`'s
  GFLOP/s on square matrices, both measured here the same way and at the same moments: five calls of each back to
  back, alternating, medians (vit_steady_s; target >= 0.5). image_encoder_s, the overhead's denominator, is timed
  one call at a time between full forwards, as the full forward is.
- points_exponent: slope of log(time) against log(points) of the point encoder over 10k-300k points (target ~1);
  the counts are timed in interleaved rounds (at least five), medians.
- fps: frames per second of the whole detector at the config's sizes, batch 1: forward, decoding and, when the
  config has one, the LiDAR second stage (`BoxRefiner.refine`); forward_fps: the forward pass alone.
- second_stage_s: decoding + refinement of the decoded boxes (0 refinement without `refine`).
- stage_s: seconds of the stages between the encoders and the boxes (camera lift, trunk + fusion, head).

Medians of interleaved repeats on `--threads` CPU threads. Usage: python benchmarks/model.py [--config
configs/synthetic_cpu.yaml] [--repeats 5] [--point-counts 10000,30000,100000,300000]. Last line of output: one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace

import numpy as np
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from fusion.data.types import Batch
from fusion.models.model import ModelConfig, build_model, detect

TOP_K, SCORE_THRESHOLD = 200, 0.05  # decoding as configs/synthetic_cpu.yaml predicts


def _time(fn, repeats: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def real_batch(dataroot: str, version: str, split: str, image_size: tuple[int, int], sweeps: int) -> Batch:
    """One keyframe of the dataset (the synthetic world by default), as the loader serves it."""
    from fusion.data.dataset import LoaderConfig, NuScenesDataset
    from fusion.data.index import load_index
    from fusion.data.types import collate

    ds = NuScenesDataset(load_index(dataroot, version, split), LoaderConfig(image_size=image_size, sweeps=sweeps))
    return collate([ds[len(ds) // 2]])


def with_points(batch: Batch, n: int, seed: int = 0) -> Batch:
    """The batch with its point cloud resampled to n points (jittered copies of real returns)."""
    g = torch.Generator().manual_seed(seed)
    real = batch.points[0][batch.point_mask[0]]
    pick = torch.randint(0, len(real), (n,), generator=g)
    points = real[pick].clone()
    points[:, :3] += 0.05 * torch.randn(n, 3, generator=g)
    return replace(batch, points=points[None], point_mask=torch.ones(1, n, dtype=torch.bool))


def fill_pillars(batch: Batch, grid) -> Batch:
    """The batch with one more point at the centre of every pillar (z = -1 m): every LiDAR cell a node, the worst case
    for the packed windows of the trunk and the fusion (a synthetic frame fills a few percent of them; a real
    10-sweep nuScenes frame most of those within range)."""
    centres = grid.cell_centres().reshape(-1, 2)
    ground = torch.cat([centres, torch.full((len(centres), 1), -1.0), torch.zeros(len(centres), 2)], 1)
    real = batch.points[0][batch.point_mask[0]]
    points = torch.cat([real, ground.to(real.dtype)])
    return replace(batch, points=points[None], point_mask=torch.ones(1, len(points), dtype=torch.bool))


def stage_times(model, batch: Batch, repeats: int) -> dict[str, float]:
    """Median seconds of each stage of `FusionDetector.forward_features`, run one after the other on its inputs."""
    from fusion.models.node_types import CAMERA, LIDAR

    m = model
    patches = m.image_encoder(batch.images, batch.camera_mask)

    def lift():  # with the depth estimate, when the config has one (`depth_bins`)
        depth = m.camera_to_bev.depth_logits(patches)
        return m.camera_to_bev(patches, batch.cam_from_lidar, batch.intrinsics, batch.camera_mask, depth)

    camera, camera_valid = lift()
    lidar, lidar_valid = m.point_encoder(batch.points, batch.point_mask)

    def trunk_and_fusion():  # from the encoders' outputs: the LiDAR map onto the BEV grid, trunk, fusion
        lidar_bev, lidar_bev_valid = m.lidar_to_bev(lidar, lidar_valid)
        full, valid = {CAMERA: camera, LIDAR: lidar_bev}, {CAMERA: camera_valid, LIDAR: lidar_bev_valid}
        coarse = {t: m.scale.down(full[t], valid[t]) for t in full}
        tokens = {t: m.trunk.forward_bev(x, v, t) for t, (x, v) in coarse.items()}
        return m.scale.up(m.fusion(tokens, {t: v for t, (_, v) in coarse.items()}), full, valid)

    fused = trunk_and_fusion()
    stages = {
        "camera_lift": lift,
        "trunk_and_fusion": trunk_and_fusion,
        "head": lambda: m.head(fused),
    }
    return {k: statistics.median(_time(fn) for _ in range(repeats)) for k, fn in stages.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/synthetic_cpu.yaml")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dataroot", default="data/synthetic")
    parser.add_argument("--version", default="v1.0-mini")
    parser.add_argument("--split", default="mini_val")
    parser.add_argument(
        "--point-counts",
        default="10000,30000,100000,300000",
        help="points per frame for points_exponent (comma-separated, at least two)",
    )
    args = parser.parse_args()
    counts = [int(n) for n in args.point_counts.split(",")]
    if len(counts) < 2:
        raise SystemExit(f"--point-counts {args.point_counts!r}: need at least two counts to fit an exponent")
    torch.set_num_threads(args.threads)
    raw = yaml.safe_load(open(args.config))
    sizes = raw["model"]["model"]
    w, h = raw["data"]["image_size"]
    cfg = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in sizes.items()}, image_size=(h, w))
    parts = build_model(cfg)
    model = parts.model.eval()
    top_k = raw["model"].get("top_k", TOP_K)
    threshold = raw["model"].get("score_threshold", SCORE_THRESHOLD)
    batch = real_batch(args.dataroot, args.version, args.split, (w, h), raw["data"].get("sweeps", 3))
    params = sum(p.numel() for p in model.parameters())

    with torch.no_grad():
        full = lambda: model(batch)  # noqa: E731
        image = lambda: model.image_encoder(batch.images, batch.camera_mask)  # noqa: E731
        points = lambda: model.point_encoder(batch.points, batch.point_mask)  # noqa: E731
        out = full()

        def second_stage():
            return detect(model, parts.box_coder, out, batch.points, batch.point_mask, top_k, threshold)

        for fn in (full, image, points, second_stage):
            fn()  # warm-up
        t_full, t_img, t_pts, t_second = [], [], [], []
        for _ in range(args.repeats):
            t_full.append(_time(full))
            t_img.append(_time(image))
            t_pts.append(_time(points))
            t_second.append(_time(second_stage))
        stages = stage_times(model, batch, args.repeats)
        with FlopCounterMode(display=False) as counter:
            image()
        vit_flops = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            points()
        point_flops = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            full()
        total_flops = counter.get_total_flops()
        a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
        torch.mm(a, b)
        # the ViT's rate measured as torch.mm's is, and at the same moments (this machine's speed drifts): five calls
        # of each back to back, alternating, medians over twice the repeats
        t_mm, t_vit = [], []
        for _ in range(2 * args.repeats):
            t_mm.append(_time(lambda: torch.mm(a, b), 5))
            t_vit.append(_time(image, 5))
        t_mm, t_vit = statistics.median(t_mm), statistics.median(t_vit)
        mm_gflops = 2 * 1024**3 / t_mm / 1e9
        filled = fill_pillars(batch, model.point_encoder.grid)
        t_dense = {"full": [], "encoders": []}
        for _ in range(args.repeats):
            t_dense["full"].append(_time(lambda: model(filled)))
            t_dense["encoders"].append(
                _time(lambda: model.image_encoder(filled.images, filled.camera_mask))
                + _time(lambda: model.point_encoder(filled.points, filled.point_mask))
            )
        # every count once per round, rounds repeated: a slow spell of the machine lands on all counts alike
        # instead of on one of them, which would tilt the fitted slope
        bigs = [with_points(batch, n, seed=1) for n in counts]
        for b in bigs:
            model.point_encoder(b.points, b.point_mask)
        rounds = [[_time(lambda b=b: model.point_encoder(b.points, b.point_mask)) for b in bigs]
                  for _ in range(max(5, args.repeats))]  # fmt: skip
        t_scale = [statistics.median(r[i] for r in rounds) for i in range(len(counts))]
    exponent = float(np.polyfit(np.log(counts), np.log(t_scale), 1)[0])
    med = statistics.median
    vit_gflops = vit_flops / t_vit / 1e9
    result = {
        "config": args.config,
        "threads": args.threads,
        "params_m": round(params / 1e6, 3),
        "forward_gflop": round(total_flops / 1e9, 2),
        "full_forward_s": round(med(t_full), 4),
        "image_encoder_s": round(med(t_img), 4),
        "point_encoder_s": round(med(t_pts), 4),
        "fusion_overhead": round(med(t_full) / (med(t_img) + med(t_pts)), 3),
        "fusion_overhead_flops": round(total_flops / (vit_flops + point_flops), 3),
        "fusion_overhead_all_pillars": round(med(t_dense["full"]) / med(t_dense["encoders"]), 3),
        "lidar_cells_filled": round(float(model.point_encoder(batch.points, batch.point_mask)[1].float().mean()), 4),
        "vit_steady_s": round(t_vit, 4),
        "vit_gflops": round(vit_gflops, 2),
        "mm_gflops": round(mm_gflops, 2),
        "vit_mm_fraction": round(vit_gflops / mm_gflops, 3),
        "points_exponent": round(exponent, 3),
        "point_encoder_s_by_points": dict(zip(map(str, counts), [round(t, 4) for t in t_scale], strict=True)),
        "points_per_sample": int(batch.point_mask.sum()),
        "second_stage_s": round(med(t_second), 4),
        "refine_iterations": cfg.refine_iterations if cfg.refine else 0,
        "fps": round(1.0 / (med(t_full) + med(t_second)), 2),
        "forward_fps": round(1.0 / med(t_full), 2),
        "stage_s": {k: round(v, 4) for k, v in stages.items()},
        "repeats": args.repeats,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
