// CPU kernel of dgsnet::project_params_ (schema in csrc/ops.cpp): for each
// pair (g, u), g -= <g, u> / (||u||^2 + eps) * u, in place.
//
// All tensors are cut into chunks of at most kChunk elements; one parallel
// pass computes every chunk's partial <g, u> and ||u||^2, the partials of
// each tensor are added in chunk order (so results do not depend on the
// thread count), and a second parallel pass applies the updates.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <vector>

#include "../shape_checks.h"
#include "simd.h"

namespace dgsnet {
namespace {

constexpr int64_t kChunk = 32768;

// Partial sums in double for float32 too: the reference sums in the input
// type, the difference is far inside the float32 tolerance, and the pass is
// memory-bound either way.
template <typename T>
DGSNET_ALWAYS_INLINE void dot_and_norm(const T* g, const T* u, int64_t n, double* dot, double* norm2) {
  constexpr int L = simd::kLanes<double>;
  double sd[L] = {}, sn[L] = {};
  const int64_t nv = n - n % L;
  for (int64_t j = 0; j < nv; j += L)
    for (int k = 0; k < L; ++k) {
      const double uj = static_cast<double>(u[j + k]);
      sd[k] += static_cast<double>(g[j + k]) * uj;
      sn[k] += uj * uj;
    }
  double d = simd::sum_lanes(sd), s = simd::sum_lanes(sn);
  for (int64_t j = nv; j < n; ++j) {
    d += static_cast<double>(g[j]) * u[j];
    s += static_cast<double>(u[j]) * u[j];
  }
  *dot = d;
  *norm2 = s;
}

template <typename T>
DGSNET_ALWAYS_INLINE void sub_scaled(T* g, const T* u, int64_t n, T c) {
  for (int64_t j = 0; j < n; ++j) g[j] -= c * u[j];
}

DGSNET_MULTIVERSION void dot_and_norm_f32(const float* g, const float* u, int64_t n, double* d,
                                          double* s) {
  dot_and_norm(g, u, n, d, s);
}
DGSNET_MULTIVERSION void dot_and_norm_f64(const double* g, const double* u, int64_t n, double* d,
                                          double* s) {
  dot_and_norm(g, u, n, d, s);
}
DGSNET_MULTIVERSION void sub_scaled_f32(float* g, const float* u, int64_t n, float c) {
  sub_scaled(g, u, n, c);
}
DGSNET_MULTIVERSION void sub_scaled_f64(double* g, const double* u, int64_t n, double c) {
  sub_scaled(g, u, n, c);
}
inline void dot_and_norm_any(const float* g, const float* u, int64_t n, double* d, double* s) {
  dot_and_norm_f32(g, u, n, d, s);
}
inline void dot_and_norm_any(const double* g, const double* u, int64_t n, double* d, double* s) {
  dot_and_norm_f64(g, u, n, d, s);
}
inline void sub_scaled_any(float* g, const float* u, int64_t n, float c) { sub_scaled_f32(g, u, n, c); }
inline void sub_scaled_any(double* g, const double* u, int64_t n, double c) {
  sub_scaled_f64(g, u, n, c);
}

struct Chunk {
  int64_t tensor, start, size;
};

void project_params_cpu(at::TensorList grads, at::TensorList dirs, double eps) {
  check_project_params_args(grads, dirs);
  if (grads.empty()) return;
  TORCH_CHECK(grads[0].device().is_cpu(), "dgsnet::project_params_ (cpu): tensors are on ",
              grads[0].device());
  std::vector<Chunk> chunks;
  std::vector<int64_t> first_chunk(grads.size() + 1, 0);
  for (size_t l = 0; l < grads.size(); ++l) {
    first_chunk[l] = static_cast<int64_t>(chunks.size());
    const int64_t n = grads[l].numel();
    for (int64_t s = 0; s < n; s += kChunk) chunks.push_back({static_cast<int64_t>(l), s, std::min(kChunk, n - s)});
  }
  first_chunk[grads.size()] = static_cast<int64_t>(chunks.size());
  const int64_t nchunks = static_cast<int64_t>(chunks.size());
  std::vector<double> dot(nchunks), norm2(nchunks), coef(grads.size());
  AT_DISPATCH_FLOATING_TYPES(grads[0].scalar_type(), "dgsnet_project_params_cpu", [&] {
    using T = scalar_t;
    // Small chunks are grouped so each task moves at least ~kChunk elements.
    int64_t total = 0;
    for (const auto& g : grads) total += g.numel();
    const int64_t grain = std::max<int64_t>(1, nchunks * kChunk / std::max<int64_t>(1, total));
    at::parallel_for(0, nchunks, grain, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const Chunk& k = chunks[c];
        dot_and_norm_any(grads[k.tensor].const_data_ptr<T>() + k.start,
                         dirs[k.tensor].const_data_ptr<T>() + k.start, k.size, &dot[c], &norm2[c]);
      }
    });
    for (size_t l = 0; l < grads.size(); ++l) {
      double d = 0, s = 0;
      for (int64_t c = first_chunk[l]; c < first_chunk[l + 1]; ++c) {
        d += dot[c];
        s += norm2[c];
      }
      coef[l] = d / (s + eps);
    }
    at::parallel_for(0, nchunks, grain, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const Chunk& k = chunks[c];
        if (coef[k.tensor] == 0.0) continue;
        sub_scaled_any(grads[k.tensor].data_ptr<T>() + k.start,
                       dirs[k.tensor].const_data_ptr<T>() + k.start, k.size,
                       static_cast<T>(coef[k.tensor]));
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(dgsnet, CPU, m) { m.impl("project_params_", &project_params_cpu); }

}  // namespace dgsnet
