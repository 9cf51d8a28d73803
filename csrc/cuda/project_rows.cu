// CUDA kernel of dgsnet::project_rows: one block per row, float accumulation
// for half types, a block reduction for the row dot product.
// c10/cuda headers only: ATen/cuda/CUDAContext.h would pull in cuBLAS and
// cuSPARSE headers that a bare toolkit may not have.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../shape_checks.h"

namespace dgsnet {
namespace {

constexpr int kThreads = 256;

template <typename acc_t>
__device__ acc_t block_sum(acc_t v) {
  __shared__ acc_t warp_sums[kThreads / 32];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffff, v, off);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : acc_t(0);
  if (warp == 0)
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffff, v, off);
  __shared__ acc_t total;
  if (threadIdx.x == 0) total = v;
  __syncthreads();
  return total;
}

template <typename scalar_t, typename acc_t>
__global__ void project_rows_kernel(const scalar_t* __restrict__ g,
                                    const scalar_t* __restrict__ h,
                                    scalar_t* __restrict__ out, int64_t dim) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * dim;
  acc_t dot = 0;
  for (int64_t j = threadIdx.x; j < dim; j += kThreads)
    dot += static_cast<acc_t>(g[base + j]) * static_cast<acc_t>(h[base + j]);
  dot = block_sum<acc_t>(dot);
  for (int64_t j = threadIdx.x; j < dim; j += kThreads)
    out[base + j] = static_cast<scalar_t>(static_cast<acc_t>(g[base + j]) -
                                          dot * static_cast<acc_t>(h[base + j]));
}

at::Tensor project_rows_cuda(const at::Tensor& g, const at::Tensor& h) {
  check_project_rows_args(g, h);
  const c10::cuda::CUDAGuard guard(g.device());
  auto gc = g.contiguous();
  auto hc = h.contiguous();
  auto out = at::empty_like(gc);
  const int64_t rows = gc.size(0), dim = gc.size(1);
  if (rows == 0 || dim == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gc.scalar_type(),
                                  "dgsnet_project_rows_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    project_rows_kernel<scalar_t, acc_t><<<rows, kThreads, 0, stream>>>(
        gc.data_ptr<scalar_t>(), hc.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), dim);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dgsnet, CUDA, m) { m.impl("project_rows", &project_rows_cuda); }

}  // namespace dgsnet
