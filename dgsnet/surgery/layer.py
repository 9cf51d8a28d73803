"""Per-layer (parameter-space) surgery: dgsnet's EXTENSION of DGS-Net (docs/method.md section 3).

Neither the paper nor the published code has it (they project the gradient
of the features only: `--surgery feature`); `--surgery layer` and `both`
are dgsnet's own, offered for experiments.

For each LoRA tensor theta_l, u_l = d/d theta_l sum_i <f_i, h_i> is the
parameter image of the harmful feature direction; the step's gradient g_l
loses its component along u_l (reference.project_params_, the math), so no
single tensor's update moves the features along h to first order.

    project_params_  checks its arguments and runs the projection of a whole
                     list of tensors on a backend (one fused multi-tensor op)
    LayerSurgery     computes u and applies the projection in the trainer

u comes out of the main backward: the encoder is differentiated once with
two stacked cotangents (dL/df and h) through autograd's batched-gradient
path, so the extra cost is a wider backward, not a second forward. With
`refresh` k > 1, u is recomputed every k optimiser steps and reused between.
Over gradient accumulation, u is summed over the micro-batches (it is linear
in the rows); under data parallelism both the gradients and u are averaged
across processes before the projection (see dgsnet.train.distributed).
"""
from __future__ import annotations

import torch

from dgsnet.surgery import backends, reference

__all__ = ["LayerSurgery", "project_params_"]


def project_params_(grads: list[torch.Tensor], directions: list[torch.Tensor], eps: float = 1e-12,
                    backend: str = "auto") -> None:
    """In place, for each pair: g_l <- g_l - <g_l, u_l> / (||u_l||^2 + eps) * u_l.

    One fused multi-tensor op over the whole list (a fixed number of passes or
    launches, whatever the number of tensors). All tensors share one device
    and dtype and are contiguous; `backend="reference"` is the per-tensor loop
    of reference.project_params_.
    """
    grads, directions = list(grads), list(directions)
    if len(grads) != len(directions):
        raise ValueError(f"project_params_: {len(grads)} gradients but {len(directions)} directions")
    if not grads:
        return
    backend = backends.resolve_backend(backend, grads[0].device)
    if backend == "reference":
        reference.project_params_(grads, directions, eps)
    else:
        backends.op(backend, "project_params_").forward(grads, directions, float(eps))


class LayerSurgery:
    """The per-layer surgery of one training run over `params` (the LoRA tensors).

    Each step: `backward` (instead of loss.backward()) fills .grad and, when
    `wants_directions`, sums u; `finish_directions` adopts u (after an optional
    cross-process mean); `project_` projects every .grad against its u.
    """

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
        project_params_(grads, dirs, eps=self.eps, backend=self.backend)
