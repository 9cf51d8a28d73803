"""The DGS-Net stage-2 objective with gradient surgery (docs/method.md#2-the-stage-2-objective).

`dgs_objective` returns a loss whose backward delivers, into whatever produced
the student features, the surgically modified gradient G_tilde, and ordinary
gradients into the student and text heads (none into the teacher head).

backend="reference" runs the plain-PyTorch formulation below (the
specification); every other backend runs the fused op pair of
dgsnet.surgery.fused, which must agree with it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dgsnet.surgery import fused, ops, reference

MODES = ("none", "feature", "layer", "both")
# "published": project the sum of the task and alignment gradients (the
# published code). "paper": project the task gradient, then add alignment
# (the paper's figure).
VARIANTS = ("published", "paper")


@dataclass
class DGSLoss:
    """The total loss (backpropagate this) and each term, for logging.

    `harmful` is h_hat (B, D), a constant: the per-row unit harmful direction,
    used by the parameter-space (layer) surgery. Zero rows mean no projection.
    """

    total: torch.Tensor
    img: torch.Tensor
    text: torch.Tensor
    align: torch.Tensor
    teacher: torch.Tensor
    harmful: torch.Tensor

    def terms(self) -> dict[str, float]:
        """Python floats of every term (one device sync), for logs."""
        names = ("total", "img", "text", "align", "teacher")
        values = torch.stack([getattr(self, n).detach().float() for n in names]).tolist()
        return dict(zip(names, values))


class _ProjectGrad(torch.autograd.Function):
    """Identity forward; backward removes each row's component along h (constant)."""

    @staticmethod
    def forward(ctx, feats, harmful):
        ctx.save_for_backward(harmful)
        return feats.view_as(feats)

    @staticmethod
    def backward(ctx, grad):
        (harmful,) = ctx.saved_tensors
        return reference.project_rows(grad, harmful), None


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half types are promoted: the surgery's reductions need float32 accumulation.
    return torch.promote_types(dtype, torch.float32)


def _head_params(head: nn.Module, name: str, dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not isinstance(head, nn.Linear) or head.out_features != 1 or head.in_features != dim:
        raise ValueError(f"{name} must be nn.Linear({dim}, 1) to match features of width {dim}, "
                         f"got {head!r}")
    return head.weight, head.bias


def _validate(student, teacher, text, labels, check_labels: bool) -> None:
    if student.dim() != 2:
        raise ValueError(f"student_feats must be (B, D), got shape {tuple(student.shape)}")
    if student.shape[0] == 0:
        raise ValueError("student_feats is an empty batch (B=0)")
    for name, t in (("teacher_feats", teacher), ("text_feats", text)):
        if t.shape != student.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but student_feats has "
                             f"{tuple(student.shape)}; all three must be (B, D)")
    for name, t in (("student_feats", student), ("teacher_feats", teacher), ("text_feats", text)):
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.device != student.device:
            raise ValueError(f"{name} is on {t.device} but student_feats is on {student.device}; "
                             "move all inputs to one device")
    if labels.shape != (student.shape[0],):
        raise ValueError(f"labels must have shape ({student.shape[0]},), got {tuple(labels.shape)}")
    if labels.device != student.device:
        raise ValueError(f"labels are on {labels.device} but student_feats is on {student.device}")
    if labels.is_complex():
        raise TypeError(f"labels must be real 0/1 values, got {labels.dtype}")
    if check_labels and not bool(((labels == 0) | (labels == 1)).all()):
        bad = labels[(labels != 0) & (labels != 1)][:5].tolist()
        raise ValueError(f"labels must be 0 (real) or 1 (generated); found {bad}")


