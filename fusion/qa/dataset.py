"""Question records + cached object tokens -> padded `QABatch`es.

Every object carries the annotation token of the GT box it stands for (its own token for GT boxes; for detections,
the GT box of best BEV IoU >= 0.1), which gives the grounding target (the object standing for the referred box) and
the relevance targets (objects standing for one of the question's `refs`).

Each filter of a question's program also gives per-object *factor* targets: does the object have the class, the
colour, the status, and stand in the relation the filter names (1 for a part it leaves out)? A comparison has two
filters, its two sides ("filter" and "other"), each with its own targets, and says what it compares (`COMPARE`).
They are re-derived with the generator's own `Scene.select`, so a factor means exactly what the question generator
meant by it.

Every object standing for a GT box also carries that box's *attributes* (class, status, colour: indices into
`fusion.qa.answers.CLASS_WORDS / STATUS_WORDS / COLOUR_WORDS`, -1 where it has none), the targets of the per-object
attribute head: dense supervision from every object of every training scene, not only the ones a question names.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch.utils.data import Dataset

from fusion.data.index import SplitIndex
from fusion.data.qa import NAMES, Scene
from fusion.data.types import _pad
from fusion.qa.answers import CLASS_WORDS, COLOUR_WORDS, STATUS_WORDS, answer_index
from fusion.qa.objects import SceneObjects
from fusion.qa.tokenizer import QuestionTokenizer


@dataclass(frozen=True)
class QABatch:
    """ids / text_mask <B, T>; features <B, M, F>, boxes <B, M, 7>, object_mask / relevance <B, M>, object_labels
    <B, M> (-1 padding); answer <B> (-1 outside the vocabulary); ground_target <B> (-1 none); relevance_valid <B>;
    ref_box <B, 7> the referred GT box of grounding questions (zeros otherwise); factors <B, M, 4> the per-object
    targets of `FACTORS`, used where factor_valid <B, M>; factors_b / factor_valid_b / relevance_b the same for the
    second side of a comparison ("other"; invalid for other questions); compare <B> index into `COMPARE` (-1:
    unknown); attributes <B, M, 3> each object's class / status / colour (-1: none or unknown); types: B question
    types. For a comparison, `relevance` holds its first side only."""

    ids: torch.Tensor
    text_mask: torch.Tensor
    features: torch.Tensor
    boxes: torch.Tensor
    object_mask: torch.Tensor
    object_labels: torch.Tensor
    answer: torch.Tensor
    ground_target: torch.Tensor
    relevance: torch.Tensor
    relevance_valid: torch.Tensor
    ref_box: torch.Tensor
    factors: torch.Tensor
    factor_valid: torch.Tensor
    factors_b: torch.Tensor
    factor_valid_b: torch.Tensor
    relevance_b: torch.Tensor
    compare: torch.Tensor
    attributes: torch.Tensor
    types: tuple[str, ...]
    index: torch.Tensor  # <B> each question's index in its dataset (DDP's padding repeats some)

    def to(self, device) -> QABatch:
        return QABatch(**{f.name: (v.to(device) if isinstance(v := getattr(self, f.name), torch.Tensor) else v)
                          for f in fields(self)})  # fmt: skip

    def __len__(self) -> int:
        return len(self.types)


FACTORS = ("class", "colour", "status", "relation")
COMPARE = ("", "count", "colour", "status")  # what a question compares ("": not a comparison)


def factor_targets(scene: Scene, program: dict | None, side: str = "filter") -> np.ndarray | None:
    """<N, 4> 0/1 for the N objects of `scene`: which parts of one filter of the question's program (`side`: "filter",
    or a comparison's "other") each object meets (1 for the parts the filter leaves out); None without that filter
    (foreign files, or "other" of a single-filter question)."""
    if not program or side not in program:
        return None
    f = program[side]
    out = np.ones((len(scene), len(FACTORS)), np.float32)
    for k, key in enumerate(FACTORS[:3]):
        if f.get(key):
            out[:, k] = 0.0
            out[scene.select({key: f[key]}), k] = 1.0
    if f.get("relation"):
        sub = {"relation": f["relation"]}
        if f.get("anchor"):
            if f["anchor"] not in scene.ann:
                return None
            sub["anchor"] = scene.ann.index(f["anchor"])
        out[:, 3] = 0.0
        out[scene.select(sub), 3] = 1.0
    return out


def attribute_targets(scene: Scene) -> np.ndarray:
    """<N, 3> int64 for the N objects of `scene`: index of its class, status and colour words (-1: none)."""
    words = ({w: i for i, w in enumerate(CLASS_WORDS)}, {w: i for i, w in enumerate(STATUS_WORDS)},
             {w: i for i, w in enumerate(COLOUR_WORDS)})  # fmt: skip
    values = ([NAMES[c] for c in scene.cls], scene.status, scene.colour)
    return np.array([[lookup.get(v, -1) for v in column] for lookup, column in zip(words, values, strict=True)],
                    np.int64).reshape(3, len(scene)).T  # fmt: skip


def gt_boxes_by_token(index: SplitIndex) -> dict[str, np.ndarray]:
    return {str(t): b for t, b in zip(index.ann_tokens, index.boxes.astype(np.float32), strict=True)}


def object_gt_tokens(objects: SceneObjects, gt: dict[str, np.ndarray], sample_gt: list[str]) -> list[str]:
    """The annotation token each object stands for ("" when none)."""
    if all(objects.tokens) or not len(objects):
        return list(objects.tokens)
    from fusion.evaluation.rotated_iou import pair_iou

    cand = [t for t in sample_gt if t in gt]
    if not cand:
        return [""] * len(objects)
    a = objects.boxes.double().numpy()
    g = np.stack([gt[t] for t in cand]).astype(np.float64)
    ia, ig = np.meshgrid(np.arange(len(a)), np.arange(len(g)), indexing="ij")
    ia, ig = ia.ravel(), ig.ravel()
    bev, _ = pair_iou(a[ia, :3], a[ia, 3:6], a[ia, 6], g[ig, :3], g[ig, 3:6], g[ig, 6])
    bev = bev.reshape(len(a), len(g))
    best = bev.argmax(1)
    return [cand[j] if bev[i, j] >= 0.1 else "" for i, j in enumerate(best)]


class QADataset(Dataset):
    """One item per question: (record, its sample's objects, the objects' GT tokens, referred GT box)."""

    def __init__(self, records: list[dict], objects: dict[str, SceneObjects], index: SplitIndex,
                 colours: dict[str, str] | None = None):  # fmt: skip
        gt = gt_boxes_by_token(index)
        offsets = {str(t): i for i, t in enumerate(index.tokens)}
        self.records = [r for r in records if r["sample_token"] in objects]
        self.objects = objects
        self.gt_tokens = {}
        self.attributes: dict[str, torch.Tensor] = {}  # sample -> <M, 3> attribute targets of its objects
        self.scenes: dict[str, tuple[Scene, np.ndarray]] = {}  # sample -> (its Scene, Scene row of each object or -1)
        for token, objs in objects.items():
            i = offsets.get(token)
            sample_gt = (
                [str(t) for t in index.ann_tokens[index.box_offsets[i] : index.box_offsets[i + 1]]]
                if i is not None
                else []
            )
            self.gt_tokens[token] = object_gt_tokens(objs, gt, sample_gt)
            if i is not None:
                scene = Scene(index, i, colours or {})
                row = {a: j for j, a in enumerate(scene.ann)}
                rows = np.array([row.get(t, -1) for t in self.gt_tokens[token]], np.int64)
                self.scenes[token] = (scene, rows)
                attrs = np.full((len(objs), 3), -1, np.int64)
                attrs[rows >= 0] = attribute_targets(scene)[rows[rows >= 0]]
                self.attributes[token] = torch.from_numpy(attrs)
        self.gt = gt
        self.items: dict[int, dict] = {}  # `__getitem__`'s, by question

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        """Question i with its targets: made on its first request, then kept (nothing in it varies between epochs;
        read-only for callers, since every epoch's batches share it)."""
        if (item := self.items.get(i)) is None:
            item = self.items[i] = self._item(i)
        return item

    def _item(self, i: int) -> dict:
        r = self.records[i]
        objs = self.objects[r["sample_token"]]
        sides = []
        for side in ("filter", "other"):
            factors, valid = np.zeros((len(objs), len(FACTORS)), np.float32), np.zeros(len(objs), bool)
            if r["sample_token"] in self.scenes:
                scene, rows = self.scenes[r["sample_token"]]
                targets = factor_targets(scene, r.get("program"), side)
                if targets is not None:
                    valid = rows >= 0
                    factors[valid] = targets[rows[valid]]
            sides += [torch.from_numpy(factors), torch.from_numpy(valid)]
        # what it compares; a comparison from an older file does not say (-1: unknown)
        kind = (r.get("program") or {}).get("compare", None if r["type"] == "comparison" else "")
        compare = COMPARE.index(kind) if kind in COMPARE else -1
        return {"index": i, "record": r, "objects": objs, "gt_tokens": self.gt_tokens[r["sample_token"]],
                "ref_box": self.gt.get(r["refs"][0]) if r["type"] == "grounding" and r["refs"] else None,
                "factors": sides[0], "factor_valid": sides[1], "factors_b": sides[2], "factor_valid_b": sides[3],
                "compare": compare,
                "attributes": self.attributes.get(r["sample_token"], torch.full((len(objs), 3), -1))}  # fmt: skip


class QACollate:
    """Items -> `QABatch`. Each question is tokenised once, on its first batch, and its ids kept for the later ones."""

    def __init__(self, tokenizer: QuestionTokenizer):
        self.tokenizer = tokenizer
        self.ids: dict[str, list[int]] = {}

    def __call__(self, items: list[dict]) -> QABatch:
        records = [it["record"] for it in items]
        new = list(dict.fromkeys(q for r in records if (q := r["question"]) not in self.ids))
        self.ids.update(zip(new, self.tokenizer.rows(new), strict=True))
        ids, text_mask, _ = self.tokenizer.pad([self.ids[r["question"]] for r in records])
        objs = [it["objects"] for it in items]
        features, object_mask = _pad([o.features for o in objs])
        boxes, _ = _pad([o.boxes for o in objs])
        labels, _ = _pad([o.labels for o in objs], fill=-1)
        ground, relevance, valid = [], torch.zeros(object_mask.shape), []
        for b, (it, r) in enumerate(zip(items, records, strict=True)):
            refs = set(r["refs"])
            hits = [k for k, t in enumerate(it["gt_tokens"]) if t and t in refs]
            relevance[b, hits] = 1.0
            ground.append(hits[0] if r["type"] == "grounding" and hits else -1)
            valid.append(r["type"] != "grounding")
        factors, _ = _pad([it["factors"] for it in items])
        factor_valid, _ = _pad([it["factor_valid"] for it in items], fill=False)
        factors_b, _ = _pad([it["factors_b"] for it in items])
        factor_valid_b, _ = _pad([it["factor_valid_b"] for it in items], fill=False)
        comparison = torch.tensor([r["type"] == "comparison" for r in records])
        # a comparison's relevance is each side's own objects (its refs are both sides together)
        side_a = (factors.prod(-1) * factor_valid).where(comparison[:, None], relevance)
        relevance_b = factors_b.prod(-1) * factor_valid_b
        attributes, _ = _pad([it["attributes"] for it in items], fill=-1)
        ref_box = torch.stack([torch.as_tensor(it["ref_box"]) if it["ref_box"] is not None else torch.zeros(7)
                               for it in items])  # fmt: skip
        return QABatch(ids=ids, text_mask=text_mask, features=features, boxes=boxes, object_mask=object_mask,
                       object_labels=labels, answer=torch.tensor([answer_index(r) for r in records]),
                       ground_target=torch.tensor(ground), relevance=side_a, relevance_valid=torch.tensor(valid),
                       ref_box=ref_box.float(), factors=factors, factor_valid=factor_valid, factors_b=factors_b,
                       factor_valid_b=factor_valid_b, relevance_b=relevance_b,
                       compare=torch.tensor([it["compare"] for it in items]), attributes=attributes,
                       types=tuple(r["type"] for r in records),
                       index=torch.tensor([it["index"] for it in items]))  # fmt: skip
