"""Triton kernels of the fused DGS objective (dgsnet_triton::dgs_forward / dgs_backward).

The same closed forms as csrc/cpu/dgs_objective.cpp (see dgsnet/surgery/backends/fused.py):
  forward  kernel 1, a program per tile of rows: the five row dot products
           (<f,w_S>, <f_T,w_T>, <t,w_X>, <f,min(w_T,0)>, <f,max(w_T,0)>),
           the per-row coefficients, loss terms and harmful rows;
           kernel 2, a program per tile of columns: sum_i c_S f_i, sum_i c_X t_i
           (column D carries sum_i c), and, in program 0, the loss means.
           Cross-row sums need every row's coefficient first, hence two
           launches (Triton has no grid-wide barrier); both are deterministic.
  backward one launch, a program per tile of rows; program 0 also writes the
           head gradients.
Features may be float32/float16/bfloat16 (float32 sums) or float64.
"""
from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def autotuned(configs, key, fallback):
    """triton.autotune over `configs` on a GPU; the single `fallback` config under the
    interpreter, where each benchmarked config would cost seconds. Only for kernels
    without side effects on their inputs (autotuning runs them repeatedly)."""
    if INTERPRET:
        return triton.autotune(configs=[fallback], key=key)
    return triton.autotune(configs=configs, key=key)


def _row_configs():
    return [triton.Config({"BLOCK_B": b, "BLOCK_D": d}, num_warps=w)
            for b, d, w in [(1, 256, 2), (1, 1024, 4), (2, 512, 4), (4, 256, 4), (4, 512, 8),
                            (8, 128, 4), (8, 256, 8), (16, 128, 8)]]


def _col_configs():
    return [triton.Config({"BLOCK_B": b, "BLOCK_D": d}, num_warps=w)
            for b, d, w in [(32, 32, 4), (64, 32, 4), (32, 64, 4), (64, 64, 8), (128, 16, 4),
                            (16, 128, 4)]]


_ROW_FALLBACK = triton.Config({"BLOCK_B": 8, "BLOCK_D": 64}, num_warps=1)
_COL_FALLBACK = triton.Config({"BLOCK_B": 32, "BLOCK_D": 64}, num_warps=1)


@triton.jit
def _sigmoid_bce(z, y):
    e = tl.exp(tl.where(z < 0, z, -z))
    r = 1.0 / (1.0 + e)
    sig = tl.where(z >= 0, r, e * r)
    bce = tl.maximum(z, 0.0) - z * y + tl.log(1.0 + e)
    return sig, bce


