"""Scene QA for the app and its `ask` API endpoint: (sample token, question) -> answer text, score, grounded boxes.

The sample token is only looked up in the dataset's tables. Without a QA checkpoint, for an unknown token or an empty
or over-long question, the answer text is a clear message (starting with "⚠"), never a made-up answer.
"""

from __future__ import annotations

import numpy as np

from fusion.data.browse import Boxes3D

MAX_QUESTION_CHARS = 20_000  # longer questions are refused; the QA tokenizer truncates anything shorter
WARNING = "⚠ "


def _grounded_payload(token: str, answer, message: str = "") -> dict:
    boxes = [] if answer is None else [
        {"token": b.token, "name": b.name, "center": list(b.center), "size": list(b.size), "yaw": b.yaw,
         "score": b.score} for b in answer.boxes
    ]  # fmt: skip
    return {"sample_token": token, "boxes": boxes, "message": message}


def ask(state, sample_token: str, question: str) -> tuple[str, float, dict]:
    """Answer a question about one sample. Returns (answer text or message, score in [0, 1], grounded boxes)."""
    question = question if isinstance(question, str) else ""
    token = sample_token if isinstance(sample_token, str) else ""
    if state.browser is None:
        return WARNING + "no dataset is loaded", 0.0, _grounded_payload(token, None, "no dataset")
    if not state.browser.has_sample(token):
        msg = f"unknown sample token {token[:64]!r}: pick a sample in the browser (tokens come from sample.json)"
        return WARNING + msg, 0.0, _grounded_payload("", None, msg)
    if not question.strip():
        msg = "empty question: ask something about the scene, e.g. 'How many cars are there?'"
        return WARNING + msg, 0.0, _grounded_payload(token, None, msg)
    if len(question) > MAX_QUESTION_CHARS:
        msg = f"the question has {len(question)} characters; the limit is {MAX_QUESTION_CHARS}"
        return WARNING + msg, 0.0, _grounded_payload(token, None, msg)
    if state.qa is None:
        return WARNING + state.qa_message, 0.0, _grounded_payload(token, None, state.qa_message)
    try:
        answer = state.qa.answer(token, question)
    except Exception as e:  # a model error is reported to the asker, never taken down with the request
        msg = f"the QA model could not answer: {type(e).__name__}: {e}"
        return WARNING + msg, 0.0, _grounded_payload(token, None, msg)
    if not answer.text:
        msg = answer.message or "the QA model gave no answer"
        return WARNING + msg, float(answer.score), _grounded_payload(token, answer, msg)
    return answer.text, float(answer.score), _grounded_payload(token, answer, answer.message)


def grounded_boxes(payload: dict | None, token: str, annotation_tokens: set[str]) -> tuple[Boxes3D | None, frozenset]:
    """From an `ask` payload for this sample: the grounded objects that are not annotations (as boxes) and the
    annotation tokens to highlight. Payloads of another sample, or malformed ones (API input), give nothing."""
    if not isinstance(payload, dict) or payload.get("sample_token") != token:
        return None, frozenset()
    try:
        return _payload_boxes([b for b in payload.get("boxes") or [] if isinstance(b, dict)], annotation_tokens)
    except (KeyError, TypeError, ValueError):
        return None, frozenset()


def _payload_boxes(boxes: list[dict], annotation_tokens: set[str]) -> tuple[Boxes3D | None, frozenset]:
    tokens = [b.get("token") if isinstance(b.get("token"), str) else None for b in boxes]
    lit = frozenset(t for t in tokens if t in annotation_tokens)
    other = [b for b, t in zip(boxes, tokens, strict=True) if t not in annotation_tokens]
    if not other:
        return None, lit
    k = len(other)
    yaw = np.array([float(b["yaw"]) for b in other])
    rotation = np.zeros((k, 3, 3))
    rotation[:, 0, 0], rotation[:, 0, 1], rotation[:, 1, 0], rotation[:, 1, 1] = (np.cos(yaw), -np.sin(yaw),
                                                                                 np.sin(yaw), np.cos(yaw))  # fmt: skip
    rotation[:, 2, 2] = 1.0
    centre = np.array([b["center"] for b in other], np.float64).reshape(k, 3)
    size = np.array([b["size"] for b in other], np.float64).reshape(k, 3)
    if not (np.isfinite(centre).all() and np.isfinite(size).all() and np.isfinite(yaw).all()):
        raise ValueError("non-finite grounded box")
    extra = Boxes3D(names=tuple(str(b["name"]) for b in other), tokens=tuple(f"qa-{i}" for i in range(k)),
                    centre=centre, size=size, rotation=rotation, velocity=np.zeros((k, 2)),
                    scores=np.array([float(b["score"]) for b in other]))  # fmt: skip
    return extra, lit
