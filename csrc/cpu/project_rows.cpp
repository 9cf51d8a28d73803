// CPU kernel of dgsnet::project_rows, parallel over rows.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "../shape_checks.h"

namespace dgsnet {
namespace {

template <typename scalar_t>
void project_rows_kernel(const scalar_t* g, const scalar_t* h, scalar_t* out,
                         int64_t rows, int64_t dim) {
  // Grain of ~32k elements keeps thread hand-off cheap relative to the work.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(dim, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* gr = g + r * dim;
      const scalar_t* hr = h + r * dim;
      scalar_t* orow = out + r * dim;
      // Accumulate in double for float too: the row dot is the only reduction.
      double dot = 0.0;
      for (int64_t j = 0; j < dim; ++j) dot += static_cast<double>(gr[j]) * hr[j];
      const scalar_t c = static_cast<scalar_t>(dot);
      for (int64_t j = 0; j < dim; ++j) orow[j] = gr[j] - c * hr[j];
    }
  });
}

at::Tensor project_rows_cpu(const at::Tensor& g, const at::Tensor& h) {
  check_project_rows_args(g, h);
  TORCH_CHECK(g.device().is_cpu(), "dgsnet::project_rows (cpu): g is on ", g.device());
  auto gc = g.contiguous();
  auto hc = h.contiguous();
  auto out = at::empty_like(gc);
  const int64_t dim = gc.size(-1);
  const int64_t rows = dim == 0 ? 0 : gc.numel() / dim;
  AT_DISPATCH_FLOATING_TYPES(gc.scalar_type(), "dgsnet_project_rows_cpu", [&] {
    project_rows_kernel<scalar_t>(gc.data_ptr<scalar_t>(), hc.data_ptr<scalar_t>(),
                                  out.data_ptr<scalar_t>(), rows, dim);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dgsnet, CPU, m) { m.impl("project_rows", &project_rows_cpu); }

}  // namespace dgsnet
