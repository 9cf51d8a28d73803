// CPU kernels of dgsnet::dgs_forward / dgs_backward (schema in csrc/ops.cpp).
//
// The head weights enter every row only through their signed parts
// (P+ = relu(w_X), P- = relu(-w_X), Q- = min(w_T, 0), Q+ = max(w_T, 0)), since
//   relu(c w_X) = |c| P_sign(c),   min(c w_T, 0) = c Q_-sign(c).
// The parts are formed in registers from w_X and w_T (relu(s w) with s = +-1,
// exact), so no per-call copy of the weights is made.
// Forward: rows are split into a fixed number of blocks (a function of B and
// D only, so results do not depend on the thread count); each block walks its
// rows: one pass per row gives the three logits and the row's dot products
// with both Q- and Q+ (the alignment term takes the one the sign of c_T picks),
// five independent sums so the pass is not held up by one add chain; the
// harmful row, when wanted, is written from the weights alone; then groups of kGroup
// rows add into the block's head sums with one load/store of the sums per
// group. The block sums are then added in block order.
// Backward: independent rows; the row's dot product with the harmful
// direction is a combination of six per-call dot products of the weight
// parts, so each row is one fused pass of three multiply-adds per element
// over w_S and two of the four weight parts, which are formed once per call.
// Scalars (biases, upstream gradients) are read through data pointers, not
// item(): each item() is a dispatcher call, microseconds at B=1.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "../dgs_math.h"
#include "../shape_checks.h"
#include "simd.h"

