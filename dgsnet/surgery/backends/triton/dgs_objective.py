"""Triton kernels of the fused DGS objective (dgsnet_triton::dgs_forward / dgs_backward).

The same closed forms as csrc/cpu/dgs_objective.cpp (see dgsnet/surgery/backends/fused.py):
  forward  kernel 1, a program per tile of rows: the five row dot products
           (<f,w_S>, <f_T,w_T>, <t,w_X>, <f,min(w_T,0)>, <f,max(w_T,0)>),
           the per-row coefficients, loss terms and harmful rows;
           kernel 2, a 2-D grid (column tile x chunk of rows): each program's share of
           sum_i c_S f_i and sum_i c_X t_i (column D carries sum_i c), and in column
           tile 0 the chunk's loss sums. With one chunk (small B) it writes the
           results itself; otherwise kernel 3 adds the chunks' partials column by
           column in chunk order. Cross-row sums need every row's coefficient
           first, hence two or three launches (Triton has no grid-wide barrier);
           all are deterministic for a given config (no atomics).
  backward one launch, a program per tile of rows; program 0 also writes the
           head gradients.
Features may be float32/float16/bfloat16 (float32 sums) or float64.

Tuning (class Tuned): on a GPU a kernel is autotuned over its configs once per
(D, bucket(B)) and dtypes, where bucket(B) is B's next power of two (capped at
B_BUCKET_CAP): tuned at B=1, a config is not reused at B=4096. Summation order
(hence the last bits) follows the config, so two processes may differ after
tuning; DGSNET_TRITON_PINNED=1 in the environment pins one config per kernel
(no benchmarking, few compiles, the same bits in every process: tests and
scripts/gpu-check.sh set it). Under the interpreter each kernel has one small
config that makes tiny test shapes cross every tile edge. lam and eps are
runtime values read from a device tensor (scalars()): a new value compiles
nothing. B and the chunk counts are not specialised on (one compiled variant
for every batch size).
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
PINNED_ENV = "DGSNET_TRITON_PINNED"
B_BUCKET_CAP = 4096


def pinned() -> bool:
    """True when DGSNET_TRITON_PINNED=1: every autotuned kernel runs its one pinned config."""
    return os.environ.get(PINNED_ENV) == "1"


def bucket(n: int, cap: int = B_BUCKET_CAP) -> int:
    """The autotune key of a size: its next power of two, at most `cap` (sizes past it
    fill the GPU alike)."""
    return min(cap, 1 << max(0, int(n) - 1).bit_length())


class Tuned:
    """One jitted kernel behind three triton.autotune wrappers sharing its compile cache:
    `configs` (benchmarked once per key on a GPU), `pinned` alone (DGSNET_TRITON_PINNED=1)
    and `interpreted` alone (TRITON_INTERPRET=1, where each benchmarked config would cost
    seconds). A single-config autotuner never benchmarks. Only for kernels without side
    effects on their inputs (autotuning runs them repeatedly)."""

    def __init__(self, fn, configs, pinned_config, interpreted, key):
        self.fn, self.configs, self.pinned, self.interpreted = fn, list(configs), pinned_config, interpreted
        self.key = list(key)
        self.tuned = triton.autotune(configs=self.configs, key=self.key)(fn)
        self.one = triton.autotune(configs=[pinned_config], key=self.key)(fn)
        self.interp = triton.autotune(configs=[interpreted], key=self.key)(fn)

    def select(self, interpret: bool | None = None, pin: bool | None = None):
        """The autotuner a launch uses now (arguments override the environment, for tests)."""
        if INTERPRET if interpret is None else interpret:
            return self.interp
        return self.one if (pinned() if pin is None else pin) else self.tuned

    def __getitem__(self, grid):
        return self.select()[grid]


def _row_configs():
    return [triton.Config({"BLOCK_B": b, "BLOCK_D": d}, num_warps=w)
            for b, d, w in [(1, 256, 2), (1, 1024, 4), (2, 512, 4), (4, 256, 4), (4, 512, 8),
                            (8, 128, 4), (8, 256, 8), (16, 128, 8)]]


def _col_configs():
    return [triton.Config({"BLOCK_B": b, "BLOCK_D": d}, num_warps=w)
            for b, d, w in [(32, 32, 4), (64, 32, 4), (32, 64, 4), (64, 64, 8), (128, 16, 4),
                            (16, 128, 4)]]


_ROW_PINNED = triton.Config({"BLOCK_B": 4, "BLOCK_D": 256}, num_warps=4)
_COL_PINNED = triton.Config({"BLOCK_B": 32, "BLOCK_D": 64}, num_warps=4)
_ROW_INTERP = triton.Config({"BLOCK_B": 8, "BLOCK_D": 64}, num_warps=1)
_COL_INTERP = triton.Config({"BLOCK_B": 16, "BLOCK_D": 64}, num_warps=1)
_KEY = ["D", "B_BUCKET"]
# Rows of one chunk of the column pass: a multiple of every config's BLOCK_B on a GPU;
# small under the interpreter so that test shapes have several chunks.
_CHUNK_QUANTUM = 16 if INTERPRET else 128
_REDUCE_BLOCK = 256


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _row_chunks(batch: int, dim: int, device: torch.device) -> tuple[int, int]:
    """(rows per chunk, chunks) of the column pass: about four programs per SM over the
    (column tile x chunk) grid, whole quanta of rows per chunk, at least one chunk."""
    target = 8 if device.type != "cuda" else 4 * _sm_count(device.index
                                                          if device.index is not None
                                                          else torch.cuda.current_device())
    tiles = triton.cdiv(dim + 1, 64)
    want = max(1, target // tiles)
    rows = _CHUNK_QUANTUM * triton.cdiv(triton.cdiv(max(batch, 1), want), _CHUNK_QUANTUM)
    return rows, triton.cdiv(max(batch, 1), rows)


_SCALARS: dict = {}
_SCALARS_MAX = 64


def scalars(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The kernels' float parameters (lam, eps) as one tensor of the accumulation dtype on
    `device`: runtime values, where tl.constexpr would recompile per value and a Python
    float would arrive as float32 (wrong bits for float64). Cached per value (copied once,
    synchronously, so any stream may read it); inside a CUDA graph capture, filled on the
    device instead (no host copy may be captured) and not cached."""
    key = (tuple(float(v) for v in values), dtype, device)
    hit = _SCALARS.get(key)
    if hit is not None:
        return hit
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        out = torch.empty(len(values), dtype=dtype, device=device)
        for i, v in enumerate(key[0]):
            out[i].fill_(v)
        return out
    out = torch.tensor(key[0], dtype=dtype).to(device)
    if len(_SCALARS) < _SCALARS_MAX:  # never evicted: another stream may still read an entry
        _SCALARS[key] = out
    return out


