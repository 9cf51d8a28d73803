"""The stage-2 objective through a backend's fused op pair (cpp, cuda, triton).

Because the heads are linear, every quantity of docs/method.md section 2 has a
closed form per row (c = (sigmoid(z) - y) / B; see dgsnet/surgery/reference.py):

    g_T = c_T w_T,  b = min(g_T, 0),  g_X = c_X w_X,
    h   = relu(g_X) / (||relu(g_X)|| + eps),
    dL/df = s_img c_S w_S + s_align b / B      (s_* = upstream gradient of each term)

so one pass over the rows (dgs_forward) gives the losses, h and a few per-row
numbers, and the backward (dgs_backward) rebuilds G_tilde = P_h(...) from those
and the head weights alone (docs/method.md section 2.10). The ops are torch
custom ops with fake kernels and an autograd formula (contract.py), so
torch.compile traces through them.
"""
from __future__ import annotations

import torch

from dgsnet.surgery import reference

_HALF = (torch.float16, torch.bfloat16)


def _feature_dtype(student: torch.Tensor, others: tuple[torch.Tensor, ...], compute: torch.dtype,
                   backend: str) -> torch.dtype:
    # GPU kernels read half-precision features as they are (float32 inside);
    # the CPU kernel and mixed dtypes get the promoted copy the reference uses.
    native = (backend in ("cuda", "triton") and student.device.type == "cuda"
              and student.dtype in _HALF and all(o.dtype == student.dtype for o in others))
    return student.dtype if native else compute


def _as(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # Skips the no-op .to() calls: ~1 us each, and this path runs once per training step.
    return x if x.dtype == dtype else x.to(dtype)


def objective(forward, student_feats, teacher_feats, text_feats, labels, heads, lam: float,
              eps: float, mode: str, variant: str, backend: str):
    """reference.objective's (total, img, text, align, teacher, harmful) by `forward`, the
    dgs_forward op of `backend` (its autograd calls the matching dgs_backward).

    heads: ((w_s, b_s), (w_t, b_t), (w_x, b_x)), each weight (1, D), bias (1,) or None.
    """
    (w_s, b_s), (w_t, b_t), (w_x, b_x) = heads
    compute = reference.compute_dtype(student_feats.dtype)
    teacher_feats, text_feats = teacher_feats.detach(), text_feats.detach()
    feat_dtype = _feature_dtype(student_feats, (teacher_feats, text_feats), compute, backend)
    f = _as(student_feats, feat_dtype)
    f_t = _as(teacher_feats, feat_dtype)
    t = _as(text_feats, feat_dtype)
    y = _as(labels.detach(), compute)

    def param(p, frozen=False):
        if p is None:
            return None
        p = p.detach() if frozen else p
        return _as(p, compute)

    total, img, text, align, teacher, harmful, _, _ = forward(
        f, f_t, t, y, param(w_s), param(w_t, True), param(w_x), param(b_s), param(b_t, True),
        param(b_x), float(lam), float(eps), mode != "none", mode in ("feature", "both"),
        variant == "published")
    return total, img, text, align, teacher, harmful
