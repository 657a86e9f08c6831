"""The body of `fusion evaluate` (the parser lives in `fusion/cli.py`).

    fusion evaluate --dataroot DIR --version V --split S --results FILE --out OUTDIR [--plots]
    fusion evaluate --compare camera_only=a/metrics.json lidar_only=b/metrics.json fused=c/metrics.json
    fusion evaluate --dataroot DIR --version V --split S --bootstrap A=a/results.json B=b/results.json [--out OUTDIR]

With --results it evaluates, writes OUTDIR/metrics.json and prints the table; with --compare it prints the
runs side by side (after the evaluated run, named by --name, when both are given) and, with --out, also
writes the table to OUTDIR/comparison.txt. With --bootstrap it evaluates each results file and compares each run
with the next, per class, by a paired bootstrap over the split's samples (OUTDIR/bootstrap.json and bootstrap.txt).
Exit status 2 on bad input, with nothing written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fusion.evaluation.errors import EvaluationError


def parse_compare(items: list[str], flag: str = "--compare", what: str = "PATH/metrics.json") -> dict[str, str]:
    """`NAME=PATH` items -> {name: path}, in order."""
    runs: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise EvaluationError(f"{flag} {item!r}: expected NAME={what}")
        if name in runs:
            raise EvaluationError(f"{flag} {item!r}: run name {name!r} given twice")
        runs[name] = path
    return runs


def run_bootstrap(args: argparse.Namespace) -> None:
    """`--bootstrap NAME=results.json ...`: each run against the next, a paired bootstrap over the split's samples."""
    from fusion.evaluation.bootstrap import bootstrap_ap
    from fusion.evaluation.evaluate import run_evaluation, write_json_atomic
    from fusion.evaluation.report import bootstrap_summary, format_bootstrap

    runs = parse_compare(args.bootstrap, "--bootstrap", "PATH/results.json")
    if len(runs) < 2:
        raise EvaluationError("--bootstrap needs two or more NAME=PATH/results.json to compare")
    if args.results is not None or args.compare:
        raise EvaluationError("--bootstrap evaluates its own results files: give it without --results and --compare")
    missing = [f"--{a}" for a in ("dataroot", "split") if getattr(args, a) is None]
    if missing:
        raise EvaluationError(f"--bootstrap needs {', '.join(missing)}")
    if args.resamples < 1:
        raise EvaluationError(f"--resamples {args.resamples}: must be at least 1")
    evaluations = {name: run_evaluation(args.dataroot, args.version, args.split, path, args.cache_dir)
                   for name, path in runs.items()}  # fmt: skip
    gt = next(iter(evaluations.values())).gt
    boot = bootstrap_ap(gt.boxes, {name: ev.pred for name, ev in evaluations.items()}, len(gt.sample_tokens),
                        args.resamples, args.kind, args.threshold, args.seed)  # fmt: skip
    table = format_bootstrap(boot, args.split)
    print(table)
    if args.out is not None:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "bootstrap.json", bootstrap_summary(boot, list(runs), [*boot.present_classes, "mean"]))
        (out / "bootstrap.txt").write_text(table + "\n")


def run_command(args: argparse.Namespace) -> int:
    """Run `fusion evaluate`; returns the exit status."""
    from fusion.evaluation.report import format_comparison, format_metrics, load_metrics

    try:
        if args.bootstrap:
            run_bootstrap(args)
            return 0
        compare = parse_compare(args.compare or [])
        if args.results is None and not compare:
            raise EvaluationError("give --results FILE (with --dataroot, --split, --out) and/or --compare NAME=PATH")
        # the --compare files first: a bad one exits before anything is written
        compared = {name: load_metrics(path) for name, path in compare.items()}
        if args.results is not None and args.name in compared:
            raise EvaluationError(f"--compare {args.name}=...: the evaluated run is named {args.name!r} (--name)")
        runs = {}
        if args.results is not None:
            missing = [f"--{a}" for a in ("dataroot", "split", "out") if getattr(args, a) is None]
            if missing:
                raise EvaluationError(f"--results needs {', '.join(missing)}")
            from fusion.evaluation.evaluate import evaluate

            metrics = evaluate(
                args.dataroot,
                args.version,
                args.split,
                args.results,
                out_dir=args.out,
                cache_dir=args.cache_dir,
                plots=args.plots,
                plot_samples=args.plot_samples,
            )
            print(format_metrics(metrics))
            print(f"wrote {Path(args.out) / 'metrics.json'}", file=sys.stderr)
            runs[args.name] = metrics
        runs |= compared
        if compare:
            table = format_comparison(runs)
            print()
            print(table)
            if args.out is not None:
                Path(args.out).mkdir(parents=True, exist_ok=True)
                (Path(args.out) / "comparison.txt").write_text(table + "\n")
    except EvaluationError as e:
        print(f"fusion evaluate: error: {e}", file=sys.stderr)
        return 2
    return 0
