"""Plain-PyTorch reference of the DGS-Net quantities (docs/method.md#2-the-stage-2-objective).

These functions are the specification every fused backend is checked
against. Heads are linear, so the per-row gradients of a mean BCE loss with
respect to its input features have the closed form (sigmoid(z) - y) * w / B.
"""
from __future__ import annotations

import torch


def bce_feature_grad(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """dL/dx for L = mean_i BCE(x_i . w + c, y_i), per row: (sigmoid(z_i) - y_i) * w / B."""
    batch = logits.shape[0]
    return (torch.sigmoid(logits) - labels).unsqueeze(1) * weight.reshape(1, -1) / batch


def beneficial_direction(teacher_grad: torch.Tensor) -> torch.Tensor:
    """b = min(g_T, 0), per coordinate: the part of the teacher gradient kept as the prior."""
    return teacher_grad.clamp(max=0)


def harmful_direction(text_grad: torch.Tensor, eps: float) -> torch.Tensor:
    """h_hat = relu(g_X) / (||relu(g_X)||_2 + eps), per row; a zero row stays zero."""
    positive = text_grad.clamp(min=0)
    return positive / (positive.norm(dim=1, keepdim=True) + eps)


def project_rows(g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """g_i - <g_i, h_i> h_i for each row i (orthogonal suppression)."""
    return g - (g * h).sum(dim=1, keepdim=True) * h


def project_params_(grads: list[torch.Tensor], directions: list[torch.Tensor], eps: float) -> None:
    """In place, per tensor: g_l <- g_l - <g_l, u_l> / (||u_l||^2 + eps) * u_l (docs/method.md#3-per-layer-surgery-dgsnet-extension)."""
    for g, u in zip(grads, directions):
        coeff = (g * u).sum() / ((u * u).sum() + eps)
        g.sub_(coeff * u)
