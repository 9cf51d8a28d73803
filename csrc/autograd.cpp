// Autograd of dgsnet::dgs_forward, in C++ for every device: the backward is
// dgsnet::dgs_backward (one kernel) fed with each loss term's own upstream
// gradient, so totals scaled by a GradScaler or divided for accumulation, and
// losses built from the separate terms, all get the right gradients. A C++
// autograd kernel costs microseconds per call where a Python one costs tens.
#include <torch/autograd.h>
#include <torch/library.h>
#include <torch/extension.h>

#include "op_signatures.h"

namespace dgsnet {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int kForwardArgs = 16;

OptTensor defined_or_none(const at::Tensor& t) {
  return t.defined() ? OptTensor(t) : std::nullopt;
}

// Row-major strides for x's sizes (what the gradient of a parameter is expected to have).
std::vector<c10::SymInt> contiguous_strides(const at::Tensor& x) {
  const auto sizes = x.sym_sizes();
  std::vector<c10::SymInt> strides(sizes.size());
  c10::SymInt step = 1;
  for (int64_t k = static_cast<int64_t>(sizes.size()) - 1; k >= 0; --k) {
    strides[k] = step;
    step = step * sizes[k];
  }
  return strides;
}

// The fused objective has no second derivative. Under create_graph every gradient its
// backward returns passes through this node, connected to what the gradient depends on
// within the node's reach (the head weights, the upstream gradients); a backward through it
// stops with this message. (PyTorch's fallback for an op without autograd only warns and
// gives no gradient: a silently wrong double backward.)
class NoSecondDerivative : public torch::autograd::Function<NoSecondDerivative> {
 public:
  static at::Tensor forward(AutogradContext*, const at::Tensor& grad, const at::Tensor&,
                            const at::Tensor&, const OptTensor&, const OptTensor&,
                            const OptTensor&, const OptTensor&) {
    return grad.clone();
  }
  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK(false,
                "dgsnet's fused DGS objective (backends cpp, cuda) has no second derivative: a "
                "backward through the gradients it returned under create_graph=True is not "
                "supported. Use backend='reference' for double backward.");
    return {};
  }
};

