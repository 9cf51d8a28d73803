"""Backend dispatch of the surgery ops, and their torch.library registrations.

Backends: "reference" (plain PyTorch, the specification), "cpp" and "cuda"
(dgsnet._C), "triton"; "auto" picks the fastest available for the device.
"""
from __future__ import annotations

import torch

from dgsnet import _ext
from dgsnet.surgery import reference

BACKENDS = ("reference", "cpp", "cuda", "triton", "auto")

if _ext.available():
    @torch.library.register_fake("dgsnet::project_rows")
    def _project_rows_fake(g, h):
        return torch.empty_like(g, memory_format=torch.contiguous_format)

    # P = I - h h^T is symmetric, so the projection's backward is the projection itself.
    def _project_rows_backward(ctx, grad):
        return torch.ops.dgsnet.project_rows(grad, ctx.h), None

    def _project_rows_setup(ctx, inputs, output):
        ctx.h = inputs[1]

    torch.library.register_autograd(
        "dgsnet::project_rows", _project_rows_backward, setup_context=_project_rows_setup)


def resolve_backend(backend: str, device: torch.device) -> str:
    """Maps "auto" to a concrete backend for `device`; checks an explicit one is usable."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if device.type == "cuda" and _ext.cuda_compiled():
            return "cuda"
        if device.type == "cpu" and _ext.available():
            return "cpp"
        return "reference"
    if backend in ("cpp", "cuda"):
        _ext.require(f"backend={backend!r}")
        if backend == "cpp" and device.type != "cpu":
            raise ValueError(f"backend='cpp' runs on the CPU, but the tensors are on {device}")
        if backend == "cuda":
            if device.type != "cuda":
                raise ValueError(f"backend='cuda' runs on a GPU, but the tensors are on {device}")
            if not _ext.cuda_compiled():
                raise RuntimeError("backend='cuda': dgsnet._C was built without CUDA; rebuild "
                                   "with DGSNET_BUILD=cuda CUDA_HOME=/usr/local/cuda")
    if backend == "triton":
        raise NotImplementedError("the triton backend of project_rows is not implemented yet")
    return backend


def project_rows(g: torch.Tensor, h: torch.Tensor, backend: str = "reference") -> torch.Tensor:
    """g_i - <g_i, h_i> h_i per row, by the chosen backend."""
    backend = resolve_backend(backend, g.device)
    if backend == "reference":
        return reference.project_rows(g, h)
    return torch.ops.dgsnet.project_rows(g, h)
