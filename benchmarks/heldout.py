"""Fused against LiDAR-only on a held-out synthetic world: four times `mini_val`'s samples, from unseen scenes.

`make run` scores its checkpoint on `mini_val`: 40 samples from two scenes, too few to tell a car-AP difference of
a hundredth from noise (docs/evaluation.md, **How sure a difference is**). This benchmark generates a second world
with another seed (same generator and preset, so the same distribution; every scene and object new) and scores
each given run's checkpoint there, fused and LiDAR-only, on a split of it (default `mini_train`: 160 samples from
eight scenes). It prints each run's paired-bootstrap differences and, over all the runs, the mean difference with
a two-level bootstrap (the fits resampled, and the samples, the same draw for every fit).

Usage:
    python benchmarks/heldout.py --runs outputs/runs/fresh_1207* [--world outputs/heldout_seed1] [--seed 1]
    python benchmarks/heldout.py --runs ... --world outputs/heldout_seed1_buildings0 --buildings-seed 0
    make heldout    # the latest `make run`

Predictions go to RUN/heldout/<world folder>_<split>/{fused,lidar_only}/results.json and are reused when present.
Last line of output: one JSON object, {"runs": {run: {"car": ..., "mean": ...}}, "pooled": {...}}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from fusion.data.synth.generate import synthesize
from fusion.data.synth.presets import get_preset
from fusion.evaluation import run_evaluation
from fusion.evaluation.bootstrap import bootstrap_ap, compare
from fusion.evaluation.report import format_difference
from fusion.pipeline import MODALITIES as RUN_MODALITIES
from fusion.train import run_lightning

MODALITIES = {k: RUN_MODALITIES[k] for k in ("fused", "lidar_only")}  # `fusion run`'s settings, camera-only left out


def predict(run: Path, world: Path, split: str) -> dict[str, Path] | None:
    """The run's results on the world's split, fused and LiDAR-only (predicted unless already there); None when the
    run's config or checkpoint no longer loads with this code (said on stderr)."""
    out = run / "heldout" / f"{world.name}_{split}"
    paths = {}
    for label, modality in MODALITIES.items():
        results = out / label / "results.json"
        if not results.exists():
            try:
                run_lightning(["predict", "--config", str(run / "run_config.yaml"), "--data.dataroot", str(world),
                               "--data.predict_split", split, "--data.eval_modality", modality, "--ckpt_path",
                               str(run / "checkpoints" / "last.ckpt"), "--results", str(results)])  # fmt: skip
            except (Exception, SystemExit) as e:  # an older run whose config keys or weights have since changed
                print(f"{run}: skipped, its checkpoint does not predict with this code: {type(e).__name__}: {e}",
                      file=sys.stderr)  # fmt: skip
                return None
        paths[label] = results
    return paths


def pooled(diffs: np.ndarray, seed: int = 0) -> dict:
    """The mean over fits of per-fit differences <K, R + 1> (column 0: the split itself, then the sample resamples,
    the same for every fit): its value and 95% intervals with the samples resampled, the fits resampled, and both."""
    k, r1 = diffs.shape
    rng = np.random.default_rng(seed)
    fits = rng.integers(0, k, size=(r1 - 1, k))
    samples, both = diffs[:, 1:].mean(0), diffs[fits, np.arange(1, r1)[:, None]].mean(1)
    fit_only = diffs[fits, 0].mean(1)

    def interval(x: np.ndarray) -> list[float]:
        return [round(float(v), 4) for v in np.percentile(x, [2.5, 97.5])]

    return {"fits": k, "difference": round(float(diffs[:, 0].mean()), 4), "samples_interval": interval(samples),
            "fits_interval": interval(fit_only), "interval": interval(both),
            "ahead": float((both > 0).mean())}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="`fusion run` folders (run_config.yaml, checkpoints)")
    parser.add_argument("--world", default="outputs/heldout_seed1", help="the held-out world (generated if missing)")
    parser.add_argument("--seed", type=int, default=1, help="its seed (the default world's is 0)")
    parser.add_argument(
        "--buildings-seed",
        type=int,
        default=None,
        help="its buildings' seed, when not --seed (0: new scenes among the training world's buildings)",
    )
    parser.add_argument("--version", default="v1.0-mini")
    parser.add_argument("--split", default="mini_train", help="its split to score (default: 160 samples)")
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()

    world = Path(args.world)
    if not (world / args.version / "scene.json").exists():
        synthesize(world, get_preset("mini"), seed=args.seed, log=lambda m: print(m, file=sys.stderr),
                   buildings_seed=args.buildings_seed)  # fmt: skip
    diffs: dict[str, list[np.ndarray]] = {"car": [], "mean": []}
    per_run = {}
    for run in (Path(r).resolve() for r in args.runs):  # outputs/latest: the run folder it links to
        paths = predict(run, world, args.split)
        if paths is None:
            continue
        evs = {k: run_evaluation(world, args.version, args.split, str(p)) for k, p in paths.items()}
        gt = evs["fused"].gt
        boot = bootstrap_ap(gt.boxes, {k: e.pred for k, e in evs.items()}, len(gt.sample_tokens), args.resamples)
        per_run[run.name] = {}
        for what in diffs:
            c = compare(boot, "fused", "lidar_only", what)
            fused, lidar = (float(boot.values(k, what)[0]) for k in ("fused", "lidar_only"))
            per_run[run.name][what] = {"fused": round(fused, 4), "lidar_only": round(lidar, 4), **c}
            diffs[what].append(boot.values("fused", what) - boot.values("lidar_only", what))
            print(f"{run.name} {what}: fused {fused:.4f}, LiDAR-only {lidar:.4f}, "
                  f"fused - LiDAR-only {format_difference(c)}")  # fmt: skip
    if not per_run:
        raise SystemExit("no run could be scored")
    summary = {what: pooled(np.array(rows)) for what, rows in diffs.items()}
    for what, p in summary.items():
        print(f"all {p['fits']} runs, {what}: fused - LiDAR-only {p['difference']:+.4f}, 95% interval "
              f"{p['interval']} (samples alone {p['samples_interval']}, fits alone {p['fits_interval']}), "
              f"ahead in {p['ahead']:.0%}")  # fmt: skip
    print(json.dumps({"world": str(world), "split": args.split, "samples": len(gt.sample_tokens), "runs": per_run,
                      "pooled": summary}))  # fmt: skip


if __name__ == "__main__":
    main()
