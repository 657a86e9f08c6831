"""`QASystem`: the LightningModule that trains and evaluates the scene-QA encoder. It holds no model code.

The frozen detector (from a `DetectionSystem` checkpoint, stored inside the QA checkpoint so that the app needs one
file) makes the object tokens; the QA encoder's trunk starts from the detector's trunk (`trunk_shared: true`) or from
scratch (`false`, the ablation). Each step runs the task losses on the clean batch and, when any pre-training
objective is on, the MLM / MOM / STM losses on a masked, partly mismatched copy. Validation writes `qa_metrics.json`
and `tokenizer.json` beside the checkpoints every epoch.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import lightning.pytorch as pl
import torch

from fusion.data.types import Batch
from fusion.models.model import ModelConfig, build_model
from fusion.models.node_types import TOKEN_KINDS
from fusion.models.trunk import Trunk
from fusion.qa.answers import ANSWERS, ATTRIBUTE_SIZES, CLASS_ANSWERS, COUNTS, OBJECT, STATUS_ANSWERS
from fusion.qa.dataset import COMPARE, QABatch
from fusion.qa.embeddings import ObjectEmbedding, TextEmbedding
from fusion.qa.metrics import QAMetrics, box_iou3d, qa_metrics_json, write_qa_metrics
from fusion.qa.model import RULES, SceneQAModel, count_distribution, decide, decide_with_rule, load_trunk, read_off
from fusion.qa.objectives import mask_objects, mask_tokens, mismatch, pretrain_losses, task_losses
from fusion.qa.objects import APPEARANCE, ObjectExtractor, SceneObjects, feature_dim
from fusion.qa.samples import load_detector, loader_config
from fusion.qa.tokenizer import QuestionTokenizer
from fusion.system import adamw, cosine_schedule, gather_from_ranks, writes_step_logs


class Prediction(NamedTuple):
    text: str
    score: float
    boxes: list[tuple[int, float]]  # (object index, score)
    message: str


class QASystem(pl.LightningModule):
    """Args:
    detector_ckpt: the detection checkpoint (its detector is frozen; its trunk initialises the QA trunk).
    boxes: "gt" or "predicted" object boxes (the datamodule's setting; kept for inference).
    trunk_shared: start the QA trunk from the detector's trunk (True) or from scratch (False).
    freeze_trunk: keep the trunk's weights equal to the detector's (only the type embeddings and heads train).
    extra_depth: QA-only transformer blocks after the trunk.
    mlm / mom / stm: the pre-training objectives, each switchable; *_prob their masking / negative rates.
    pretrain_weight: weight of the pre-training losses against the task losses.
    relevance_balanced / relevance_weight: the per-object relevance loss weighs relevant and other objects equally
        (False: one mean over all objects, which ~95 % irrelevant ones dominate); and its weight.
    factor_weight: weight of the per-object factor loss (does the object have the class / colour / status and stand
        in the relation the question names? from the question's program); 0 turns it off.
    attribute_weight: weight of the per-object attribute loss (class, status, colour of every object); 0 turns it off.
    attribute_balanced: in that loss, every class / status / colour of the batch weighs the same in total.
    answer_cls_dropout: dropout on [CLS] where the answer head reads it (it then answers from the grounded objects).
    count_from_grounding: when the answer head answers a count, the count is the number of objects the grounding
        marks relevant (`fusion.qa.model.decide`); False: the head's own count.
    attributes_from_grounding: when the answer head answers a class or a status, it is the one the attribute head
        reads from the grounded object (`fusion.qa.model.decide`); False: the head's own.
    compare_from_grounding: a comparison's yes / no from its two sides' grounded objects (their numbers, or the
        status / colour the attribute head reads off them); False: the head's own.
    colour_cues: the attribute head's colours come from the objects' appearance features alone, raw and as
        lighting-free cues (`fusion.qa.objects.colour_cues`); False: from the whole object token, like class and status.
    """

    def __init__(self, detector_ckpt: str | None = None, boxes: str = "gt", trunk_shared: bool = True,
                 freeze_trunk: bool = False, extra_depth: int = 1, vocab_size: int = 400, max_len: int = 48,
                 mlm: bool = True, mom: bool = True, stm: bool = True, mlm_prob: float = 0.15,
                 mom_prob: float = 0.15, stm_prob: float = 0.5, pretrain_weight: float = 0.5,
                 relevance_balanced: bool = True, relevance_weight: float = 1.0, factor_weight: float = 1.0,
                 attribute_weight: float = 1.0, attribute_balanced: bool = False, dropout: float = 0.0,
                 answer_cls_dropout: float = 0.0,
                 count_from_grounding: bool = True, attributes_from_grounding: bool = True,
                 compare_from_grounding: bool = True, colour_cues: bool = False,
                 lr: float = 2e-3, weight_decay: float = 0.01, warmup_fraction: float = 0.05,
                 score_threshold: float = 0.2, detector: dict | None = None):  # fmt: skip
        super().__init__()
        args = {k: v for k, v in locals().items() if k not in ("self", "__class__")}  # plain data: weights_only
        loaded = None
        if detector is None:  # a fresh run: read the detector checkpoint
            if detector_ckpt is None:
                raise ValueError("QASystem: field 'detector_ckpt' is required (a DetectionSystem checkpoint)")
            loaded = load_detector(detector_ckpt)
            detector = {"model": _model_config(detector_ckpt), "sweeps": loaded.sweeps}
        self.save_hyperparameters(args | {"detector": detector})
        model_cfg = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in detector["model"].items()})
        det = loaded.detector if loaded is not None else build_model(model_cfg)
        self.detector, self.box_coder = det.model.requires_grad_(False).eval(), det.box_coder
        dim = model_cfg.dim
        trunk = Trunk(dim, model_cfg.trunk_depth, model_cfg.heads, kinds=TOKEN_KINDS, shared=True,
                      window=model_cfg.trunk_window)  # fmt: skip
        if trunk_shared:
            load_trunk(trunk, det.model.trunk)
        if freeze_trunk:
            trunk.stacks.requires_grad_(False)
            trunk.norm.requires_grad_(False)
        objects = ObjectEmbedding(feature_dim(dim), dim, dropout, appearance_dim=4 + APPEARANCE)  # centre colour too
        self.model = SceneQAModel(TextEmbedding(vocab_size, dim, max_len + 1, dropout), objects, trunk, len(ANSWERS),
                                  vocab_size, extra_depth=extra_depth, heads=model_cfg.heads,
                                  answer_cls_dropout=answer_cls_dropout, colour_cues=colour_cues)  # fmt: skip
        self.tokenizer: QuestionTokenizer | None = None
        self.prior: dict[str, float] = {}
        self._rows: list[tuple] = []  # (dataset index, type, correct, grounding IoU) per evaluated question
        self.last_metrics: dict | None = None

    # ---------------------------------------------------------------- training
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is not None and getattr(dm, "tokenizer", None) is not None:
            self.tokenizer, self.prior = dm.tokenizer, dict(dm.prior)
            if self.tokenizer.vocab_size > self.hparams.vocab_size:
                raise ValueError(f"tokenizer has {self.tokenizer.vocab_size} tokens > model.vocab_size "
                                 f"{self.hparams.vocab_size}")  # fmt: skip

    def train(self, mode: bool = True):
        super().train(mode)
        self.detector.eval()  # frozen: never in training mode
        return self

    def _forward(self, b: QABatch, ids=None, idx=None, masked=None, second=None):
        ids = b.ids if ids is None else ids
        sel = (lambda t: t) if idx is None else (lambda t: t[idx])
        return self.model(ids, b.text_mask, sel(b.features), sel(b.boxes), sel(b.object_mask), masked, second)

    def training_step(self, b: QABatch, batch_idx: int) -> torch.Tensor:
        h = self.hparams
        out = self._forward(b, second=b.compare != 0)  # comparisons (and unknown kinds) score their second side
        losses = task_losses(out, b.answer, b.ground_target, b.relevance, b.relevance_valid,
                             b.object_mask, h.relevance_balanced, h.relevance_weight, b.factors, b.factor_valid,
                             h.factor_weight, b.attributes, h.attribute_weight, b.factors_b, b.factor_valid_b,
                             b.relevance_b, b.compare, h.attribute_balanced)  # fmt: skip
        total = sum(losses.values())
        if h.mlm or h.mom or h.stm:
            ids, mlm_targets = mask_tokens(b.ids, b.text_mask, h.vocab_size, h.mlm_prob) if h.mlm else (b.ids, None)
            idx, matched = mismatch(len(b), h.stm_prob) if h.stm else (torch.arange(len(b)), None)
            idx = idx.to(self.device)
            masked = mask_objects(b.object_mask[idx], h.mom_prob) if h.mom else None
            pre = pretrain_losses(self._forward(b, ids, idx, masked), mlm_targets, masked, b.object_labels[idx],
                                  None if matched is None else matched.to(self.device))  # fmt: skip
            losses |= pre
            total = total + h.pretrain_weight * sum(pre.values())
        if writes_step_logs(self):  # each log call costs ~0.65 ms: the breakdown only when it is written
            self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=len(b))
        self.log("train/loss", total, batch_size=len(b), prog_bar=True)
        return total

    def validation_step(self, b: QABatch, batch_idx: int) -> None:
        self._evaluation_step(b)

    def on_validation_epoch_end(self) -> None:
        metrics = self._evaluation_epoch_end("val")
        if metrics is not None and self.trainer.is_global_zero:
            out = self.output_dir()
            write_qa_metrics(out / "qa_metrics.json", metrics)
            if self.tokenizer is not None:
                self.tokenizer.save(out / "tokenizer.json")

    def test_step(self, b: QABatch, batch_idx: int) -> None:
        """`fusion test`: validation's figures on the data module's test loader, logged as test/..."""
        self._evaluation_step(b)

    def on_test_epoch_end(self) -> None:
        self._evaluation_epoch_end("test")

    def _evaluation_step(self, b: QABatch) -> None:
        out = self._forward(b)
        h = self.hparams
        decided = decide(out, b.object_mask, h.count_from_grounding, h.attributes_from_grounding,
                         h.compare_from_grounding)  # fmt: skip
        correct = (decided == b.answer).cpu().numpy()
        best = out.ground.argmax(-1)
        grounded = b.boxes[torch.arange(len(b)), best].cpu().numpy()
        iou = box_iou3d(grounded, b.ref_box.cpu().numpy())
        iou[~b.object_mask.any(1).cpu().numpy()] = 0.0
        self._rows += list(zip(b.index.tolist(), b.types, correct.tolist(), iou.tolist(), strict=True))

    def _evaluation_epoch_end(self, prefix: str) -> dict | None:
        """Accuracy per type and grounding over the whole split: under DDP every rank's questions are gathered (one
        count per question: the sampler's padding repeats some), so every rank logs the same figures."""
        rows, self._rows = self._rows, []
        if self.trainer.sanity_checking:
            return None
        # every rank's questions, each once (DDP's padding repeats some)
        rows = list({row[0]: row for part in gather_from_ranks(self.trainer, rows) for row in part}.values())
        result = QAMetrics()
        if rows:
            _, types, correct, iou = zip(*rows, strict=True)
            result.update(types, correct, iou)
        metrics = qa_metrics_json(result.compute(), self.prior)
        self.last_metrics = metrics
        logged = {f"{prefix}/acc_{k}": v for k, v in metrics["accuracy"].items()}
        logged |= {f"{prefix}/ground_{k}": v for k, v in metrics["grounding"].items()}
        self.log_dict(logged, prog_bar=False)
        self.log(f"{prefix}/acc", metrics["accuracy"]["overall"], prog_bar=True)
        return metrics

    def output_dir(self) -> Path:
        cb = self.trainer.checkpoint_callback
        return Path(cb.dirpath if cb is not None and cb.dirpath else self.trainer.default_root_dir)

    def configure_optimizers(self):
        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        decay = [p for n, p in params if p.ndim >= 2 and "embed" not in n and "position" not in n and "token" not in n]
        ids = {id(p) for p in decay}
        no_decay = [p for _, p in params if id(p) not in ids]
        optimizer = adamw([{"params": decay, "weight_decay": self.hparams.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}], self.hparams.lr, self.trainer)  # fmt: skip
        scheduler = cosine_schedule(optimizer, self.trainer, self.hparams.warmup_fraction)  # steps or max_time
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.tokenizer is not None:
            checkpoint["qa_tokenizer"] = self.tokenizer.to_json()
        checkpoint["qa_prior"] = dict(self.prior)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "qa_tokenizer" in checkpoint:
            self.tokenizer = QuestionTokenizer.from_json(checkpoint["qa_tokenizer"], self.hparams.max_len)
        self.prior = dict(checkpoint.get("qa_prior", {}))

    @classmethod
    def load(cls, path: str, device: str = "cpu") -> QASystem:
        """A trained QA system from its checkpoint (weights only; the detector is inside)."""
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"{p}: QA checkpoint is missing")
        state = torch.load(p, map_location=device, weights_only=True)
        for field in ("hyper_parameters", "state_dict", "qa_tokenizer"):
            if field not in state:
                raise ValueError(f"{p}: field {field!r} is missing: not a QASystem checkpoint")
        system = cls(**state["hyper_parameters"])
        try:
            system.load_state_dict(state["state_dict"])
        except RuntimeError as e:  # missing / unexpected / mis-shaped weights: another version of the QA model
            lines = str(e).splitlines()
            first = lines[1].strip() if len(lines) > 1 else str(e)
            retrain = "retrain it with `fusion fit --config configs/qa_synthetic_cpu.yaml`"
            raise ValueError(
                f"{p}: field 'state_dict' does not fit this version of the QA model ({first}); {retrain}"
            ) from None
        system.on_load_checkpoint(state)
        return system.to(device).eval()

    # -------------------------------------------------------------- inference
    def loader_config(self):
        return loader_config(tuple(self.hparams.detector["model"]["image_size"]), self.hparams.detector["sweeps"])

    def extract_objects(self, batch: Batch, ann_tokens: list[list[str]] | None = None) -> list[SceneObjects]:
        extractor = ObjectExtractor(self.detector, self.box_coder, self.hparams.boxes, self.hparams.score_threshold)
        return extractor(batch, ann_tokens)

    @torch.inference_mode()
    def answer_one(self, objects: SceneObjects, question: str, max_boxes: int = 10) -> Prediction:
        if self.tokenizer is None:
            raise RuntimeError("QASystem has no tokenizer: load it with QASystem.load(checkpoint)")
        ids, text_mask, unk = self.tokenizer.encode([question])
        dev = self.device
        m = len(objects)
        feats = objects.features[None].to(dev) if m else torch.zeros(1, 1, self.model.objects.feature_dim, device=dev)
        boxes = objects.boxes[None].to(dev) if m else torch.zeros(1, 1, 7, device=dev)
        omask = torch.ones(1, max(m, 1), dtype=torch.bool, device=dev) & (m > 0)
        out = self.model(ids.to(dev), text_mask.to(dev), feats, boxes, omask)
        probs = out.answer[0].softmax(-1)
        h = self.hparams
        decided, rule = decide_with_rule(out, omask, h.count_from_grounding, h.attributes_from_grounding,
                                         h.compare_from_grounding)  # fmt: skip
        k, rule = int(decided[0]), RULES[int(rule[0])]
        kind = out.compare[0].softmax(-1)
        # The answer's probability. Answered from the grounded objects: how likely the head thinks this kind of answer
        # is (a count, a class, a status; for a comparison the compare head), times how likely the objects make it
        # this one.
        if rule == "head":
            p_answer = float(probs[k])
        elif rule == "compare":
            p_answer = float(kind.max()) * self._comparison_probability(out, omask, int(kind.argmax()), k)
        else:
            p_answer = self._grounded_answer_probability(out, omask, probs, k)
        notes = []
        n_words = int(text_mask.sum())
        # Confidence: the answer's probability, scaled by the share of known words and, when the model learnt
        # scene-text matching, by how well question and scene match.
        trust = (1.0 - int(unk[0]) / max(n_words, 1)) * (float(out.match[0].sigmoid()) if self.hparams.stm else 1.0)
        if n_words == 0 or int(unk[0]) > 0:
            notes.append(f"{int(unk[0])} of {n_words} question tokens are unknown words")
        if len(question) > self.tokenizer.max_chars or n_words >= self.tokenizer.max_len:
            notes.append(f"question truncated to {self.tokenizer.max_len} tokens")
        if m == 0:
            notes.append("no objects in this scene")
        if ANSWERS[k] == OBJECT:
            if m == 0:
                return Prediction("no object to point at", 0.0, [], "; ".join(notes))
            g = out.ground[0].softmax(-1)
            j = int(g.argmax())
            box = objects.boxes[j]
            text = f"the {objects.names[j]} {float(box[:2].norm()):.0f} m away"
            return Prediction(text, float(probs[k] * g[j]) * trust, [(j, float(g[j]))], "; ".join(notes))
        rel = out.ground[0].sigmoid()
        if rule == "compare":  # the objects of both sides
            rel = torch.maximum(rel, out.ground_b[0].sigmoid())
        order = [int(j) for j in rel.argsort(descending=True) if rel[j] >= 0.5][:max_boxes]
        return Prediction(ANSWERS[k], p_answer * trust, [(j, float(rel[j])) for j in order], "; ".join(notes))

    @staticmethod
    def _comparison_probability(out, object_mask: torch.Tensor, kind: int, k: int) -> float:
        """P(the answer k) of one comparison from its two sides: for counts, P(more objects relevant to the first
        side than to the second) from their Poisson-binomial distributions; for a colour or status, P(the two
        grounded objects have the same one) from the attribute head's pooled readings."""
        if COMPARE[kind] == "count":
            a = count_distribution(out.ground.sigmoid(), object_mask)[0]  # (M + 1,)
            b = count_distribution(out.ground_b.sigmoid(), object_mask)[0]
            yes = float((a[1:] * b.cumsum(0)[:-1]).sum())  # sum_i P(A = i) P(B < i)
        else:
            logits = out.attributes[0].split(ATTRIBUTE_SIZES, -1)[1 if COMPARE[kind] == "status" else 2]
            yes = float(read_off(out.ground[0], logits) @ read_off(out.ground_b[0], logits))
        return yes if ANSWERS[k] == "yes" else 1.0 - yes

    @staticmethod
    def _grounded_answer_probability(out, object_mask: torch.Tensor, probs: torch.Tensor, k: int) -> float:
        """Of one question: P(the kind of answer k is) x P(the objects give k): for a count, the Poisson-binomial
        probability that exactly that many objects are relevant; for a class or status, the attribute head's
        probability pooled over the grounded objects."""
        if k in COUNTS:
            counts = list(COUNTS)
            return float(probs[counts].sum()) * float(
                count_distribution(out.ground.sigmoid(), object_mask)[0, counts.index(k)]
            )
        for logits, choices in zip(
            out.attributes[0].split(ATTRIBUTE_SIZES, -1)[:2], (CLASS_ANSWERS, STATUS_ANSWERS), strict=True
        ):
            if k in choices:
                return float(probs[list(choices)].sum()) * float(read_off(out.ground[0], logits)[choices.index(k)])
        return float(probs[k])


def _model_config(ckpt: str) -> dict:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    return asdict(ModelConfig(**{k: tuple(v) if isinstance(v, list) else v
                                 for k, v in state["hyper_parameters"]["model"].items()}))  # fmt: skip
