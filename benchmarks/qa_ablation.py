"""Scene-QA ablations: the shared trunk (initialised from the detector) vs an un-shared one, and the pre-training
objectives (MLM, MOM, STM) all on and each one off, all else equal (same questions, same cached object tokens, same
budget: the config's epochs and its `max_time`, as `make run` trains).

    .venv/bin/python benchmarks/qa_ablation.py --detector-ckpt outputs/latest/checkpoints/last.ckpt

Prints a table (the mean over `--seeds`) and, last, one JSON line {"variants": {name: qa_metrics + per-seed runs},
"settings": {...}}.

Training reads the cached object tokens (`fusion.qa.samples.cached_split`; made by the detector on the first run),
so the frozen detector inside the QA system is not needed here: the system is built from the checkpoint's model
config and only the trunk weights are read from it (what `trunk_shared` starts from). This also lets the ablation
run on a cache made by an earlier detector revision whose full state no longer loads into the current code.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import yaml

_ALL = {"mlm": True, "mom": True, "stm": True}
VARIANTS = {
    "config": {},  # configs/qa_synthetic_cpu.yaml as it is
    "unshared_trunk": {"trunk_shared": False},
    "all_pretraining": _ALL,
    "no_mlm": _ALL | {"mlm": False},
    "no_mom": _ALL | {"mom": False},
    "no_stm": _ALL | {"stm": False},
    "no_pretraining": {"mlm": False, "mom": False, "stm": False},
    "no_factors": {"factor_weight": 0.0},  # relevance learnt from the refs alone, no per-part targets
    "no_attributes": {"attribute_weight": 0.0, "attributes_from_grounding": False},  # no per-object attribute head
    "no_colour_cues": {"colour_cues": False},  # colours from the whole object token, like class and status
    # counts, classes and statuses from the answer head (comparisons still from their two sides)
    "head_answers": {"count_from_grounding": False, "attributes_from_grounding": False},
}


def training_system(cls, args: dict):
    """A `QASystem` for training from cached object tokens: detector config and trunk weights from the checkpoint."""
    from dataclasses import asdict

    from fusion.models.model import ModelConfig
    from fusion.models.trunk import Trunk
    from fusion.qa.model import load_trunk

    state = torch.load(args["detector_ckpt"], map_location="cpu", weights_only=True)
    cfg = ModelConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in state["hyper_parameters"]["model"].items()}
    )
    sweeps = int(state.get("datamodule_hyper_parameters", {}).get("sweeps", 3))
    system = cls(**(args | {"trunk_shared": False, "detector": {"model": asdict(cfg), "sweeps": sweeps}}))
    if args.get("trunk_shared", True):
        from fusion.models.node_types import NODE_TYPES

        trunk = Trunk(
            cfg.dim, cfg.trunk_depth, cfg.heads, kinds=NODE_TYPES, shared=cfg.trunk_shared, window=cfg.trunk_window
        )
        prefix = "model.trunk."
        trunk.load_state_dict({k[len(prefix) :]: v for k, v in state["state_dict"].items() if k.startswith(prefix)})
        load_trunk(system.model.trunk, trunk)
    system.hparams.trunk_shared = args.get("trunk_shared", True)
    return system


def run_variant(name: str, overrides: dict, model_args: dict, data_args: dict, epochs: int, work: Path,
                max_time: str | None = None, seed: int = 0) -> dict:  # fmt: skip
    from fusion.qa.datamodule import QADataModule
    from fusion.qa.system import QASystem

    pl.seed_everything(seed, verbose=False)
    dm = QADataModule(**data_args)
    system = training_system(QASystem, model_args | overrides)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, max_time=max_time, gradient_clip_val=1.0,
                         logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(work / name), enable_checkpointing=False)  # fmt: skip
    t0 = time.perf_counter()
    trainer.fit(system, dm)
    metrics = dict(system.last_metrics or {})
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    return metrics


def mean_metrics(runs: list[dict]) -> dict:
    """The per-seed `qa_metrics` averaged: accuracy and grounding per key, and the seconds."""
    return {
        "accuracy": {k: sum(r["accuracy"][k] for r in runs) / len(runs) for k in runs[0]["accuracy"]},
        "grounding": {k: sum(r["grounding"][k] for r in runs) / len(runs) for k in runs[0]["grounding"]},
        "seconds": sum(r["seconds"] for r in runs) / len(runs),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/qa_synthetic_cpu.yaml")
    p.add_argument("--detector-ckpt", required=True)
    p.add_argument("--dataroot", default="data/synthetic")
    p.add_argument("--epochs", type=int, default=None, help="default: the config's max_epochs")
    p.add_argument("--max-time", default=None, help="DD:HH:MM:SS; default: the config's max_time ('none': no limit)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--work", default="outputs/qa_ablation")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one fit per seed; the table shows their mean")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = yaml.safe_load(Path(a.config).read_text())
    model_args = dict(cfg["model"].get("init_args", {}))
    data_args = dict(cfg["data"].get("init_args", {}))
    data_args.update(dataroot=a.dataroot, detector_ckpt=a.detector_ckpt, questions_dir=f"{a.work}/questions")
    for key in ("detector_ckpt", "boxes", "vocab_size", "max_len"):  # what the CLI links from data to model
        model_args[key] = data_args[key]
    epochs = a.epochs or int(cfg["trainer"]["max_epochs"])
    max_time = a.max_time or cfg["trainer"].get("max_time")
    max_time = None if max_time == "none" else max_time
    results = {}
    for name in a.variants:
        runs = [run_variant(name, VARIANTS[name], model_args, data_args, epochs, Path(a.work), max_time, seed)
                for seed in a.seeds]  # fmt: skip
        m = mean_metrics(runs)
        results[name] = m | {"seeds": runs}
        print(f"{name:<16} overall {m['accuracy']['overall']:.3f}  "
              + "  ".join(f"{k} {v:.3f}" for k, v in m["accuracy"].items() if k != "overall")
              + f"  ground@0.5 {m['grounding']['acc@0.5']:.3f}  ({m['seconds']:.0f} s, mean of {len(runs)})",
              flush=True)  # fmt: skip
    settings = {"epochs": epochs, "max_time": max_time, "threads": a.threads, "config": a.config, "seeds": a.seeds,
                "detector_ckpt": a.detector_ckpt}  # fmt: skip
    print(json.dumps({"variants": results, "settings": settings}))


if __name__ == "__main__":
    main()
