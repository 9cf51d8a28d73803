"""Backend dispatch of the surgery ops, and their torch.library registrations.

Backends: "reference" (plain PyTorch, the specification), "cpp" and "cuda"
(dgsnet._C), "triton" (dgsnet.kernels); "auto" picks the fastest available
for the tensors' device: cuda on a GPU when dgsnet._C was built with CUDA,
cpp on the CPU, reference otherwise.

Ops (schemas in csrc/ops.cpp; the Triton twins live under dgsnet_triton::):
  project_rows(g, h)            g_i - <g_i, h_i> h_i per row
  dgs_forward(...)/dgs_backward the fused DGS objective (see dgsnet.surgery.fused)
  project_params_(grads, dirs)  in-place multi-tensor projection (docs/method.md#3-per-layer-surgery-dgsnet-extension)
"""
from __future__ import annotations

import os

import torch

from dgsnet import _ext
from dgsnet.surgery import reference

BACKENDS = ("reference", "cpp", "cuda", "triton", "auto")


# ---------------------------------------------------------------- registrations

def _project_rows_fake(g, h):
    return torch.empty_like(g, memory_format=torch.contiguous_format)


def _make_project_rows_autograd(op):
    # P = I - h h^T is symmetric, so the projection's backward is the projection itself.
    def backward(ctx, grad):
        return op(grad, ctx.h), None

    def setup_context(ctx, inputs, output):
        ctx.h = inputs[1]

    return backward, setup_context


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _dgs_forward_fake(f, f_t, t, y, w_s, w_t, w_x, b_s, b_t, b_x, lam, eps, with_align, project,
                      published):
    batch, dim = f.shape
    acc = _acc_dtype(f.dtype)
    scalars = [f.new_empty((), dtype=acc) for _ in range(5)]
    return (*scalars, f.new_empty((batch, dim), dtype=acc), f.new_empty((batch, 4), dtype=acc),
            f.new_empty((2, dim + 1), dtype=acc))


def _dgs_backward_fake(coef, head_sums, w_s, w_t, w_x, d_total, d_img, d_text, d_align, lam,
                       with_align, project, published, out_dtype):
    dim = w_s.numel()
    return (coef.new_empty((coef.shape[0], dim), dtype=out_dtype),
            coef.new_empty((2, dim + 1)))


def _make_dgs_autograd(backward_op):
    """Autograd of dgs_forward: the surgical feature gradient and the student and
    text head gradients, from each loss output's own upstream gradient.
    (Used by the Triton ops; csrc/autograd.cpp is its C++ twin for dgsnet::.)"""

    def setup_context(ctx, inputs, output):
        (f, _, _, _, w_s, w_t, w_x, b_s, _, b_x, lam, _, with_align, project, published) = inputs
        _, _, _, _, teacher, harmful, coef, head_sums = output
        ctx.mark_non_differentiable(teacher, harmful, coef, head_sums)
        ctx.set_materialize_grads(False)  # unused loss terms arrive as None, read as 0
        ctx.save_for_backward(coef, head_sums, w_s, w_t, w_x)
        ctx.flags = (float(lam), bool(with_align), bool(project), bool(published))
        ctx.f_dtype = f.dtype
        ctx.bias_shapes = (None if b_s is None else b_s.shape, None if b_x is None else b_x.shape)

    def backward(ctx, d_total, d_img, d_text, d_align, *_):
        coef, head_sums, w_s, w_t, w_x = ctx.saved_tensors
        if d_total is None and d_img is None and d_text is None and d_align is None:
            return (None,) * 15
        lam, with_align, project, published = ctx.flags
        grad_f, grad_heads = backward_op(coef, head_sums, w_s, w_t, w_x, d_total, d_img, d_text,
                                         d_align, lam, with_align, project, published, ctx.f_dtype)
        dim = w_s.numel()
        need = ctx.needs_input_grad
        bs_shape, bx_shape = ctx.bias_shapes
        g_f = grad_f if need[0] else None
        g_ws = grad_heads[0, :dim].view(w_s.shape) if need[4] else None
        g_wx = grad_heads[1, :dim].view(w_x.shape) if need[6] else None
        g_bs = grad_heads[0, dim:].view(bs_shape) if bs_shape is not None and need[7] else None
        g_bx = grad_heads[1, dim:].view(bx_shape) if bx_shape is not None and need[9] else None
        return (g_f, None, None, None, g_ws, None, g_wx, g_bs, None, g_bx,
                None, None, None, None, None)

    return backward, setup_context


