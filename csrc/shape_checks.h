// Argument checks shared by the CPU and CUDA kernels, so both fail alike.
#pragma once
#include <ATen/ATen.h>

namespace dgsnet {

inline void check_project_rows_args(const at::Tensor& g, const at::Tensor& h) {
  TORCH_CHECK(g.dim() == 2, "dgsnet::project_rows: g must be (rows, dim), got ", g.sizes());
  TORCH_CHECK(g.sizes() == h.sizes(), "dgsnet::project_rows: g ", g.sizes(),
              " and h ", h.sizes(), " must have the same shape");
  TORCH_CHECK(g.scalar_type() == h.scalar_type(), "dgsnet::project_rows: g is ",
              g.scalar_type(), " but h is ", h.scalar_type());
  TORCH_CHECK(g.device() == h.device(), "dgsnet::project_rows: g is on ", g.device(),
              " but h is on ", h.device());
}

}  // namespace dgsnet
