"""Triton multi-tensor kernel of project_params_: for every pair (g_l, u_l) of a
tensor list, g_l -= <g_l, u_l> / (||u_l||^2 + eps) * u_l, in place.

Every tensor is cut into chunks of CHUNK elements, and one int64 table says,
per tensor, where it lies relative to the first tensor of its list (element
offsets: all tensors share one address space and dtype), its size and its
first chunk, and per chunk, its tensor and start. Two launches whatever the
number of tensors: per-chunk partial sums, then per-chunk update with the
tensor's sums added in chunk order (deterministic).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from dgsnet.surgery.backends.triton.dgs_objective import autotuned, on_device

CHUNK = 16384


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


@autotuned(_dot_configs(), key=["n_chunks"], fallback=triton.Config({"BLOCK": 4096}, num_warps=1))
@triton.jit
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


# In place: never autotuned (a benchmarked config would apply the update again).
@triton.jit
def _chunk_update_kernel(g_base, u_base, table_ptr, partial_ptr, n_tensors, n_chunks, eps: tl.constexpr,
                         CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    c = tl.program_id(0)
    tensor, start, g_off, u_off, n = _chunk(table_ptr, n_tensors, c, CHUNK)
    first = tl.load(table_ptr + 4 * tensor + 3)
    last = tl.load(table_ptr + 4 * tensor + 7, mask=tensor + 1 < n_tensors, other=n_chunks)
    dot = tl.load(partial_ptr + 2 * first) * 0.0
    norm2 = dot
    for k in range(first, last):
        dot += tl.load(partial_ptr + 2 * k)
        norm2 += tl.load(partial_ptr + 2 * k + 1)
    a = dot / (norm2 + eps)
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
    return torch.tensor(words + chunks, dtype=torch.int64).to(device, non_blocking=True), len(chunks) // 2


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
    table, n_chunks = _table(grads, dirs, device)
    if n_chunks == 0:
        return
    partial = torch.empty(2 * n_chunks, dtype=torch.float64, device=device)
    n = len(grads)
    with on_device(device):
        _chunk_dot_norm_kernel[(n_chunks,)](grads[0], dirs[0], table, partial, n, n_chunks,
                                            CHUNK=CHUNK)
        _chunk_update_kernel[(n_chunks,)](grads[0], dirs[0], table, partial, n, n_chunks, float(eps),
                                          CHUNK=CHUNK, BLOCK=4096, num_warps=8)
