"""Loading and validating a nuScenes detection results JSON into `BoxArrays`.

The file is streamed: a small scanner walks the top-level object and the `results` mapping through a
bounded text buffer (1 MiB chunks) and decodes one sample's box list at a time, whose boxes go straight into
columns. So neither the file's text nor its 250k boxes as Python dicts (the devkit's memory peak) ever
exist at once. Every check of the submission format is made, and each error names the file, the sample
token and the field.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
from array import array
from collections.abc import Mapping

import numpy as np

from fusion.evaluation.boxes import BoxArrays
from fusion.evaluation.config import ATTRIBUTE_NAMES, DETECTION_NAMES, DetectionConfig
from fusion.evaluation.errors import ResultsError
from fusion.evaluation.filters import filter_boxes
from fusion.evaluation.ground_truth import GroundTruth

BOX_FIELDS = ("sample_token", "translation", "size", "rotation", "velocity", "detection_name", "detection_score")
VECTOR_FIELDS = (("translation", 3), ("size", 3), ("rotation", 4), ("velocity", 2))
COLUMNS = ("translation",) * 3 + ("size",) * 3 + ("rotation",) * 4 + ("velocity",) * 2 + ("detection_score",)
BLOCK = 4096  # boxes per block of values while parsing
CHECK_ROWS = 65536  # boxes per step of the value checks
QUATERNION_TOLERANCE = 1e-3  # | |q| - 1 | above this is an error (float32 round trips stay far below it)
_LABELS = {name: i for i, name in enumerate(DETECTION_NAMES)}
_ATTRIBUTES = {name: i for i, name in enumerate(ATTRIBUTE_NAMES)} | {"": -1}


class _BoxColumns:
    """Box objects stored as columns as they are read; `add` returns the box's sequence number."""

    def __init__(self) -> None:
        self.values = array("d")  # the block being filled: 13 per box, in COLUMNS order
        self.blocks: list[array] = []  # full blocks of BLOCK boxes
        self.label = array("b")
        self.attribute = array("b")
        self.token = array("i")  # id of the box's own sample_token field
        self.token_ids: dict[str, int] = {}
        self.errors: dict[int, tuple[str, str]] = {}  # box sequence number -> (field, message); first error only
        self.count = 0
        self.matrix = np.zeros((0, len(COLUMNS)))  # all values, <float64: count, 13>, after `finish`

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
        if len(self.values) >= BLOCK * len(COLUMNS):
            self.blocks.append(self.values)
            self.values = array("d")
        return seq

    def finish(self) -> None:
        """Move the values into `matrix`, block by block (so they are never held twice)."""
        self.matrix = np.empty((self.count, len(COLUMNS)))
        self.blocks.append(self.values)
        self.values = array("d")
        row = 0
        while self.blocks:
            block = np.frombuffer(self.blocks[0], dtype=np.float64).reshape(-1, len(COLUMNS))
            self.matrix[row : row + len(block)] = block
            row += len(block)
            del block
            self.blocks.pop(0)
            if len(self.blocks) % 8 == 0:
                _trim_heap()  # the freed blocks back to the OS before the matrix's next pages are touched

    def release(self) -> None:
        """Free the columns (after they have been copied out)."""
        self.matrix = np.zeros((0, len(COLUMNS)))
        self.label, self.attribute, self.token = array("b"), array("b"), array("i")

    def take(self, seqs: np.ndarray) -> None:
        """Keep the boxes `seqs` (sequence numbers), in that order, renumbered from 0 (after `finish`)."""
        self.matrix = self.matrix[seqs]
        for name in ("label", "attribute", "token"):
            old = getattr(self, name)
            new = array(old.typecode)
            new.frombytes(np.frombuffer(old, dtype=old.typecode)[seqs].tobytes())
            setattr(self, name, new)
        self.errors = {new: self.errors[old] for new, old in enumerate(seqs.tolist()) if old in self.errors}
        self.count = len(seqs)

    def _fail(self, seq: int, n0: int, field: str, message: str) -> None:
        del self.values[n0:]
        self.values.extend([0.0] * len(COLUMNS))
        self.label.append(0)
        self.attribute.append(-1)
        self.token.append(-1)
        self.errors.setdefault(seq, (field, message))


def _trim_heap() -> None:
    """Return free heap memory to the OS (glibc's `malloc_trim`; nothing elsewhere)."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None


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


class _NotABox:
    """Stands in, in a sample's sequence list, for a list item that is not a JSON object."""


