// CUDA kernels of dgsnet::dgs_forward / dgs_backward (schema in csrc/ops.cpp,
// CPU twin in csrc/cpu/dgs_objective.cpp). One launch per call each.
//
// Forward: block b owns a contiguous run of at least kMinRowsPerBlock rows
// (about two blocks per SM at large B).
//   Phase A (one warp per row): five dot products in one read of the row,
//     <f, w_S>, <f_T, w_T>, <t, w_X>, <f, min(w_T, 0)>, <f, max(w_T, 0)>;
//     the last two give the alignment term <f, min(c_T w_T, 0)> for either
//     sign of c_T. Lane 0 writes the row's coefficients. When the rows, the
//     weights and D allow it, each lane reads 16 bytes at a time (8 half
//     values, 4 floats, 2 doubles).
//   Phase B (one thread per column): the block's share of
//     sum_i c_S f_i and sum_i c_X t_i, and the harmful rows.
//   One block (B <= kMinRowsPerBlock) writes the results itself: one launch.
//   Otherwise each block writes its partial sums to a workspace, and a second,
//   column-parallel launch adds them in block order (a thread per column): the
//   result does not depend on scheduling, and no atomics or ticket are needed.
// Backward: one warp per row, reading only the saved (B, 4) coefficients and
// the three D-vectors of head weights; the head gradients are scaled sums.
//
// Features may be float32, float64, float16 or bfloat16; everything is
// accumulated in float32 (float64 for float64 features). Upstream gradients
// and biases are read on the device: no host synchronisation.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAFunctions.h>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <initializer_list>
#include <utility>

#include "../dgs_math.h"
#include "../shape_checks.h"

namespace dgsnet {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMinRowsPerBlock = 16;  // fewer leaves warps idle and multiplies the partials
constexpr int kReduceThreads = 128;

// 16 bytes of T, loaded as one (or, for 32-byte packs, two) vector loads.
template <int N, typename T>
struct alignas(16) Pack {
  T v[N];
};

template <int N, typename T>
__device__ __forceinline__ Pack<N, T> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<N, T>*>(p);
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Sum over the block; every thread gets the result. `scratch` holds kWarps values.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T total = T(0);
  for (int w = 0; w < kWarps; ++w) total += scratch[w];  // same order in every thread
  return total;
}

template <typename T>
__device__ __forceinline__ T load_or_zero(const T* p) {
  return p == nullptr ? T(0) : *p;
}

template <typename scalar_t, typename acc_t>
struct ForwardParams {
  const scalar_t* f;
  const scalar_t* ft;
  const scalar_t* t;
  int64_t ld_f, ld_ft, ld_t;  // row strides (elements); unit column stride
  const acc_t* y;
  const acc_t* ws;
  const acc_t* wt;
  const acc_t* wx;
  const acc_t* bs;  // nullptr: no bias
  const acc_t* bt;
  const acc_t* bx;
  int64_t batch, dim, rows_per_block;
  acc_t lam, eps;
  bool with_align;
  bool vec;          // rows, weights and D allow 16-byte loads in phase A
  acc_t* harmful;    // (B, D), or nullptr: not written (want_harmful=false)
  acc_t* coef;       // (B, 4)
  acc_t* head_sums;  // (2, D+1)
  acc_t* total;  // five separate scalars
  acc_t* img;
  acc_t* text;
  acc_t* align;
  acc_t* teacher;
  acc_t* partial;  // (gridDim.x, 2 (D+1) + 4); nullptr with one block: results written directly
};

// The five loss outputs from the four sums over the batch (img, text, align, teacher).
template <typename acc_t>
__device__ __forceinline__ void write_losses(const acc_t* sums, acc_t batch, bool with_align,
                                             acc_t lam, acc_t* total, acc_t* img_out,
                                             acc_t* text_out, acc_t* align_out,
                                             acc_t* teacher_out) {
  const acc_t img = sums[0] / batch, text = sums[1] / batch, teacher = sums[3] / batch;
  const acc_t align = with_align ? sums[2] / batch : acc_t(0);
  *total = with_align ? img + text + lam * align : img + text;
  *img_out = img;
  *text_out = text;
  *align_out = align;
  *teacher_out = teacher;
}

