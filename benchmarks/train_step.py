"""Time the detector's training step (forward, losses, backward, AdamW) for config variants, interleaved.

`make run` fits against a clock (8.5 minutes), so what a model option costs in steps decides as much as what it
learns per step. This benchmark builds one `DetectionSystem` per variant from the config's `model` section with
overrides, loads a fixed set of training batches once (augmented, modality dropout, as the fit serves them), and
times each variant's steps over the same batches, the variants taking turns, so that a busy or throttled moment
of the machine falls on all of them alike.

Usage:
    python benchmarks/train_step.py --variant default --variant no_motion:refine_motion=false \
        --variant no_refine:refine=false,refine_motion=false --repeats 5

A variant is NAME or NAME:key=value,... (keys of `ModelConfig`; values parsed as YAML, so no commas inside
one). Last line of output: one JSON object, {variant: {"step_s": median, "steps_per_8_5_min": ..., "params": ...}}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import yaml

from fusion.data.datamodule import NuScenesDataModule
from fusion.models.model import ModelConfig
from fusion.system import DetectionSystem, parameter_groups


def parse_variant(text: str) -> tuple[str, dict]:
    """'name:key=value,key=value' -> (name, {key: yaml value}); 'name' alone -> (name, {})."""
    name, _, rest = text.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--variant {text!r}: {item!r} is not key=value")
        overrides[key.strip()] = yaml.safe_load(value)
    return name, overrides


def build(model_cfg: dict, overrides: dict, lr: float, weight_decay: float, seed: int,
          image_size: tuple[int, int] | None = None):  # fmt: skip
    """A `DetectionSystem` in training mode and its AdamW (fused, as `DetectionSystem.configure_optimizers`);
    `image_size` (width, height), the data's, as `fusion fit` links it into the model."""
    unknown = set(overrides) - set(ModelConfig.__dataclass_fields__)
    if unknown:
        raise SystemExit(f"unknown ModelConfig field(s) {sorted(unknown)}")
    cfg = {**model_cfg, **overrides}
    if image_size is not None:
        cfg["image_size"] = (image_size[1], image_size[0])
    torch.manual_seed(seed)
    system = DetectionSystem(cfg).train()  # a dict, as a checkpoint's hyper-parameters are read
    return system, torch.optim.AdamW(parameter_groups(system, weight_decay), lr=lr, fused=True)


def step(system: DetectionSystem, optimizer: torch.optim.Optimizer, batch, clip: float) -> float:
    losses = system._losses(batch, system.model(batch))
    optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    torch.nn.utils.clip_grad_norm_(system.parameters(), clip)
    optimizer.step()
    return float(losses["total"].detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/synthetic_cpu.yaml")
    parser.add_argument("--dataroot", default="data/synthetic")
    parser.add_argument("--variant", action="append", default=[], help="NAME or NAME:key=value,... (repeatable)")
    parser.add_argument("--batches", type=int, default=8, help="training batches loaded once and reused")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant before the first repeat")
    parser.add_argument("--repeats", type=int, default=5, help="rounds; each variant runs every batch once a round")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with open(args.config) as f:
        config = yaml.safe_load(f)
    system_cfg, data_cfg = config["model"], dict(config["data"])
    data_cfg.update(dataroot=args.dataroot, num_workers=0)
    dm = NuScenesDataModule(**data_cfg)
    dm.setup("fit")
    loader = iter(dm.train_dataloader())
    batches = [next(loader) for _ in range(args.batches)]
    clip = float(config.get("trainer", {}).get("gradient_clip_val") or 1e9)

    variants = [parse_variant(v) for v in (args.variant or ["default"])]
    runs = {}
    for name, overrides in variants:
        system, optimizer = build(system_cfg["model"], overrides, system_cfg.get("lr", 2e-3),
                                  system_cfg.get("weight_decay", 0.01), config.get("seed_everything", 0),
                                  data_cfg["image_size"])  # fmt: skip
        for b in range(args.warmup):
            step(system, optimizer, batches[b % len(batches)], clip)
        runs[name] = (system, optimizer, [])

    for r in range(args.repeats):
        for _name, (system, optimizer, times) in runs.items():
            start = time.perf_counter()
            for batch in batches:
                step(system, optimizer, batch, clip)
            times.append((time.perf_counter() - start) / len(batches))
        print(f"round {r + 1}: " + ", ".join(f"{n} {t[-1]:.3f} s" for n, (_, _, t) in runs.items()), flush=True)

    result = {}
    for name, (system, _, times) in runs.items():
        median = statistics.median(times)
        result[name] = {
            "step_s": round(median, 4),
            "step_s_range": [round(min(times), 4), round(max(times), 4)],
            "steps_per_8_5_min": int(510 / median),
            "params": sum(p.numel() for p in system.parameters()),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
