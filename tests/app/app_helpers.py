"""Helpers of the app tests: a free port, a reference scene-QA model, and a .glb reader."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ReferenceQA:
    """A scene-QA model with the `fusion.qa.api.SceneQA` interface whose answers the tests can check: "How many
    <class>?" is the number of annotations of that class (grounded on all of them), anything else is "unknown"."""

    def __init__(self, nusc, delay: float = 0.0):
        from fusion.qa.api import Answer, GroundedBox

        self.nusc, self.delay, self.Answer, self.GroundedBox = nusc, delay, Answer, GroundedBox
        self.lock = threading.Lock()
        self.calls = 0

    def answer(self, sample_token: str, question: str):
        from nuscenes.eval.detection.utils import category_to_detection_name

        with self.lock:
            self.calls += 1
            time.sleep(self.delay)
            anns = [self.nusc.get("sample_annotation", t) for t in self.nusc.get("sample", sample_token)["anns"]]
            words = question.lower().replace("?", " ").split()
            named = [w.rstrip("s") for w in words if w.rstrip("s") in ("car", "pedestrian", "truck", "barrier")]
            if not named:
                return self.Answer("unknown", 0.1, (), "")
            hits = [a for a in anns if category_to_detection_name(a["category_name"]) == named[0]]
            boxes = tuple(self.GroundedBox(a["token"], named[0], tuple(a["translation"]), tuple(a["size"]), 0.0, 1.0)
                          for a in hits)  # fmt: skip
            return self.Answer(str(len(hits)), 0.9, boxes, "")


def expected_count(nusc, sample_token: str, name: str) -> int:
    from nuscenes.eval.detection.utils import category_to_detection_name

    anns = nusc.get("sample", sample_token)["anns"]
    return sum(category_to_detection_name(nusc.get("sample_annotation", t)["category_name"]) == name for t in anns)


def glb_json(path: str | Path) -> dict:
    """The JSON chunk of a .glb file (header: magic, version, length; then chunk length, type, content)."""
    import struct

    data = Path(path).read_bytes()
    magic, version, length = struct.unpack("<4sII", data[:12])
    assert magic == b"glTF" and version == 2 and length == len(data)
    size, kind = struct.unpack("<I4s", data[12:20])
    assert kind == b"JSON"
    return json.loads(data[20 : 20 + size])