// Phase A of one row: <f, w_S>, <f_T, w_T>, <t, w_X>, <f, min(w_T, 0)>, <f, max(w_T, 0)>,
// this lane's share (summed over the warp by the caller).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void row_dots(const ForwardParams<scalar_t, acc_t>& p,
                                         const scalar_t* fr, const scalar_t* ftr,
                                         const scalar_t* tr, int lane, acc_t (&d)[5]) {
  const int64_t D = p.dim;
  if (p.vec) {
    constexpr int kVec = 16 / sizeof(scalar_t);
    for (int64_t j = static_cast<int64_t>(lane) * kVec; j < D; j += 32 * kVec) {
      const auto fv = load_pack<kVec>(fr + j), ftv = load_pack<kVec>(ftr + j),
                 tv = load_pack<kVec>(tr + j);
      const auto ws = load_pack<kVec>(p.ws + j), wt = load_pack<kVec>(p.wt + j),
                 wx = load_pack<kVec>(p.wx + j);
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const acc_t f = static_cast<acc_t>(fv.v[k]), w = wt.v[k];
        d[0] += f * ws.v[k];
        d[1] += static_cast<acc_t>(ftv.v[k]) * w;
        d[2] += static_cast<acc_t>(tv.v[k]) * wx.v[k];
        d[3] += f * (w < acc_t(0) ? w : acc_t(0));
        d[4] += f * (w > acc_t(0) ? w : acc_t(0));
      }
    }
    return;
  }
  for (int64_t j = lane; j < D; j += 32) {
    const acc_t f = static_cast<acc_t>(fr[j]), w = p.wt[j];
    d[0] += f * p.ws[j];
    d[1] += static_cast<acc_t>(ftr[j]) * w;
    d[2] += static_cast<acc_t>(tr[j]) * p.wx[j];
    d[3] += f * (w < acc_t(0) ? w : acc_t(0));
    d[4] += f * (w > acc_t(0) ? w : acc_t(0));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
dgs_forward_kernel(const ForwardParams<scalar_t, acc_t> p) {
  __shared__ acc_t scratch[kWarps];
  __shared__ acc_t warp_losses[kWarps][4];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t D = p.dim;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * p.rows_per_block;
  const int64_t r1 = min(p.batch, r0 + p.rows_per_block);
  const acc_t batch = static_cast<acc_t>(p.batch);

  // ||relu(w_X)|| and ||relu(-w_X)||: ||relu(c w_X)|| = |c| times one of them.
  acc_t pos = 0, neg = 0;
  for (int64_t j = threadIdx.x; j < D; j += kThreads) {
    const acc_t v = p.wx[j];
    if (v > acc_t(0)) pos += v * v; else neg += v * v;
  }
  const acc_t norm_pos = sqrt(block_sum(pos, scratch));
  const acc_t norm_neg = sqrt(block_sum(neg, scratch));
  const acc_t bs = load_or_zero(p.bs), bt = load_or_zero(p.bt), bx = load_or_zero(p.bx);

  // Phase A: a warp per row.
  acc_t l_img = 0, l_text = 0, l_align = 0, l_teacher = 0;  // meaningful in lane 0
  for (int64_t r = r0 + warp; r < r1; r += kWarps) {
    const scalar_t* fr = p.f + r * p.ld_f;
    const scalar_t* ftr = p.ft + r * p.ld_ft;
    const scalar_t* tr = p.t + r * p.ld_t;
    acc_t d[5] = {0, 0, 0, 0, 0};
    row_dots(p, fr, ftr, tr, lane, d);
    const acc_t zs = warp_sum(d[0]) + bs;
    const acc_t zt = warp_sum(d[1]) + bt;
    const acc_t zx = warp_sum(d[2]) + bx;
    const acc_t fneg = warp_sum(d[3]);
    const acc_t fpos = warp_sum(d[4]);
    if (lane == 0) {
      const acc_t y = p.y[r];
      acc_t sig_s, sig_t, sig_x, bce_s, bce_t, bce_x;
      sigmoid_and_bce(zs, y, &sig_s, &bce_s);
      sigmoid_and_bce(zt, y, &sig_t, &bce_t);
      sigmoid_and_bce(zx, y, &sig_x, &bce_x);
      const acc_t cs = (sig_s - y) / batch, ct = (sig_t - y) / batch, cx = (sig_x - y) / batch;
      acc_t* cr = p.coef + r * kCoefCount;
      cr[kCoefS] = cs;
      cr[kCoefT] = ct;
      cr[kCoefX] = cx;
      cr[kCoefInvNorm] = acc_t(1) / (fabs(cx) * (cx > acc_t(0) ? norm_pos : norm_neg) + p.eps);
      // min(c w, 0) = c min(w, 0) for c > 0 and c max(w, 0) for c < 0.
      l_align += ct * (ct > acc_t(0) ? fneg : fpos);
      l_img += bce_s;
      l_text += bce_x;
      l_teacher += bce_t;
    }
  }
  if (lane == 0) {
    warp_losses[warp][0] = l_img;
    warp_losses[warp][1] = l_text;
    warp_losses[warp][2] = l_align;
    warp_losses[warp][3] = l_teacher;
  }
  __syncthreads();  // the block's coefficient rows (global) and warp_losses are visible

  // Phase B: a thread per column, over the block's rows. One block: straight into
  // head_sums, whose (2, D+1) layout is the partial row's first 2 (D+1) entries.
  acc_t* part = p.partial == nullptr
                    ? p.head_sums
                    : p.partial + static_cast<int64_t>(blockIdx.x) * (2 * (D + 1) + 4);
  for (int64_t j = threadIdx.x; j < D; j += kThreads) {
    const acc_t wxj = p.wx[j];
    acc_t sf = 0, st = 0;
    for (int64_t r = r0; r < r1; ++r) {
      const acc_t* cr = p.coef + r * kCoefCount;
      const acc_t cs = cr[kCoefS], cx = cr[kCoefX];
      sf += cs * static_cast<acc_t>(p.f[r * p.ld_f + j]);
      st += cx * static_cast<acc_t>(p.t[r * p.ld_t + j]);
      if (p.harmful != nullptr) {  // the same for every thread: no divergence
        const acc_t g = cx * wxj;
        p.harmful[r * D + j] = (g > acc_t(0) ? g : acc_t(0)) * cr[kCoefInvNorm];
      }
    }
    part[j] = sf;
    part[D + 1 + j] = st;
  }
  if (threadIdx.x == 0) {
    acc_t sum_s = 0, sum_x = 0;
    for (int64_t r = r0; r < r1; ++r) {
      sum_s += p.coef[r * kCoefCount + kCoefS];
      sum_x += p.coef[r * kCoefCount + kCoefX];
    }
    part[D] = sum_s;
    part[2 * D + 1] = sum_x;
    acc_t sums[4];
    for (int k = 0; k < 4; ++k) {
      sums[k] = 0;
      for (int w = 0; w < kWarps; ++w) sums[k] += warp_losses[w][k];
    }
    if (p.partial == nullptr) {
      write_losses(sums, batch, p.with_align, p.lam, p.total, p.img, p.text, p.align, p.teacher);
    } else {
      for (int k = 0; k < 4; ++k) part[2 * (D + 1) + k] = sums[k];
    }
  }
}

// The blocks' partial rows added column by column, in block order (a thread per
// column); block 0 also adds the four loss sums and writes the losses.
template <typename acc_t>
__global__ void __launch_bounds__(kReduceThreads)
dgs_forward_reduce_kernel(const acc_t* __restrict__ partial, int64_t blocks, int64_t dim,
                          acc_t batch, acc_t lam, bool with_align, acc_t* __restrict__ head_sums,
                          acc_t* total, acc_t* img, acc_t* text, acc_t* align, acc_t* teacher) {
  __shared__ acc_t loss_sums[4];
  const int64_t width = 2 * (dim + 1) + 4;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kReduceThreads + threadIdx.x;
  if (c < 2 * (dim + 1)) {
    acc_t s = 0;
#pragma unroll 8
    for (int64_t b = 0; b < blocks; ++b) s += partial[b * width + c];
    head_sums[c] = s;
  }
  if (blockIdx.x != 0) return;
  if (threadIdx.x < 4) {
    acc_t s = 0;
    for (int64_t b = 0; b < blocks; ++b) s += partial[b * width + 2 * (dim + 1) + threadIdx.x];
    loss_sums[threadIdx.x] = s;
  }
  __syncthreads();
  if (threadIdx.x == 0) write_losses(loss_sums, batch, with_align, lam, total, img, text, align, teacher);
}

// 16-byte loads need every row start and the weights 16-byte aligned and D a whole
// number of packs.
bool vector_loads_ok(std::initializer_list<const at::Tensor*> rows,
                     std::initializer_list<const at::Tensor*> weights, int64_t dim) {
  const int64_t n = 16 / rows.begin()[0]->element_size();
  if (dim % n != 0) return false;
  for (const at::Tensor* x : rows)
    if (reinterpret_cast<uintptr_t>(x->const_data_ptr()) % 16 != 0 || x->stride(0) % n != 0)
      return false;
  for (const at::Tensor* w : weights)
    if (reinterpret_cast<uintptr_t>(w->const_data_ptr()) % 16 != 0) return false;
  return true;
}

template <typename acc_t>
const acc_t* optional_ptr(const std::optional<at::Tensor>& x) {
  return x.has_value() && x->defined() ? x->data_ptr<acc_t>() : nullptr;
}

std::optional<at::Tensor> contiguous_or_none(const std::optional<at::Tensor>& x) {
  if (!x.has_value() || !x->defined()) return std::nullopt;
  return x->contiguous();
}

using ForwardOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                              at::Tensor, at::Tensor, at::Tensor>;

ForwardOut dgs_forward_cuda(const at::Tensor& f_in, const at::Tensor& ft_in, const at::Tensor& t_in,
                            const at::Tensor& y_in, const at::Tensor& w_s, const at::Tensor& w_t,
                            const at::Tensor& w_x, const std::optional<at::Tensor>& b_s_in,
                            const std::optional<at::Tensor>& b_t_in,
                            const std::optional<at::Tensor>& b_x_in, double lam, double eps,
                            bool with_align, bool /*project*/, bool /*published*/,
                            bool want_harmful) {
  check_dgs_forward_args(f_in, ft_in, t_in, y_in, w_s, w_t, w_x, b_s_in, b_t_in, b_x_in);
  TORCH_CHECK(f_in.is_cuda(), "dgsnet::dgs_forward (cuda): tensors are on ", f_in.device());
  const c10::cuda::CUDAGuard guard(f_in.device());
  const at::Tensor f = dgs_rows(f_in), ft = dgs_rows(ft_in), t = dgs_rows(t_in);
  const at::Tensor y = y_in.contiguous(), ws = w_s.contiguous(), wt = w_t.contiguous(),
                   wx = w_x.contiguous();
  const auto b_s = contiguous_or_none(b_s_in), b_t = contiguous_or_none(b_t_in),
             b_x = contiguous_or_none(b_x_in);
  const int64_t batch = f.size(0), dim = f.size(1);
  const auto opts = f.options().dtype(dgs_acc_type(f.scalar_type()));
  at::Tensor harmful = at::empty({want_harmful ? batch : 0, dim}, opts);
  at::Tensor coef = at::empty({batch, kCoefCount}, opts);
  at::Tensor head_sums = at::empty({2, dim + 1}, opts);
  std::array<at::Tensor, 5> losses;  // separate outputs: a custom op's outputs may not alias
  for (auto& l : losses) l = at::empty({}, opts);

  // About two blocks per SM, each owning a run of at least kMinRowsPerBlock rows; the
  // partials cost one row of 2 (D+1) + 4 sums per block.
  int device_sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&device_sms, cudaDevAttrMultiProcessorCount,
                                        f.device().index()));
  const int64_t target_blocks = std::max<int64_t>(1, 2 * static_cast<int64_t>(device_sms));
  const int64_t rows_per_block =
      std::max(kMinRowsPerBlock, (batch + target_blocks - 1) / target_blocks);
  const int64_t blocks = std::max<int64_t>(1, (batch + rows_per_block - 1) / rows_per_block);
  at::Tensor partial;
  if (blocks > 1) partial = at::empty({blocks, 2 * (dim + 1) + 4}, opts);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const bool vec = vector_loads_ok({&f, &ft, &t}, {&ws, &wt, &wx}, dim);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(),
                                  "dgsnet_dgs_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    ForwardParams<scalar_t, acc_t> p;
    p.f = f.const_data_ptr<scalar_t>();
    p.ft = ft.const_data_ptr<scalar_t>();
    p.t = t.const_data_ptr<scalar_t>();
    p.ld_f = f.stride(0);
    p.ld_ft = ft.stride(0);
    p.ld_t = t.stride(0);
    p.y = y.const_data_ptr<acc_t>();
    p.ws = ws.const_data_ptr<acc_t>();
    p.wt = wt.const_data_ptr<acc_t>();
    p.wx = wx.const_data_ptr<acc_t>();
    p.bs = optional_ptr<acc_t>(b_s);
    p.bt = optional_ptr<acc_t>(b_t);
    p.bx = optional_ptr<acc_t>(b_x);
    p.batch = batch;
    p.dim = dim;
    p.rows_per_block = rows_per_block;
    p.lam = static_cast<acc_t>(lam);
    p.eps = static_cast<acc_t>(eps);
    p.with_align = with_align;
    p.vec = vec;
    p.harmful = want_harmful ? harmful.data_ptr<acc_t>() : nullptr;  // nullptr: not written
    p.coef = coef.data_ptr<acc_t>();
    p.head_sums = head_sums.data_ptr<acc_t>();
    p.total = losses[0].data_ptr<acc_t>();
    p.img = losses[1].data_ptr<acc_t>();
    p.text = losses[2].data_ptr<acc_t>();
    p.align = losses[3].data_ptr<acc_t>();
    p.teacher = losses[4].data_ptr<acc_t>();
    p.partial = blocks > 1 ? partial.data_ptr<acc_t>() : nullptr;
    dgs_forward_kernel<scalar_t, acc_t>
        <<<static_cast<unsigned int>(blocks), kThreads, 0, stream.stream()>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (blocks > 1) {
      const int64_t reduce_blocks = (2 * (dim + 1) + kReduceThreads - 1) / kReduceThreads;
      dgs_forward_reduce_kernel<acc_t>
          <<<static_cast<unsigned int>(reduce_blocks), kReduceThreads, 0, stream.stream()>>>(
              p.partial, blocks, dim, static_cast<acc_t>(batch), p.lam, with_align, p.head_sums,
              p.total, p.img, p.text, p.align, p.teacher);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {losses[0], losses[1], losses[2], losses[3], losses[4], harmful, coef, head_sums};
}

