// Scalar pieces of the DGS objective shared by the CPU and CUDA kernels:
// numerically stable sigmoid and BCE-with-logits, written once for both.
#pragma once
#include <cmath>

#if defined(__CUDACC__)
#define DGSNET_HD __host__ __device__ __forceinline__
#else
#define DGSNET_HD inline
#endif

namespace dgsnet {

// Layout of one row of the saved coefficients (B, 4).
enum DgsCoef { kCoefS = 0, kCoefT = 1, kCoefX = 2, kCoefInvNorm = 3, kCoefCount = 4 };

// exp and log1p overloaded on float/double, for host and device alike.
#if defined(__CUDA_ARCH__)
DGSNET_HD float dgs_exp(float x) { return expf(x); }
DGSNET_HD double dgs_exp(double x) { return exp(x); }
DGSNET_HD float dgs_log1p(float x) { return log1pf(x); }
DGSNET_HD double dgs_log1p(double x) { return log1p(x); }
#else
DGSNET_HD float dgs_exp(float x) { return std::exp(x); }
DGSNET_HD double dgs_exp(double x) { return std::exp(x); }
// log1pf through double: 1 + x is exact in double for float |x| >= 2^-24, so the double
// log rounded to float is correctly rounded (checked over [0, 1], the range used here);
// below 2^-24 log1p(x) rounds to x. glibc's log1pf took ~25% longer per call and is
// called three times per row.
DGSNET_HD float dgs_log1p(float x) {
  return std::fabs(x) < 0x1p-24f ? x : static_cast<float>(std::log(1.0 + static_cast<double>(x)));
}
DGSNET_HD double dgs_log1p(double x) { return std::log1p(x); }
#endif

// sigmoid(z) and BCE-with-logits(z, y) = max(z, 0) - z y + log(1 + exp(-|z|))
// from one exponential; both finite for any z.
template <typename T>
DGSNET_HD void sigmoid_and_bce(T z, T y, T* sigmoid, T* bce) {
  const T e = dgs_exp(z < T(0) ? z : -z);
  const T r = T(1) / (T(1) + e);
  *sigmoid = z >= T(0) ? r : e * r;
  *bce = (z > T(0) ? z : T(0)) - z * y + dgs_log1p(e);
}

}  // namespace dgsnet