namespace dgsnet {
namespace {

using simd::kLanes;
using simd::load;
using simd::reduce;
using simd::store;
using simd::Vec;

template <typename T>
struct ForwardArgs {
  const T* f;
  const T* ft;
  const T* t;
  int64_t ld_f, ld_ft, ld_t;  // row strides
  const T* y;
  const T* ws;
  const T* wt;
  const T* wx;
  T bs, bt, bx;
  T norm_pos, norm_neg;  // ||P+||, ||P-||: ||relu(c w_X)|| = |c| times one of them
  int64_t batch, dim;
  T eps;
  T* harmful;  // (B, D) contiguous, or nullptr: not written (want_harmful=false)
  T* coef;     // (B, 4)
};

constexpr int kGroup = 4;  // rows sharing one pass over the head sums

// Per-block sums: [sum c_S f (D), sum c_S, sum c_X t (D), sum c_X] (the layout of head_sums),
// then the loss sums [img, text, align, teacher].
inline int64_t partial_width(int64_t dim) { return 2 * (dim + 1) + 4; }

// sum_f += sum_q cs[q] f_q and sum_t += sum_q cx[q] t_q over N rows (N fixed at
// compile time so the row pointers stay in registers), rows added in order.
template <int N, typename T>
DGSNET_ALWAYS_INLINE void add_rows(T* sum_f, T* sum_t, const T* const* fr, const T* const* tr,
                                   const T* cs, const T* cx, int64_t D) {
  constexpr int L = kLanes<T>;
  const int64_t Dv = D - D % L;
  for (int64_t j = 0; j < Dv; j += L) {
    Vec<T> sf = load(sum_f + j), st = load(sum_t + j);
    for (int q = 0; q < N; ++q) {
      sf += simd::splat(cs[q]) * load(fr[q] + j);
      st += simd::splat(cx[q]) * load(tr[q] + j);
    }
    store(sum_f + j, sf);
    store(sum_t + j, st);
  }
  for (int64_t j = Dv; j < D; ++j)
    for (int q = 0; q < N; ++q) {
      sum_f[j] += cs[q] * fr[q][j];
      sum_t[j] += cx[q] * tr[q][j];
    }
}

// One pass over row r: the logits <f, w_S> + b_S, <f_T, w_T> + b_T, <t, w_X> + b_X and
// both alignment candidates <f, Q->, <f, Q+> (which one counts depends on the sign of
// c_T, known only after the pass), into dots[0..4]. Five independent sums: a second
// pass for the alignment alone was one dependent chain.
template <typename T>
DGSNET_ALWAYS_INLINE void row_dots(const ForwardArgs<T>& a, int64_t r, T* dots) {
  constexpr int L = kLanes<T>;
  const int64_t D = a.dim;
  const int64_t Dv = D - D % L;
  const T* ws = a.ws;
  const T* wt = a.wt;
  const T* wx = a.wx;
  const T* f = a.f + r * a.ld_f;
  const T* ft = a.ft + r * a.ld_ft;
  const T* t = a.t + r * a.ld_t;
  Vec<T> s0{}, s1{}, s2{}, sn{}, sp{};
  for (int64_t j = 0; j < Dv; j += L) {
    const Vec<T> fj = load(f + j), wtj = load(wt + j);
    s0 += fj * load(ws + j);
    s1 += load(ft + j) * wtj;
    s2 += load(t + j) * load(wx + j);
    sn += fj * simd::vmin0<T>(wtj);
    sp += fj * simd::vmax0<T>(wtj);
  }
  T zs = reduce<T>(s0), zt = reduce<T>(s1), zx = reduce<T>(s2);
  T fqn = reduce<T>(sn), fqp = reduce<T>(sp);
  for (int64_t j = Dv; j < D; ++j) {
    zs += f[j] * ws[j];
    zt += ft[j] * wt[j];
    zx += t[j] * wx[j];
    fqn += f[j] * std::min(wt[j], T(0));
    fqp += f[j] * std::max(wt[j], T(0));
  }
  dots[0] = zs + a.bs;
  dots[1] = zt + a.bt;
  dots[2] = zx + a.bx;
  dots[3] = fqn;
  dots[4] = fqp;
}

template <typename T>
DGSNET_ALWAYS_INLINE void forward_rows(const ForwardArgs<T>& a, int64_t r0, int64_t r1, T* sums,
                                       T* losses) {
  constexpr int L = kLanes<T>;
  const int64_t D = a.dim;
  const int64_t Dv = D - D % L;
  T* sum_f = sums;
  T* sum_t = sums + D + 1;
  const T batch = static_cast<T>(a.batch);
  const T* wx = a.wx;
  T loss[4] = {losses[0], losses[1], losses[2], losses[3]};
  T cs_sum = sum_f[D], cx_sum = sum_t[D];
  for (int64_t g0 = r0; g0 < r1; g0 += kGroup) {
    const int nr = static_cast<int>(std::min<int64_t>(kGroup, r1 - g0));
    const T* fr[kGroup];
    const T* tr[kGroup];
    T cs[kGroup], cx[kGroup];
    // The group's dot products, then its scalar work row by row.
    T dots[kGroup][5];
    for (int q = 0; q < nr; ++q) {
      fr[q] = a.f + (g0 + q) * a.ld_f;
      tr[q] = a.t + (g0 + q) * a.ld_t;
      row_dots(a, g0 + q, dots[q]);
    }
    for (int q = 0; q < nr; ++q) {
      const int64_t r = g0 + q;
      const T y = a.y[r];
      T sig_s, sig_t, sig_x, bce_s, bce_t, bce_x;
      sigmoid_and_bce(dots[q][0], y, &sig_s, &bce_s);
      sigmoid_and_bce(dots[q][1], y, &sig_t, &bce_t);
      sigmoid_and_bce(dots[q][2], y, &sig_x, &bce_x);
      const T c_s = (sig_s - y) / batch, c_t = (sig_t - y) / batch, c_x = (sig_x - y) / batch;
      const bool pos = c_x > T(0);
      const T inv_norm = T(1) / (std::abs(c_x) * (pos ? a.norm_pos : a.norm_neg) + a.eps);
      // <f, min(c_T w_T, 0)> = c_T <f, Q-> for c_T > 0, else c_T <f, Q+>.
      const T fq = c_t > T(0) ? dots[q][3] : dots[q][4];
      if (a.harmful != nullptr) {  // harmful row = sh relu(sp w_X), sp = +-1
        const T sh = std::abs(c_x) * inv_norm, sgn = pos ? T(1) : T(-1);
        const Vec<T> vsh = simd::splat(sh), vsg = simd::splat(sgn);
        T* h = a.harmful + r * D;
        for (int64_t j = 0; j < Dv; j += L) store(h + j, vsh * simd::vmax0<T>(vsg * load(wx + j)));
        for (int64_t j = Dv; j < D; ++j) h[j] = sh * std::max(sgn * wx[j], T(0));
      }
      cs[q] = c_s;
      cx[q] = c_x;
      T* cr = a.coef + r * kCoefCount;
      cr[kCoefS] = c_s;
      cr[kCoefT] = c_t;
      cr[kCoefX] = c_x;
      cr[kCoefInvNorm] = inv_norm;
      loss[0] += bce_s;
      loss[1] += bce_x;
      loss[2] += c_t * fq;
      loss[3] += bce_t;
      cs_sum += c_s;
      cx_sum += c_x;
    }
    // Then, over the group: the head sums, one load/store of them per group.
    if (nr == kGroup)
      add_rows<kGroup>(sum_f, sum_t, fr, tr, cs, cx, D);
    else
      for (int q = 0; q < nr; ++q) add_rows<1>(sum_f, sum_t, fr + q, tr + q, cs + q, cx + q, D);
  }
  for (int k = 0; k < 4; ++k) losses[k] = loss[k];
  sum_f[D] = cs_sum;
  sum_t[D] = cx_sum;
}

// ||relu(w)|| and ||relu(-w)||, summed in double.
template <typename T>
void positive_part_norms(const T* w, int64_t n, T* pos, T* neg) {
  double p = 0, q = 0;
  for (int64_t j = 0; j < n; ++j) {
    const double v = w[j];
    (v > 0 ? p : q) += v * v;
  }
  *pos = static_cast<T>(std::sqrt(p));
  *neg = static_cast<T>(std::sqrt(q));
}

// acc[c] += part[c] for c < n: the ordered sum of the block partials.
template <typename T>
DGSNET_ALWAYS_INLINE void add_into(T* acc, const T* part, int64_t n) {
  for (int64_t c = 0; c < n; ++c) acc[c] += part[c];
}

DGSNET_MULTIVERSION void forward_rows_f32(const ForwardArgs<float>& a, int64_t r0, int64_t r1,
                                          float* sums, float* losses) {
  forward_rows(a, r0, r1, sums, losses);
}
DGSNET_MULTIVERSION void forward_rows_f64(const ForwardArgs<double>& a, int64_t r0, int64_t r1,
                                          double* sums, double* losses) {
  forward_rows(a, r0, r1, sums, losses);
}
DGSNET_MULTIVERSION void add_into_f32(float* acc, const float* part, int64_t n) {
  add_into(acc, part, n);
}
DGSNET_MULTIVERSION void add_into_f64(double* acc, const double* part, int64_t n) {
  add_into(acc, part, n);
}
inline void forward_rows_any(const ForwardArgs<float>& a, int64_t r0, int64_t r1, float* s,
                             float* l) {
  forward_rows_f32(a, r0, r1, s, l);
}
inline void forward_rows_any(const ForwardArgs<double>& a, int64_t r0, int64_t r1, double* s,
                             double* l) {
  forward_rows_f64(a, r0, r1, s, l);
}
inline void add_into_any(float* acc, const float* p, int64_t n) { add_into_f32(acc, p, n); }
inline void add_into_any(double* acc, const double* p, int64_t n) { add_into_f64(acc, p, n); }

// Blocks of rows: enough for the threads, few enough that adding the block
// sums stays small next to the pass over the rows. Depends on (B, D) only.
inline int64_t forward_block_rows(int64_t batch, int64_t dim) {
  const int64_t blocks = std::clamp<int64_t>(batch * dim / 16384, 1, std::min<int64_t>(batch, 64));
  return (batch + blocks - 1) / blocks;
}

// A one-element CPU tensor's value (its dtype was checked), 0 when absent.
template <typename T>
T scalar_or_zero(const std::optional<at::Tensor>& x) {
  return x.has_value() && x->defined() ? *x->const_data_ptr<T>() : T(0);
}

using ForwardOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                              at::Tensor, at::Tensor, at::Tensor>;

ForwardOut dgs_forward_cpu(const at::Tensor& f_in, const at::Tensor& ft_in, const at::Tensor& t_in,
                           const at::Tensor& y_in, const at::Tensor& w_s, const at::Tensor& w_t,
                           const at::Tensor& w_x, const std::optional<at::Tensor>& b_s,
                           const std::optional<at::Tensor>& b_t,
                           const std::optional<at::Tensor>& b_x, double lam, double eps,
                           bool with_align, bool /*project*/, bool /*published*/,
                           bool want_harmful) {
  check_dgs_forward_args(f_in, ft_in, t_in, y_in, w_s, w_t, w_x, b_s, b_t, b_x);
  TORCH_CHECK(f_in.device().is_cpu(), "dgsnet::dgs_forward (cpu): tensors are on ", f_in.device());
  TORCH_CHECK(f_in.scalar_type() == at::kFloat || f_in.scalar_type() == at::kDouble,
              "dgsnet::dgs_forward (cpu): features must be float32 or float64, got ",
              f_in.scalar_type(), "; cast half-precision features to float32");
  const at::Tensor f = dgs_rows(f_in), ft = dgs_rows(ft_in), t = dgs_rows(t_in);
  const at::Tensor y = y_in.contiguous(), ws = w_s.contiguous(), wt = w_t.contiguous(),
                   wx = w_x.contiguous();
  const int64_t batch = f.size(0), dim = f.size(1);
  const auto opts = f.options();
  at::Tensor harmful = at::empty({want_harmful ? batch : 0, dim}, opts);
  at::Tensor coef = at::empty({batch, kCoefCount}, opts);
  at::Tensor head_sums = at::empty({2, dim + 1}, opts);
  // total, img, text, align, teacher: separate 0-dim outputs (a custom op's
  // outputs may not alias one another).
  std::array<at::Tensor, 5> losses;
  for (auto& l : losses) l = at::empty({}, opts);
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "dgsnet_dgs_forward_cpu", [&] {
    using T = scalar_t;
    ForwardArgs<T> a{f.const_data_ptr<T>(), ft.const_data_ptr<T>(), t.const_data_ptr<T>(),
                     f.stride(0), ft.stride(0), t.stride(0), y.const_data_ptr<T>(),
                     ws.const_data_ptr<T>(), wt.const_data_ptr<T>(), wx.const_data_ptr<T>(),
                     scalar_or_zero<T>(b_s), scalar_or_zero<T>(b_t), scalar_or_zero<T>(b_x), 0, 0,
                     batch, dim, static_cast<T>(eps), want_harmful ? harmful.data_ptr<T>() : nullptr,
                     coef.data_ptr<T>()};
    positive_part_norms(a.wx, dim, &a.norm_pos, &a.norm_neg);
    const int64_t rows = forward_block_rows(batch, dim);
    const int64_t blocks = (batch + rows - 1) / rows;
    const int64_t width = partial_width(dim);
    T* hs = head_sums.data_ptr<T>();
    T sums[4] = {};
    if (blocks == 1) {  // small B * D: straight into head_sums, no partial buffer
      std::fill(hs, hs + 2 * (dim + 1), T(0));
      forward_rows_any(a, 0, batch, hs, sums);
    } else {
      at::Tensor partial = at::empty({blocks, width}, opts);
      T* part = partial.data_ptr<T>();
      at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          T* p = part + b * width;
          std::fill(p, p + width, T(0));
          forward_rows_any(a, b * rows, std::min(batch, (b + 1) * rows), p, p + 2 * (dim + 1));
        }
      });
      for (int64_t b = 1; b < blocks; ++b) add_into_any(part, part + b * width, width);
      std::copy(part, part + 2 * (dim + 1), hs);
      std::copy(part + 2 * (dim + 1), part + width, sums);
    }
    const T img = sums[0] / batch, text = sums[1] / batch, teacher = sums[3] / batch;
    const T align = with_align ? sums[2] / batch : T(0);
    *losses[0].data_ptr<T>() = with_align ? img + text + static_cast<T>(lam) * align : img + text;
    *losses[1].data_ptr<T>() = img;
    *losses[2].data_ptr<T>() = text;
    *losses[3].data_ptr<T>() = align;
    *losses[4].data_ptr<T>() = teacher;
  });
  return {losses[0], losses[1], losses[2], losses[3], losses[4], harmful, coef, head_sums};
}