_WHITESPACE = re.compile(r"[ \t\n\r]*")
_CHUNK = 1 << 20  # characters read at a time


class _Stream:
    """A JSON text read in chunks, with a cursor; only the unread part (and one value being decoded) is held."""

    def __init__(self, file) -> None:
        self.file, self.buf, self.pos, self.eof = file, "", 0, False
        self.decoder = json.JSONDecoder()

    def _fill(self, at_least: int = _CHUNK) -> bool:
        if self.eof:
            return False
        more = self.file.read(max(at_least, _CHUNK))
        self.buf, self.pos = self.buf[self.pos :] + more, 0
        self.eof = not more
        return bool(more)

    def peek(self) -> str:
        """The next non-whitespace character ("" at the end), without consuming it."""
        while True:
            self.pos = _WHITESPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or not self._fill():
                return self.buf[self.pos : self.pos + 1]

    def expect(self, chars: str) -> str:
        c = self.peek()
        if not c or c not in chars:
            raise json.JSONDecodeError(f"Expecting one of {chars!r}", self.buf, self.pos)
        self.pos += 1
        return c

    def value(self) -> object:
        """Decode the next JSON value; a value that may continue past the buffer is decoded again with more."""
        self.peek()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError:
                if self._fill(len(self.buf)):
                    continue
                raise
            if end < len(self.buf) or not self._fill(len(self.buf)):
                self.pos = end
                return value


def _parse_file(file, columns: _BoxColumns) -> tuple[object, dict | None]:
    """Stream a submission: (the top-level value, with `results` left out, and the results index).

    The results index maps each sample token, in file order, to the sequence numbers of its boxes in `columns`
    (a `range`; `_NotABox` where a list item is not an object) or, when the value is not a list, to the value.
    It is None when the top level is not an object or has no `results` object.
    """
    stream = _Stream(file)
    if stream.peek() != "{":
        value = stream.value()
        if stream.peek():
            raise json.JSONDecodeError("Extra data", stream.buf, stream.pos)
        return value, None
    stream.expect("{")
    top: dict = {}
    index: dict | None = None
    if stream.peek() != "}":
        while True:
            key = stream.value()
            if not isinstance(key, str):
                raise json.JSONDecodeError("Expecting property name enclosed in double quotes", stream.buf, stream.pos)
            stream.expect(":")
            if key == "results" and stream.peek() == "{":
                index = _parse_results(stream, columns)
                top.pop("results", None)
            else:
                top[key] = stream.value()
                if key == "results":
                    index = None
            if stream.expect(",}") == "}":
                break
    else:
        stream.expect("}")
    if stream.peek():
        raise json.JSONDecodeError("Extra data", stream.buf, stream.pos)
    return top, index


def _parse_results(stream: _Stream, columns: _BoxColumns) -> dict:
    """The `results` object, one sample's box list at a time (a token listed twice keeps its last list)."""
    stream.expect("{")
    index: dict = {}
    if stream.peek() == "}":
        stream.expect("}")
        return index
    while True:
        token = stream.value()
        if not isinstance(token, str):
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", stream.buf, stream.pos)
        stream.expect(":")
        boxes = stream.value()
        index[token] = _add_boxes(columns, boxes) if isinstance(boxes, list) else boxes
        if stream.expect(",}") == "}":
            return index


def _add_boxes(columns: _BoxColumns, boxes: list) -> object:
    """Add a sample's boxes to `columns`: their sequence numbers (a range), or a list when an item is no box."""
    first = columns.count
    seqs = [columns.add(b) if isinstance(b, Mapping) else _NotABox for b in boxes]
    return range(first, columns.count) if columns.count - first == len(boxes) else seqs


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
        source, data, index = "<memory>", results, None
        if isinstance(results.get("results"), Mapping):
            index = {k: _add_boxes(columns, v) if isinstance(v, list) else v for k, v in results["results"].items()}
    else:
        source = str(results)
        try:
            with open(results, encoding="utf-8") as file:
                data, index = _parse_file(file, columns)
        except OSError as e:
            raise ResultsError(source, f"cannot read the results file: {e.strerror or e}") from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ResultsError(source, f"not valid JSON: {e}") from e
    return _validate(source, data, index, columns, gt, config)


