"""`fusion qa`: NuScenes-QA-style questions about a scene, generated from its annotations.

Each question is a small program over the sample's objects (GT boxes with LiDAR points within 50 m): a filter
(class, colour, status, position relative to the ego or to another object) and a question type:

- exist: is there any object matching the filter?                        refs: the objects that make it "yes"
- count: how many objects match?                                         refs: exactly the objects counted
- object: what kind of object is the one (colour/status/position) thing? refs: that object
- status: what is the status of the one matching object?                 refs: that object
- comparison: more A than B? / same status (colour) as?                  refs: both sides (neither side named by
                                                                          the compared status / colour)
- grounding: a referring expression that names one object                refs: that object; answer its token

Answers are balanced by rejection sampling so that the question text alone predicts them poorly (`prior_baseline`).
Positions use the LiDAR keyframe frame (x right, y forward); "in front of" means more than 2 m ahead, and so on, so
that no object sits on a boundary. The program of every question is kept in the record, so tests can re-check it; a
comparison's program has both sides ("filter", "other") and what it compares ("compare": count, colour or status).
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from fusion.data.index import SplitIndex
from fusion.data.io import write_text_atomic
from fusion.data.types import ATTRIBUTES, DETECTION_CLASSES

MAX_DISTANCE = 50.0
MARGIN = 2.0  # metres: a relation holds only beyond this margin
NEAR = 20.0
NAMES = {c: c.replace("_", " ") for c in DETECTION_CLASSES}
PLURALS = {"car": "cars", "truck": "trucks", "construction_vehicle": "construction vehicles", "bus": "buses",
           "trailer": "trailers", "barrier": "barriers", "motorcycle": "motorcycles", "bicycle": "bicycles",
           "pedestrian": "pedestrians", "traffic_cone": "traffic cones"}  # fmt: skip
STATUS = {"cycle.with_rider": "with a rider", "cycle.without_rider": "without a rider",
          "pedestrian.moving": "moving", "pedestrian.standing": "standing",
          "pedestrian.sitting_lying_down": "sitting", "vehicle.moving": "moving", "vehicle.parked": "parked",
          "vehicle.stopped": "stopped"}  # fmt: skip
EGO_RELATIONS = {
    "front": "in front of the ego car",
    "back": "behind the ego car",
    "left": "to the left of the ego car",
    "right": "to the right of the ego car",
    "near": f"within {NEAR:.0f} meters of the ego car",
}
OBJECT_RELATIONS = {"front": "in front of", "back": "behind", "left": "to the left of", "right": "to the right of"}
TYPES = ("exist", "count", "object", "status", "comparison", "grounding")


class Scene:
    """The objects of one sample as arrays: class, colour, status, position (x right, y forward) in metres."""

    def __init__(self, index: SplitIndex, i: int, colours: dict[str, str]):
        b0, b1 = index.box_offsets[i], index.box_offsets[i + 1]
        xy = index.boxes[b0:b1, :2]
        keep = (index.num_points[b0:b1] > 0) & (np.linalg.norm(xy, axis=1) <= MAX_DISTANCE)
        sl = np.arange(b0, b1)[keep]
        self.token = str(index.tokens[i])
        self.ann = [str(t) for t in index.ann_tokens[sl]]
        self.cls = [DETECTION_CLASSES[k] for k in index.labels[sl]]
        self.status = [STATUS[ATTRIBUTES[a]] if a >= 0 else "" for a in index.attributes[sl]]
        self.colour = [colours.get(str(t), "") for t in index.instance_tokens[sl]]
        self.xy = index.boxes[sl, :2]
        # What `select` compares, made once per scene: it runs ~100,000 times for a training split's questions
        self._values = {key: np.asarray(v, dtype=object) for key, v in (("class", self.cls), ("colour", self.colour),
                                                                        ("status", self.status))}  # fmt: skip
        self._ego = {rel: relation_mask(self.xy, rel) for rel in EGO_RELATIONS}

    def __len__(self) -> int:
        return len(self.ann)

    def select(self, f: dict) -> np.ndarray:
        """Indices of the objects matching a filter {class?, colour?, status?, relation?, anchor?}."""
        ok = np.ones(len(self), bool)
        for key, values in self._values.items():
            if f.get(key):
                ok &= values == f[key]
        rel = f.get("relation")
        if rel:
            if f.get("anchor") is not None:
                ok &= relation_mask(self.xy - self.xy[f["anchor"]], rel)
                ok[f["anchor"]] = False
            else:
                ok &= self._ego[rel]
        return np.flatnonzero(ok)


def relation_mask(d: np.ndarray, rel: str) -> np.ndarray:
    """Which offsets `d` (N, 2; x right, y forward, metres) satisfy a relation, `MARGIN` clear of its boundary."""
    if rel == "near":
        return np.linalg.norm(d, axis=1) < NEAR
    axis, sign = {"front": (1, 1), "back": (1, -1), "left": (0, -1), "right": (0, 1)}[rel]
    return sign * d[:, axis] > MARGIN


def draw(rng: np.random.Generator, options: list | tuple):
    """`rng.choice(options)` without turning `options` into an array on every call; the same draws (both take one
    `integers(len(options))`), so the questions of a seed are unchanged."""
    return options[int(rng.integers(len(options)))]


def describe(scene: Scene, f: dict, plural: bool = False, head: str | None = None) -> str:
    """Noun phrase of a filter: "parked red cars to the left of the ego car"."""
    words = []
    if f.get("status") in ("moving", "parked", "stopped", "standing", "sitting"):
        words.append(f["status"])
    if f.get("colour"):
        words.append(f["colour"])
    noun = head or ((PLURALS[f["class"]] if plural else NAMES[f["class"]]) if f.get("class") else
                    ("objects" if plural else "object"))  # fmt: skip
    words.append(noun)
    if f.get("status") in ("with a rider", "without a rider"):
        words.append(f["status"])
    rel = f.get("relation")
    if rel and f.get("anchor") is not None:
        words.append(f"{OBJECT_RELATIONS[rel]} the {describe(scene, f['anchor_filter'])}")
    elif rel:
        words.append(EGO_RELATIONS[rel])
    return " ".join(words)


class Generator:
    def __init__(self, scene: Scene, rng: np.random.Generator):
        self.s, self.rng = scene, rng

    def random_filter(self, use_class=True, colour_p=0.4, status_p=0.3, relation_p=0.7, real_p=0.8) -> dict:
        s, r = self.s, self.rng
        f: dict = {}
        pick = int(r.integers(len(s))) if len(s) and r.random() < real_p else None  # mostly describe real objects
        cls = s.cls[pick] if pick is not None else draw(r, DETECTION_CLASSES)
        if use_class:
            f["class"] = cls
        if r.random() < colour_p and pick is not None and s.colour[pick]:
            f["colour"] = s.colour[pick]
        if r.random() < status_p and pick is not None and s.status[pick]:
            f["status"] = s.status[pick]
        if r.random() < relation_p:
            f["relation"] = draw(r, list(EGO_RELATIONS))
        return f

    def unique(self, use_class=True, without: str | None = None) -> tuple[dict, int] | None:
        """A filter that matches exactly one object, and that object; `without` names a part it must not use."""
        for _ in range(30):
            f = self.random_filter(use_class, colour_p=0.7, status_p=0.4, relation_p=0.8)
            f.pop(without, None)
            if not use_class and not (f.get("colour") or f.get("status")):
                continue
            hit = self.s.select(f)
            if len(hit) == 1:
                return f, int(hit[0])
        return None

    def exist(self, want_yes: bool):
        for _ in range(40):
            # Nouns always come from objects of this scene, so the class named does not give the answer away.
            f = self.random_filter(colour_p=0.5, status_p=0.4, relation_p=0.9, real_p=1.0)
            hit = self.s.select(f)
            if (len(hit) > 0) == want_yes:
                phrase = describe(self.s, f, plural=True)
                q = draw(self.rng, [f"Are there any {phrase}?", f"Is there any {describe(self.s, f)}?"])
                return q, "yes" if want_yes else "no", hit, {"filter": f}
        return None

    def count(self):
        for _ in range(40):
            f = self.random_filter(colour_p=0.2, status_p=0.3, relation_p=0.8)
            hit = self.s.select(f)
            if len(hit) == 0 and self.rng.random() > 0.15:
                continue
            phrase = describe(self.s, f, plural=True)
            q = draw(self.rng, [f"How many {phrase} are there?", f"What number of {phrase} are there?"])
            return q, str(len(hit)), hit, {"filter": f}
        return None

    def object(self):
        got = self.unique(use_class=False)
        if got is None:
            return None
        f, k = got
        q = draw(self.rng, [f"What is the {describe(self.s, f, head='thing')}?",
                            f"What kind of object is the {describe(self.s, f, head='object')}?"])  # fmt: skip
        return q, NAMES[self.s.cls[k]], np.array([k]), {"filter": f}

    def status(self):
        for _ in range(10):
            got = self.unique()
            if got is None:
                return None
            f, k = got
            if self.s.status[k] and not f.get("status"):
                q = draw(self.rng, [f"What is the status of the {describe(self.s, f)}?",
                                    f"What is the {describe(self.s, f)} doing?"])  # fmt: skip
                return q, self.s.status[k], np.array([k]), {"filter": f}
        return None

    def comparison(self):
        r = self.rng
        if r.random() < 0.5:
            a, b = self.random_filter(relation_p=0.0, real_p=1.0), self.random_filter(relation_p=0.0, real_p=1.0)
            b = {"class": b["class"]}  # the question names b by its class alone ("... than cars?")
            rel = draw(r, list(EGO_RELATIONS))
            a["relation"] = b["relation"] = rel
            if a.get("class") == b.get("class"):
                return None
            ha, hb = self.s.select(a), self.s.select(b)
            if len(ha) == len(hb):
                return None
            q = f"Are there more {describe(self.s, a, plural=True)} than {PLURALS[b['class']]}?"
            program = {"filter": a, "other": b, "compare": "count"}
            return q, "yes" if len(ha) > len(hb) else "no", np.concatenate([ha, hb]), program
        # Neither side is described by the compared attribute: "the white car ... the same color as the white bus?"
        # would be answered by the text alone.
        attr = "colour" if r.random() < 0.5 else "status"
        one, two = self.unique(without=attr), self.unique(without=attr)
        if one is None or two is None or one[1] == two[1]:
            return None
        va, vb = getattr(self.s, attr)[one[1]], getattr(self.s, attr)[two[1]]
        if not va or not vb:
            return None
        word = "color" if attr == "colour" else "status"
        q = f"Does the {describe(self.s, one[0])} have the same {word} as the {describe(self.s, two[0])}?"
        program = {"filter": one[0], "other": two[0], "compare": attr}
        return q, "yes" if va == vb else "no", np.array([one[1], two[1]]), program

    def grounding(self):
        got = self.unique()
        if got is None:
            return None
        f, k = got
        # Sometimes anchor the expression on another uniquely described object.
        anchor = self.unique()
        if anchor is not None and anchor[1] != k and self.rng.random() < 0.4:
            for rel in self.rng.permutation(list(OBJECT_RELATIONS)):
                g = {"class": self.s.cls[k], "relation": str(rel), "anchor": anchor[1], "anchor_filter": anchor[0]}
                if list(self.s.select(g)) == [k]:
                    f = g
                    break
        q = draw(self.rng, [f"the {describe(self.s, f)}", f"Find the {describe(self.s, f)}."])
        return q, self.s.ann[k], np.array([k]), {"filter": f}


def _json_filter(f: dict) -> dict:
    out = {k: v for k, v in f.items() if k != "anchor_filter"}
    if "anchor" in f:
        out["anchor_filter"] = _json_filter(f["anchor_filter"])
    return out


class Balancer:
    """Rejects answers that are already over-represented, per question type and per subject (e.g. the class a
    status question asks about), so that neither the type nor the question's nouns give the answer away."""

    def __init__(self, slack: float = 1.25):
        self.counts: dict[tuple, Counter] = defaultdict(Counter)
        self.slack = slack

    def accept(self, keys: list[tuple], answer: str) -> bool:
        slack = 1.0 if answer in ("yes", "no") else self.slack  # yes/no: keep the two within a couple of each other
        for key in keys:
            c = self.counts[key]
            if c and c[answer] > slack * (sum(c.values()) / max(len(c), 2)) + 1:
                return False
        for key in keys:
            self.counts[key][answer] += 1
        return True


