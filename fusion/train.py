"""`fusion fit|validate|test|predict`: LightningCLI over `DetectionSystem` and `NuScenesDataModule` (or, for a
config whose `model.class_path` is `fusion.qa.system.QASystem`, over the scene-QA system: `fusion.qa.cli`).

The resolved config is saved beside each run. `fusion predict ... --results FILE` writes the official nuScenes results
JSON. Resume an interrupted fit with `--ckpt_path last`.
"""

from __future__ import annotations

import sys
import warnings

from lightning.pytorch.cli import LightningCLI

from fusion.callbacks import RequeueAtStepEnd, ResultsWriter
from fusion.data.datamodule import NuScenesDataModule
from fusion.system import DetectionSystem

# What only shapes prediction (decoding and the second stage's passes), not the weights: for a run from a checkpoint
# the config and command line set these. Everything else in the checkpoint's hyper-parameters describes its weights.
PREDICTION_SETTINGS = ("top_k", "score_threshold", "evaluate_every_epoch", "model.refine_iterations",
                       "model.refine_score_power")  # fmt: skip


class FusionCLI(LightningCLI):
    def _parse_ckpt_path(self) -> None:
        """Lightning replaces the model's config with the hyper-parameters stored in `--ckpt_path`, silently, command
        line included. Keep that for what describes the weights, but say so where the config or command line asked
        for something else; and let them set `PREDICTION_SETTINGS`, which a trained checkpoint can be predicted with
        at any value (`--model.model.refine_iterations 1`, `--model.top_k 500`).

        `_parse_ckpt_path` is Lightning's own (private) step; should a Lightning release rename it, this override
        would stop being called and `tests/test_system.py::test_fit_predict_and_resume` fails (same scores)."""
        sub = self.config.get("subcommand")
        asked = dict(self.config[sub]["model"].items()) if sub else {}
        super()._parse_ckpt_path()
        if not sub:
            return
        model = self.config[sub]["model"]
        for key, value in model.items():
            if key not in asked or asked[key] == value:
                continue
            if key in PREDICTION_SETTINGS:
                model[key] = asked[key]
                print(f"fusion: model.{key} = {asked[key]!r} (the checkpoint's was {value!r})", file=sys.stderr)
            else:
                print(f"fusion: model.{key} = {value!r} from the checkpoint, not {asked[key]!r}: it describes the "
                      "checkpoint's weights", file=sys.stderr)  # fmt: skip

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--results", default="outputs/predict/results.json",
                            help="predict: where to write the nuScenes results JSON")  # fmt: skip
        parser.link_arguments("data.image_size", "model.model.image_size", compute_fn=lambda wh: (wh[1], wh[0]))

    def before_fit(self) -> None:
        self.trainer.callbacks.append(RequeueAtStepEnd())  # SLURM's requeue signal at a step's end (docs/training.md)

    def before_predict(self) -> None:
        self.trainer.callbacks.append(ResultsWriter(self.config["predict"]["results"]))


def run_lightning(argv: list[str]) -> None:
    from fusion.qa.cli import is_qa_command, run_qa_lightning

    # `fusion run` passes each step's arguments while sys.argv still holds its own: intended, not a mistake
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")
    if is_qa_command(argv):  # a config whose model.class_path is fusion.qa.system.QASystem (scene QA)
        return run_qa_lightning(argv)
    FusionCLI(DetectionSystem, NuScenesDataModule, args=argv, seed_everything_default=0,
              save_config_kwargs={"overwrite": True}, parser_kwargs={"prog": "fusion"})  # fmt: skip
