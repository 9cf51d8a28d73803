"""What every kernel backend's ops promise torch: output shapes and the autograd formula.

The schemas are csrc/ops.cpp. The C++ ops (dgsnet::*) and their Triton twins
(dgsnet_triton::*) share the fake (meta) kernels below, so torch.compile and
torch.library.opcheck see them alike. The autograd of the Triton dgs_forward
is `dgs_autograd`; the C++ one is its twin in csrc/autograd.cpp.
"""
from __future__ import annotations

import torch


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def dgs_forward_fake(f, f_t, t, y, w_s, w_t, w_x, b_s, b_t, b_x, lam, eps, with_align, project,
                     published, want_harmful=True):
    batch, dim = f.shape
    acc = _acc_dtype(f.dtype)
    scalars = [f.new_empty((), dtype=acc) for _ in range(5)]
    return (*scalars, f.new_empty((batch if want_harmful else 0, dim), dtype=acc),
            f.new_empty((batch, 4), dtype=acc), f.new_empty((2, dim + 1), dtype=acc))


def dgs_backward_fake(coef, head_sums, w_s, w_t, w_x, d_total, d_img, d_text, d_align, lam,
                      with_align, project, published, out_dtype):
    dim = w_s.numel()
    return (coef.new_empty((coef.shape[0], dim), dtype=out_dtype),
            coef.new_empty((2, dim + 1)))


def project_params_fake(grads, dirs, eps):
    return None


def register_fakes(namespace: str) -> None:
    """Registers the fake kernels of namespace::dgs_forward, dgs_backward and project_params_."""
    torch.library.register_fake(f"{namespace}::dgs_forward")(dgs_forward_fake)
    torch.library.register_fake(f"{namespace}::dgs_backward")(dgs_backward_fake)
    torch.library.register_fake(f"{namespace}::project_params_")(project_params_fake)


def _head_grads(head_sums, d_total, d_img, d_text):
    """dgs_backward's head gradients alone: [(d_total + d_img) * sums_S ; (d_total + d_text) * sums_X]."""
    def up(d):
        return head_sums.new_zeros(()) if d is None else d.to(head_sums.dtype).reshape(())

    dt = up(d_total)
    return head_sums * torch.stack([dt + up(d_img), dt + up(d_text)]).unsqueeze(1)


def dgs_autograd(backward_op):
    """(backward, setup_context) of dgs_forward for torch.library.register_autograd: the
    surgical feature gradient and the student and text head gradients, from each loss
    output's own upstream gradient, by one call of `backward_op` (a dgs_backward)."""

    def setup_context(ctx, inputs, output):
        (f, _, _, _, w_s, w_t, w_x, b_s, _, b_x, lam, _, with_align, project, published, *_) = inputs
        _, _, _, _, teacher, harmful, coef, head_sums = output
        ctx.mark_non_differentiable(teacher, harmful, coef, head_sums)
        ctx.set_materialize_grads(False)  # unused loss terms arrive as None, read as 0
        ctx.save_for_backward(coef, head_sums, w_s, w_t, w_x)
        ctx.flags = (float(lam), bool(with_align), bool(project), bool(published))
        ctx.f_dtype = f.dtype
        ctx.bias_shapes = (None if b_s is None else b_s.shape, None if b_x is None else b_x.shape)

    def backward(ctx, d_total, d_img, d_text, d_align, *_):
        coef, head_sums, w_s, w_t, w_x = ctx.saved_tensors
        if d_total is None and d_img is None and d_text is None and d_align is None:
            return (None,) * 16
        lam, with_align, project, published = ctx.flags
        need = ctx.needs_input_grad
        if need[0]:
            grad_f, grad_heads = backward_op(coef, head_sums, w_s, w_t, w_x, d_total, d_img, d_text,
                                             d_align, lam, with_align, project, published, ctx.f_dtype)
        else:
            # Frozen features (heads trained on fixed features): no (B, D) pass, only the head
            # gradients, the saved head sums scaled by (d_total + d_img) and (d_total + d_text).
            grad_f, grad_heads = None, _head_grads(head_sums, d_total, d_img, d_text)
        dim = w_s.numel()
        bs_shape, bx_shape = ctx.bias_shapes
        g_f = grad_f if need[0] else None
        g_ws = grad_heads[0, :dim].view(w_s.shape) if need[4] else None
        g_wx = grad_heads[1, :dim].view(w_x.shape) if need[6] else None
        g_bs = grad_heads[0, dim:].view(bs_shape) if bs_shape is not None and need[7] else None
        g_bx = grad_heads[1, dim:].view(bx_shape) if bx_shape is not None and need[9] else None
        return (g_f, None, None, None, g_ws, None, g_wx, g_bs, None, g_bx,
                None, None, None, None, None, None)

    return backward, setup_context


def register_dgs_autograd(namespace: str, backward_op) -> None:
    """Registers `dgs_autograd(backward_op)` as the autograd of namespace::dgs_forward."""
    backward, setup_context = dgs_autograd(backward_op)
    torch.library.register_autograd(f"{namespace}::dgs_forward", backward, setup_context=setup_context)
