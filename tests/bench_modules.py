"""Loads a bench script as a module for a test. The scripts import `common` from their folder, so
it is loaded first, both by file path and only for the test (no sys.path change)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench(monkeypatch, name: str):
    """bench/<name>.py as a module (with bench/common.py as `common`), removed after the test."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "1")  # the scripts set them on import; keep the change to this test
    module = None
    for part in ("common", name):
        spec = importlib.util.spec_from_file_location(part, BENCH / f"{part}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, part, module)
        spec.loader.exec_module(module)
    return module
