"""`fusion fit|validate|test|predict`: LightningCLI over `DetectionSystem` and `NuScenesDataModule` (or, for a
config whose `model.class_path` is `fusion.qa.system.QASystem`, over the scene-QA system: `fusion.qa.cli`).

The resolved config is saved beside each run. `fusion predict ... --results FILE` writes the official nuScenes results
JSON. Resume an interrupted fit with `--ckpt_path last`.
"""

from __future__ import annotations

import warnings

from lightning.pytorch.cli import LightningCLI

from fusion.callbacks import ResultsWriter
from fusion.data.datamodule import NuScenesDataModule
from fusion.system import DetectionSystem


class FusionCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--results", default="outputs/predict/results.json",
                            help="predict: where to write the nuScenes results JSON")  # fmt: skip
        parser.link_arguments("data.image_size", "model.model.image_size", compute_fn=lambda wh: (wh[1], wh[0]))

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
