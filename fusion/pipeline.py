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
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

MODALITIES = {"fused": "fused", "lidar_only": "lidar", "camera_only": "camera"}


def run(
    config: str,
    dataroot: str,
    outputs: str = "outputs",
    name: str | None = None,
    qa_config: str | None = "configs/qa_synthetic_cpu.yaml",
) -> int:
    from fusion.data.summary import summarize
    from fusion.data.synth.generate import synthesize
    from fusion.data.synth.presets import get_preset
    from fusion.evaluation import evaluate
    from fusion.evaluation.report import format_comparison, learning_verdict
    from fusion.train import run_lightning

    cfg = yaml.safe_load(Path(config).read_text())
    version = cfg["data"].get("version", "v1.0-mini")
    split = cfg["data"].get("val_split", "mini_val")
    if not (Path(dataroot) / version / "scene.json").exists():
        synthesize(dataroot, get_preset("mini"), seed=0, log=lambda m: print(m, file=sys.stderr))
    print(summarize(dataroot, version))

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
        run_lightning(["fit", *common, *resume])
        done.touch()
    runs = {}
    for label, modality in MODALITIES.items():
        out = run_dir / label
        results = out / "results.json"
        if not results.exists():
            run_lightning(["predict", *common, "--data.eval_modality", modality, "--ckpt_path", str(last),
                           "--results", str(results)])  # fmt: skip
        runs[label] = evaluate(dataroot, version, split, str(results), out_dir=str(out))
    table = format_comparison({k: runs[k] for k in ("camera_only", "lidar_only", "fused")})
    table += "\n\n" + learning_verdict(runs, trained_steps(last))
    (run_dir / "modality_table.txt").write_text(table + "\n")
    splits = (cfg["data"].get("train_split", "mini_train"), split)
    qa_table = scene_qa(qa_config, run_dir, dataroot, version, last, splits) if qa_config else None
    latest = Path(outputs) / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    os.symlink(Path("runs") / name, latest)
    print(table)
    if qa_table:
        print("scene QA (validation split; prior = question-only baseline):")
        print(qa_table)
    print(f"results in {latest}/ -> {run_dir}")
    return 0


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
) -> str:
    """Fit the scene-QA encoder on the run's detector (skipped when `qa/fit.done` exists); the per-type table."""
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
        run_in_fresh_process(["fit", "--config", str(run_config)])
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
    args = parser.parse_args(argv)
    qa = None if args.qa_config.lower() == "none" else args.qa_config
    return run(args.config, args.dataroot, args.outputs, args.name, qa)
