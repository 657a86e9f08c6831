"""Loading and validating a nuScenes detection results JSON into `BoxArrays`.

The file is parsed with a JSON `object_pairs_hook` that turns each box into columns as it is read, so a
results file of 250k boxes never exists as 250k Python dicts (the devkit's memory peak). Every check of
the submission format is made, and each error names the file, the sample token and the field.
"""

from __future__ import annotations

import json
import os
from array import array
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fusion.evaluation.boxes import BoxArrays
from fusion.evaluation.config import ATTRIBUTE_NAMES, DETECTION_NAMES, DetectionConfig
from fusion.evaluation.errors import ResultsError
from fusion.evaluation.filters import filter_boxes
from fusion.evaluation.ground_truth import GroundTruth

BOX_FIELDS = ("sample_token", "translation", "size", "rotation", "velocity", "detection_name", "detection_score")
VECTOR_FIELDS = (("translation", 3), ("size", 3), ("rotation", 4), ("velocity", 2))
COLUMNS = ("translation",) * 3 + ("size",) * 3 + ("rotation",) * 4 + ("velocity",) * 2 + ("detection_score",)
QUATERNION_TOLERANCE = 1e-3  # | |q| - 1 | above this is an error (float32 round trips stay far below it)
_LABELS = {name: i for i, name in enumerate(DETECTION_NAMES)}
_ATTRIBUTES = {name: i for i, name in enumerate(ATTRIBUTE_NAMES)} | {"": -1}


class _BoxColumns:
    """A JSON `object_pairs_hook` that stores box objects as columns and returns their sequence number."""

    def __init__(self) -> None:
        self.values = array("d")  # 13 per box, in COLUMNS order
        self.label = array("q")
        self.attribute = array("q")
        self.token = array("q")  # id of the box's own sample_token field
        self.token_ids: dict[str, int] = {}
        self.errors: dict[int, tuple[str, str]] = {}  # box sequence number -> (field, message); first error only
        self.count = 0

    def __call__(self, pairs: list[tuple[str, object]]) -> object:
        d = dict(pairs)
        if not any(f in d for f in BOX_FIELDS):
            return d
        return self.add(d)

    def add(self, d: Mapping) -> int:
        seq = self.count
        self.count += 1
        n0 = len(self.values)
        try:
            for name, length in VECTOR_FIELDS:
                v = d[name]
                if not isinstance(v, list | tuple) or len(v) != length:
                    raise _BadField(name, f"must be a list of {length} numbers (got {_short(v)})")
                self.values.extend(v)
            score = d["detection_score"]
            if isinstance(score, bool) or not isinstance(score, int | float):
                raise _BadField("detection_score", f"must be a number (got {_short(score)})")
            self.values.append(score)
            name = d["detection_name"]
            label = _LABELS.get(name, -1) if isinstance(name, str) else -1
            if label < 0:
                raise _BadField("detection_name", f"unknown detection_name {_short(name)} (one of {DETECTION_NAMES})")
            attr = d.get("attribute_name", "")
            attribute = _ATTRIBUTES.get(attr, -2) if isinstance(attr, str) else -2
            if attribute < -1:
                raise _BadField("attribute_name", f"unknown attribute_name {_short(attr)} (one of {ATTRIBUTE_NAMES})")
            token = d["sample_token"]
            if not isinstance(token, str):
                raise _BadField("sample_token", f"must be a string (got {_short(token)})")
        except KeyError as e:
            self._fail(seq, n0, e.args[0], "missing field")
            return seq
        except TypeError:
            self._fail(seq, n0, _first_bad_vector(d), "must contain numbers only")
            return seq
        except _BadField as e:
            self._fail(seq, n0, e.field, e.message)
            return seq
        self.label.append(label)
        self.attribute.append(attribute)
        self.token.append(self.token_ids.setdefault(token, len(self.token_ids)))
        return seq

    def _fail(self, seq: int, n0: int, field: str, message: str) -> None:
        del self.values[n0:]
        self.values.extend([0.0] * len(COLUMNS))
        self.label.append(0)
        self.attribute.append(-1)
        self.token.append(-1)
        self.errors.setdefault(seq, (field, message))


class _BadField(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


def _short(value: object) -> str:
    text = json.dumps(value) if isinstance(value, str | int | float | list | type(None)) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _first_bad_vector(d: Mapping) -> str:
    for name, _ in VECTOR_FIELDS:
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in d[name]):
            return name
    return "detection_score"


def load_results(
    results: str | os.PathLike | Mapping, gt: GroundTruth, config: DetectionConfig
) -> tuple[BoxArrays, dict]:
    """Read, validate and filter predictions for the split of `gt`.

    Args:
        results: Path of a results JSON, or the submission dict itself (`{"meta": ..., "results": ...}`).
        gt: The split's ground truth (samples, ego positions, bicycle racks).
        config: Detection config (box limit per sample, class ranges).

    Returns:
        The predictions kept by the devkit's filters, grouped by sample in the devkit's order (results order
        for predefined splits, sample-table order for custom ones), and the submission's `meta`.

    Raises:
        ResultsError: naming the file, sample token and field of the first problem found.
    """
    columns = _BoxColumns()
    if isinstance(results, Mapping):
        source, data = "<memory>", results
        if isinstance(data.get("results"), Mapping):
            data = {**data, "results": {k: [_add_box(columns, b) for b in v] if isinstance(v, list) else v
                                        for k, v in data["results"].items()}}  # fmt: skip
    else:
        source = str(results)
        try:
            text = Path(results).read_text()
        except OSError as e:
            raise ResultsError(source, f"cannot read the results file: {e.strerror or e}") from e
        try:
            data = json.loads(text, object_pairs_hook=columns)
        except json.JSONDecodeError as e:
            raise ResultsError(source, f"not valid JSON: {e}") from e
        del text
    return _validate(source, data, columns, gt, config)