def _validate(
    source: str, data: object, index: dict | None, columns: _BoxColumns, gt: GroundTruth, config: DetectionConfig
):
    if not isinstance(data, Mapping) or index is None:
        raise ResultsError(source, "no `results` object (the nuScenes submission format is {meta, results})")
    meta = data.get("meta")
    if not isinstance(meta, Mapping):
        raise ResultsError(source, "no `meta` object", field="meta")
    if "version" in meta and meta["version"] != gt.version:
        raise ResultsError(source, f"results for version {meta['version']!r}, not {gt.version!r}", field="meta.version")
    per_sample = index
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
        if not isinstance(boxes, range | list):  # (a list here holds a `_NotABox`)
            raise ResultsError(source, "must be a list of boxes", token, f"results[{token}]")
        if len(boxes) > config.max_boxes_per_sample:
            message = f"{len(boxes)} boxes; at most {config.max_boxes_per_sample} per sample are allowed"
            raise ResultsError(source, message, token, f"results[{token}]")
        counts[k] = len(boxes)
    for token in keys:
        seqs = per_sample[token]
        if not isinstance(seqs, range):
            i = next(i for i, s in enumerate(seqs) if s is _NotABox)
            raise ResultsError(source, "not a box object", token, f"results[{token}][{i}]")
    columns.finish()
    starts = np.array([per_sample[token].start for token in keys], dtype=np.int64)
    if not np.array_equal(starts, np.cumsum(counts) - counts) or int(counts.sum()) != columns.count:
        # a token listed twice: json (and so the devkit) keeps its first place and its last list
        columns.take(np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(int(counts.sum())))
    box_key = np.repeat(np.arange(len(keys)), counts)  # results key of each box
    _check_boxes(source, columns, keys, box_key, counts)
    sample_of_key = np.array([where.get(t, -1) for t in keys], dtype=np.int64)
    sample = sample_of_key[box_key]
    del box_key
    idx = np.flatnonzero(sample >= 0)  # samples of other splits of this version are ignored
    if not gt.predefined:  # the devkit reads custom splits in sample-table order
        idx = idx[np.argsort(sample[idx], kind="stable")]
    values, n_kept = columns.matrix, len(idx)
    if n_kept == len(values) and np.array_equal(idx, np.arange(n_kept)):
        idx = slice(None)  # every box kept, in order: views of the values, no copy before the filters
    boxes = BoxArrays(
        sample=sample[idx],
        translation=values[idx, 0:3],
        size=values[idx, 3:6],
        rotation=values[idx, 6:10],
        velocity=values[idx, 10:12],
        label=np.frombuffer(columns.label, dtype=np.int8)[idx].astype(np.int64),
        score=values[idx, 12],
        attribute=np.frombuffer(columns.attribute, dtype=np.int8)[idx].astype(np.int64),
        num_pts=np.full(n_kept, -1, dtype=np.int64),
    )
    del values, sample, idx
    columns.release()
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
    values = columns.matrix
    rows = [slice(i, i + CHECK_ROWS) for i in range(0, len(values), CHECK_ROWS)]  # bounded temporaries
    for r in rows:
        bad = ~np.isfinite(values[r])
        if bad.any():
            seq, col = np.argwhere(bad)[0]
            seq += r.start
            fail(seq, COLUMNS[col], f"must be finite (got {values[seq, col]})")
    for r in rows:
        bad = values[r, 3:6] <= 0
        if bad.any():
            seq = np.argwhere(bad)[0][0] + r.start
            fail(seq, "size", f"sizes must be > 0 (got {values[seq, 3:6].tolist()})")
    for r in rows:
        norm = np.linalg.norm(values[r, 6:10], axis=1)
        bad = np.abs(norm - 1) > QUATERNION_TOLERANCE
        if bad.any():
            i = np.flatnonzero(bad)[0]
            message = f"not a unit quaternion (norm {norm[i]:.6g}, tolerance {QUATERNION_TOLERANCE})"
            fail(i + r.start, "rotation", message)
    key_ids = np.array([columns.token_ids.get(t, -2) for t in keys], dtype=np.int64)
    token = np.frombuffer(columns.token, dtype=columns.token.typecode)
    for r in rows:
        bad = token[r] != key_ids[box_key[r]]
        if bad.any():
            message = "differs from the sample token the box is listed under"
            fail(np.flatnonzero(bad)[0] + r.start, "sample_token", message)