@triton.jit
def _sigmoid_bce(z, y):
    e = tl.exp(tl.where(z < 0, z, -z))
    r = 1.0 / (1.0 + e)
    sig = tl.where(z >= 0, r, e * r)
    bce = tl.maximum(z, 0.0) - z * y + tl.log(1.0 + e)
    return sig, bce


@triton.jit(do_not_specialize=["B", "B_BUCKET"])
def _forward_rows_kernel(f_ptr, ft_ptr, t_ptr, ld_f, ld_ft, ld_t, y_ptr, ws_ptr, wt_ptr, wx_ptr,
                         bs_ptr, bt_ptr, bx_ptr, scal_ptr, harmful_ptr, coef_ptr, rowloss_ptr, B, D,
                         B_BUCKET, HAS_BS: tl.constexpr, HAS_BT: tl.constexpr,
                         HAS_BX: tl.constexpr, WANT_H: tl.constexpr, BLOCK_B: tl.constexpr,
                         BLOCK_D: tl.constexpr):
    # B_BUCKET: only the autotune key. WANT_H=False: the harmful rows are not written
    # (harmful_ptr is a placeholder), the B x D store the op skips for want_harmful=False.
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    rows64 = rows.to(tl.int64)
    cols0 = tl.arange(0, BLOCK_D)
    eps = tl.load(scal_ptr + 1)
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
    if WANT_H:
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + cols0
            cmask = cols < D
            wx = tl.load(wx_ptr + cols, mask=cmask, other=0.0)
            h = tl.maximum(cx[:, None] * wx[None, :], 0.0) * inv[:, None]
            tl.store(harmful_ptr + rows64[:, None] * D + cols[None, :], h,
                     mask=rmask[:, None] & cmask[None, :])


_FORWARD_ROWS = Tuned(_forward_rows_kernel, _row_configs(), _ROW_PINNED, _ROW_INTERP, _KEY)


@triton.jit
def _store_losses(img, text, align, teacher, lam, B, total_ptr, img_ptr, text_ptr, align_ptr,
                  teacher_ptr, WITH_ALIGN: tl.constexpr):
    """The five loss outputs from the four sums over the batch."""
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


