"""The optional dependencies (pip extras of pyproject.toml) a command needs, checked as it starts.

The core install (numpy, Pillow, PyYAML) runs every `--help` and nothing heavier; a command whose
extra is missing stops at its start with one line naming the extra, not an ImportError from deep inside.
"""
from __future__ import annotations

from importlib.util import find_spec

# import name -> (what to call it, the extra that installs it)
PROVIDERS = {
    "torch": ("PyTorch", "train"),
    "open_clip": ("open_clip", "train"),
    "safetensors": ("safetensors", "train"),
    "onnx": ("onnx", "train"),
    "onnxscript": ("onnxscript", "train"),
    "onnxruntime": ("onnxruntime", "runtime"),
    "matplotlib": ("matplotlib", "plots"),
    "skimage": ("scikit-image", "dev"),
    "scipy": ("SciPy", "dev"),
    "starlette": ("Starlette", "serve"),
    "uvicorn": ("uvicorn", "serve"),
    "python_multipart": ("python-multipart", "serve"),
}


def missing(modules) -> list[str]:
    """The modules of `modules` that cannot be imported here (looked up, not imported)."""
    return [m for m in modules if not _found(m)]


def _found(module: str) -> bool:
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):  # a blocked or half-imported module
        return False


def missing_extra(prog: str, modules) -> str | None:
    """The one line to stop `prog` with when any of `modules` (keys of PROVIDERS) is not installed, else None."""
    absent = missing(modules)
    if not absent:
        return None
    names = ", ".join(dict.fromkeys(PROVIDERS[m][0] for m in absent))
    extras = list(dict.fromkeys(PROVIDERS[m][1] for m in absent))
    hint = f"pip install 'dgsnet[{','.join(extras)}]'"
    if "runtime" in extras:  # onnxruntime-gpu provides the same module; the two must not be installed together
        hint += " (or [gpu] instead of [runtime] on a GPU host)"
    return f"{prog} needs {names}: {hint}"