template <typename T>
struct BackwardArgs {
  const T* coef;
  const T* ws;
  const T* parts;  // (4, D): Q-, -Q+ (= min(+-w_T, 0)), P+, P- (= relu(+-w_X)); see weight_parts
  T ws_p[2];       // <w_S, P+>, <w_S, P->
  T q_p[2][2];     // <Q-, P+>, <Q-, P->; <Q+, P+>, <Q+, P->
  int64_t dim;
  T scale_s;     // upstream gradient reaching L_img: d_total + d_img
  T scale_a;     // reaching L_align, divided by B: (lam d_total + d_align) / B
  bool project;  // remove the harmful component at all
  bool published;
  T* out;  // (B, D) contiguous
};

// The four signed weight parts the rows combine, formed once per call: every row then
// reads two of them (a load each) where forming them in its loop cost three operations
// per element and part (the backward ran ~25% longer). min(s w, 0) and relu(s w) with
// s = +-1, exact; the same expressions the forward forms in registers.
template <typename T>
DGSNET_ALWAYS_INLINE void weight_parts(const T* wt, const T* wx, int64_t D, T* parts) {
  constexpr int L = kLanes<T>;
  const int64_t Dv = D - D % L;
  const Vec<T> one = simd::splat(T(1)), minus = simd::splat(T(-1));
  for (int64_t j = 0; j < Dv; j += L) {
    const Vec<T> t = load(wt + j), x = load(wx + j);
    store(parts + j, simd::vmin0<T>(one * t));
    store(parts + D + j, simd::vmin0<T>(minus * t));
    store(parts + 2 * D + j, simd::vmax0<T>(one * x));
    store(parts + 3 * D + j, simd::vmax0<T>(minus * x));
  }
  for (int64_t j = Dv; j < D; ++j) {
    parts[j] = std::min(T(1) * wt[j], T(0));
    parts[D + j] = std::min(T(-1) * wt[j], T(0));
    parts[2 * D + j] = std::max(T(1) * wx[j], T(0));
    parts[3 * D + j] = std::max(T(-1) * wx[j], T(0));
  }
}

