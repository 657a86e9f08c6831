"""Scene-QA metrics: accuracy per question type, grounding accuracy at 3D IoU 0.25 / 0.5, and `qa_metrics.json`
(the format of DESIGN.md: accuracy and the question-only prior per type side by side, grounding)."""

from __future__ import annotations

import json
import os
from collections import defaultdict

import numpy as np

from fusion.data.io import write_text_atomic
from fusion.evaluation.rotated_iou import pair_iou

ANSWER_TYPES = ("exist", "count", "object", "status", "comparison")


def box_iou3d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3D IoU of box pairs <K, 7> (x, y, z, w, l, h, yaw) -> <K>."""
    a, b = np.asarray(a, np.float64).reshape(-1, 7), np.asarray(b, np.float64).reshape(-1, 7)
    return pair_iou(a[:, :3], a[:, 3:6], a[:, 6], b[:, :3], b[:, 3:6], b[:, 6])[1]


class QAMetrics:
    """Accumulates per-question results over an epoch."""

    def __init__(self):
        self.hits: dict[str, list[bool]] = defaultdict(list)
        self.ious: list[float] = []

    def update(self, types, correct, grounding_iou) -> None:
        """types: question types; correct <B> bool (answer types); grounding_iou <B> (nan where not grounding)."""
        for t, c, iou in zip(types, correct, grounding_iou, strict=True):
            if t == "grounding":
                self.ious.append(float(iou))
            else:
                self.hits[t].append(bool(c))

    def compute(self) -> dict:
        acc = {t: float(np.mean(v)) for t, v in self.hits.items() if v}
        every = [h for v in self.hits.values() for h in v]
        acc["overall"] = float(np.mean(every)) if every else 0.0
        ious = np.asarray(self.ious, dtype=np.float64)
        ground = {f"acc@{t}": float(np.mean(ious >= t)) if len(ious) else 0.0 for t in (0.25, 0.5)}
        counts = {t: len(v) for t, v in self.hits.items()} | {"grounding": len(ious)}
        return {"accuracy": acc, "grounding": ground, "questions": counts}


def qa_metrics_json(result: dict, prior: dict[str, float]) -> dict:
    """{"accuracy": {"overall", TYPE...}, "prior": {...}, "grounding": {"acc@0.25", "acc@0.5"}, "questions": {...}}."""
    order = ["overall", *ANSWER_TYPES]
    keys = [k for k in order if k in result["accuracy"] or k in prior]
    return {"accuracy": {k: result["accuracy"].get(k, 0.0) for k in keys},
            "prior": {k: prior.get(k, 0.0) for k in keys}, "grounding": result["grounding"],
            "questions": result.get("questions", {})}  # fmt: skip


def write_qa_metrics(path: str | os.PathLike, metrics: dict) -> None:
    write_text_atomic(path, json.dumps(metrics, indent=2) + "\n")


def format_table(metrics: dict) -> str:
    """The per-type table with the prior beside each figure."""
    rows = [f"{'type':<12}{'accuracy':>10}{'prior':>9}{'gain':>8}"]
    for k, v in metrics["accuracy"].items():
        p = metrics["prior"].get(k, 0.0)
        rows.append(f"{k:<12}{v:>10.3f}{p:>9.3f}{v - p:>+8.3f}")
    g = metrics["grounding"]
    rows.append(f"{'grounding':<12} acc@0.25 {g['acc@0.25']:.3f}  acc@0.5 {g['acc@0.5']:.3f}")
    return "\n".join(rows)
