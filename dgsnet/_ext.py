"""Loads the compiled extension dgsnet._C once, and says why when it cannot."""
from __future__ import annotations

try:
    from dgsnet import _C  # noqa: F401  (registers torch.ops.dgsnet.*)

    LOAD_ERROR: Exception | None = None
except ImportError as exc:  # not built, or built against another torch
    _C = None
    LOAD_ERROR = exc


def available() -> bool:
    return _C is not None


def cuda_compiled() -> bool:
    return _C is not None and _C.cuda_compiled()


def require(what: str) -> None:
    """Raises a clear error when an op of the extension is asked for but it did not load."""
    if _C is None:
        raise RuntimeError(
            f"{what} needs the compiled extension dgsnet._C, which did not load ({LOAD_ERROR}). "
            "Build it with `pip install --no-build-isolation -e .` in the repo root, "
            "or use backend='reference'.")
