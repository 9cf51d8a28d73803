"""Triton kernels of the surgery ops, registered as torch custom ops dgsnet_triton::*.

The ops mirror the C++ ones of dgsnet::* (schemas in csrc/ops.cpp) with the
same fake kernels and autograd formulas (dgsnet.surgery.ops), so autograd and
torch.compile see them alike. Importing this module needs triton; on CPU
tensors the kernels run only under TRITON_INTERPRET=1 (tests).
"""
from __future__ import annotations

from typing import Optional

import torch

from dgsnet.kernels import dgs_objective as _obj
from dgsnet.kernels import project_params as _pp
from dgsnet.surgery import ops as _ops

Tensor = torch.Tensor


@torch.library.custom_op("dgsnet_triton::project_rows", mutates_args=())
def project_rows(g: Tensor, h: Tensor) -> Tensor:
    return _obj.project_rows(g, h)


@torch.library.custom_op("dgsnet_triton::dgs_forward", mutates_args=())
def dgs_forward(f: Tensor, f_t: Tensor, t: Tensor, y: Tensor, w_s: Tensor, w_t: Tensor,
                w_x: Tensor, b_s: Optional[Tensor], b_t: Optional[Tensor], b_x: Optional[Tensor],
                lam: float, eps: float, with_align: bool, project: bool, published: bool
                ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _obj.dgs_forward(f, f_t, t, y, w_s, w_t, w_x, b_s, b_t, b_x, lam, eps, with_align,
                            project, published)


@torch.library.custom_op("dgsnet_triton::dgs_backward", mutates_args=())
def dgs_backward(coef: Tensor, head_sums: Tensor, w_s: Tensor, w_t: Tensor, w_x: Tensor,
                 d_total: Optional[Tensor], d_img: Optional[Tensor], d_text: Optional[Tensor],
                 d_align: Optional[Tensor], lam: float, with_align: bool, project: bool,
                 published: bool, out_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    return _obj.dgs_backward(coef, head_sums, w_s, w_t, w_x, d_total, d_img, d_text, d_align, lam,
                             with_align, project, published, out_dtype)


@torch.library.custom_op("dgsnet_triton::project_params_", mutates_args=("grads",))
def project_params_(grads: list[Tensor], dirs: list[Tensor], eps: float) -> None:
    _pp.project_params_(grads, dirs, eps)


project_rows.register_fake(_ops._project_rows_fake)
dgs_forward.register_fake(_ops._dgs_forward_fake)
dgs_backward.register_fake(_ops._dgs_backward_fake)
project_params_.register_fake(_ops._project_params_fake)
_ops.register_autograd("dgsnet_triton::project_rows",
                       _ops._make_project_rows_autograd(torch.ops.dgsnet_triton.project_rows))
_ops.register_autograd("dgsnet_triton::dgs_forward",
                       _ops._make_dgs_autograd(torch.ops.dgsnet_triton.dgs_backward))

__all__ = ["dgs_backward", "dgs_forward", "project_params_", "project_rows"]
