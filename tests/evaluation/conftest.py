"""Fixtures of the evaluation tests (the tiny world itself is `tiny_root` / `tiny_nusc` of tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def eval_cache(tmp_path_factory) -> Path:
    """A GT cache folder shared by the session's evaluations."""
    return tmp_path_factory.mktemp("gt_cache")


@pytest.fixture
def write_results(tmp_path):
    """Write a submission dict to a JSON file in the test's tmp folder; returns the path."""

    def write(results: dict, name: str = "results.json") -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(results))
        return path

    return write
