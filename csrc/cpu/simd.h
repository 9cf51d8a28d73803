// Loops the compiler turns into SIMD code, and the attribute that compiles a
// function once per x86 level (AVX-512, AVX2+FMA, baseline) and picks one at
// load time, so one wheel is fast on new CPUs and still runs on old ones.
#pragma once
#include <cstdint>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define DGSNET_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DGSNET_MULTIVERSION
#endif

// The loop bodies must be inlined into each clone to be compiled for its level.
#if defined(__GNUC__)
#define DGSNET_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define DGSNET_ALWAYS_INLINE inline
#endif

namespace dgsnet {
namespace simd {

// Lanes of one 512-bit register: reductions keep this many partial sums so
// they vectorise without -ffast-math (the summation order is fixed, not
// reassociated by the compiler).
template <typename T>
constexpr int kLanes = 64 / sizeof(T);

// Pairwise sum of the lanes (log2 steps, not a serial chain). Modifies s.
template <typename T>
DGSNET_ALWAYS_INLINE T sum_lanes(T* s) {
  for (int w = kLanes<T> / 2; w > 0; w /= 2)
    for (int k = 0; k < w; ++k) s[k] += s[k + w];
  return s[0];
}

// One 512-bit register of T as a GCC/Clang vector: arithmetic, comparisons and
// ?: act lane-wise and lower to whatever the clone's ISA has (2 x 256-bit on
// AVX2, 4 x 128-bit on SSE), so the hot loops vectorise by construction.
#if defined(__GNUC__)
template <typename T>
struct VecOf {
  typedef T type __attribute__((vector_size(64)));
};
template <typename T>
using Vec = typename VecOf<T>::type;

template <typename T>
DGSNET_ALWAYS_INLINE Vec<T> load(const T* p) {
  Vec<T> v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
DGSNET_ALWAYS_INLINE void store(T* p, Vec<T> v) {
  __builtin_memcpy(p, &v, sizeof(v));
}
template <typename T>
DGSNET_ALWAYS_INLINE Vec<T> splat(T x) {
  return Vec<T>{} + x;
}
// Pairwise lane sum, the same order as sum_lanes.
template <typename T>
DGSNET_ALWAYS_INLINE T reduce(Vec<T> v) {
  T s[kLanes<T>];
  __builtin_memcpy(s, &v, sizeof(v));
  return sum_lanes(s);
}
template <typename T>
DGSNET_ALWAYS_INLINE Vec<T> vmin0(Vec<T> v) {
  return v < T(0) ? v : Vec<T>{};
}
template <typename T>
DGSNET_ALWAYS_INLINE Vec<T> vmax0(Vec<T> v) {
  return v > T(0) ? v : Vec<T>{};
}
#endif

}  // namespace simd
}  // namespace dgsnet
