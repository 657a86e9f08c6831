"""`fusion run`: the main job behind `make run` — world, training, prediction, evaluation, one table.

Steps (each skipped when its output exists, so an interrupted run resumes where it stopped; a run folder whose
training used another config is moved aside first, `set_aside_if_changed`, so a changed config always trains afresh):
1. the synthetic world at `--dataroot` (`fusion synth`), and its summary;
2. `fusion fit --config CONFIG` (resumes from the run's last checkpoint when there is one);
3. `fusion predict` on the validation split three times — fused, LiDAR-only, camera-only — from the same checkpoint;
4. `fusion evaluate` of each, and the side-by-side table;
5. scene QA (`--qa-config`, default configs/qa_synthetic_cpu.yaml; `--qa-config none` skips it): questions for the
   training and validation splits, `fusion fit` of the QA encoder on the run's detector checkpoint (in a process of
   its own: `run_in_fresh_process`), its per-type table with the question-only priors.
Results go to `outputs/runs/<name>/{fused,lidar_only,camera_only}/metrics.json` and `qa/{qa_metrics.json,qa.ckpt,
tokenizer.json}`; `outputs/latest` points at the run.

`--time-limit` bounds the whole job, counted from `--started-at` (`make run` passes the moment make started, so its
set-up counts): when what came before leaves less than the two fits' `max_time` and the steps around them need, the
detector fit's budget is cut first, then scene QA's (`JobClock`). Each stage's seconds go to `timings.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

from fusion.files import atomic_target

MODALITIES = {"fused": "fused", "lidar_only": "lidar", "camera_only": "camera"}

# What `fusion run` spends outside the two fits' `max_time`, as `timings.json` measured it in three fresh clones'
# `make run` on 2 cores (docs/benchmarks.md, **A time limit for the whole job**), each rounded up so that a shortened
# job ends a little before its limit rather than after it: the detector fit's start-up, sanity check, last checkpoint
# and teardown, 4.5-15.5 s; the three predictions and evaluations, 20.5-29.2 s; the scene-QA step's process start,
# questions, object tokens and set-up, 35.1-44.7 s.
FIT_OUTSIDE_BUDGET_S = 18.0
PREDICT_EVALUATE_S = 32.0
QA_OUTSIDE_BUDGET_S = 48.0
# A fit is never cut below this share of its configured budget: past that the limit is missed (and said so), since
# a detector trained for a fraction of its budget would make the run's figures meaningless rather than late.
MIN_BUDGET_FRACTION = 0.5


def parse_duration(text: str) -> float:
    """'SS', 'M:SS' or 'H:MM:SS' (`--time-limit`), or Lightning's 'DD:HH:MM:SS' (`max_time`) -> seconds."""
    try:
        parts = [float(p) for p in str(text).strip().split(":")]
    except ValueError:
        parts = []
    if not 1 <= len(parts) <= 4 or any(p < 0 for p in parts):
        raise ValueError(f"{text!r} is not a duration: expected SS, M:SS, H:MM:SS or DD:HH:MM:SS")
    seconds = 0.0
    for part, unit in zip(reversed(parts), (1, 60, 3600, 86400), strict=False):
        seconds += part * unit
    return seconds


def max_time_seconds(value) -> float | None:
    """A trainer's `max_time` (Lightning's 'DD:HH:MM:SS', a dict of timedelta fields, or None) in seconds."""
    if value is None:
        return None
    if isinstance(value, dict):
        import datetime

        return datetime.timedelta(**value).total_seconds()
    return parse_duration(value)


def lightning_duration(seconds: float) -> str:
    """Seconds -> 'DD:HH:MM:SS', the string form of `max_time` that Lightning's Timer accepts (whole seconds)."""
    s = int(seconds)
    return f"{s // 86400:02d}:{s % 86400 // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _clock(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 60}:{s % 60:02d}"


