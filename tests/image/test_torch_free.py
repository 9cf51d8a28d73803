"""The modules the inference-only ONNX runtime imports must not pull in torch."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_MODULES = sorted(f"dgsnet_export.runtime.{p.stem}" for p in (ROOT / "export" / "runtime").glob("*.py")
                         if p.stem != "__init__")

# The start of a `python -c` program: torch (and its kin) cannot be imported from here on, and
# dgsnet_export is importable (from export/, sys.argv[1], when it is not installed). Shared with
# tests/export/test_runtime.py.
BLOCK_TORCH = r"""
import importlib, importlib.abc, importlib.util, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "open_clip", "torchvision", "triton", "onnx", "onnxscript"):
            raise ImportError(f"{name} is blocked: the runtime must not need it")
sys.meta_path.insert(0, Block())
export_dir = sys.argv[1]
if importlib.util.find_spec("dgsnet_export") is None:  # not installed (pip install -e . maps export/ to it)
    spec = importlib.util.spec_from_file_location("dgsnet_export", export_dir + "/__init__.py",
                                                  submodule_search_locations=[export_dir])
    module = importlib.util.module_from_spec(spec); sys.modules["dgsnet_export"] = module
    spec.loader.exec_module(module)
"""

# Imports every module named on the command line after the export folder.
BLOCKED_IMPORTS = BLOCK_TORCH + r"""
for name in sys.argv[2:]:
    importlib.import_module(name)
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "open_clip", "torchvision", "onnx"))
print(bad); sys.exit(1 if bad else 0)
"""


def test_preprocess_imageio_metrics_report_are_torch_free():
    code = ("import sys, dgsnet.image.preprocess, dgsnet.image.decode, dgsnet.metrics, dgsnet.report, "
            "dgsnet.scoring, dgsnet.outputs; "
            "bad = [m for m in ('torch', 'open_clip', 'torchvision') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


SERVE_MODULES = sorted(f"dgsnet_export.serve.{p.stem}" for p in (ROOT / "export" / "serve").glob("*.py")
                       if p.stem != "__init__")


def test_every_serve_module_imports_with_torch_blocked():
    """export/serve/ (`dgsnet serve`, dgsnet-serve) and dgsnet's `serve` subcommand: a server host needs no
    torch (tests/export/serve/ also runs the real server with torch blocked)."""
    assert {"dgsnet_export.serve.app", "dgsnet_export.serve.batcher", "dgsnet_export.serve.cli"} <= set(SERVE_MODULES)
    modules = ["dgsnet_export.serve", *SERVE_MODULES, "dgsnet.cli.serve"]
    result = subprocess.run([sys.executable, "-c", BLOCKED_IMPORTS, str(ROOT / "export"), *modules],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "[]"


def test_every_runtime_module_imports_with_torch_blocked():
    """export/runtime/ (dgsnet_export.runtime), the package and its `dgsnet-predict` entry point, where torch
    cannot be imported at all."""
    assert {"dgsnet_export.runtime.detector", "dgsnet_export.runtime.cli"} <= set(RUNTIME_MODULES)
    modules = ["dgsnet_export", "dgsnet_export.cli", "dgsnet_export.runtime", *RUNTIME_MODULES]
    result = subprocess.run([sys.executable, "-c", BLOCKED_IMPORTS, str(ROOT / "export"), *modules],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "[]"