@autotuned(_row_configs(), key=["D"], fallback=_ROW_FALLBACK)
@triton.jit
def _forward_rows_kernel(f_ptr, ft_ptr, t_ptr, ld_f, ld_ft, ld_t, y_ptr, ws_ptr, wt_ptr, wx_ptr,
                         bs_ptr, bt_ptr, bx_ptr, harmful_ptr, coef_ptr, rowloss_ptr, B, D, eps: tl.constexpr,
                         HAS_BS: tl.constexpr, HAS_BT: tl.constexpr, HAS_BX: tl.constexpr,
                         BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    rows64 = rows.to(tl.int64)
    cols0 = tl.arange(0, BLOCK_D)
    y = tl.load(y_ptr + rows, mask=rmask, other=0.0)
    zero = y * 0.0  # (BLOCK_B,) in the accumulation type
    zs, zt, zx, fneg, fpos = zero, zero, zero, zero, zero
    pos2 = tl.sum(zero, axis=0)
    neg2 = pos2
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + cols0
        cmask = cols < D
        m = rmask[:, None] & cmask[None, :]
        ws = tl.load(ws_ptr + cols, mask=cmask, other=0.0)
        wt = tl.load(wt_ptr + cols, mask=cmask, other=0.0)
        wx = tl.load(wx_ptr + cols, mask=cmask, other=0.0)
        f = tl.load(f_ptr + rows64[:, None] * ld_f + cols[None, :], mask=m, other=0.0).to(ws.dtype)
        ft = tl.load(ft_ptr + rows64[:, None] * ld_ft + cols[None, :], mask=m, other=0.0).to(ws.dtype)
        t = tl.load(t_ptr + rows64[:, None] * ld_t + cols[None, :], mask=m, other=0.0).to(ws.dtype)
        zs += tl.sum(f * ws[None, :], axis=1)
        zt += tl.sum(ft * wt[None, :], axis=1)
        zx += tl.sum(t * wx[None, :], axis=1)
        fneg += tl.sum(f * tl.minimum(wt, 0.0)[None, :], axis=1)
        fpos += tl.sum(f * tl.maximum(wt, 0.0)[None, :], axis=1)
        pos2 += tl.sum(tl.where(wx > 0, wx * wx, 0.0), axis=0)
        neg2 += tl.sum(tl.where(wx < 0, wx * wx, 0.0), axis=0)
    if HAS_BS:
        zs += tl.load(bs_ptr)
    if HAS_BT:
        zt += tl.load(bt_ptr)
    if HAS_BX:
        zx += tl.load(bx_ptr)
    sig_s, bce_s = _sigmoid_bce(zs, y)
    sig_t, bce_t = _sigmoid_bce(zt, y)
    sig_x, bce_x = _sigmoid_bce(zx, y)
    cs = (sig_s - y) / B
    ct = (sig_t - y) / B
    cx = (sig_x - y) / B
    # ||relu(c w_X)|| = |c| ||relu(+-w_X)||; min(c w_T, 0) = c min(w_T, 0) or c max(w_T, 0).
    inv = 1.0 / (tl.abs(cx) * tl.where(cx > 0, tl.sqrt(pos2), tl.sqrt(neg2)) + eps)
    align = ct * tl.where(ct > 0, fneg, fpos)
    tl.store(coef_ptr + rows64 * 4 + 0, cs, mask=rmask)
    tl.store(coef_ptr + rows64 * 4 + 1, ct, mask=rmask)
    tl.store(coef_ptr + rows64 * 4 + 2, cx, mask=rmask)
    tl.store(coef_ptr + rows64 * 4 + 3, inv, mask=rmask)
    tl.store(rowloss_ptr + rows64 * 4 + 0, bce_s, mask=rmask)
    tl.store(rowloss_ptr + rows64 * 4 + 1, bce_x, mask=rmask)
    tl.store(rowloss_ptr + rows64 * 4 + 2, align, mask=rmask)
    tl.store(rowloss_ptr + rows64 * 4 + 3, bce_t, mask=rmask)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + cols0
        cmask = cols < D
        wx = tl.load(wx_ptr + cols, mask=cmask, other=0.0)
        h = tl.maximum(cx[:, None] * wx[None, :], 0.0) * inv[:, None]
        tl.store(harmful_ptr + rows64[:, None] * D + cols[None, :], h,
                 mask=rmask[:, None] & cmask[None, :])


@autotuned(_col_configs(), key=["D"], fallback=_COL_FALLBACK)
@triton.jit
def _forward_cols_kernel(f_ptr, t_ptr, ld_f, ld_t, coef_ptr, rowloss_ptr, sums_ptr, total_ptr, img_ptr, text_ptr,
                         align_ptr, teacher_ptr, B, D,
                         lam: tl.constexpr, WITH_ALIGN: tl.constexpr, BLOCK_B: tl.constexpr,
                         BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    cols = pid * BLOCK_D + tl.arange(0, BLOCK_D)
    is_feat = cols < D
    is_count = cols == D  # column D: the plain sum of the coefficients
    rows0 = tl.arange(0, BLOCK_B)
    first = tl.load(coef_ptr)
    acc_f = tl.zeros([BLOCK_D], dtype=first.dtype)
    acc_t = tl.zeros([BLOCK_D], dtype=first.dtype)
    for b0 in range(0, B, BLOCK_B):
        rows = b0 + rows0
        rmask = rows < B
        rows64 = rows.to(tl.int64)
        cs = tl.load(coef_ptr + rows64 * 4 + 0, mask=rmask, other=0.0)
        cx = tl.load(coef_ptr + rows64 * 4 + 2, mask=rmask, other=0.0)
        m = rmask[:, None] & is_feat[None, :]
        f = tl.load(f_ptr + rows64[:, None] * ld_f + cols[None, :], mask=m, other=0.0).to(cs.dtype)
        t = tl.load(t_ptr + rows64[:, None] * ld_t + cols[None, :], mask=m, other=0.0).to(cs.dtype)
        f = tl.where(is_count[None, :], 1.0, f)
        t = tl.where(is_count[None, :], 1.0, t)
        acc_f += tl.sum(cs[:, None] * f, axis=0)
        acc_t += tl.sum(cx[:, None] * t, axis=0)
    out = is_feat | is_count
    tl.store(sums_ptr + cols, acc_f, mask=out)
    tl.store(sums_ptr + (D + 1) + cols, acc_t, mask=out)
    if pid == 0:
        img = tl.sum(acc_f * 0.0, axis=0)
        text = img
        align = img
        teacher = img
        for b0 in range(0, B, BLOCK_B):
            rows = (b0 + rows0).to(tl.int64)
            rmask = rows < B
            img += tl.sum(tl.load(rowloss_ptr + rows * 4 + 0, mask=rmask, other=0.0), axis=0)
            text += tl.sum(tl.load(rowloss_ptr + rows * 4 + 1, mask=rmask, other=0.0), axis=0)
            align += tl.sum(tl.load(rowloss_ptr + rows * 4 + 2, mask=rmask, other=0.0), axis=0)
            teacher += tl.sum(tl.load(rowloss_ptr + rows * 4 + 3, mask=rmask, other=0.0), axis=0)
        img = img / B
        text = text / B
        teacher = teacher / B
        if WITH_ALIGN:
            align = align / B
            total = img + text + lam * align
        else:
            align = align * 0.0
            total = img + text
        tl.store(total_ptr, total)
        tl.store(img_ptr, img)
        tl.store(text_ptr, text)
        tl.store(align_ptr, align)
        tl.store(teacher_ptr, teacher)


@triton.jit
def _weights_b_h(ws_ptr, wt_ptr, wx_ptr, cols, cmask, ct, cx, inv):
    """Student weights of these columns, and per row the beneficial b = min(c_T w_T, 0) and
    harmful h = relu(c_X w_X) / (||relu(c_X w_X)|| + eps) (inv is that reciprocal norm)."""
    ws = tl.load(ws_ptr + cols, mask=cmask, other=0.0)
    wt = tl.load(wt_ptr + cols, mask=cmask, other=0.0)
    wx = tl.load(wx_ptr + cols, mask=cmask, other=0.0)
    b = tl.minimum(ct[:, None] * wt[None, :], 0.0)
    h = tl.maximum(cx[:, None] * wx[None, :], 0.0) * inv[:, None]
    return ws, b, h


@autotuned(_row_configs(), key=["D"], fallback=_ROW_FALLBACK)
@triton.jit
def _backward_kernel(coef_ptr, sums_ptr, ws_ptr, wt_ptr, wx_ptr, dt_ptr, di_ptr, dx_ptr, da_ptr,
                     out_ptr, heads_ptr, B, D, lam: tl.constexpr, HAS_DT: tl.constexpr, HAS_DI: tl.constexpr,
                     HAS_DX: tl.constexpr, HAS_DA: tl.constexpr, WITH_ALIGN: tl.constexpr,
                     PROJECT: tl.constexpr, ALIGN_INSIDE: tl.constexpr, BLOCK_B: tl.constexpr,
                     BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    zero = tl.load(coef_ptr) * 0.0
    dt, di, dx, da = zero, zero, zero, zero
    if HAS_DT:
        dt = tl.load(dt_ptr).to(zero.dtype)
    if HAS_DI:
        di = tl.load(di_ptr).to(zero.dtype)
    if HAS_DX:
        dx = tl.load(dx_ptr).to(zero.dtype)
    if HAS_DA:
        da = tl.load(da_ptr).to(zero.dtype)
    scale_s = dt + di
    scale_x = dt + dx
    scale_a = zero
    if WITH_ALIGN:
        scale_a = (lam * dt + da) / B
    a_in = zero
    a_out = zero
    if ALIGN_INSIDE:
        a_in = scale_a
    else:
        a_out = scale_a

    cols0 = tl.arange(0, BLOCK_D)
    if pid == 0:  # head gradients: [scale_s * sums[0] ; scale_x * sums[1]]
        for d0 in range(0, D + 1, BLOCK_D):
            cols = d0 + cols0
            cmask = cols < D + 1
            tl.store(heads_ptr + cols, scale_s * tl.load(sums_ptr + cols, mask=cmask, other=0.0),
                     mask=cmask)
            tl.store(heads_ptr + D + 1 + cols,
                     scale_x * tl.load(sums_ptr + D + 1 + cols, mask=cmask, other=0.0), mask=cmask)

    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    rows64 = rows.to(tl.int64)
    as_ = scale_s * tl.load(coef_ptr + rows64 * 4 + 0, mask=rmask, other=0.0)
    ct = tl.load(coef_ptr + rows64 * 4 + 1, mask=rmask, other=0.0)
    cx = tl.load(coef_ptr + rows64 * 4 + 2, mask=rmask, other=0.0)
    inv = tl.load(coef_ptr + rows64 * 4 + 3, mask=rmask, other=0.0)
    dot = as_ * 0.0
    if PROJECT:
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + cols0
            cmask = cols < D
            ws, b, h = _weights_b_h(ws_ptr, wt_ptr, wx_ptr, cols, cmask, ct, cx, inv)
            dot += tl.sum((as_[:, None] * ws[None, :] + a_in * b) * h, axis=1)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + cols0
        cmask = cols < D
        ws, b, h = _weights_b_h(ws_ptr, wt_ptr, wx_ptr, cols, cmask, ct, cx, inv)
        g = as_[:, None] * ws[None, :] + a_in * b - dot[:, None] * h + a_out * b
        tl.store(out_ptr + rows64[:, None] * D + cols[None, :], g.to(out_ptr.dtype.element_ty),
                 mask=rmask[:, None] & cmask[None, :])


def on_device(device: torch.device):
    """Triton launches on the current CUDA device: make it the tensors' one (cuda:1 and up)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _rows_view(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(1) == 1 else x.contiguous()


def dgs_forward(f, f_t, t, y, w_s, w_t, w_x, b_s, b_t, b_x, lam, eps, with_align, project,
                published):
    """Same contract as torch.ops.dgsnet.dgs_forward (csrc/ops.cpp)."""
    f, f_t, t = _rows_view(f), _rows_view(f_t), _rows_view(t)
    batch, dim = f.shape
    acc = torch.float64 if f.dtype == torch.float64 else torch.float32
    for name, x in (("labels", y), ("w_s", w_s), ("w_t", w_t), ("w_x", w_x)):
        if x.dtype != acc:
            raise TypeError(f"dgsnet_triton::dgs_forward: {name} must be {acc} for {f.dtype} "
                            f"features, got {x.dtype}")
    y, w_s, w_t, w_x = (x.contiguous() for x in (y, w_s, w_t, w_x))
    harmful = f.new_empty((batch, dim), dtype=acc)
    coef = f.new_empty((batch, 4), dtype=acc)
    rowloss = f.new_empty((batch, 4), dtype=acc)
    head_sums = f.new_empty((2, dim + 1), dtype=acc)
    # separate 0-dim outputs: a custom op's outputs may not alias one another
    losses = [f.new_empty((), dtype=acc) for _ in range(5)]
    dummy = coef
    with on_device(f.device):
        _forward_kernels(f, f_t, t, y, w_s, w_t, w_x, b_s, b_t, b_x, harmful, coef, rowloss,
                         head_sums, losses, dummy, lam, eps, with_align)
    return (*losses, harmful, coef, head_sums)


def _forward_kernels(f, f_t, t, y, w_s, w_t, w_x, b_s, b_t, b_x, harmful, coef, rowloss, head_sums,
                     losses, dummy, lam, eps, with_align):
    batch, dim = f.shape
    _forward_rows_kernel[lambda m: (triton.cdiv(batch, m["BLOCK_B"]),)](
        f, f_t, t, f.stride(0), f_t.stride(0), t.stride(0), y, w_s, w_t, w_x,
        dummy if b_s is None else b_s, dummy if b_t is None else b_t,
        dummy if b_x is None else b_x, harmful, coef, rowloss, batch, dim, float(eps),
        HAS_BS=b_s is not None, HAS_BT=b_t is not None, HAS_BX=b_x is not None)
    _forward_cols_kernel[lambda m: (triton.cdiv(dim + 1, m["BLOCK_D"]),)](
        f, t, f.stride(0), t.stride(0), coef, rowloss, head_sums, *losses, batch, dim, float(lam),
        WITH_ALIGN=bool(with_align))


def dgs_backward(coef, head_sums, w_s, w_t, w_x, d_total, d_img, d_text, d_align, lam, with_align,
                 project, published, out_dtype):
    """Same contract as torch.ops.dgsnet.dgs_backward (csrc/ops.cpp)."""
    coef, head_sums = coef.contiguous(), head_sums.contiguous()
    w_s, w_t, w_x = (w.contiguous() for w in (w_s, w_t, w_x))
    batch, dim = coef.shape[0], w_s.numel()
    grad_f = coef.new_empty((batch, dim), dtype=out_dtype)
    grad_heads = coef.new_empty((2, dim + 1))
    ups = [d_total, d_img, d_text, d_align]
    ptrs = [coef if d is None else d.to(coef.dtype) for d in ups]
    with on_device(coef.device):
        _backward_kernel[lambda m: (triton.cdiv(batch, m["BLOCK_B"]),)](
            coef, head_sums, w_s, w_t, w_x, *ptrs, grad_f, grad_heads, batch, dim, float(lam),
            HAS_DT=d_total is not None, HAS_DI=d_img is not None, HAS_DX=d_text is not None,
            HAS_DA=d_align is not None, WITH_ALIGN=bool(with_align), PROJECT=bool(project),
            ALIGN_INSIDE=(not project) or bool(published))
    return grad_f, grad_heads