class JobClock:
    """The whole job's wall clock: the seconds each stage took and, under a time limit, each fit's budget.

    `grant` gives a fit the smaller of its configured budget and what the limit leaves once the later stages'
    `reserve` is set aside, but not less than `MIN_BUDGET_FRACTION` of its configured budget. `elapsed_before`: the
    seconds a resumed fit already trained (Lightning's Timer carries them in the checkpoint and counts them against
    `max_time`)."""

    def __init__(self, limit_s: float | None = None, started_at: float | None = None):
        self.started_at = time.time() if started_at is None else float(started_at)
        self.limit_s = limit_s
        self.entered = time.time()
        self.stages: dict[str, float] = {}
        self.budgets: dict[str, dict[str, float]] = {}
        self._mark = self.entered

    def remaining(self) -> float | None:
        return None if self.limit_s is None else self.started_at + self.limit_s - time.time()

    def stage(self, name: str) -> None:
        """Close the stage `name`: the seconds since the previous stage closed (or since this command started)."""
        now = time.time()
        self.stages[name] = self.stages.get(name, 0.0) + now - self._mark
        self._mark = now

    def grant(self, name: str, configured_s: float, reserve_s: float, elapsed_before: float = 0.0) -> float:
        remaining = self.remaining()
        if remaining is None:
            return configured_s
        floor = MIN_BUDGET_FRACTION * configured_s
        granted = min(configured_s, max(floor, elapsed_before + remaining - reserve_s))
        self.budgets[name] = {"configured_s": configured_s, "granted_s": granted}
        limit = f"the time limit ({_clock(self.limit_s)} from {self._start_words()})"
        if granted >= configured_s:
            return configured_s
        if elapsed_before + remaining - reserve_s < floor:
            print(f"fusion run: {limit} leaves the {name} {_clock(max(0.0, remaining - reserve_s))} after the later "
                  f"steps' {_clock(reserve_s)}; it keeps {_clock(granted)} of its {_clock(configured_s)} "
                  "(half its budget), so the run will end after the limit", file=sys.stderr)  # fmt: skip
        else:
            print(f"fusion run: {limit}: the {name} gets {_clock(granted)} of its {_clock(configured_s)}, so that the "
                  f"later steps' {_clock(reserve_s)} fit", file=sys.stderr)  # fmt: skip
        return granted

    def max_time_override(self, name: str, trainer_cfg: dict, reserve_s: float, elapsed_before: float = 0.0) -> list:
        """`--trainer.max_time` for a fit whose configured `max_time` the limit cuts (`grant`); [] when the fit keeps
        its own, has none, or there is no limit. On the command line, not in the run's config: a resume matches."""
        budget = max_time_seconds(trainer_cfg.get("max_time"))
        if budget is None or self.limit_s is None:
            return []
        granted = self.grant(name, budget, reserve_s, elapsed_before)
        return ["--trainer.max_time", lightning_duration(granted)] if granted < budget else []

    def _start_words(self) -> str:
        before = self.entered - self.started_at
        return f"a start {_clock(before)} before this command" if before >= 1 else "this command's start"

    def write(self, path: Path) -> dict:
        """timings.json: seconds per stage, before this command (set-up and world under make) and in total."""
        now = time.time()
        record = {
            "before_command_s": round(self.entered - self.started_at, 1),
            "stages_s": {k: round(v, 1) for k, v in self.stages.items()},
            "total_s": round(now - self.started_at, 1),
            "time_limit_s": self.limit_s,
            "budgets_s": {k: {kk: round(vv, 1) for kk, vv in v.items()} for k, v in self.budgets.items()},
        }
        with atomic_target(path) as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n")
        return record


