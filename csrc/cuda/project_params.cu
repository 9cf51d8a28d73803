// CUDA kernel of dgsnet::project_params_ (schema in csrc/ops.cpp, CPU twin in
// csrc/cpu/project_params.cpp): for every pair (g, u) of a tensor list,
// g -= <g, u> / (||u||^2 + eps) * u, in place.
//
// Multi-tensor: the list is cut into chunks of at most kChunk elements, and
// one table (tensor pointers, sizes, each chunk's tensor and offset) is copied
// to the device once. Three launches whatever the number of tensors:
//   1. one block per chunk: the chunk's partial <g, u> and ||u||^2;
//   2. one block per tensor: its chunks' partials added in a fixed order, one
//      coefficient <g, u> / (||u||^2 + eps) per tensor (read once, not re-summed
//      by every chunk's block);
//   3. one block per chunk: the update of the chunk with its tensor's coefficient.
// Sums are kept in float64 for every input type: the pass is memory-bound.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "../shape_checks.h"

namespace dgsnet {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kChunk = 16384;

// Device table, int64 words: per tensor [g pointer, u pointer, numel, first chunk],
// then per chunk [tensor index, start offset]; the chunk count is a kernel argument
// (it ends the last tensor's chunk range).
struct Table {
  const int64_t* tensors;
  const int64_t* chunks;
  int64_t n_tensors, n_chunks;
};

__device__ __forceinline__ double warp_sum(double v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Two sums over the block, in a fixed order; thread 0 gets the results.
__device__ __forceinline__ void block_sum2(double& a, double& b) {
  __shared__ double sa[kWarps], sb[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  a = warp_sum(a);
  b = warp_sum(b);
  if (lane == 0) {
    sa[warp] = a;
    sb[warp] = b;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    a = 0;
    b = 0;
    for (int w = 0; w < kWarps; ++w) {
      a += sa[w];
      b += sb[w];
    }
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
chunk_dot_norm_kernel(const Table table, double* __restrict__ partial) {
  const int64_t c = blockIdx.x;
  const int64_t l = table.chunks[2 * c], start = table.chunks[2 * c + 1];
  const int64_t* tr = table.tensors + 4 * l;
  const scalar_t* g = reinterpret_cast<const scalar_t*>(tr[0]) + start;
  const scalar_t* u = reinterpret_cast<const scalar_t*>(tr[1]) + start;
  const int64_t n = min(kChunk, tr[2] - start);
  double dot = 0, norm2 = 0;
  for (int64_t j = threadIdx.x; j < n; j += kThreads) {
    const double uj = static_cast<double>(u[j]);
    dot += static_cast<double>(g[j]) * uj;
    norm2 += uj * uj;
  }
  block_sum2(dot, norm2);
  if (threadIdx.x == 0) {
    partial[2 * c] = dot;
    partial[2 * c + 1] = norm2;
  }
}

// Block l: tensor l's coefficient from its chunks' partials (a tensor of millions of
// elements has hundreds of chunks), summed by the whole block in a fixed order.
__global__ void __launch_bounds__(kThreads)
tensor_coef_kernel(const Table table, const double* __restrict__ partial, double eps,
                   double* __restrict__ coef) {
  const int64_t l = blockIdx.x;
  const int64_t first = table.tensors[4 * l + 3];
  const int64_t last = l + 1 < table.n_tensors ? table.tensors[4 * l + 4 + 3] : table.n_chunks;
  double dot = 0, norm2 = 0;
  for (int64_t k = first + threadIdx.x; k < last; k += kThreads) {
    dot += partial[2 * k];
    norm2 += partial[2 * k + 1];
  }
  block_sum2(dot, norm2);
  if (threadIdx.x == 0) coef[l] = dot / (norm2 + eps);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
chunk_update_kernel(const Table table, const double* __restrict__ coef) {
  const int64_t c = blockIdx.x;
  const int64_t l = table.chunks[2 * c], start = table.chunks[2 * c + 1];
  const int64_t* tr = table.tensors + 4 * l;
  const double a = coef[l];
  if (a == 0.0) return;  // zero direction (or orthogonal gradient): nothing to remove
  scalar_t* g = reinterpret_cast<scalar_t*>(tr[0]) + start;
  const scalar_t* u = reinterpret_cast<const scalar_t*>(tr[1]) + start;
  const int64_t n = min(kChunk, tr[2] - start);
  for (int64_t j = threadIdx.x; j < n; j += kThreads)
    g[j] = static_cast<scalar_t>(static_cast<double>(g[j]) - a * static_cast<double>(u[j]));
}

void project_params_cuda(at::TensorList grads, at::TensorList dirs, double eps) {
  check_project_params_args(grads, dirs);
  if (grads.empty()) return;
  TORCH_CHECK(grads[0].is_cuda(), "dgsnet::project_params_ (cuda): tensors are on ",
              grads[0].device());
  const c10::cuda::CUDAGuard guard(grads[0].device());
  // The chunk table is staged in host memory that is recycled once the call returns: a
  // captured graph would re-read it at every replay.
  TORCH_CHECK(c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None,
              "dgsnet::project_params_ (cuda) cannot be captured in a CUDA graph (its chunk table "
              "is built on the host per call); run it outside the captured region");
  const int64_t n_tensors = static_cast<int64_t>(grads.size());
  std::vector<int64_t> words(4 * n_tensors);
  std::vector<int64_t> chunk_words;
  for (int64_t l = 0; l < n_tensors; ++l) {
    const int64_t n = grads[l].numel();
    words[4 * l + 0] = reinterpret_cast<int64_t>(grads[l].data_ptr());
    words[4 * l + 1] = reinterpret_cast<int64_t>(dirs[l].data_ptr());
    words[4 * l + 2] = n;
    words[4 * l + 3] = static_cast<int64_t>(chunk_words.size() / 2);
    for (int64_t s = 0; s < n; s += kChunk) {
      chunk_words.push_back(l);
      chunk_words.push_back(s);
    }
  }
  const int64_t n_chunks = static_cast<int64_t>(chunk_words.size() / 2);
  if (n_chunks == 0) return;  // only empty tensors
  words.insert(words.end(), chunk_words.begin(), chunk_words.end());

  // Pinned staging: the copy is asynchronous on the current stream, and the
  // caching host allocator keeps the buffer alive until the copy has run.
  at::Tensor host = at::empty({static_cast<int64_t>(words.size())},
                              at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  std::copy(words.begin(), words.end(), host.data_ptr<int64_t>());
  at::Tensor table_dev = host.to(grads[0].device(), /*non_blocking=*/true);
  at::Tensor partial = at::empty({2 * n_chunks}, grads[0].options().dtype(at::kDouble));
  at::Tensor coef = at::empty({n_tensors}, grads[0].options().dtype(at::kDouble));

  Table table;
  table.tensors = table_dev.const_data_ptr<int64_t>();
  table.chunks = table.tensors + 4 * n_tensors;
  table.n_tensors = n_tensors;
  table.n_chunks = n_chunks;
  auto stream = c10::cuda::getCurrentCUDAStream();
  TORCH_CHECK(n_chunks < (int64_t{1} << 31) && n_tensors < (int64_t{1} << 31),
              "dgsnet::project_params_ (cuda): ", n_chunks, " chunks of ", n_tensors,
              " tensors; split the list");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grads[0].scalar_type(),
                                  "dgsnet_project_params_cuda", [&] {
    chunk_dot_norm_kernel<scalar_t><<<static_cast<unsigned int>(n_chunks), kThreads, 0,
                                      stream.stream()>>>(table, partial.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    tensor_coef_kernel<<<static_cast<unsigned int>(n_tensors), kThreads, 0, stream.stream()>>>(
        table, partial.const_data_ptr<double>(), eps, coef.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    chunk_update_kernel<scalar_t><<<static_cast<unsigned int>(n_chunks), kThreads, 0,
                                    stream.stream()>>>(table, coef.const_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(dgsnet, CUDA, m) { m.impl("project_params_", &project_params_cuda); }

}  // namespace dgsnet