def _add_box(columns: _BoxColumns, box: object) -> object:
    return columns.add(box) if isinstance(box, Mapping) else box


def _validate(source: str, data: object, columns: _BoxColumns, gt: GroundTruth, config: DetectionConfig):
    if not isinstance(data, Mapping) or not isinstance(data.get("results"), Mapping):
        raise ResultsError(source, "no `results` object (the nuScenes submission format is {meta, results})")
    meta = data.get("meta")
    if not isinstance(meta, Mapping):
        raise ResultsError(source, "no `meta` object", field="meta")
    if "version" in meta and meta["version"] != gt.version:
        raise ResultsError(source, f"results for version {meta['version']!r}, not {gt.version!r}", field="meta.version")
    per_sample = data["results"]
    keys = list(per_sample)
    where = {t: i for i, t in enumerate(gt.sample_tokens.tolist())}
    known = set(gt.all_sample_tokens.tolist())
    for token in keys:
        if token not in known:
            raise ResultsError(source, f"not a sample of {gt.version} (results for another version?)", token, "results")
    missing = [t for t in gt.sample_tokens.tolist() if t not in per_sample]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ResultsError(source, f"sample of split {gt.split} missing from the results{more}", missing[0], "results")
    counts = np.zeros(len(keys), dtype=np.int64)
    for k, token in enumerate(keys):
        boxes = per_sample[token]
        if not isinstance(boxes, list):
            raise ResultsError(source, "must be a list of boxes", token, f"results[{token}]")
        if len(boxes) > config.max_boxes_per_sample:
            message = f"{len(boxes)} boxes; at most {config.max_boxes_per_sample} per sample are allowed"
            raise ResultsError(source, message, token, f"results[{token}]")
        counts[k] = len(boxes)
    flat = [s for token in keys for s in per_sample[token]]
    if len(flat) != columns.count or not all(type(s) is int for s in flat) or flat != list(range(columns.count)):
        for token in keys:
            for i, s in enumerate(per_sample[token]):
                if type(s) is not int:
                    raise ResultsError(source, "not a box object", token, f"results[{token}][{i}]")
        raise ResultsError(source, "box objects found outside `results`", field="results")
    box_key = np.repeat(np.arange(len(keys)), counts)  # results key of each box
    _check_boxes(source, columns, keys, box_key, counts)
    values = np.frombuffer(columns.values, dtype=np.float64).reshape(-1, len(COLUMNS))
    sample_of_key = np.array([where.get(t, -1) for t in keys], dtype=np.int64)
    boxes = BoxArrays(
        sample=sample_of_key[box_key],
        translation=values[:, 0:3].copy(),
        size=values[:, 3:6].copy(),
        rotation=values[:, 6:10].copy(),
        velocity=values[:, 10:12].copy(),
        label=np.frombuffer(columns.label, dtype=np.int64).copy(),
        score=values[:, 12].copy(),
        attribute=np.frombuffer(columns.attribute, dtype=np.int64).copy(),
        num_pts=np.full(len(box_key), -1, dtype=np.int64),
    )
    boxes = boxes.select(boxes.sample >= 0)  # samples of other splits of this version are ignored
    if not gt.predefined:  # the devkit reads custom splits in sample-table order
        boxes = boxes.select(np.argsort(boxes.sample, kind="stable"))
    return filter_boxes(boxes, gt.ego_translation, gt.racks, config), dict(meta)


def _check_boxes(source: str, columns: _BoxColumns, keys: list[str], box_key: np.ndarray, counts: np.ndarray):
    """Raise for the first bad box: parse errors, then non-finite values, sizes, quaternions, sample tokens."""
    first_of_key = np.cumsum(counts) - counts

    def fail(seq: int, field: str, message: str):
        token = keys[box_key[seq]]
        raise ResultsError(source, message, token, f"results[{token}][{seq - first_of_key[box_key[seq]]}].{field}")

    if columns.errors:
        seq = min(columns.errors)
        fail(seq, *columns.errors[seq])
    values = np.frombuffer(columns.values, dtype=np.float64).reshape(-1, len(COLUMNS))
    bad = ~np.isfinite(values)
    if bad.any():
        seq, col = np.argwhere(bad)[0]
        fail(seq, COLUMNS[col], f"must be finite (got {values[seq, col]})")
    bad = values[:, 3:6] <= 0
    if bad.any():
        seq = np.argwhere(bad)[0][0]
        fail(seq, "size", f"sizes must be > 0 (got {values[seq, 3:6].tolist()})")
    norm = np.linalg.norm(values[:, 6:10], axis=1)
    bad = np.abs(norm - 1) > QUATERNION_TOLERANCE
    if bad.any():
        seq = np.flatnonzero(bad)[0]
        fail(seq, "rotation", f"not a unit quaternion (norm {norm[seq]:.6g}, tolerance {QUATERNION_TOLERANCE})")
    key_ids = np.array([columns.token_ids.get(t, -2) for t in keys], dtype=np.int64)
    bad = np.frombuffer(columns.token, dtype=np.int64) != key_ids[box_key]
    if bad.any():
        seq = np.flatnonzero(bad)[0]
        fail(seq, "sample_token", "differs from the sample token the box is listed under")