def run(
    config: str,
    dataroot: str,
    outputs: str = "outputs",
    name: str | None = None,
    qa_config: str | None = "configs/qa_synthetic_cpu.yaml",
    time_limit: float | None = None,
    started_at: float | None = None,
) -> int:
    clock = JobClock(time_limit, started_at)  # before the imports (torch, Lightning: ~8 s), which count as the world's
    from fusion.data.summary import summarize
    from fusion.data.synth.generate import synthesize
    from fusion.data.synth.presets import get_preset
    from fusion.evaluation import run_evaluation
    from fusion.evaluation.bootstrap import bootstrap_ap
    from fusion.evaluation.evaluate import write_evaluation, write_json_atomic
    from fusion.evaluation.report import bootstrap_summary, format_comparison, learning_verdict
    from fusion.train import run_lightning

    cfg = yaml.safe_load(Path(config).read_text())
    version = cfg["data"].get("version", "v1.0-mini")
    split = cfg["data"].get("val_split", "mini_val")
    if not (Path(dataroot) / version / "scene.json").exists():
        synthesize(dataroot, get_preset("mini"), seed=0, log=lambda m: print(m, file=sys.stderr))
    print(summarize(dataroot, version))
    clock.stage("world")

    name = name or Path(config).stem
    run_dir = Path(outputs) / "runs" / name
    ckpt_dir = run_dir / "checkpoints"
    relocate_outputs(cfg, run_dir, ckpt_dir)  # the run's own copy of the config: every output inside the run folder
    cfg["data"]["dataroot"] = dataroot
    run_config = run_dir / "run_config.yaml"
    set_aside_if_changed(run_dir, cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    run_config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    common = ["--config", str(run_config)]
    last = ckpt_dir / "last.ckpt"
    done = run_dir / "fit.done"
    if not done.exists():
        resume = ["--ckpt_path", str(last)] if last.exists() else []
        qa_reserve = qa_budget_seconds(qa_config) + QA_OUTSIDE_BUDGET_S if qa_config else 0.0
        reserve = FIT_OUTSIDE_BUDGET_S + PREDICT_EVALUATE_S + qa_reserve
        trained = trained_seconds(last) if resume and clock.limit_s is not None else 0.0
        resume += clock.max_time_override("detector fit", cfg.get("trainer", {}), reserve, trained)
        run_lightning(["fit", *common, *resume])
        done.touch()
    clock.stage("detector_fit")
    evaluations = {}
    for label, modality in MODALITIES.items():
        out = run_dir / label
        results = out / "results.json"
        if not results.exists():
            run_lightning(["predict", *common, "--data.eval_modality", modality, "--ckpt_path", str(last),
                           "--results", str(results)])  # fmt: skip
        evaluations[label] = run_evaluation(dataroot, version, split, str(results))
        write_evaluation(evaluations[label], out)
    runs = {label: ev.metrics for label, ev in evaluations.items()}
    gt = evaluations["fused"].gt
    # the same resamples of the split's samples for the three (docs/evaluation.md, **How sure a difference is**)
    boot = bootstrap_ap(gt.boxes, {k: ev.pred for k, ev in evaluations.items()}, len(gt.sample_tokens))
    write_json_atomic(run_dir / "bootstrap.json", bootstrap_summary(boot))
    table = format_comparison({k: runs[k] for k in ("camera_only", "lidar_only", "fused")})
    table += "\n\n" + learning_verdict(runs, trained_steps(last), boot)
    (run_dir / "modality_table.txt").write_text(table + "\n")
    clock.stage("predict_evaluate")
    splits = (cfg["data"].get("train_split", "mini_train"), split)
    qa_table = scene_qa(qa_config, run_dir, dataroot, version, last, splits, clock) if qa_config else None
    clock.stage("scene_qa")
    latest = Path(outputs) / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    os.symlink(Path("runs") / name, latest)
    print(table)
    if qa_table:
        print("scene QA (validation split; prior = question-only baseline):")
        print(qa_table)
    timings = clock.write(run_dir / "timings.json")
    print(f"results in {latest}/ -> {run_dir}")
    print(format_timings(timings))
    return 0


def format_timings(t: dict) -> str:
    """One line: each stage's minutes, the total and, under a limit, the limit."""
    parts = [f"{name.replace('_', ' ')} {_clock(s)}" for name, s in t["stages_s"].items()]
    if t["before_command_s"] >= 1:
        parts.insert(0, f"before this command {_clock(t['before_command_s'])}")
    limit = f" (limit {_clock(t['time_limit_s'])})" if t["time_limit_s"] is not None else ""
    return f"time: {', '.join(parts)}; total {_clock(t['total_s'])}{limit}"


def _flatten(tree, prefix: str = "") -> dict[str, object]:
    """Nested config -> {"model.model.dim": 32, ...}; lists keep their items as dotted indices."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list):
        items = enumerate(tree)
    else:
        return {prefix: tree}
    flat = {}
    for key, value in items:
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def set_aside_if_changed(run_dir: Path, cfg: dict, recorded_name: str = "run_config.yaml") -> list[str]:
    """If `run_dir` holds a fit (a checkpoint or `fit.done`) made with a config other than `cfg`, as its
    `recorded_name` records, rename it to `<name>.<n>` (nothing is deleted) so that this run trains afresh instead of
    resuming or reusing a checkpoint of another model. Returns the settings that differ ([] when nothing moved)."""
    recorded = run_dir / recorded_name
    checkpoints = [*run_dir.glob("*.ckpt"), *(run_dir / "checkpoints").glob("*.ckpt")]
    trained = (run_dir / "fit.done").exists() or bool(checkpoints)
    if not (recorded.exists() and trained):
        return []
    old, new = _flatten(yaml.safe_load(recorded.read_text()) or {}), _flatten(yaml.safe_load(yaml.safe_dump(cfg)))
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k, "<unset>") != new.get(k, "<unset>"))
    if not changed:
        return []
    n = 1
    while (aside := run_dir.with_name(f"{run_dir.name}.{n}")).exists():
        n += 1
    run_dir.rename(aside)
    shown = ", ".join(f"{k}: {old.get(k, '<unset>')} -> {new.get(k, '<unset>')}" for k in changed[:5])
    more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
    print(f"{recorded}: the config changed since this run trained ({shown}{more}); moved the run to {aside} and "
          "training afresh", file=sys.stderr)  # fmt: skip
    return changed


def trained_seconds(checkpoint: Path) -> float:
    """The training seconds Lightning's Timer had counted when `checkpoint` was saved (0 without a Timer)."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True).get("callbacks", {})
    return float(state.get("Timer", {}).get("time_elapsed", {}).get("train", 0.0))


def qa_budget_seconds(qa_config: str) -> float:
    """The scene-QA config's `trainer.max_time` in seconds (0 when it has none)."""
    cfg = yaml.safe_load(Path(qa_config).read_text()) or {}
    return max_time_seconds(cfg.get("trainer", {}).get("max_time")) or 0.0


def trained_steps(checkpoint: Path) -> int | None:
    """The optimiser steps a Lightning checkpoint has trained (its `global_step`), None if it does not say."""
    import torch

    step = torch.load(checkpoint, map_location="cpu", weights_only=True).get("global_step")
    return int(step) if step is not None else None


def relocate_outputs(cfg: dict, root: Path, ckpt_dir: Path) -> None:
    """Point a LightningCLI config's outputs into `root`: default_root_dir, every logger's save_dir (root/logs: CSV and
    TensorBoard side by side) and every ModelCheckpoint's dirpath (`ckpt_dir`). Edits `cfg` in place."""
    trainer = cfg.setdefault("trainer", {})
    trainer["default_root_dir"] = str(root)
    loggers = trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(logger, dict):
            logger.setdefault("init_args", {})["save_dir"] = str(root / "logs")
    for cb in trainer.get("callbacks") or []:
        if cb.get("class_path", "").endswith("ModelCheckpoint"):
            cb.setdefault("init_args", {})["dirpath"] = str(ckpt_dir)


def run_in_fresh_process(args: list[str]) -> None:
    """`fusion ARGS` in a new Python process. The scene-QA fit that follows the detector's fit, its predictions and
    their evaluations ran 20-50 % slower per epoch in the same process than in a fresh one (docs/benchmarks.md,
    **Scene QA in its own process**); a clock-bounded fit turns that into fewer epochs."""
    import subprocess

    done = subprocess.run([sys.executable, "-m", "fusion.cli", *args], check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`fusion {' '.join(args)}` failed (exit status {done.returncode}; its output is above)")


def scene_qa(
    qa_config: str,
    run_dir: Path,
    dataroot: str,
    version: str,
    detector_ckpt: Path,
    splits: tuple[str, str] = ("mini_train", "mini_val"),
    clock: JobClock | None = None,
) -> str:
    """Fit the scene-QA encoder on the run's detector (skipped when `qa/fit.done` exists); the per-type table. Under
    `clock`'s time limit the fit's budget is what the limit leaves, less the step's own work outside it."""
    from fusion.qa.metrics import format_table

    qa_dir = run_dir / "qa"
    cfg = yaml.safe_load(Path(qa_config).read_text())
    relocate_outputs(cfg, qa_dir, qa_dir)  # qa.ckpt, qa_metrics.json and tokenizer.json beside the logs
    data = cfg["data"].setdefault("init_args", {})
    data.update(dataroot=dataroot, version=version, detector_ckpt=str(detector_ckpt), train_split=splits[0],
                val_split=splits[1], questions_dir=str(qa_dir / "questions"))  # fmt: skip
    set_aside_if_changed(qa_dir, cfg, "qa_config.yaml")  # a changed QA config (its budget, say) fits afresh
    qa_dir.mkdir(parents=True, exist_ok=True)
    run_config = qa_dir / "qa_config.yaml"
    run_config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    done = qa_dir / "fit.done"
    if not done.exists():
        args = ["fit", "--config", str(run_config)]
        if clock is not None:
            args += clock.max_time_override("scene-QA fit", cfg.get("trainer", {}), QA_OUTSIDE_BUDGET_S)
        run_in_fresh_process(args)
        done.touch()
    metrics_path = qa_dir / "qa_metrics.json"
    if not metrics_path.exists():
        raise RuntimeError(f"{metrics_path}: the QA fit wrote no metrics (no validation epoch finished)")
    table = format_table(json.loads(metrics_path.read_text()))
    (qa_dir / "qa_table.txt").write_text(table + "\n")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fusion run", description=__doc__)
    parser.add_argument("--config", default="configs/synthetic_cpu.yaml")
    parser.add_argument("--dataroot", default="data/synthetic")
    parser.add_argument("--outputs", default="outputs")
    parser.add_argument("--name", default=None)
    parser.add_argument("--qa-config", default="configs/qa_synthetic_cpu.yaml", help="scene-QA config, or 'none'")
    parser.add_argument("--time-limit", default=None, metavar="[H:]M:SS",
                        help="bound the whole job: the fits' budgets shrink to end by then (default none)")  # fmt: skip
    parser.add_argument("--started-at", type=float, default=None, metavar="EPOCH_SECONDS",
                        help="when the limit's clock started (`make run`: when make started; default now)")  # fmt: skip
    args = parser.parse_args(argv)
    qa = None if args.qa_config.lower() == "none" else args.qa_config
    try:
        limit = parse_duration(args.time_limit) if args.time_limit is not None else None
    except ValueError as e:
        parser.error(f"--time-limit: {e}")
    return run(args.config, args.dataroot, args.outputs, args.name, qa, limit, args.started_at)