def _project_params_fake(grads, dirs, eps):
    return None


def register_autograd(name: str, backward_and_setup) -> None:
    backward, setup_context = backward_and_setup
    torch.library.register_autograd(name, backward, setup_context=setup_context)


if _ext.available():
    torch.library.register_fake("dgsnet::project_rows")(_project_rows_fake)
    register_autograd("dgsnet::project_rows",
                      _make_project_rows_autograd(torch.ops.dgsnet.project_rows))
    torch.library.register_fake("dgsnet::dgs_forward")(_dgs_forward_fake)
    torch.library.register_fake("dgsnet::dgs_backward")(_dgs_backward_fake)
    # dgs_forward's autograd is registered in C++ (csrc/autograd.cpp): the same
    # formula as _make_dgs_autograd, without tens of microseconds of Python per call.
    torch.library.register_fake("dgsnet::project_params_")(_project_params_fake)


# ---------------------------------------------------------------- dispatch

def triton_usable(device: torch.device) -> tuple[bool, str]:
    """(usable, why not): Triton runs on a GPU, or on CPU tensors through its interpreter."""
    try:
        import importlib.util

        if importlib.util.find_spec("triton") is None:
            return False, "triton is not installed"
    except (ImportError, ValueError):
        return False, "triton is not installed"
    if device.type == "cuda":
        return True, ""
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return True, ""
    return False, (f"Triton kernels run on a GPU; on {device.type} tensors they need its interpreter "
                   "(TRITON_INTERPRET=1 in the environment before triton is imported; slow, for tests)")


def available_backends(device: torch.device) -> list[str]:
    """Concrete backends that can run on `device`, reference first."""
    found = ["reference"]
    if _ext.available() and device.type == "cpu":
        found.append("cpp")
    if _ext.cuda_compiled() and device.type == "cuda":
        found.append("cuda")
    if triton_usable(device)[0]:
        found.append("triton")
    return found


def resolve_backend(backend: str, device: torch.device) -> str:
    """Maps "auto" to a concrete backend for `device`; checks an explicit one is usable."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: choose one of {', '.join(BACKENDS)}")
    device = torch.device(device)
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
        usable, why = triton_usable(device)
        if not usable:
            raise RuntimeError(f"backend='triton': {why}; or use backend='auto'")
    return backend


def _triton_ops():
    import dgsnet.kernels  # registers dgsnet_triton::* on first use (needs triton)

    return torch.ops.dgsnet_triton


def project_rows(g: torch.Tensor, h: torch.Tensor, backend: str = "reference") -> torch.Tensor:
    """g_i - <g_i, h_i> h_i per row, by the chosen backend."""
    backend = resolve_backend(backend, g.device)
    if backend == "reference":
        return reference.project_rows(g, h)
    if backend == "triton":
        return _triton_ops().project_rows(g, h)
    return torch.ops.dgsnet.project_rows(g, h)


def dgs_ops(backend: str):
    """(forward, backward) op pair of the fused objective for a concrete non-reference backend."""
    if backend == "triton":
        ops = _triton_ops()
        return ops.dgs_forward, ops.dgs_backward
    return torch.ops.dgsnet.dgs_forward, torch.ops.dgsnet.dgs_backward


def project_params_(grads: list[torch.Tensor], directions: list[torch.Tensor], eps: float = 1e-12,
                    backend: str = "auto") -> None:
    """In place, for each pair: g_l <- g_l - <g_l, u_l> / (||u_l||^2 + eps) * u_l.

    One fused multi-tensor op over the whole list (a fixed number of passes or
    launches, whatever the number of tensors). All tensors share one device
    and dtype and are contiguous; `backend="reference"` is the per-tensor loop.
    """
    grads, directions = list(grads), list(directions)
    if len(grads) != len(directions):
        raise ValueError(f"project_params_: {len(grads)} gradients but {len(directions)} directions")
    if not grads:
        return
    backend = resolve_backend(backend, grads[0].device)
    if backend == "reference":
        reference.project_params_(grads, directions, eps)
    elif backend == "triton":
        _triton_ops().project_params_(grads, directions, float(eps))
    else:
        torch.ops.dgsnet.project_params_(grads, directions, float(eps))
