"""The DGS-Net surgery, specified in plain PyTorch: all of the math, in this one file.

docs/method.md gives the same math as prose and formulas; the section numbers
below are its sections. `dgs_objective(..., backend="reference")` runs
`objective` exactly as written here. Every other backend (dgsnet.surgery.backends:
cpp, cuda, triton) computes the same quantities with fused kernels, and the
tests check it against these functions.

    docs/method.md   what                                        here
    2.1              closed-form feature gradients c_i w         bce_feature_grad
    2.2              harmful direction h_i (text branch)         harmful_direction
    2.3              beneficial direction b_i (teacher probe)    beneficial_direction
    2.4              total loss L = L_img + L_text + lam L_align objective
    2.5              feature-space projection P_i, variants      project_features, VARIANTS
    2.6              surgery modes                               MODES
    2.8              precision                                   compute_dtype
    3                per-layer (parameter-space) projection      project_params_

Notation (docs/method.md section 2.1): a batch of B rows with labels y_i
(1 = generated, 0 = real); student features f_i (trainable), teacher features
f_T,i and text features t_i (constants); three linear heads (w, beta):
student S, teacher T, text X. For a mean BCE loss through a linear head, the
gradient with respect to row i of its input is c_i w, c_i = (sigmoid(z_i) - y_i) / B.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# docs/method.md section 2.6. What `mode` turns on:
#   "none"     L_img + L_text; no alignment term, no projection (plain LoRA fine-tuning)
#   "feature"  L with the feature-space projection (DGS-Net: the paper and the published code)
#   "layer"    L without it; the caller projects in parameter space (section 3, a dgsnet extension)
#   "both"     L with the feature-space projection, and the caller's parameter-space one
MODES = ("none", "feature", "layer", "both")

# docs/method.md section 2.5. Which gradient the feature-space projection acts on:
#   "published"  P_i (task + alignment gradient): the published code (the default)
#   "paper"      P_i (task gradient), then the alignment gradient added: the paper's order
VARIANTS = ("published", "paper")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the objective is computed in (section 2.8): float32 at least.

    Half-precision features are promoted, since the surgery's reductions need
    float32 accumulation; float64 stays float64.
    """
    return torch.promote_types(dtype, torch.float32)


