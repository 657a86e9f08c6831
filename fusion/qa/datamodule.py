"""`QADataModule`: question files (generated with `fusion qa`'s generator when missing), the tokenizer trained on the
training questions, and the object tokens of every sample from the frozen detector (cached per split and checkpoint).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from fusion.data.index import load_index
from fusion.data.qa import generate, prior_baseline, synthetic_colours, write_jsonl
from fusion.qa.dataset import QACollate, QADataset
from fusion.qa.samples import cached_split
from fusion.qa.tokenizer import QuestionTokenizer, train_tokenizer


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not a JSON line ({e.msg})") from None
        for field in ("sample_token", "question", "answer", "type", "refs"):
            if field not in r:
                raise ValueError(f"{path}:{n}: field {field!r} is missing")
        records.append(r)
    return records


class QADataModule(pl.LightningDataModule):
    """Args:
    dataroot / version / train_split / val_split: the scenes (real nuScenes or `fusion synth`).
    detector_ckpt: the `DetectionSystem` checkpoint whose detector makes the object tokens.
    questions_dir: holds `<split>.jsonl`; generated (seed, per-sample counts below) when missing.
    boxes: "gt" (oracle boxes) or "predicted" (the detector's detections) as object tokens.
    train_per_sample / val_per_sample: questions generated per sample.
    vocab_size / max_len: tokenizer vocabulary and the longest question kept (tokens).
    """

    def __init__(self, dataroot: str = "data/synthetic", version: str = "v1.0-mini", train_split: str = "mini_train",
                 val_split: str = "mini_val", detector_ckpt: str = "outputs/latest/checkpoints/last.ckpt",
                 questions_dir: str = "outputs/qa/questions", boxes: str = "gt", train_per_sample: int = 36,
                 val_per_sample: int = 12, seed: int = 0, batch_size: int = 64, vocab_size: int = 400,
                 max_len: int = 48, cache_dir: str | None = None):  # fmt: skip
        super().__init__()
        self.save_hyperparameters()
        self.tokenizer: QuestionTokenizer | None = None
        self.datasets: dict[str, QADataset] = {}
        self.prior: dict[str, float] = {}
        self._objects: dict[str, dict] = {}  # what `prepare_data` extracted or read, for `setup` in the same process

    def questions(self, split: str, per_sample: int) -> list[dict]:
        h = self.hparams
        path = Path(h.questions_dir) / f"{split}.jsonl"
        if not path.exists():
            colours = synthetic_colours(h.dataroot, h.version)
            index = load_index(h.dataroot, h.version, split, h.cache_dir)
            write_jsonl(path, generate(index, colours, h.seed, per_sample))
        return read_jsonl(path)

    def prepare_data(self) -> None:
        """What writes files, once per node (Lightning calls this on local rank 0 only, then `setup` on every rank):
        the question files when missing, and each split's object tokens from the detector into the feature cache."""
        h = self.hparams
        self.questions(h.train_split, h.train_per_sample)
        self.questions(h.val_split, h.val_per_sample)
        for split in (h.train_split, h.val_split):
            self._objects[split] = cached_split(h.detector_ckpt, h.dataroot, h.version, split, h.boxes,
                                                cache_dir=h.cache_dir)  # fmt: skip

    def setup(self, stage: str) -> None:
        """Reads what `prepare_data` wrote (and makes it when called without it, as a plain script may)."""
        if self.datasets:
            return
        h = self.hparams
        train = self.questions(h.train_split, h.train_per_sample)
        val = self.questions(h.val_split, h.val_per_sample)
        self.prior = prior_baseline(train, val)
        self.tokenizer = QuestionTokenizer(train_tokenizer([r["question"] for r in train], h.vocab_size), h.max_len)
        colours = synthetic_colours(h.dataroot, h.version)
        for split, records in ((h.train_split, train), (h.val_split, val)):
            objects = self._objects.pop(split, None)  # this process's `prepare_data` had them: not read again
            if objects is None:
                objects = cached_split(h.detector_ckpt, h.dataroot, h.version, split, h.boxes, cache_dir=h.cache_dir)
            index = load_index(h.dataroot, h.version, split, h.cache_dir)
            self.datasets[split] = QADataset(records, objects, index, colours)

    def _loader(self, split: str, train: bool) -> DataLoader:
        return DataLoader(self.datasets[split], batch_size=self.hparams.batch_size, shuffle=train,
                          collate_fn=QACollate(self.tokenizer), drop_last=False)  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.train_split, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.val_split, False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
