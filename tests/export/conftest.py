"""Makes the runtime importable as `dgsnet_export` before setup.py maps export/ to that name.

Once `package_dir={"dgsnet_export": "export"}` is installed, the real package is used.
"""
import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

EXPORT_DIR = Path(__file__).resolve().parents[2] / "export"


def register_dgsnet_export() -> None:
    if "dgsnet_export" in sys.modules:
        return
    if importlib.util.find_spec("dgsnet_export") is not None:
        return
    spec = importlib.util.spec_from_file_location("dgsnet_export", EXPORT_DIR / "__init__.py",
                                                  submodule_search_locations=[str(EXPORT_DIR)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["dgsnet_export"] = module
    spec.loader.exec_module(module)


register_dgsnet_export()


@pytest.fixture()
def run_dir(trained_run, tmp_path):
    """A private copy of the session's trained run: a test that fails must not damage the original."""
    path = tmp_path / "run"
    shutil.copytree(trained_run[0], path)
    return path

