"""Loads the compiled extension dgsnet._C once, says why when it cannot, and registers
its ops (torch.ops.dgsnet.*, schemas in csrc/ops.cpp) as the backends "cpp" and,
when it was built with CUDA, "cuda"."""
from __future__ import annotations

import torch

from dgsnet.surgery.backends import contract, registry

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


if _C is not None:
    contract.register_fakes("dgsnet")
    # dgs_forward's autograd is registered in C++ (csrc/autograd.cpp): the formula of
    # contract.dgs_autograd without tens of microseconds of Python per call.
    for _backend in ("cpp", "cuda") if cuda_compiled() else ("cpp",):
        registry.register(_backend, "dgs_objective", torch.ops.dgsnet.dgs_forward,
                          torch.ops.dgsnet.dgs_backward,
                          # absent from an extension built before it existed: torch.ops then
                          eager=getattr(_C, "dgs_forward_eager", None))
        registry.register(_backend, "project_params_", torch.ops.dgsnet.project_params_)
