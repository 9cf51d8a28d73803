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
from torch.overrides import has_torch_function

from dgsnet.surgery import reference

_HALF = (torch.float16, torch.bfloat16)


def _feature_dtype(student: torch.Tensor, others: tuple[torch.Tensor, ...], compute: torch.dtype,
                   backend: str) -> torch.dtype:
    # GPU kernels read half-precision features as they are (float32 inside);
    # the CPU kernel and mixed dtypes get the promoted copy the reference uses.
    native = (backend in ("cuda", "triton") and student.device.type == "cuda"
              and student.dtype in _HALF and all(o.dtype == student.dtype for o in others))
    return student.dtype if native else compute


# Per call this path runs once per training step; every line below is a few
# hundred nanoseconds at most (B=1 costs are dominated by it, not the kernel):
# no .to() or .detach() that would do nothing, no closures.
_COMPUTE = {torch.float32: torch.float32, torch.float64: torch.float64}


def _as(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x if x.dtype == dtype else x.to(dtype)


def _const(x: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """x as a constant of `dtype` (detached only when it needs it)."""
    if x is None:
        return None
    if x.requires_grad:
        x = x.detach()
    return x if x.dtype == dtype else x.to(dtype)


def harmful_rows(coef: torch.Tensor, w_x: torch.Tensor) -> torch.Tensor:
    """h from dgs_forward's per-row coefficients: relu(c_X w_X) / (||.|| + eps) is
    relu(coef[:, 2] w_x) * coef[:, 3] (csrc/ops.cpp). DGSLoss.harmful calls it on first use, so
    a step that does not read h never writes its B x D values."""
    w = w_x.detach().reshape(1, -1).to(coef.dtype)
    return torch.relu(coef[:, 2:3] * w) * coef[:, 3:4]


def objective(op, student_feats, teacher_feats, text_feats, labels, heads, lam: float,
              eps: float, mode: str, variant: str, backend: str):
    """reference.objective's (total, img, text, align, teacher, harmful) by `op`, the
    registry's dgs_objective of `backend` (its dgs_forward op, whose autograd calls the matching
    dgs_backward; or that op's eager entry). harmful is a tensor in the layer modes, which use
    it at once, and otherwise (coef, w_x, w_x's version) that `harmful_rows` forms it from.

    heads: ((w_s, b_s), (w_t, b_t), (w_x, b_x)), each weight (1, D), bias (1,) or None.
    """
    (w_s, b_s), (w_t, b_t), (w_x, b_x) = heads
    compute = _COMPUTE.get(student_feats.dtype) or reference.compute_dtype(student_feats.dtype)
    if (student_feats.dtype == compute and teacher_feats.dtype == compute
            and text_feats.dtype == compute):
        feat_dtype = compute
    else:
        feat_dtype = _feature_dtype(student_feats, (teacher_feats, text_feats), compute, backend)
    with_align, project = mode != "none", mode in ("feature", "both")
    published = variant == "published"
    want_harmful = mode in ("layer", "both")
    if op.eager is not None and not torch.compiler.is_compiling() and not has_torch_function(
            (student_feats, teacher_feats, text_feats, labels, w_s, w_t, w_x)):
        # The eager entry casts in C++ and skips torch.ops' argument matching (several us of a
        # B=1 call); torch.compile traces, and tensor subclasses or modes overriding
        # __torch_function__ see, the op itself below.
        total, img, text, align, teacher, harmful, coef = op.eager(
            student_feats, teacher_feats, text_feats, labels, w_s, w_t, w_x, b_s, b_t, b_x,
            float(lam), float(eps), with_align, project, published, want_harmful, feat_dtype,
            compute)
    else:
        total, img, text, align, teacher, harmful, coef, _ = op.forward(
            _as(student_feats, feat_dtype), _const(teacher_feats, feat_dtype),
            _const(text_feats, feat_dtype), _const(labels, compute), _as(w_s, compute),
            _const(w_t, compute), _as(w_x, compute), None if b_s is None else _as(b_s, compute),
            _const(b_t, compute), None if b_x is None else _as(b_x, compute), float(lam),
            float(eps), with_align, project, published, want_harmful)
    # w_x's version counter tells DGSLoss.harmful whether the weight changed (an optimizer
    # step) before h is read; a copy per call cost ~8 us at B=1, more than the saved pass.
    return (total, img, text, align, teacher,
            harmful if want_harmful else (coef, w_x, w_x._version))