def dgs_objective(
    student_feats: torch.Tensor,
    teacher_feats: torch.Tensor,
    text_feats: torch.Tensor,
    labels: torch.Tensor,
    student_head: nn.Linear,
    teacher_head: nn.Linear,
    text_head: nn.Linear,
    lam: float = 0.2,
    eps: float = 1e-6,
    mode: str = "feature",
    variant: str = "published",
    backend: str = "reference",
    check_labels: bool = True,
) -> DGSLoss:
    """L = L_img + L_text + lam * L_align with orthogonal suppression of the feature gradient.

    Args:
        student_feats: (B, D) student image features; gradients flow into them.
        teacher_feats: (B, D) frozen-teacher image features (treated as constants).
        text_feats: (B, D) frozen text features of each image's caption (constants).
        labels: (B,) with 1 = generated, 0 = real.
        student_head, teacher_head, text_head: nn.Linear(D, 1) each.
        lam: weight of the prior-alignment loss.
        eps: added to ||relu(g_X)|| when normalising the harmful direction.
        mode: "none" (plain fine-tuning: L_img + L_text, no alignment, no
            projection), "feature" (DGS-Net, as the paper and published code),
            "layer" (alignment, no feature projection; the caller projects in
            parameter space with `harmful`), "both" (feature projection and
            the caller's). "layer" and "both" are dgsnet's extension, in
            neither the paper nor the published code.
        variant: "published" projects the sum of task and alignment
            gradients; "paper" projects the task gradient then adds alignment.
        backend: reference (plain PyTorch, the specification), cpp, cuda or
            triton (one fused op for the whole objective, forward and
            backward), or auto: the fastest available for the features'
            device (cuda on a GPU, cpp on the CPU, else reference).
        check_labels: verify labels are 0/1 (one device sync).
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: choose one of {', '.join(MODES)}")
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}: choose one of {', '.join(VARIANTS)}")
    if not lam >= 0:
        raise ValueError(f"lam must be a number >= 0, got {lam}")
    _validate(student_feats, teacher_feats, text_feats, labels, check_labels)
    batch, dim = student_feats.shape
    w_s, b_s = _head_params(student_head, "student_head", dim)
    w_t, b_t = _head_params(teacher_head, "teacher_head", dim)
    w_x, b_x = _head_params(text_head, "text_head", dim)
    backend = ops.resolve_backend(backend, student_feats.device)

    dtype = _compute_dtype(student_feats.dtype)
    if backend != "reference":
        total, loss_img, loss_text, loss_align, loss_teacher, harmful = fused.fused_objective(
            student_feats, teacher_feats, text_feats, labels, ((w_s, b_s), (w_t, b_t), (w_x, b_x)),
            lam, eps, mode, variant, backend, dtype)
        return DGSLoss(total=total, img=loss_img, text=loss_text, align=loss_align,
                       teacher=loss_teacher, harmful=harmful)

    feats = student_feats.to(dtype)
    y = labels.detach().to(dtype)

    def logits(x, w, b):
        return F.linear(x, w.to(dtype), None if b is None else b.to(dtype)).squeeze(1)

    with torch.no_grad():
        z_t = logits(teacher_feats.detach().to(dtype), w_t.detach(), None if b_t is None else b_t.detach())
        loss_teacher = F.binary_cross_entropy_with_logits(z_t, y)
    z_x = logits(text_feats.detach().to(dtype), w_x, b_x)
    loss_text = F.binary_cross_entropy_with_logits(z_x, y)

    with torch.no_grad():
        g_x = reference.bce_feature_grad(z_x.detach(), y, w_x.detach().to(dtype))
        harmful = reference.harmful_direction(g_x, eps)
        if mode == "none":
            beneficial = None
        else:
            g_t = reference.bce_feature_grad(z_t, y, w_t.detach().to(dtype))
            beneficial = reference.beneficial_direction(g_t)

    project = mode in ("feature", "both")
    if project and variant == "published":
        task_feats = align_feats = _ProjectGrad.apply(feats, harmful)
    elif project:
        task_feats, align_feats = _ProjectGrad.apply(feats, harmful), feats
    else:
        task_feats = align_feats = feats

    loss_img = F.binary_cross_entropy_with_logits(logits(task_feats, w_s, b_s), y)
    if beneficial is None:
        loss_align = feats.new_zeros(())
        total = loss_img + loss_text
    else:
        loss_align = (align_feats * beneficial).sum() / batch
        total = loss_img + loss_text + lam * loss_align
    return DGSLoss(total=total, img=loss_img, text=loss_text, align=loss_align,
                   teacher=loss_teacher, harmful=harmful)
