"""The web page ships with the package: in a wheel built from the sources (the pure-Python build,
DGSNET_BUILD=none, from a copy of the tree so the checkout is left alone) and through
importlib.resources of the installed dgsnet_export.serve, which is how the server finds it."""
from __future__ import annotations

import importlib.resources
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PAGE = ROOT / "export" / "serve" / "page.html"


def test_installed_package_holds_the_page():
    page = importlib.resources.files("dgsnet_export.serve").joinpath("page.html")
    assert page.is_file() and page.read_bytes() == PAGE.read_bytes()


@pytest.mark.slow
def test_built_wheel_holds_the_page(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc")
    for name in ("dgsnet", "export", "csrc"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path / "wheel"), str(source)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "DGSNET_BUILD": "none"})
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("dgsnet-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("dgsnet_export/serve/page.html") == PAGE.read_bytes()
        assert "dgsnet_export/serve/admission.py" in archive.namelist()