template <typename acc_t, typename out_t>
struct BackwardParams {
  const acc_t* coef;
  const acc_t* sums;  // (2, D+1)
  const acc_t* ws;
  const acc_t* wt;
  const acc_t* wx;
  const acc_t* d_total;  // nullptr: no upstream gradient (0)
  const acc_t* d_img;
  const acc_t* d_text;
  const acc_t* d_align;
  int64_t batch, dim;
  acc_t lam;
  bool with_align, project, published;
  out_t* out;         // (B, D)
  acc_t* grad_heads;  // (2, D+1)
};

template <typename acc_t, typename out_t>
__global__ void __launch_bounds__(kThreads)
dgs_backward_kernel(const BackwardParams<acc_t, out_t> p) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t D = p.dim;
  const acc_t dt = load_or_zero(p.d_total), di = load_or_zero(p.d_img),
              dx = load_or_zero(p.d_text), da = load_or_zero(p.d_align);
  const acc_t scale_s = dt + di, scale_x = dt + dx;
  const acc_t scale_a =
      p.with_align ? (p.lam * dt + da) / static_cast<acc_t>(p.batch) : acc_t(0);

  // Head gradients: scaled sums, spread over every thread of the grid.
  const int64_t n_heads = 2 * (D + 1);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n_heads;
       i += static_cast<int64_t>(gridDim.x) * kThreads)
    p.grad_heads[i] = (i <= D ? scale_s : scale_x) * p.sums[i];

  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (r >= p.batch) return;
  // The alignment gradient joins the projected part (published) or is added after (paper).
  const bool align_inside = !p.project || p.published;
  const acc_t a_in = align_inside ? scale_a : acc_t(0);
  const acc_t a_out = align_inside ? acc_t(0) : scale_a;
  const acc_t* cr = p.coef + r * kCoefCount;
  const acc_t as = scale_s * cr[kCoefS], ct = cr[kCoefT], cx = cr[kCoefX],
              inv = cr[kCoefInvNorm];
  acc_t dot = 0;
  if (p.project) {
    for (int64_t j = lane; j < D; j += 32) {
      const acc_t b = fmin(ct * p.wt[j], acc_t(0));
      const acc_t h = fmax(cx * p.wx[j], acc_t(0)) * inv;
      dot += (as * p.ws[j] + a_in * b) * h;
    }
    dot = warp_sum(dot);
  }
  out_t* o = p.out + r * D;
  for (int64_t j = lane; j < D; j += 32) {
    const acc_t b = fmin(ct * p.wt[j], acc_t(0));
    const acc_t h = fmax(cx * p.wx[j], acc_t(0)) * inv;
    o[j] = static_cast<out_t>(as * p.ws[j] + a_in * b - dot * h + a_out * b);
  }
}