// Per row, with b = c_T Q (Q = Q- for c_T > 0, else Q+) and h = s P (s = |c_X| inv,
// P = P+ for c_X > 0, else P-), G = a_s w_S + a_in b and
//   out = G - <G, h> h + a_out b = a_s w_S + (a_in + a_out) c_T Q - <G, h> s P,
//   <G, h> = s (a_s <w_S, P> + a_in c_T <Q, P>).
template <typename T>
DGSNET_ALWAYS_INLINE void backward_rows(const BackwardArgs<T>& a, int64_t r0, int64_t r1) {
  constexpr int L = kLanes<T>;
  const int64_t D = a.dim;
  const int64_t Dv = D - D % L;
  const T* ws = a.ws;
  // The alignment gradient joins the projected part (published) or is added after it (paper).
  const bool align_inside = !a.project || a.published;
  const T a_in = align_inside ? a.scale_a : T(0);
  const T a_out = align_inside ? T(0) : a.scale_a;
  for (int64_t r = r0; r < r1; ++r) {
    const T* cr = a.coef + r * kCoefCount;
    const T as = a.scale_s * cr[kCoefS], ct = cr[kCoefT], cx = cr[kCoefX], inv = cr[kCoefInvNorm];
    const int ip = cx > T(0) ? 0 : 1, iq = ct > T(0) ? 0 : 1;
    // Q = sq min(sq w_T, 0) = sq parts[iq], sq = +-1; P = parts[2 + ip] (as in the forward).
    const T sq = iq == 0 ? T(1) : T(-1);
    const T s = std::abs(cx) * inv;
    const T dot = a.project ? s * (as * a.ws_p[ip] + a_in * ct * a.q_p[iq][ip]) : T(0);
    const T kq = (a_in + a_out) * ct * sq, kp = -dot * s;
    const T* q = a.parts + iq * D;
    const T* pp = a.parts + (2 + ip) * D;
    T* o = a.out + r * D;
    const Vec<T> vas = simd::splat(as), vkq = simd::splat(kq), vkp = simd::splat(kp);
    for (int64_t j = 0; j < Dv; j += L)
      store(o + j, vas * load(ws + j) + vkq * load(q + j) + vkp * load(pp + j));
    for (int64_t j = Dv; j < D; ++j) o[j] = as * ws[j] + kq * q[j] + kp * pp[j];
  }
}

