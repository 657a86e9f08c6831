"""Load a script of benchmarks/ as a module, the way running it does: with benchmarks/ on the path, so that it finds
the modules beside it (`checkpoint_split.py`). The benchmarks' tests import `load_benchmark` from here (pytest puts
this folder on the path, as it has no `__init__.py`)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(script: str, module_name: str | None = None) -> ModuleType:
    """benchmarks/<script>.py as a module named `module_name` (default: the script's name)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(module_name or script, BENCHMARKS / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
