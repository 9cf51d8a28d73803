"""Per-layer gradient surgery in parameter space: dgsnet's EXTENSION of DGS-Net.

Neither the paper nor the published code has it (they project the gradient
of the features only: `--surgery feature`); `--surgery layer` and `both`
are dgsnet's own, offered for experiments.

For each LoRA tensor theta_l, u_l = d/d theta_l sum_i <f_i, h_hat_i> is the
parameter image of the harmful feature direction; the step's gradient g_l
loses its component along u_l, so no single tensor's update moves the
features along h_hat to first order.

u comes out of the main backward: the encoder is differentiated once with
two stacked cotangents (dL/df and h_hat) through autograd's batched-gradient
path, so the extra cost is a wider backward, not a second forward. With
`refresh` k > 1, u is recomputed every k optimiser steps and reused between.
Over gradient accumulation, u is summed over the micro-batches (it is linear
in the rows); under data parallelism both the gradients and u are averaged
across processes before the projection (see dgsnet.train.distributed).
"""
from __future__ import annotations

import torch


def project_params_reference(grads: list[torch.Tensor], directions: list[torch.Tensor], eps: float) -> None:
    """g_l <- g_l - <g_l, u_l> / (||u_l||^2 + eps) * u_l, per tensor, in place."""
    for g, u in zip(grads, directions):
        coeff = (g * u).sum() / ((u * u).sum() + eps)
        g.sub_(coeff * u)


def _project_params(grads, directions, eps, backend):
    try:
        from dgsnet.surgery import project_params_
    except ImportError:  # the fused multi-tensor op is not available: the per-tensor loop
        return project_params_reference(grads, directions, eps)
    return project_params_(grads, directions, eps=eps, backend=backend)


class LayerSurgery:
    def __init__(self, params: list[torch.nn.Parameter], refresh: int = 1, eps: float = 1e-12,
                 backend: str = "auto"):
        self.params = list(params)
        self.refresh, self.eps, self.backend = refresh, eps, backend
        self.directions: list[torch.Tensor] | None = None  # u_l in use
        self._pending: list[torch.Tensor] | None = None  # u_l being summed over micro-batches
        self.refreshes = 0  # times u was recomputed (for logs and tests)

    def wants_directions(self, step: int) -> bool:
        return self.directions is None or step % self.refresh == 0

    def backward(self, encoder_out: torch.Tensor, loss: torch.Tensor, other_params: list[torch.Tensor],
                 harmful: torch.Tensor, with_directions: bool) -> None:
        """Accumulates d loss / d params into .grad (like loss.backward()) and, when asked,
        sums the parameter image of `harmful` into the pending directions."""
        other = [p for p in other_params if p.requires_grad]
        grads = torch.autograd.grad(loss, [encoder_out, *other], retain_graph=with_directions,
                                    allow_unused=True)
        for p, g in zip(other, grads[1:]):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g
        feat_grad = grads[0]
        if not with_directions:
            encoder_out.backward(feat_grad)
            return
        cotangents = torch.stack([feat_grad, harmful.to(feat_grad.dtype)])
        both = torch.autograd.grad(encoder_out, self.params, grad_outputs=cotangents,
                                   is_grads_batched=True, allow_unused=True)
        pending = []
        for p, pair in zip(self.params, both):
            if pair is None:
                pair = torch.zeros((2, *p.shape), dtype=p.dtype, device=p.device)
            p.grad = pair[0] if p.grad is None else p.grad + pair[0]
            pending.append(pair[1].detach())
        if self._pending is None:
            self._pending = pending
        else:
            for acc, u in zip(self._pending, pending):
                acc.add_(u)

    def finish_directions(self, reduce=None) -> None:
        """Adopts the directions summed this step (after `reduce`, e.g. a cross-process mean)."""
        if self._pending is None:
            return
        if reduce is not None:
            reduce(self._pending)
        self.directions, self._pending = self._pending, None
        self.refreshes += 1

    def project_(self) -> None:
        grads = [p.grad for p in self.params if p.grad is not None]
        dirs = [u for p, u in zip(self.params, self.directions) if p.grad is not None]
        _project_params(grads, dirs, self.eps, self.backend)
