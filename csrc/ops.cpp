// Schema of every dgsnet op, in one place. Backends register their kernels
// with TORCH_LIBRARY_IMPL in their own files; the Python side adds fake
// (meta) kernels and autograd formulas (dgsnet/ops.py).
#include <torch/library.h>
#include <torch/extension.h>

TORCH_LIBRARY(dgsnet, m) {
  // out[i] = g[i] - <g[i], h[i]> h[i]: removes from each row of g its
  // component along the unit (or zero) row h[i]. The orthogonal suppression
  // of DGS-Net applied to the gradient that reaches the features.
  m.def("project_rows(Tensor g, Tensor h) -> Tensor");
}

namespace {
bool cuda_compiled() {
#ifdef DGSNET_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace

// The Python module only reports how it was built; the ops live in torch.ops.dgsnet.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("cuda_compiled", &cuda_compiled, "True when the CUDA kernels were compiled in.");
}
