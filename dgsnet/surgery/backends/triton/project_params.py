"""Triton multi-tensor kernel of project_params_: for every pair (g_l, u_l) of a
tensor list, g_l -= <g_l, u_l> / (||u_l||^2 + eps) * u_l, in place.

Every tensor is cut into chunks of CHUNK elements, and one int64 table says,
per tensor, where it lies relative to the first tensor of its list (element
offsets: all tensors share one address space and dtype), its size and its
first chunk, and per chunk, its tensor and start. On a GPU the table is staged
in pinned host memory and copied asynchronously. Three launches whatever the
number of tensors:
  1. a program per chunk: the chunk's partial <g, u> and ||u||^2 (float64);
  2. a program per tensor: its chunks' partials added in chunk order (a fixed
     order: deterministic), one coefficient <g, u> / (||u||^2 + eps) per tensor;
  3. a program per chunk: g -= coefficient * u.
eps is a runtime value (no recompile per value). Not capturable in a CUDA graph
(the table is built on the host per call), like the C++ op: it refuses.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from dgsnet.surgery.backends.triton.dgs_objective import Tuned, on_device, scalars

CHUNK = 16384
_COEF_BLOCK = 128


def _dot_configs():
    return [triton.Config({"BLOCK": b}, num_warps=w) for b, w in [(1024, 4), (2048, 8), (4096, 8)]]


@triton.jit
def _chunk(table_ptr, n_tensors, c, CHUNK: tl.constexpr):
    """Chunk c's tensor index, start within it, the tensor's g/u offsets and the chunk length."""
    chunk_row = table_ptr + 4 * n_tensors + 2 * c
    tensor = tl.load(chunk_row)
    start = tl.load(chunk_row + 1)
    g_off = tl.load(table_ptr + 4 * tensor)
    u_off = tl.load(table_ptr + 4 * tensor + 1)
    n = tl.minimum(tl.load(table_ptr + 4 * tensor + 2) - start, CHUNK)
    return tensor, start, g_off, u_off, n


@triton.jit(do_not_specialize=["n_tensors", "n_chunks"])
def _chunk_dot_norm_kernel(g_base, u_base, table_ptr, partial_ptr, n_tensors, n_chunks,
                           CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    c = tl.program_id(0)
    tensor, start, g_off, u_off, n = _chunk(table_ptr, n_tensors, c, CHUNK)
    dot = tl.zeros([BLOCK], dtype=tl.float64)
    norm2 = tl.zeros([BLOCK], dtype=tl.float64)
    for j0 in range(0, CHUNK, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        m = j < n
        g = tl.load(g_base + g_off + start + j, mask=m, other=0.0).to(tl.float64)
        u = tl.load(u_base + u_off + start + j, mask=m, other=0.0).to(tl.float64)
        dot += g * u
        norm2 += u * u
    tl.store(partial_ptr + 2 * c, tl.sum(dot, axis=0))
    tl.store(partial_ptr + 2 * c + 1, tl.sum(norm2, axis=0))


_CHUNK_DOT_NORM = Tuned(_chunk_dot_norm_kernel, _dot_configs(),
                        triton.Config({"BLOCK": 2048}, num_warps=8),
                        triton.Config({"BLOCK": 4096}, num_warps=1), key=["n_chunks"])


@triton.jit(do_not_specialize=["n_tensors", "n_chunks"])
def _tensor_coef_kernel(table_ptr, partial_ptr, scal_ptr, coef_ptr, n_tensors, n_chunks,
                        BLOCK: tl.constexpr):
    """Program l: tensor l's coefficient from its chunks' partials, added BLOCK at a time
    in chunk order."""
    l = tl.program_id(0)
    first = tl.load(table_ptr + 4 * l + 3)
    last = tl.load(table_ptr + 4 * l + 7, mask=l + 1 < n_tensors, other=n_chunks)
    k0 = tl.arange(0, BLOCK)
    dot = tl.zeros([BLOCK], dtype=tl.float64)
    norm2 = tl.zeros([BLOCK], dtype=tl.float64)
    for k in range(first, last, BLOCK):
        m = k + k0 < last
        dot += tl.load(partial_ptr + 2 * (k + k0), mask=m, other=0.0)
        norm2 += tl.load(partial_ptr + 2 * (k + k0) + 1, mask=m, other=0.0)
    tl.store(coef_ptr + l, tl.sum(dot, axis=0) / (tl.sum(norm2, axis=0) + tl.load(scal_ptr)))


# In place: never autotuned (a benchmarked config would apply the update again).
@triton.jit(do_not_specialize=["n_tensors"])
def _chunk_update_kernel(g_base, u_base, table_ptr, coef_ptr, n_tensors, CHUNK: tl.constexpr,
                         BLOCK: tl.constexpr):
    c = tl.program_id(0)
    tensor, start, g_off, u_off, n = _chunk(table_ptr, n_tensors, c, CHUNK)
    a = tl.load(coef_ptr + tensor)
    for j0 in range(0, CHUNK, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        m = j < n
        g_ptrs = g_base + g_off + start + j
        g = tl.load(g_ptrs, mask=m, other=0.0).to(tl.float64)
        u = tl.load(u_base + u_off + start + j, mask=m, other=0.0).to(tl.float64)
        tl.store(g_ptrs, (g - a * u).to(g_base.dtype.element_ty), mask=m)


def _table(grads, dirs, device):
    g0, u0 = grads[0], dirs[0]
    item = g0.element_size()
    words, chunks = [], []
    for l, (g, u) in enumerate(zip(grads, dirs)):
        g_off, rem_g = divmod(g.data_ptr() - g0.data_ptr(), item)
        u_off, rem_u = divmod(u.data_ptr() - u0.data_ptr(), item)
        assert rem_g == 0 and rem_u == 0, "tensors of one dtype are element-aligned"
        words += [g_off, u_off, g.numel(), len(chunks) // 2]
        for s in range(0, g.numel(), CHUNK):
            chunks += [l, s]
    host = torch.tensor(words + chunks, dtype=torch.int64)
    if device.type == "cuda":
        # Pinned: the copy is asynchronous, and the caching host allocator keeps the
        # buffer until it has run (a pageable copy would block the host).
        return host.pin_memory().to(device, non_blocking=True), len(chunks) // 2
    return host.to(device), len(chunks) // 2


def project_params_(grads: list[torch.Tensor], dirs: list[torch.Tensor], eps: float) -> None:
    """Same contract as torch.ops.dgsnet.project_params_ (csrc/ops.cpp)."""
    if len(grads) != len(dirs):
        raise ValueError(f"dgsnet_triton::project_params_: {len(grads)} gradients but "
                         f"{len(dirs)} directions")
    if not grads:
        return
    dtype, device = grads[0].dtype, grads[0].device
    for i, (g, u) in enumerate(zip(grads, dirs)):
        if g.shape != u.shape or g.dtype != dtype or u.dtype != dtype or g.device != device \
                or u.device != device or not (g.is_contiguous() and u.is_contiguous()):
            raise ValueError(f"dgsnet_triton::project_params_: tensor {i} ({tuple(g.shape)} "
                             f"{g.dtype} / {tuple(u.shape)} {u.dtype}) must match in shape, share "
                             f"dtype {dtype} and device {device}, and be contiguous")
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        # A captured graph would replay the host-staged table of this call forever.
        raise RuntimeError("dgsnet_triton::project_params_ cannot be captured in a CUDA graph (its "
                           "chunk table is built on the host per call); run it outside the "
                           "captured region")
    table, n_chunks = _table(grads, dirs, device)
    if n_chunks == 0:
        return
    n = len(grads)
    partial = torch.empty(2 * n_chunks, dtype=torch.float64, device=device)
    coef = torch.empty(n, dtype=torch.float64, device=device)
    with on_device(device):
        _CHUNK_DOT_NORM[(n_chunks,)](grads[0], dirs[0], table, partial, n, n_chunks, CHUNK=CHUNK)
        _tensor_coef_kernel[(n,)](table, partial, scalars((eps,), torch.float64, device), coef, n,
                                  n_chunks, BLOCK=_COEF_BLOCK, num_warps=4)
        _chunk_update_kernel[(n_chunks,)](grads[0], dirs[0], table, coef, n, CHUNK=CHUNK,
                                          BLOCK=4096, num_warps=8)
