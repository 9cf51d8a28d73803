"""The kernel backends of the surgery ops, and which one runs a call.

    reference  plain PyTorch: dgsnet/surgery/reference.py, the specification
    cpp, cuda  the compiled extension dgsnet._C (csrc/; loaded by extension.py)
    triton     Triton kernels (triton/), imported on first use
    auto       the fastest available for the tensors' device: cuda on a GPU when
               dgsnet._C was built with CUDA, cpp on the CPU, reference otherwise

Modules:
    registry.py   register a backend's kernels of an op, look them up by name
    contract.py   fake kernels and the autograd formula the C++ and Triton ops share
    extension.py  loads dgsnet._C and registers cpp and cuda
    fused.py      the objective through a backend's fused op pair
    triton/       the Triton kernels; importing it registers triton (needs triton)
"""
from __future__ import annotations

import functools
import importlib.util
import os

import torch

from dgsnet.surgery.backends import extension, registry
from dgsnet.surgery.backends.registry import Op, lookup, register

BACKENDS = ("reference", "cpp", "cuda", "triton", "auto")

__all__ = ["BACKENDS", "Op", "available_backends", "lookup", "op", "register", "resolve_backend",
           "triton_usable"]


@functools.lru_cache(maxsize=None)
def _interpreter_problem() -> str:
    """'' when Triton's interpreter runs here, else why not. triton 3.6 (torch 2.11's) turns a
    scalar kernel argument used as a loop bound into an int with int() of a 1-element array,
    which numpy >= 2.4 refuses (triton-lang/triton#9171, fixed in later triton); a probe kernel
    finds out, rather than a version list."""
    from dgsnet.surgery.backends.triton_probe import loop_to
    import numpy as np
    import triton

    x = torch.zeros(1)
    try:
        loop_to[(1,)](x, 3)
    except Exception as exc:  # triton's InterpreterError wraps the TypeError
        return (f"triton {triton.__version__}'s interpreter cannot run with numpy {np.__version__} "
                f"({type(exc).__name__}: {exc}); on CPU tensors use numpy<2.4 or a newer triton")
    return "" if x.item() == 3.0 else "triton's interpreter computed a wrong probe result"


def triton_usable(device) -> tuple[bool, str]:
    """(usable, why not): Triton runs on a GPU, or on CPU tensors through its interpreter."""
    device = torch.device(device)
    try:
        if importlib.util.find_spec("triton") is None:
            return False, "triton is not installed"
    except (ImportError, ValueError):
        return False, "triton is not installed"
    if device.type == "cuda":
        return True, ""
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        problem = _interpreter_problem()
        return not problem, problem
    return False, (f"Triton kernels run on a GPU; on {device.type} tensors they need its interpreter "
                   "(TRITON_INTERPRET=1 in the environment before triton is imported; slow, for tests)")


def available_backends(device) -> list[str]:
    """Concrete backends that can run on `device` (a torch.device or a name like "cpu"),
    reference first."""
    device = torch.device(device)
    found = ["reference"]
    if extension.available() and device.type == "cpu":
        found.append("cpp")
    if extension.cuda_compiled() and device.type == "cuda":
        found.append("cuda")
    if triton_usable(device)[0]:
        found.append("triton")
    return found


def resolve_backend(backend: str, device) -> str:
    """Maps "auto" to a concrete backend for `device`; checks an explicit one is usable."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: choose one of {', '.join(BACKENDS)}")
    device = torch.device(device)
    if backend == "auto":
        if device.type == "cuda" and extension.cuda_compiled():
            return "cuda"
        if device.type == "cpu" and extension.available():
            return "cpp"
        return "reference"
    if backend in ("cpp", "cuda"):
        extension.require(f"backend={backend!r}")
        if backend == "cpp" and device.type != "cpu":
            raise ValueError(f"backend='cpp' runs on the CPU, but the tensors are on {device}")
        if backend == "cuda":
            if device.type != "cuda":
                raise ValueError(f"backend='cuda' runs on a GPU, but the tensors are on {device}")
            if not extension.cuda_compiled():
                raise RuntimeError("backend='cuda': dgsnet._C was built without CUDA; rebuild "
                                   "with DGSNET_BUILD=cuda CUDA_HOME=/usr/local/cuda")
    if backend == "triton":
        usable, why = triton_usable(device)
        if not usable:
            raise RuntimeError(f"backend='triton': {why}; or use backend='auto'")
    return backend


def op(backend: str, name: str) -> Op:
    """The kernels of op `name` on a concrete kernel backend (cpp, cuda or triton, as
    `resolve_backend` returns it), importing the Triton backend on first use."""
    if backend == "triton":
        import dgsnet.surgery.backends.triton  # noqa: F401  (registers it; needs triton)
    return registry.lookup(backend, name)
