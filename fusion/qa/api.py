"""The scene-QA inference API the app calls: `SceneQA.from_checkpoint(...).answer(sample_token, question)`.

Boxes come back in the nuScenes global frame with nuScenes conventions (size = w, l, h; yaw about z). Any question
text is accepted: unknown words become [UNK], very long questions are truncated, and an empty question is answered
with score 0 and a message, never an exception. Calls are thread-safe (one lock around the model and the per-sample
object cache; the detector runs once per sample).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GroundedBox:
    """One object the answer is about. token: the annotation token (GT boxes) or None (detector boxes)."""

    token: str | None
    name: str
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    yaw: float
    score: float


@dataclass(frozen=True)
class Answer:
    """text: the answer ("yes", "3", "car", "parked", or "the car at ..." for grounding); score in [0, 1]."""

    text: str
    score: float
    boxes: tuple[GroundedBox, ...]
    message: str = ""


class SceneQA:
    """A trained `QASystem` over one dataroot. Build it with `from_checkpoint`."""

    def __init__(self, system, source, device: str = "cpu", cache_size: int = 32):
        self.system, self.source, self.device = system.eval().to(device), source, device
        self._objects: OrderedDict = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, qa_ckpt: str, dataroot: str, version: str, device: str = "cpu") -> SceneQA:
        from fusion.qa.samples import SampleSource
        from fusion.qa.system import QASystem

        system = QASystem.load(qa_ckpt, device)
        return cls(system, SampleSource(dataroot, version, system.loader_config()), device)

    def _scene_objects(self, sample_token: str):
        if sample_token in self._objects:
            self._objects.move_to_end(sample_token)
            return self._objects[sample_token]
        batch, ann_tokens = self.source.batch(sample_token)  # ValueError naming the token when it is unknown
        objects = self.system.extract_objects(batch.to(self.device), ann_tokens)[0]
        self._objects[sample_token] = objects
        if len(self._objects) > self._cache_size:
            self._objects.popitem(last=False)
        return objects

    def answer(self, sample_token: str, question: str) -> Answer:
        if not isinstance(question, str) or not question.strip():
            return Answer(text="", score=0.0, boxes=(), message="empty question: ask about the scene")
        with self._lock, torch.inference_mode():
            objects = self._scene_objects(sample_token)
            pred = self.system.answer_one(objects, question)
        global_from_lidar = self.source.global_from_lidar(sample_token)
        boxes = tuple(_global_box(objects, k, s, global_from_lidar) for k, s in pred.boxes)
        return Answer(text=pred.text, score=pred.score, boxes=boxes, message=pred.message)


def _global_box(objects, k: int, score: float, global_from_lidar) -> GroundedBox:
    """Object k of a `SceneObjects` (lidar frame) as a `GroundedBox` in the global frame."""
    import numpy as np

    box = objects.boxes[k].double().cpu().numpy()
    m = np.asarray(global_from_lidar, dtype=np.float64)
    centre = m[:3, :3] @ box[:3] + m[:3, 3]
    heading = m[:3, :3] @ np.array([np.cos(box[6]), np.sin(box[6]), 0.0])
    token = objects.tokens[k] or None
    return GroundedBox(token=token, name=objects.names[k], center=tuple(float(v) for v in centre),
                       size=tuple(float(v) for v in box[3:6]), yaw=float(np.arctan2(heading[1], heading[0])),
                       score=float(score))  # fmt: skip


def answer(sample: str, question: str, qa: SceneQA) -> Answer:
    """Convenience: `qa.answer(sample, question)`."""
    return qa.answer(sample, question)
