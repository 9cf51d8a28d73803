"""The Triton backend: the surgery ops as torch custom ops dgsnet_triton::*.

They mirror the C++ ops dgsnet::* (schemas in csrc/ops.cpp) with the same fake
kernels and autograd formula (backends/contract.py), so autograd and
torch.compile see them alike. Importing this package needs triton and
registers the backend "triton" (backends/registry.py). On CPU tensors the
kernels run only under TRITON_INTERPRET=1 (tests).

    dgs_objective.py   the fused objective: forward and backward kernels
    project_params.py  the multi-tensor projection of the per-layer surgery
"""
from __future__ import annotations

from typing import Optional

import torch

from dgsnet.surgery.backends import contract, registry
from dgsnet.surgery.backends.triton import dgs_objective as _obj
from dgsnet.surgery.backends.triton import project_params as _pp

Tensor = torch.Tensor


@torch.library.custom_op("dgsnet_triton::dgs_forward", mutates_args=())
def dgs_forward(f: Tensor, f_t: Tensor, t: Tensor, y: Tensor, w_s: Tensor, w_t: Tensor,
                w_x: Tensor, b_s: Optional[Tensor], b_t: Optional[Tensor], b_x: Optional[Tensor],
                lam: float, eps: float, with_align: bool, project: bool, published: bool,
                want_harmful: bool = True
                ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _obj.dgs_forward(f, f_t, t, y, w_s, w_t, w_x, b_s, b_t, b_x, lam, eps, with_align,
                            project, published, want_harmful)


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


contract.register_fakes("dgsnet_triton")
contract.register_dgs_autograd("dgsnet_triton", torch.ops.dgsnet_triton.dgs_backward)
registry.register("triton", "dgs_objective", torch.ops.dgsnet_triton.dgs_forward,
                  torch.ops.dgsnet_triton.dgs_backward)
registry.register("triton", "project_params_", torch.ops.dgsnet_triton.project_params_)

__all__ = ["dgs_backward", "dgs_forward", "project_params_"]
