// Schema of every dgsnet op, in one place. Backends register their kernels
// with TORCH_LIBRARY_IMPL in their own files (cpu/, cuda/; the autograd of
// dgs_forward in autograd.cpp); the Python side adds the fake (meta) kernels
// (dgsnet/surgery/backends/contract.py, registered by backends/extension.py).
// The plain-PyTorch specification of every op is dgsnet/surgery/reference.py.
#include <torch/library.h>
#include <torch/extension.h>

#include "op_signatures.h"

TORCH_LIBRARY(dgsnet, m) {
  // The whole DGS-Net stage-2 objective (docs/method.md section 2) in one pass over
  // the rows. Heads are linear, so per row i with c = (sigmoid(z) - y) / B:
  //   coef[i]  = (c_S, c_T, c_X, 1 / (||relu(c_X w_x)|| + eps))
  //   harmful[i] = relu(c_X w_x) * coef[i, 3]
  //   head_sums = [sum_i c_S f_i, sum_i c_S ; sum_i c_X t_i, sum_i c_X]  (2, D+1)
  // so the backward needs no (B, D) input. total = img + text + lam * align
  // (align is 0 and left out when with_align is false). project/published
  // choose the backward: P(task + align), P(task) + align, or no projection.
  // want_harmful=false returns harmful as a (0, D) tensor: the rows are a function of
  // coef and w_x (harmful[i] = relu(coef[i, 2] w_x) coef[i, 3]), which the caller can
  // form when it needs them, and the kernels then skip writing B x D values.
  // f, f_t, t share one floating dtype; labels, head weights (D elements) and
  // biases (one element or None) are float32, or float64 for float64 features.
  m.def(
      "dgs_forward(Tensor f, Tensor f_t, Tensor t, Tensor y, Tensor w_s, Tensor w_t, Tensor w_x, "
      "Tensor? b_s, Tensor? b_t, Tensor? b_x, float lam, float eps, bool with_align, bool project, "
      "bool published, bool want_harmful=True) -> (Tensor total, Tensor img, Tensor text, "
      "Tensor align, Tensor teacher, Tensor harmful, Tensor coef, Tensor head_sums)");

  // Backward of dgs_forward from the saved per-row coefficients and the
  // upstream gradients of total/img/text/align (None = 0): the surgical
  // feature gradient (B, D) of dtype out_dtype, and the head gradients
  // (2, D+1) = [d(student w, b) ; d(text w, b)].
  m.def(
      "dgs_backward(Tensor coef, Tensor head_sums, Tensor w_s, Tensor w_t, Tensor w_x, "
      "Tensor? d_total, Tensor? d_img, Tensor? d_text, Tensor? d_align, float lam, "
      "bool with_align, bool project, bool published, ScalarType out_dtype) "
      "-> (Tensor grad_f, Tensor grad_heads)");

  // In place, for every pair (g_l, u_l):  g_l -= <g_l, u_l> / (||u_l||^2 + eps) * u_l.
  // The parameter-space (per-layer) surgery of docs/method.md section 3, over a
  // whole list of tensors in a fixed number of passes.
  m.def("project_params_(Tensor(a!)[] grads, Tensor[] dirs, float eps) -> ()");
}

namespace {
using dgsnet::ForwardSig;
using dgsnet::OptTensor;

// dgs_forward for eager Python callers, through the dispatcher (autograd, the device's
// kernel, profiler events and dispatch modes as with torch.ops.dgsnet.dgs_forward) but
// without torch.ops' per-argument schema matching (about 5 us of a 15-argument call), with
// the dtype casts of backends/fused.py done here (features to feat_dtype, the rest to
// acc_dtype; differentiable, as there) and only the seven outputs a caller reads returned.
// Inputs the op never differentiates (f_t, t, y, w_t, b_t) are detached when they require
// grad, as backends/fused.py does: a trainable teacher head otherwise adds two gradient
// nodes the engine visits with nothing to accumulate (several us per step).
// torch.compile and __torch_function__ overrides use torch.ops (backends/fused.py decides).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
dgs_forward_eager(const at::Tensor& f, const at::Tensor& f_t, const at::Tensor& t,
                  const at::Tensor& y, const at::Tensor& w_s, const at::Tensor& w_t,
                  const at::Tensor& w_x, const OptTensor& b_s, const OptTensor& b_t,
                  const OptTensor& b_x, double lam, double eps, bool with_align, bool project,
                  bool published, bool want_harmful, at::ScalarType feat_dtype,
                  at::ScalarType acc_dtype) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dgsnet::dgs_forward", "")
                       .typed<ForwardSig>();
  auto as = [](const at::Tensor& x, at::ScalarType dtype) {
    return x.scalar_type() == dtype ? x : x.to(dtype);
  };
  auto as_const = [&](const at::Tensor& x, at::ScalarType dtype) {
    return as(x.requires_grad() ? x.detach() : x, dtype);
  };
  auto as_opt = [&](const OptTensor& x, bool constant) -> OptTensor {
    if (!x.has_value() || !x->defined()) return std::nullopt;
    return constant ? as_const(*x, acc_dtype) : as(*x, acc_dtype);
  };
  auto [total, img, text, align, teacher, harmful, coef, head_sums] =
      op.call(as(f, feat_dtype), as_const(f_t, feat_dtype), as_const(t, feat_dtype),
              as_const(y, acc_dtype), as(w_s, acc_dtype), as_const(w_t, acc_dtype),
              as(w_x, acc_dtype), as_opt(b_s, false), as_opt(b_t, true), as_opt(b_x, false), lam,
              eps, with_align, project, published, want_harmful);
  return {total, img, text, align, teacher, harmful, coef};
}

bool cuda_compiled() {
#ifdef DGSNET_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace

// The ops live in torch.ops.dgsnet; the Python module reports how it was built and
// holds the eager entry of dgs_forward.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("cuda_compiled", &cuda_compiled, "True when the CUDA kernels were compiled in.");
  m.def("dgs_forward_eager", &dgs_forward_eager,
        "torch.ops.dgsnet.dgs_forward's first seven outputs, for eager callers (no schema matching).");
}
