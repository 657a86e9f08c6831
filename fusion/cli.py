"""The `fusion` command line: `fusion synth`, `fusion info`, ..."""

from __future__ import annotations

import argparse
import json
import sys

from fusion.data.synth.presets import PRESETS


def _synth(args: argparse.Namespace) -> int:
    from fusion.data.synth.generate import SynthError, synthesize
    from fusion.data.synth.presets import get_preset

    try:
        preset = get_preset(args.preset).with_sizes(
            samples_per_scene=args.samples_per_scene,
            image_scale=args.image_scale,
            lidar_azimuth_steps=args.lidar_azimuth_steps,
            sweeps_per_sample=args.sweeps_per_sample,
            density=args.density,
        )
        if args.scenes is not None:
            if not 1 <= args.scenes <= len(preset.scenes):
                raise ValueError(f"--scenes must be in [1, {len(preset.scenes)}] for preset {preset.name!r}")
            preset = preset.with_sizes(scenes=_keep_both_splits(preset.scenes, args.scenes))
        summary = synthesize(args.out, preset, seed=args.seed, overwrite=args.overwrite, workers=args.workers,
                             log=lambda msg: print(msg, file=sys.stderr),
                             buildings_seed=args.buildings_seed)  # fmt: skip
    except (SynthError, ValueError) as e:
        print(f"fusion synth: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    print(f"wrote {summary['samples']} samples of {summary['scenes']} scenes to {args.out} "
          f"({summary['bytes'] / 1e6:.0f} MB in {summary['seconds']:.0f} s)")  # fmt: skip
    return 0


def _keep_both_splits(scenes: tuple, n: int) -> tuple:
    """The first n scenes, but with at least one validation scene when n >= 2."""
    val = [s for s in scenes if s[2] == "val"]
    train = [s for s in scenes if s[2] != "val"]
    n_val = min(len(val), max(1 if n >= 2 else 0, round(n * len(val) / len(scenes))))
    keep = set(train[: n - n_val] + val[:n_val])
    return tuple(s for s in scenes if s in keep)


def _info(args: argparse.Namespace) -> int:
    from fusion.data.summary import DatasetError, summarize

    try:
        print(summarize(args.dataroot, args.version))
    except DatasetError as e:
        print(f"fusion info: error: {e}", file=sys.stderr)
        return 2
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from fusion.evaluation.command import run_command

    return run_command(args)


def _qa(args: argparse.Namespace) -> int:
    from collections import Counter

    from fusion.data.index import load_index
    from fusion.data.qa import generate, prior_baseline, synthetic_colours, write_jsonl
    from fusion.data.summary import DatasetError

    try:
        colours = synthetic_colours(args.dataroot, args.version)
        records = generate(load_index(args.dataroot, args.version, args.split), colours, args.seed, args.per_sample)
        write_jsonl(args.out, records)
        counts = Counter(r["type"] for r in records)
        print(f"wrote {len(records)} questions to {args.out}: " + ", ".join(f"{t} {n}" for t, n in counts.items()))
        if args.prior_from:
            train = generate(load_index(args.dataroot, args.version, args.prior_from), colours, args.seed,
                             args.per_sample)  # fmt: skip
            prior = prior_baseline(train, records)
            print("question-only prior accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in prior.items()))
    except DatasetError as e:
        print(f"fusion qa: error: {e}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusion", description=__doc__,
                                     epilog="fusion fit|validate|test|predict --config configs/NAME.yaml: LightningCLI "
                                     "(see docs/training.md)")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="generate a synthetic world in the nuScenes layout")
    s.add_argument("--out", required=True, help="output folder (the dataroot)")
    s.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    s.add_argument("--preset", default="mini", choices=PRESETS, help="size and version (default: mini = v1.0-mini)")
    s.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    s.add_argument(
        "--buildings-seed",
        type=int,
        default=None,
        help="draw the buildings from this seed instead (new scenes among another world's buildings)",
    )
    s.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    s.add_argument("--scenes", type=int, default=None, help="keep only the first N scenes of the preset")
    s.add_argument("--samples-per-scene", type=int, default=None, help="keyframes per scene (2 Hz)")
    s.add_argument("--image-scale", type=float, default=None, help="image size as a fraction of 1600x900")
    s.add_argument("--lidar-azimuth-steps", type=int, default=None, help="LiDAR firings per revolution per beam")
    s.add_argument("--sweeps-per-sample", type=int, default=None, help="LiDAR sweeps per keyframe interval")
    s.add_argument("--density", type=float, default=None, help="scale the number of objects")
    s.set_defaults(func=_synth)

    q = sub.add_parser("qa", help="generate NuScenes-QA-style questions (JSON lines) from the annotations")
    q.add_argument("--dataroot", required=True)
    q.add_argument("--version", default="v1.0-mini")
    q.add_argument("--split", required=True, help="predefined (mini_val, val, ...) or from splits.json")
    q.add_argument("--out", required=True, help="output .jsonl file")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--per-sample", type=int, default=12, help="questions per sample (cycling through the types)")
    q.add_argument("--prior-from", default=None, help="also report the question-only prior learnt on this split")
    q.set_defaults(func=_qa)

    i = sub.add_parser("info", help="summarise a nuScenes dataroot (real or synthetic)")
    i.add_argument("--dataroot", required=True)
    i.add_argument("--version", default="v1.0-mini")
    i.set_defaults(func=_info)

    e = sub.add_parser("evaluate", help="nuScenes metrics (devkit-equal) and AP@IoU of a results JSON")
    e.add_argument("--dataroot", help="nuScenes dataroot (real or `fusion synth`)")
    e.add_argument("--version", default="v1.0-mini", help="version folder (default v1.0-mini)")
    e.add_argument("--split", help="devkit split (mini_val, val, ...) or a name from <version>/splits.json")
    e.add_argument("--results", help="nuScenes detection results JSON")
    e.add_argument("--out", help="output folder: metrics.json, plots/, comparison.txt")
    e.add_argument("--cache-dir", default=None, help="GT cache folder (default ~/.cache/fusion/eval)")
    e.add_argument("--plots", action="store_true", help="also write PR, TP-error and BEV plots to OUT/plots")
    e.add_argument("--plot-samples", type=int, default=3, help="BEV pictures of the first N samples (default 3)")
    e.add_argument("--name", default="this", help="column name of the evaluated run in the --compare table")
    e.add_argument("--compare", nargs="+", metavar="NAME=PATH", help="metrics.json files to show side by side")
    e.add_argument(
        "--bootstrap",
        nargs="+",
        metavar="NAME=PATH",
        help="results JSON files: each against the next, a paired bootstrap over the split's samples",
    )
    e.add_argument("--resamples", type=int, default=1000, help="--bootstrap: resamples of the samples (default 1000)")
    e.add_argument("--kind", default="bev", choices=("bev", "3d"), help="--bootstrap: BEV or 3D IoU (default bev)")
    e.add_argument(
        "--threshold",
        type=float,
        default=0.7,
        choices=(0.3, 0.5, 0.7),
        help="--bootstrap: the IoU threshold (default 0.7)",
    )
    e.add_argument("--seed", type=int, default=0, help="--bootstrap: the resamples' seed (default 0)")
    e.set_defaults(func=_evaluate)
    return parser


LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "run":
        from fusion.pipeline import main as run_main

        return run_main(argv[1:])
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from fusion.train import run_lightning

        run_lightning(argv)
        return 0
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