def _subjects(kind: str, question: str, program: dict) -> list[tuple]:
    """Balance per type, per subject (class and relation asked about) and per exact question text."""
    f = program["filter"]
    return [(kind,), (kind, f.get("class", ""), f.get("relation", "")), (kind, question)]


def generate(index: SplitIndex, colours: dict[str, str], seed: int = 0, per_sample: int = 12) -> list[dict]:
    """Questions for every sample of the index, about `per_sample` each, cycling through the types."""
    records = []
    balancer = Balancer()
    for i in range(len(index)):
        scene = Scene(index, i, colours)
        if len(scene) == 0:
            continue
        rng = np.random.default_rng([seed, i])
        gen = Generator(scene, rng)
        for j in range(per_sample):
            kind = TYPES[j % len(TYPES)]
            want = "yes" if rng.random() < 0.5 else "no"  # yes/no types aim at a fair coin
            for _ in range(30 if kind == "comparison" else 12):
                made = gen.exist(want == "yes") if kind == "exist" else getattr(gen, kind)()
                if made is not None and kind == "comparison" and made[1] != want:
                    made = None
                    continue
                if made is None or kind == "grounding" or balancer.accept(_subjects(kind, made[0], made[3]), made[1]):
                    break
                made = None
            if made is None:
                continue
            question, answer, refs, program = made
            program = {k: _json_filter(v) if isinstance(v, dict) else v for k, v in program.items()}
            if "anchor" in program["filter"]:
                program["filter"]["anchor"] = scene.ann[program["filter"]["anchor"]]
            records.append({"sample_token": scene.token, "question": question, "answer": answer, "type": kind,
                            "refs": sorted({scene.ann[k] for k in refs}), "program": program})  # fmt: skip
    return records


