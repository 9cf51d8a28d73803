// Argument checks shared by the CPU and CUDA kernels, so both fail alike.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

namespace dgsnet {

// Accumulation type of the DGS objective for features of type `t`: float64
// stays float64, everything else (float32, bfloat16, float16) computes in float32.
inline at::ScalarType dgs_acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// A (B, D) feature matrix the kernels can read: rows of unit inner stride.
// Any other layout is copied once into a contiguous matrix.
inline at::Tensor dgs_rows(const at::Tensor& x) {
  return x.stride(1) == 1 ? x : x.contiguous();
}

inline void check_dgs_forward_args(const at::Tensor& f, const at::Tensor& f_t, const at::Tensor& t,
                                   const at::Tensor& y, const at::Tensor& w_s,
                                   const at::Tensor& w_t, const at::Tensor& w_x,
                                   const std::optional<at::Tensor>& b_s,
                                   const std::optional<at::Tensor>& b_t,
                                   const std::optional<at::Tensor>& b_x) {
  constexpr const char* op = "dgsnet::dgs_forward";
  TORCH_CHECK(f.dim() == 2, op, ": student features must be (B, D), got ", f.sizes());
  TORCH_CHECK(f.size(0) > 0 && f.size(1) > 0, op, ": empty features ", f.sizes());
  const auto acc = dgs_acc_type(f.scalar_type());
  const int64_t batch = f.size(0), dim = f.size(1);
  for (auto [name, x] : {std::pair<const char*, const at::Tensor&>{"teacher features", f_t},
                         {"text features", t}}) {
    TORCH_CHECK(x.sizes() == f.sizes(), op, ": ", name, " ", x.sizes(),
                " must match the student features ", f.sizes());
    TORCH_CHECK(x.scalar_type() == f.scalar_type(), op, ": ", name, " are ", x.scalar_type(),
                " but the student features are ", f.scalar_type(), "; cast them alike");
    TORCH_CHECK(x.device() == f.device(), op, ": ", name, " are on ", x.device(),
                " but the student features are on ", f.device());
  }
  TORCH_CHECK(y.dim() == 1 && y.size(0) == batch, op, ": labels must be (", batch, "), got ",
              y.sizes());
  for (auto [name, x] : {std::pair<const char*, const at::Tensor&>{"labels", y},
                         {"student head weight", w_s},
                         {"teacher head weight", w_t},
                         {"text head weight", w_x}}) {
    TORCH_CHECK(x.scalar_type() == acc, op, ": ", name, " must be ", acc, " (the accumulation type of ",
                f.scalar_type(), " features), got ", x.scalar_type());
    TORCH_CHECK(x.device() == f.device(), op, ": ", name, " is on ", x.device(),
                " but the features are on ", f.device());
  }
  for (auto [name, x] : {std::pair<const char*, const at::Tensor&>{"student head weight", w_s},
                         {"teacher head weight", w_t},
                         {"text head weight", w_x}}) {
    TORCH_CHECK(x.numel() == dim, op, ": ", name, " has ", x.numel(), " elements, expected D=", dim);
  }
  for (auto [name, x] : {std::pair<const char*, const std::optional<at::Tensor>&>{"student head bias", b_s},
                         {"teacher head bias", b_t},
                         {"text head bias", b_x}}) {
    if (!x.has_value() || !x->defined()) continue;
    TORCH_CHECK(x->numel() == 1, op, ": ", name, " must have one element, got ", x->sizes());
    TORCH_CHECK(x->scalar_type() == acc, op, ": ", name, " must be ", acc, ", got ", x->scalar_type());
    TORCH_CHECK(x->device() == f.device(), op, ": ", name, " is on ", x->device(),
                " but the features are on ", f.device());
  }
}

inline void check_dgs_backward_args(const at::Tensor& coef, const at::Tensor& head_sums,
                                    const at::Tensor& w_s, const at::Tensor& w_t,
                                    const at::Tensor& w_x,
                                    std::initializer_list<std::optional<at::Tensor>> upstream) {
  constexpr const char* op = "dgsnet::dgs_backward";
  TORCH_CHECK(coef.dim() == 2 && coef.size(1) == 4 && coef.size(0) > 0, op,
              ": coef must be (B, 4), got ", coef.sizes());
  const int64_t dim = w_s.numel();
  TORCH_CHECK(head_sums.dim() == 2 && head_sums.size(0) == 2 && head_sums.size(1) == dim + 1, op,
              ": head_sums must be (2, D+1) with D=", dim, ", got ", head_sums.sizes());
  const auto acc = coef.scalar_type();
  TORCH_CHECK(acc == at::kFloat || acc == at::kDouble, op, ": coef must be float32 or float64");
  for (const at::Tensor* x : {&head_sums, &w_s, &w_t, &w_x}) {
    TORCH_CHECK(x->scalar_type() == acc && x->device() == coef.device(), op,
                ": all inputs must be ", acc, " on ", coef.device(), ", got ", x->scalar_type(),
                " on ", x->device());
  }
  TORCH_CHECK(w_t.numel() == dim && w_x.numel() == dim, op, ": head weights differ in size");
  for (const auto& g : upstream) {
    if (!g.has_value() || !g->defined()) continue;
    TORCH_CHECK(g->numel() == 1 && g->scalar_type() == acc && g->device() == coef.device(), op,
                ": upstream gradients must be one ", acc, " element on ", coef.device(), ", got ",
                g->sizes(), " ", g->scalar_type(), " on ", g->device());
  }
}

inline void check_project_params_args(at::TensorList grads, at::TensorList dirs) {
  constexpr const char* op = "dgsnet::project_params_";
  TORCH_CHECK(grads.size() == dirs.size(), op, ": got ", grads.size(), " gradients but ",
              dirs.size(), " directions");
  for (size_t i = 0; i < grads.size(); ++i) {
    const auto& g = grads[i];
    const auto& u = dirs[i];
    TORCH_CHECK(g.sizes() == u.sizes(), op, ": tensor ", i, ": gradient ", g.sizes(),
                " and direction ", u.sizes(), " differ in shape");
    TORCH_CHECK(g.scalar_type() == grads[0].scalar_type() && u.scalar_type() == grads[0].scalar_type(),
                op, ": tensor ", i, " is ", g.scalar_type(), "/", u.scalar_type(), " but tensor 0 is ",
                grads[0].scalar_type(), "; call once per dtype");
    TORCH_CHECK(g.device() == grads[0].device() && u.device() == grads[0].device(), op,
                ": tensor ", i, " is not on ", grads[0].device(), "; keep all tensors on one device");
    TORCH_CHECK(g.is_contiguous() && u.is_contiguous(), op, ": tensor ", i,
                " is not contiguous; pass contiguous gradients and directions");
  }
}

}  // namespace dgsnet
