"""Scene-QA fixtures: a detector checkpoint of the TINY model (random weights: the QA tests check the plumbing and
the QA model's ability to learn, not the detector) and a QA datamodule on the tiny world."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from fusion.models.model import TINY, build_model


@pytest.fixture(scope="session")
def tiny_det_ckpt(tmp_path_factory) -> str:
    torch.manual_seed(0)
    detector = build_model(TINY)
    path = tmp_path_factory.mktemp("qa_det") / "det.ckpt"
    torch.save({"hyper_parameters": {"model": asdict(TINY)}, "datamodule_hyper_parameters": {"sweeps": 2},
                "state_dict": {f"model.{k}": v for k, v in detector.model.state_dict().items()}}, path)  # fmt: skip
    return str(path)


@pytest.fixture(scope="session")
def qa_dm(tiny_root, tiny_det_ckpt, tmp_path_factory):
    from fusion.qa.datamodule import QADataModule

    work = tmp_path_factory.mktemp("qa_data")
    dm = QADataModule(dataroot=tiny_root, detector_ckpt=tiny_det_ckpt, questions_dir=str(work / "questions"),
                      train_per_sample=24, val_per_sample=12, batch_size=16, cache_dir=str(work / "cache"))  # fmt: skip
    dm.setup("fit")
    return dm