def synthetic_colours(dataroot: str | os.PathLike, version: str) -> dict[str, str]:
    """Instance token -> colour from the synthetic world's `synth_world.json`; empty for real nuScenes."""
    path = Path(dataroot) / version / "synth_world.json"
    if not path.exists():
        return {}
    return {t: v["colour"] for t, v in json.loads(path.read_text())["instances"].items()}


def prior_baseline(train: list[dict], evaluated: list[dict]) -> dict[str, float]:
    """Accuracy of answering from the question text alone: the most frequent training answer of the same question,
    else of the same question type. Grounding is left out (its answer is an object, not text)."""
    by_question, by_type = defaultdict(Counter), defaultdict(Counter)
    for r in train:
        by_question[r["question"]][r["answer"]] += 1
        by_type[r["type"]][r["answer"]] += 1
    hits: dict[str, list[bool]] = defaultdict(list)
    for r in evaluated:
        if r["type"] == "grounding":
            continue
        table = by_question.get(r["question"]) or by_type.get(r["type"])
        guess = table.most_common(1)[0][0] if table else ""
        hits[r["type"]].append(guess == r["answer"])
    out = {t: float(np.mean(v)) for t, v in hits.items()}
    out["overall"] = float(np.mean([h for v in hits.values() for h in v])) if hits else 0.0
    return out


def write_jsonl(path: str | os.PathLike, records: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
