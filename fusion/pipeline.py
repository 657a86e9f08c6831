"""`fusion run`: the main job behind `make run` — world, training, prediction, evaluation, one table.

Steps (each skipped when its output exists, so an interrupted run resumes where it stopped):
1. the synthetic world at `--dataroot` (`fusion synth`), and its summary;
2. `fusion fit --config CONFIG` (resumes from the run's last checkpoint when there is one);
3. `fusion predict` on the validation split three times — fused, LiDAR-only, camera-only — from the same checkpoint;
4. `fusion evaluate` of each, and the side-by-side table.
Results go to `outputs/runs/<name>/{fused,lidar_only,camera_only}/metrics.json`; `outputs/latest` points at the run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

MODALITIES = {"fused": "fused", "lidar_only": "lidar", "camera_only": "camera"}


def run(config: str, dataroot: str, outputs: str = "outputs", name: str | None = None) -> int:
    from fusion.data.summary import summarize
    from fusion.data.synth.generate import synthesize
    from fusion.data.synth.presets import get_preset
    from fusion.evaluation import evaluate
    from fusion.evaluation.report import format_comparison
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
    # The run's own copy of the config: every output path inside the run folder.
    trainer = cfg.setdefault("trainer", {})
    trainer["default_root_dir"] = str(run_dir)
    if isinstance(trainer.get("logger"), dict):
        trainer["logger"].setdefault("init_args", {})["save_dir"] = str(run_dir / "logs")
    for cb in trainer.get("callbacks") or []:
        if cb.get("class_path", "").endswith("ModelCheckpoint"):
            cb.setdefault("init_args", {})["dirpath"] = str(ckpt_dir)
    cfg["data"]["dataroot"] = dataroot
    run_dir.mkdir(parents=True, exist_ok=True)
    run_config = run_dir / "run_config.yaml"
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
    (run_dir / "modality_table.txt").write_text(table + "\n")
    latest = Path(outputs) / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    os.symlink(Path("runs") / name, latest)
    print(table)
    print(f"results in {latest}/ -> {run_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fusion run", description=__doc__)
    parser.add_argument("--config", default="configs/synthetic_cpu.yaml")
    parser.add_argument("--dataroot", default="data/synthetic")
    parser.add_argument("--outputs", default="outputs")
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    return run(args.config, args.dataroot, args.outputs, args.name)