class DgsObjectiveFunction : public torch::autograd::Function<DgsObjectiveFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& f, const at::Tensor& f_t,
                               const at::Tensor& t, const at::Tensor& y, const at::Tensor& w_s,
                               const at::Tensor& w_t, const at::Tensor& w_x, const OptTensor& b_s,
                               const OptTensor& b_t, const OptTensor& b_x, double lam, double eps,
                               bool with_align, bool project, bool published,
                               bool want_harmful) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("dgsnet::dgs_forward", "")
                         .typed<ForwardSig>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [total, img, text, align, teacher, harmful, coef, head_sums] =
        op.call(f, f_t, t, y, w_s, w_t, w_x, b_s, b_t, b_x, lam, eps, with_align, project,
                published, want_harmful);
    ctx->mark_non_differentiable({teacher, harmful, coef, head_sums});
    ctx->set_materialize_grads(false);  // unused loss terms arrive undefined, read as 0
    ctx->save_for_backward({coef, head_sums, w_s, w_t, w_x});
    ctx->saved_data["lam"] = lam;
    ctx->saved_data["with_align"] = with_align;
    ctx->saved_data["project"] = project;
    ctx->saved_data["published"] = published;
    ctx->saved_data["f_dtype"] = static_cast<int64_t>(f.scalar_type());
    ctx->saved_data["b_s"] = b_s.has_value() && b_s->defined();
    ctx->saved_data["b_x"] = b_x.has_value() && b_x->defined();
    return {total, img, text, align, teacher, harmful, coef, head_sums};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("dgsnet::dgs_backward", "")
                         .typed<BackwardSig>();
    variable_list out(kForwardArgs);
    const auto& d_total = grads[0];
    const auto& d_img = grads[1];
    const auto& d_text = grads[2];
    const auto& d_align = grads[3];
    if (!d_total.defined() && !d_img.defined() && !d_text.defined() && !d_align.defined())
      return out;
    auto saved = ctx->get_saved_variables();
    const at::Tensor &coef = saved[0], &head_sums = saved[1], &w_s = saved[2], &w_t = saved[3],
                     &w_x = saved[4];
    at::Tensor grad_f, grad_heads;
    // dgs_backward has no autograd kernel: through the Autograd key it would take PyTorch's
    // boxed fallback (every argument boxed, then unboxed again: microseconds a call). It is
    // called below autograd, straight to the kernel; under create_graph its results are
    // wrapped in NoSecondDerivative below.
    if (ctx->needs_input_grad(0)) {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(grad_f, grad_heads) =
          op.call(coef, head_sums, w_s, w_t, w_x, defined_or_none(d_total), defined_or_none(d_img),
                  defined_or_none(d_text), defined_or_none(d_align),
                  ctx->saved_data["lam"].toDouble(), ctx->saved_data["with_align"].toBool(),
                  ctx->saved_data["project"].toBool(), ctx->saved_data["published"].toBool(),
                  static_cast<at::ScalarType>(ctx->saved_data["f_dtype"].toInt()));
    } else {
      // Frozen features (heads trained on fixed features): no (B, D) pass, only the
      // head gradients, which are the saved head sums scaled by (d_total + d_img) and
      // (d_total + d_text), as dgs_backward computes them.
      auto up = [&](const at::Tensor& d) {
        return d.defined() ? d.to(head_sums.scalar_type()).reshape({})
                           : at::zeros({}, head_sums.options());
      };
      const at::Tensor dt = up(d_total);
      grad_heads = head_sums * at::stack({dt + up(d_img), dt + up(d_text)}).unsqueeze(1);
    }
    if (at::GradMode::is_enabled()) {  // create_graph: no silent second derivative
      auto guard_grad = [&](const at::Tensor& g) {
        return NoSecondDerivative::apply(g, w_s, w_x, defined_or_none(d_total),
                                         defined_or_none(d_img), defined_or_none(d_text),
                                         defined_or_none(d_align));
      };
      if (grad_f.defined()) grad_f = guard_grad(grad_f);
      grad_heads = guard_grad(grad_heads);
    }
    // Each head gradient is one strided view of grad_heads (row 0: student w, b; row 1:
    // text w, b), shaped and strided like a contiguous parameter: a single op where
    // select/narrow/view took three, each a dispatcher call. Sym sizes: under
    // torch.compile with dynamic shapes D is symbolic.
    const c10::SymInt dim = w_s.sym_numel();
    grad_heads = grad_heads.contiguous();  // no copy when it is (every kernel's output is)
    const c10::SymInt base = grad_heads.sym_storage_offset();  // as_strided's offsets are absolute
    auto head_grad = [&](const at::Tensor& param, const c10::SymInt& offset) {
      return grad_heads.as_strided_symint(param.sym_sizes(), contiguous_strides(param),
                                          base + offset);
    };
    if (ctx->needs_input_grad(0)) out[0] = grad_f;
    if (ctx->needs_input_grad(4)) out[4] = head_grad(w_s, 0);
    if (ctx->needs_input_grad(6)) out[6] = head_grad(w_x, dim + 1);
    // Biases are (1,)-shaped or absent; absent ones are not inputs of the node.
    static const std::vector<c10::SymInt> kOne{c10::SymInt(1)};
    if (ctx->saved_data["b_s"].toBool() && ctx->needs_input_grad(7))
      out[7] = grad_heads.as_strided_symint(kOne, kOne, base + dim);
    if (ctx->saved_data["b_x"].toBool() && ctx->needs_input_grad(9))
      out[9] = grad_heads.as_strided_symint(kOne, kOne, base + 2 * dim + 1);
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
dgs_forward_autograd(const at::Tensor& f, const at::Tensor& f_t, const at::Tensor& t,
                     const at::Tensor& y, const at::Tensor& w_s, const at::Tensor& w_t,
                     const at::Tensor& w_x, const OptTensor& b_s, const OptTensor& b_t,
                     const OptTensor& b_x, double lam, double eps, bool with_align, bool project,
                     bool published, bool want_harmful) {
  auto r = DgsObjectiveFunction::apply(f, f_t, t, y, w_s, w_t, w_x, b_s, b_t, b_x, lam, eps,
                                       with_align, project, published, want_harmful);
  return {r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]};
}

}  // namespace

TORCH_LIBRARY_IMPL(dgsnet, Autograd, m) { m.impl("dgs_forward", &dgs_forward_autograd); }

}  // namespace dgsnet
