"""`fusion fit|validate|test --config configs/qa_*.yaml`: LightningCLI over `QASystem` and `QADataModule`.

`fusion.train.run_lightning` hands a command here when its config's `model.class_path` names `QASystem`, so
detection configs run exactly as before. The datamodule's detector checkpoint, box source and tokenizer sizes are
linked into the model's arguments (one place to set them).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from lightning.pytorch.cli import LightningCLI

from fusion.callbacks import RequeueAtStepEnd
from fusion.qa.datamodule import QADataModule
from fusion.qa.system import QASystem


def config_paths(argv: list[str]) -> list[str]:
    paths = []
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            paths.append(argv[i + 1])
        elif a.startswith("--config="):
            paths.append(a.split("=", 1)[1])
    return paths


def is_qa_command(argv: list[str]) -> bool:
    """True when a `--config` file's `model.class_path` names the QA system."""
    for path in config_paths(argv):
        p = Path(path)
        if not p.exists():
            continue
        cfg = yaml.safe_load(p.read_text()) or {}
        model = cfg.get("model") if isinstance(cfg, dict) else None
        if isinstance(model, dict) and str(model.get("class_path", "")).endswith("QASystem"):
            return True
    return False


class QACLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        for field in ("detector_ckpt", "boxes", "vocab_size", "max_len"):
            parser.link_arguments(f"data.init_args.{field}", f"model.init_args.{field}")

    def before_fit(self) -> None:
        self.trainer.callbacks.append(RequeueAtStepEnd())  # SLURM's requeue signal at a step's end (docs/training.md)


def run_qa_lightning(argv: list[str]) -> None:
    QACLI(QASystem, QADataModule, subclass_mode_model=True, subclass_mode_data=True, args=argv,
          seed_everything_default=0, save_config_kwargs={"overwrite": True},
          parser_kwargs={"prog": "fusion"})  # fmt: skip