template <typename acc_t>
const acc_t* upstream_ptr(const std::optional<at::Tensor>& g) {
  return g.has_value() && g->defined() ? g->const_data_ptr<acc_t>() : nullptr;
}

std::tuple<at::Tensor, at::Tensor> dgs_backward_cuda(
    const at::Tensor& coef_in, const at::Tensor& head_sums, const at::Tensor& w_s,
    const at::Tensor& w_t, const at::Tensor& w_x, const std::optional<at::Tensor>& d_total,
    const std::optional<at::Tensor>& d_img, const std::optional<at::Tensor>& d_text,
    const std::optional<at::Tensor>& d_align, double lam, bool with_align, bool project,
    bool published, at::ScalarType out_dtype) {
  check_dgs_backward_args(coef_in, head_sums, w_s, w_t, w_x, {d_total, d_img, d_text, d_align});
  TORCH_CHECK(coef_in.is_cuda(), "dgsnet::dgs_backward (cuda): tensors are on ", coef_in.device());
  TORCH_CHECK(out_dtype == at::kFloat || out_dtype == at::kDouble || out_dtype == at::kHalf ||
                  out_dtype == at::kBFloat16,
              "dgsnet::dgs_backward (cuda): out_dtype must be a floating type, got ", out_dtype);
  const c10::cuda::CUDAGuard guard(coef_in.device());
  const at::Tensor coef = coef_in.contiguous(), ws = w_s.contiguous(), wt = w_t.contiguous(),
                   wx = w_x.contiguous(), sums = head_sums.contiguous();
  const int64_t batch = coef.size(0), dim = ws.numel();
  at::Tensor grad_f = at::empty({batch, dim}, coef.options().dtype(out_dtype));
  at::Tensor grad_heads = at::empty({2, dim + 1}, coef.options());
  const int64_t blocks = (batch + kWarps - 1) / kWarps;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(coef.scalar_type(), "dgsnet_dgs_backward_cuda_acc", [&] {
    using acc_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype,
                                    "dgsnet_dgs_backward_cuda_out", [&] {
      using out_t = scalar_t;
      BackwardParams<acc_t, out_t> p;
      p.coef = coef.const_data_ptr<acc_t>();
      p.sums = sums.const_data_ptr<acc_t>();
      p.ws = ws.const_data_ptr<acc_t>();
      p.wt = wt.const_data_ptr<acc_t>();
      p.wx = wx.const_data_ptr<acc_t>();
      p.d_total = upstream_ptr<acc_t>(d_total);
      p.d_img = upstream_ptr<acc_t>(d_img);
      p.d_text = upstream_ptr<acc_t>(d_text);
      p.d_align = upstream_ptr<acc_t>(d_align);
      p.batch = batch;
      p.dim = dim;
      p.lam = static_cast<acc_t>(lam);
      p.with_align = with_align;
      p.project = project;
      p.published = published;
      p.out = grad_f.data_ptr<out_t>();
      p.grad_heads = grad_heads.data_ptr<acc_t>();
      dgs_backward_kernel<acc_t, out_t>
          <<<static_cast<unsigned int>(blocks), kThreads, 0, stream.stream()>>>(p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {grad_f, grad_heads};
}

}  // namespace

TORCH_LIBRARY_IMPL(dgsnet, CUDA, m) {
  m.impl("dgs_forward", &dgs_forward_cuda);
  m.impl("dgs_backward", &dgs_backward_cuda);
}

}  // namespace dgsnet