@triton.jit(do_not_specialize=["B", "B_BUCKET", "rows_per_chunk", "n_chunks"])
def _forward_cols_kernel(f_ptr, t_ptr, ld_f, ld_t, coef_ptr, rowloss_ptr, scal_ptr, out_ptr, W,
                         total_ptr, img_ptr, text_ptr, align_ptr, teacher_ptr, B, D, B_BUCKET,
                         rows_per_chunk, n_chunks, WITH_ALIGN: tl.constexpr,
                         BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program (column tile, chunk): the chunk's column sums into row `chunk` of out
    (width W: [sum c_S f | sum c_S ; sum c_X t | sum c_X ; 4 loss sums]). With one chunk,
    out is head_sums itself and tile 0 writes the loss means."""
    pid = tl.program_id(0)
    chunk = tl.program_id(1)
    cols = pid * BLOCK_D + tl.arange(0, BLOCK_D)
    is_feat = cols < D
    is_count = cols == D  # column D: the plain sum of the coefficients
    rows0 = tl.arange(0, BLOCK_B)
    r_begin = chunk * rows_per_chunk
    r_end = tl.minimum(B, r_begin + rows_per_chunk)
    first = tl.load(coef_ptr)
    acc_f = tl.zeros([BLOCK_D], dtype=first.dtype)
    acc_t = tl.zeros([BLOCK_D], dtype=first.dtype)
    for b0 in range(r_begin, r_end, BLOCK_B):
        rows = b0 + rows0
        rmask = rows < r_end
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
    out_row = out_ptr + chunk.to(tl.int64) * W
    out = is_feat | is_count
    tl.store(out_row + cols, acc_f, mask=out)
    tl.store(out_row + (D + 1) + cols, acc_t, mask=out)
    if pid == 0:
        img = tl.sum(acc_f * 0.0, axis=0)
        text = img
        align = img
        teacher = img
        for b0 in range(r_begin, r_end, BLOCK_B):
            rows = (b0 + rows0).to(tl.int64)
            rmask = rows < r_end
            img += tl.sum(tl.load(rowloss_ptr + rows * 4 + 0, mask=rmask, other=0.0), axis=0)
            text += tl.sum(tl.load(rowloss_ptr + rows * 4 + 1, mask=rmask, other=0.0), axis=0)
            align += tl.sum(tl.load(rowloss_ptr + rows * 4 + 2, mask=rmask, other=0.0), axis=0)
            teacher += tl.sum(tl.load(rowloss_ptr + rows * 4 + 3, mask=rmask, other=0.0), axis=0)
        if n_chunks == 1:
            _store_losses(img, text, align, teacher, tl.load(scal_ptr), B, total_ptr, img_ptr,
                          text_ptr, align_ptr, teacher_ptr, WITH_ALIGN)
        else:
            tl.store(out_row + 2 * (D + 1) + 0, img)
            tl.store(out_row + 2 * (D + 1) + 1, text)
            tl.store(out_row + 2 * (D + 1) + 2, align)
            tl.store(out_row + 2 * (D + 1) + 3, teacher)


_FORWARD_COLS = Tuned(_forward_cols_kernel, _col_configs(), _COL_PINNED, _COL_INTERP, _KEY)


@triton.jit(do_not_specialize=["B", "n_chunks"])
def _forward_reduce_kernel(part_ptr, W, sums_ptr, scal_ptr, total_ptr, img_ptr, text_ptr,
                           align_ptr, teacher_ptr, B, D, n_chunks, WITH_ALIGN: tl.constexpr,
                           BLOCK: tl.constexpr):
    """The chunks' partial sums added column by column in chunk order (deterministic);
    program 0 also adds the loss sums and writes the five losses."""
    pid = tl.program_id(0)
    cols = pid * BLOCK + tl.arange(0, BLOCK)
    m = cols < 2 * (D + 1)
    acc = tl.load(part_ptr + cols, mask=m, other=0.0)
    for c in range(1, n_chunks):
        acc += tl.load(part_ptr + c * W + cols, mask=m, other=0.0)
    tl.store(sums_ptr + cols, acc, mask=m)
    if pid == 0:
        k = tl.arange(0, 4)
        losses = tl.load(part_ptr + 2 * (D + 1) + k)
        for c in range(1, n_chunks):
            losses += tl.load(part_ptr + c * W + 2 * (D + 1) + k)
        _store_losses(tl.sum(tl.where(k == 0, losses, 0.0), axis=0),
                      tl.sum(tl.where(k == 1, losses, 0.0), axis=0),
                      tl.sum(tl.where(k == 2, losses, 0.0), axis=0),
                      tl.sum(tl.where(k == 3, losses, 0.0), axis=0),
                      tl.load(scal_ptr), B, total_ptr, img_ptr, text_ptr, align_ptr, teacher_ptr,
                      WITH_ALIGN)


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


@triton.jit(do_not_specialize=["B", "B_BUCKET"])
def _backward_kernel(coef_ptr, sums_ptr, ws_ptr, wt_ptr, wx_ptr, dt_ptr, di_ptr, dx_ptr, da_ptr,
                     scal_ptr, out_ptr, heads_ptr, B, D, B_BUCKET, HAS_DT: tl.constexpr,
                     HAS_DI: tl.constexpr, HAS_DX: tl.constexpr, HAS_DA: tl.constexpr,
                     WITH_ALIGN: tl.constexpr, PROJECT: tl.constexpr, ALIGN_INSIDE: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
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
        scale_a = (tl.load(scal_ptr) * dt + da) / B
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


_BACKWARD = Tuned(_backward_kernel, _row_configs(), _ROW_PINNED, _ROW_INTERP, _KEY)


def on_device(device: torch.device):
    """Triton launches on the current CUDA device: make it the tensors' one (cuda:1 and up)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _rows_view(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(1) == 1 else x.contiguous()


def dgs_forward(f, f_t, t, y, w_s, w_t, w_x, b_s, b_t, b_x, lam, eps, with_align, project,
                published, want_harmful=True):
    """Same contract as torch.ops.dgsnet.dgs_forward (csrc/ops.cpp)."""
    f, f_t, t = _rows_view(f), _rows_view(f_t), _rows_view(t)
    batch, dim = f.shape
    acc = torch.float64 if f.dtype == torch.float64 else torch.float32
    for name, x in (("labels", y), ("w_s", w_s), ("w_t", w_t), ("w_x", w_x)):
        if x.dtype != acc:
            raise TypeError(f"dgsnet_triton::dgs_forward: {name} must be {acc} for {f.dtype} "
                            f"features, got {x.dtype}")
    y, w_s, w_t, w_x = (x.contiguous() for x in (y, w_s, w_t, w_x))
    harmful = f.new_empty((batch if want_harmful else 0, dim), dtype=acc)
    coef = f.new_empty((batch, 4), dtype=acc)
    rowloss = f.new_empty((batch, 4), dtype=acc)
    head_sums = f.new_empty((2, dim + 1), dtype=acc)
    # separate 0-dim outputs: a custom op's outputs may not alias one another
    losses = [f.new_empty((), dtype=acc) for _ in range(5)]
    dummy = coef
    with on_device(f.device):
        _forward_kernels(f, f_t, t, y, w_s, w_t, w_x, b_s, b_t, b_x, harmful, coef, rowloss,
                         head_sums, losses, dummy, scalars((lam, eps), acc, f.device), with_align,
                         bool(want_harmful))
    return (*losses, harmful, coef, head_sums)


def _forward_kernels(f, f_t, t, y, w_s, w_t, w_x, b_s, b_t, b_x, harmful, coef, rowloss, head_sums,
                     losses, dummy, scal, with_align, want_harmful=True):
    batch, dim = f.shape
    b_bucket = bucket(batch)
    _FORWARD_ROWS[lambda m: (triton.cdiv(batch, m["BLOCK_B"]),)](
        f, f_t, t, f.stride(0), f_t.stride(0), t.stride(0), y, w_s, w_t, w_x,
        dummy if b_s is None else b_s, dummy if b_t is None else b_t,
        dummy if b_x is None else b_x, scal, harmful if want_harmful else dummy, coef, rowloss,
        batch, dim, b_bucket, HAS_BS=b_s is not None, HAS_BT=b_t is not None,
        HAS_BX=b_x is not None, WANT_H=want_harmful)
    rows_per_chunk, n_chunks = _row_chunks(batch, dim, f.device)
    width = 2 * (dim + 1) + 4
    # One chunk: the column pass writes head_sums and the losses itself (two launches).
    part = head_sums if n_chunks == 1 else f.new_empty((n_chunks, width), dtype=coef.dtype)
    _FORWARD_COLS[lambda m: (triton.cdiv(dim + 1, m["BLOCK_D"]), n_chunks)](
        f, t, f.stride(0), t.stride(0), coef, rowloss, scal, part, width, *losses, batch, dim,
        b_bucket, rows_per_chunk, n_chunks, WITH_ALIGN=bool(with_align))
    if n_chunks > 1:
        _forward_reduce_kernel[(triton.cdiv(2 * (dim + 1), _REDUCE_BLOCK),)](
            part, width, head_sums, scal, *losses, batch, dim, n_chunks,
            WITH_ALIGN=bool(with_align), BLOCK=_REDUCE_BLOCK, num_warps=4)


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
    scal = scalars((lam,), coef.dtype, coef.device)
    with on_device(coef.device):
        _BACKWARD[lambda m: (triton.cdiv(batch, m["BLOCK_B"]),)](
            coef, head_sums, w_s, w_t, w_x, *ptrs, scal, grad_f, grad_heads, batch, dim,
            bucket(batch), HAS_DT=d_total is not None, HAS_DI=d_img is not None,
            HAS_DX=d_text is not None, HAS_DA=d_align is not None, WITH_ALIGN=bool(with_align),
            PROJECT=bool(project), ALIGN_INSIDE=(not project) or bool(published))
    return grad_f, grad_heads