DGSNET_MULTIVERSION void weight_parts_f32(const float* wt, const float* wx, int64_t D,
                                         float* parts) {
  weight_parts(wt, wx, D, parts);
}
DGSNET_MULTIVERSION void weight_parts_f64(const double* wt, const double* wx, int64_t D,
                                         double* parts) {
  weight_parts(wt, wx, D, parts);
}
inline void weight_parts_any(const float* wt, const float* wx, int64_t D, float* parts) {
  weight_parts_f32(wt, wx, D, parts);
}
inline void weight_parts_any(const double* wt, const double* wx, int64_t D, double* parts) {
  weight_parts_f64(wt, wx, D, parts);
}
DGSNET_MULTIVERSION void backward_rows_f32(const BackwardArgs<float>& a, int64_t r0, int64_t r1) {
  backward_rows(a, r0, r1);
}
DGSNET_MULTIVERSION void backward_rows_f64(const BackwardArgs<double>& a, int64_t r0, int64_t r1) {
  backward_rows(a, r0, r1);
}
inline void backward_rows_any(const BackwardArgs<float>& a, int64_t r0, int64_t r1) {
  backward_rows_f32(a, r0, r1);
}
inline void backward_rows_any(const BackwardArgs<double>& a, int64_t r0, int64_t r1) {
  backward_rows_f64(a, r0, r1);
}

