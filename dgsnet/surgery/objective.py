"""dgs_objective: checks its inputs, then runs the stage-2 objective on a backend.

The math is dgsnet/surgery/reference.py (docs/method.md section 2):
backend="reference" runs `reference.objective` as written, and cpp, cuda and
triton run the fused op pair of dgsnet.surgery.backends (backends/fused.py),
which must agree with it. Nothing else happens here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dgsnet.surgery import backends, reference
from dgsnet.surgery.backends import fused, registry
from dgsnet.surgery.reference import MODES, VARIANTS

__all__ = ["MODES", "VARIANTS", "DGSLoss", "dgs_objective"]


@dataclass
class DGSLoss:
    """The total loss (backpropagate this) and each term, for logging.

    `harmful` is h (B, D), a constant: the per-row harmful direction of
    docs/method.md section 2.2, used by the per-layer surgery (section 3).
    Zero rows mean no projection. The fused backends form it on first
    access outside the layer modes (a function of the per-row coefficients),
    so a step that never reads it does not write B x D values.
    """

    total: torch.Tensor
    img: torch.Tensor
    text: torch.Tensor
    align: torch.Tensor
    teacher: torch.Tensor
    # the tensor, or (coef, w_x, w_x's version at the forward) that fused.harmful_rows forms
    # it from (a tuple, not a closure: building a closure per call cost more than the row
    # pass it saves at B=1)
    _harmful: torch.Tensor | tuple[torch.Tensor, torch.Tensor, int] = field(repr=False)

    @property
    def harmful(self) -> torch.Tensor:
        h = self._harmful
        if not isinstance(h, torch.Tensor):
            coef, w_x, version = h
            if w_x._version != version:
                raise RuntimeError(
                    "DGSLoss.harmful is formed on first read from the text head's weight, which "
                    "was changed in place after the forward (an optimizer step?). Read .harmful "
                    "before changing the weight, or use mode='layer' or 'both', whose forward "
                    "returns it computed.")
            h = self._harmful = fused.harmful_rows(coef, w_x)
        return h

    def terms(self) -> dict[str, float]:
        """Python floats of every term (one device sync), for logs."""
        names = ("total", "img", "text", "align", "teacher")
        values = torch.stack([getattr(self, n).detach().float() for n in names]).tolist()
        return dict(zip(names, values))


_MISSING = object()


def _head_params(head: nn.Module, name: str, dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not isinstance(head, nn.Linear) or head.out_features != 1 or head.in_features != dim:
        raise ValueError(f"{name} must be nn.Linear({dim}, 1) to match features of width {dim}, "
                         f"got {head!r}")
    if type(head) is nn.Linear:
        # Module attribute access (__getattr__) costs ~1 us a name; a plain Linear
        # keeps both in _parameters (functional_call and FSDP2 swap them there too).
        params = head._parameters
        weight, bias = params.get("weight"), params.get("bias", _MISSING)
        if weight is not None and bias is not _MISSING:
            return weight, bias
    return head.weight, head.bias


def _inputs_ok(student, teacher, text, labels) -> bool:
    """The cheap test that every check of _validate passes (label values aside): a few
    attribute reads per call; _validate runs only when it fails, to say what is wrong."""
    shape = student.shape
    if len(shape) != 2 or shape[0] == 0 or teacher.shape != shape or text.shape != shape:
        return False
    if labels.shape != shape[:1] or labels.is_complex():
        return False
    if not (student.is_floating_point() and teacher.is_floating_point() and text.is_floating_point()):
        return False
    if student.is_cpu:  # is_cpu is an attribute read; .device builds an object
        return teacher.is_cpu and text.is_cpu and labels.is_cpu
    device = student.device
    return teacher.device == device and text.device == device and labels.device == device


# (backend argument, device, registry generation) -> (concrete backend, its registry
# dgs_objective entry or None for the reference): resolving costs microseconds per call, and
# the answer for a pair changes only when a backend registers kernels (registry.generation).
_DISPATCH: dict = {}


def _dispatch(backend: str, device: torch.device):
    key = (backend, device, registry.generation)
    found = _DISPATCH.get(key)
    if found is None:
        resolved = backends.resolve_backend(backend, device)
        op = None if resolved == "reference" else backends.op(resolved, "dgs_objective")
        found = _DISPATCH[key] = (resolved, op)
    return found


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
    backend: str = "auto",
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
        backend: auto (the default): the fastest available for the features'
            device (cuda on a GPU, cpp on the CPU, else reference);
            reference (plain PyTorch, the specification), cpp, cuda or
            triton (one fused op for the whole objective, forward and
            backward). All agree within float tolerance (tests/surgery). The
            fused ones give first-order gradients only: a double backward
            (create_graph=True, then a backward through those gradients)
            raises; use reference for it.
        check_labels: verify labels are 0/1 (one device sync).
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: choose one of {', '.join(MODES)}")
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}: choose one of {', '.join(VARIANTS)}")
    if not lam >= 0:
        raise ValueError(f"lam must be a number >= 0, got {lam}")
    if check_labels or not _inputs_ok(student_feats, teacher_feats, text_feats, labels):
        _validate(student_feats, teacher_feats, text_feats, labels, check_labels)
    dim = student_feats.shape[1]
    heads = (_head_params(student_head, "student_head", dim),
             _head_params(teacher_head, "teacher_head", dim),
             _head_params(text_head, "text_head", dim))
    backend, op = _dispatch(backend, student_feats.device)

    if op is None:
        terms = reference.objective(student_feats, teacher_feats, text_feats, labels, heads, lam, eps,
                                    mode, variant)
    else:
        terms = fused.objective(op, student_feats, teacher_feats, text_feats, labels, heads,
                                lam, eps, mode, variant, backend)
    return DGSLoss(*terms)