def bce_feature_grad(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Section 2.1: the gradient of L = mean_i BCE(x_i . w + beta, y_i) with respect to row x_i.

    Per row, c_i w with c_i = (sigmoid(z_i) - y_i) / B: a (B, D) tensor.
    """
    batch = logits.shape[0]
    return (torch.sigmoid(logits) - labels).unsqueeze(1) * weight.reshape(1, -1) / batch


def harmful_direction(text_grad: torch.Tensor, eps: float) -> torch.Tensor:
    """Section 2.2: h_i = r_i / (||r_i||_2 + eps) with r_i = max(g_X,i, 0) per coordinate.

    eps is added to the norm, not to its square, so a zero r_i gives h_i = 0
    (section 2.7: that row is not projected).
    """
    positive = text_grad.clamp(min=0)
    return positive / (positive.norm(dim=1, keepdim=True) + eps)


def beneficial_direction(teacher_grad: torch.Tensor) -> torch.Tensor:
    """Section 2.3: b_i = min(g_T,i, 0) per coordinate, not normalised."""
    return teacher_grad.clamp(max=0)


def project_features(grad: torch.Tensor, harmful: torch.Tensor) -> torch.Tensor:
    """Section 2.5, the feature-space projection: P_i v = v - <v, h_i> h_i for each row i.

    P_i is symmetric, so it is its own adjoint: the backward of the projection
    is the projection itself.
    """
    return grad - (grad * harmful).sum(dim=1, keepdim=True) * harmful


class _ProjectGrad(torch.autograd.Function):
    """Section 2.5: the identity in the forward pass; the backward applies P_i to the gradient
    arriving at the features, with h held constant."""

    @staticmethod
    def forward(ctx, feats, harmful):
        ctx.save_for_backward(harmful)
        return feats.view_as(feats)

    @staticmethod
    def backward(ctx, grad):
        (harmful,) = ctx.saved_tensors
        return project_features(grad, harmful), None


def objective(student_feats: torch.Tensor, teacher_feats: torch.Tensor, text_feats: torch.Tensor,
              labels: torch.Tensor, heads, lam: float, eps: float, mode: str, variant: str):
    """Section 2: the stage-2 objective with its gradient surgery, on checked inputs.

    heads: ((w_S, beta_S), (w_T, beta_T), (w_X, beta_X)), each weight (1, D) and
    each bias (1,) or None. Returns (total, img, text, align, teacher, harmful):
    the total loss L (backpropagate it), the terms L_img, L_text, L_align and
    L_T (logged only), and h (B, D), a constant for the per-layer surgery.

    Backpropagating `total` delivers the surgical gradient G_tilde into
    whatever produced `student_feats`, and ordinary gradients into the student
    and text heads; the teacher head and h get none.
    """
    (w_s, b_s), (w_t, b_t), (w_x, b_x) = heads
    batch = student_feats.shape[0]
    dtype = compute_dtype(student_feats.dtype)
    f = student_feats.to(dtype)
    y = labels.detach().to(dtype)

    def logits(x, w, b):
        return F.linear(x, w.to(dtype), None if b is None else b.to(dtype)).squeeze(1)

    # 2.1: the teacher and text branches. f_T, t and the teacher head are constants.
    with torch.no_grad():
        z_t = logits(teacher_feats.detach().to(dtype), w_t.detach(), None if b_t is None else b_t.detach())
        loss_teacher = F.binary_cross_entropy_with_logits(z_t, y)  # L_T: logged, no gradient
    z_x = logits(text_feats.detach().to(dtype), w_x, b_x)
    loss_text = F.binary_cross_entropy_with_logits(z_x, y)

    # 2.2 and 2.3: the harmful and beneficial directions, from the heads' current weights.
    with torch.no_grad():
        g_x = bce_feature_grad(z_x.detach(), y, w_x.detach().to(dtype))
        harmful = harmful_direction(g_x, eps)
        if mode == "none":
            beneficial = None
        else:
            g_t = bce_feature_grad(z_t, y, w_t.detach().to(dtype))
            beneficial = beneficial_direction(g_t)

    # 2.5: P_i acts on the gradient reaching f through the task loss, and through the
    # alignment term too in the published variant.
    project = mode in ("feature", "both")
    if project and variant == "published":
        task_feats = align_feats = _ProjectGrad.apply(f, harmful)
    elif project:
        task_feats, align_feats = _ProjectGrad.apply(f, harmful), f
    else:
        task_feats = align_feats = f

    # 2.4: L = L_img + L_text + lam L_align, L_align = (1/B) sum_i <f_i, b_i>.
    loss_img = F.binary_cross_entropy_with_logits(logits(task_feats, w_s, b_s), y)
    if beneficial is None:
        loss_align = f.new_zeros(())
        total = loss_img + loss_text
    else:
        loss_align = (align_feats * beneficial).sum() / batch
        total = loss_img + loss_text + lam * loss_align
    return total, loss_img, loss_text, loss_align, loss_teacher, harmful


def project_params_(grads: list[torch.Tensor], directions: list[torch.Tensor], eps: float) -> None:
    """Section 3, the per-layer (parameter-space) projection, in place, one tensor at a time:

        g_l <- g_l - <g_l, u_l> / (||u_l||^2 + eps) * u_l

    u_l = d/d theta_l sum_i <f_i, h_i> (h held constant) is the parameter image
    of the harmful direction; dgsnet.surgery.layer.LayerSurgery computes it in
    the main backward pass. Inner products and norms run over all elements of
    the tensor, and eps is added to the squared norm. A zero u_l leaves g_l
    unchanged.
    """
    for g, u in zip(grads, directions):
        coeff = (g * u).sum() / ((u * u).sum() + eps)
        g.sub_(coeff * u)