std::tuple<at::Tensor, at::Tensor> dgs_backward_cpu(
    const at::Tensor& coef_in, const at::Tensor& head_sums, const at::Tensor& w_s,
    const at::Tensor& w_t, const at::Tensor& w_x, const std::optional<at::Tensor>& d_total,
    const std::optional<at::Tensor>& d_img, const std::optional<at::Tensor>& d_text,
    const std::optional<at::Tensor>& d_align, double lam, bool with_align, bool project,
    bool published, at::ScalarType out_dtype) {
  check_dgs_backward_args(coef_in, head_sums, w_s, w_t, w_x, {d_total, d_img, d_text, d_align});
  TORCH_CHECK(coef_in.device().is_cpu(), "dgsnet::dgs_backward (cpu): tensors are on ",
              coef_in.device());
  const at::Tensor coef = coef_in.contiguous(), ws = w_s.contiguous(), wt = w_t.contiguous(),
                   wx = w_x.contiguous(), sums = head_sums.contiguous();
  const int64_t batch = coef.size(0), dim = ws.numel();
  at::Tensor grad_f = at::empty({batch, dim}, coef.options());
  at::Tensor grad_heads = at::empty({2, dim + 1}, coef.options());
  AT_DISPATCH_FLOATING_TYPES(coef.scalar_type(), "dgsnet_dgs_backward_cpu", [&] {
    using T = scalar_t;
    const T dt = scalar_or_zero<T>(d_total), di = scalar_or_zero<T>(d_img),
            dx = scalar_or_zero<T>(d_text), da = scalar_or_zero<T>(d_align);
    const T scale_s = dt + di, scale_x = dt + dx;
    const T scale_a = with_align ? (static_cast<T>(lam) * dt + da) / static_cast<T>(batch) : T(0);
    const T* w = ws.const_data_ptr<T>();
    const T* w_t_p = wt.const_data_ptr<T>();
    const T* w_x_p = wx.const_data_ptr<T>();
    // The six per-call dot products <w_S | Q-, Q+ ; P+, P->, in double; P+ and P-
    // (Q- and Q+) split one weight, so each element feeds one of each pair.
    double d[6] = {};
    for (int64_t j = 0; j < dim; ++j) {
      const double x = w_x_p[j], tw = w_t_p[j], sw = w[j];
      const double p = x > 0 ? x : 0.0, n = x < 0 ? -x : 0.0;
      const double qn = tw < 0 ? tw : 0.0, qp = tw > 0 ? tw : 0.0;
      d[0] += sw * p;
      d[1] += sw * n;
      d[2] += qn * p;
      d[3] += qn * n;
      d[4] += qp * p;
      d[5] += qp * n;
    }
    std::vector<T> parts(4 * dim);
    weight_parts_any(w_t_p, w_x_p, dim, parts.data());
    BackwardArgs<T> a{coef.const_data_ptr<T>(), w, parts.data(),
                      {static_cast<T>(d[0]), static_cast<T>(d[1])},
                      {{static_cast<T>(d[2]), static_cast<T>(d[3])},
                       {static_cast<T>(d[4]), static_cast<T>(d[5])}},
                      dim, scale_s, scale_a, project, published, grad_f.data_ptr<T>()};
    const int64_t grain = std::max<int64_t>(1, 16384 / dim);
    at::parallel_for(0, batch, grain, [&](int64_t r0, int64_t r1) { backward_rows_any(a, r0, r1); });
    const T* s = sums.data_ptr<T>();
    T* gh = grad_heads.data_ptr<T>();
    for (int64_t j = 0; j <= dim; ++j) {
      gh[j] = scale_s * s[j];
      gh[dim + 1 + j] = scale_x * s[dim + 1 + j];
    }
  });
  if (out_dtype != grad_f.scalar_type()) grad_f = grad_f.to(out_dtype);
  return {grad_f, grad_heads};
}

}  // namespace

TORCH_LIBRARY_IMPL(dgsnet, CPU, m) {
  m.impl("dgs_forward", &dgs_forward_cpu);
  m.impl("dgs_backward", &dgs_backward_cpu);
}

}  // namespace dgsnet
