"""Writing files so that readers see the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling of `path` to write; renamed onto `path` when the block ends, removed when it raises.

    The sibling's name is random (with `path`'s extension last, for writers that add theirs), not made from the pid:
    the processes of two nodes that fill one shared cache can have the same pid (each container numbers its own).
    With a shared temporary name, one process's rename took the file away under the other, whose rename then failed
    (tests/data/test_pipeline.py)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
