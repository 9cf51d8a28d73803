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

// Bytes of one vector: 256 bits, the widest register of the AVX2 clone. A
// wider GCC vector than the clone's registers is not kept in registers: GCC
// keeps it on the stack and moves it through general registers, several times
// slower in loops with accumulators (measured: the forward ran 3-4x slower).
// The AVX-512 clone uses 256-bit registers too.
constexpr int kVecBytes = 32;

// Lanes of one vector: reductions keep this many partial sums so they
// vectorise without -ffast-math (the summation order is fixed, not
// reassociated by the compiler).
template <typename T>
constexpr int kLanes = kVecBytes / sizeof(T);

// Pairwise sum of the lanes (log2 steps, not a serial chain). Modifies s.
template <typename T>
DGSNET_ALWAYS_INLINE T sum_lanes(T* s) {
  for (int w = kLanes<T> / 2; w > 0; w /= 2)
    for (int k = 0; k < w; ++k) s[k] += s[k + w];
  return s[0];
}

// One vector of T as a GCC/Clang vector: arithmetic acts lane-wise and lowers
// to whatever the clone's ISA has (2 x 128-bit on SSE), so the hot loops
// vectorise by construction.
#if defined(__GNUC__)
template <typename T>
struct VecOf {
  typedef T type __attribute__((vector_size(kVecBytes)));
};
template <typename T>
using Vec = typename VecOf<T>::type;

// The vector type aligned to one element and allowed to alias T: loads and
// stores of it are plain unaligned vector moves.
template <typename T>
struct UnalignedOf {
  typedef T type __attribute__((vector_size(kVecBytes), aligned(sizeof(T)), may_alias));
};
template <typename T>
DGSNET_ALWAYS_INLINE Vec<T> load(const T* p) {
  return *reinterpret_cast<const typename UnalignedOf<T>::type*>(p);
}
template <typename T>
DGSNET_ALWAYS_INLINE void store(T* p, Vec<T> v) {
  *reinterpret_cast<typename UnalignedOf<T>::type*>(p) = v;
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
// min(v, 0) and max(v, 0) from the sign bit: an arithmetic shift spreads it
// over the lane (all ones for negative lanes), and an AND keeps or clears the
// lane; exact, -0 -> +0 for max. (GCC splits a vector ?: lane by lane when
// the vector is wider than the registers: a scalar loop in disguise.)
// Call with T explicit: vmin0<T>(v).
template <typename T>
struct IntOf;
template <>
struct IntOf<float> {
  using type = int32_t;
};
template <>
struct IntOf<double> {
  using type = int64_t;
};
template <typename T>
using IVec = typename VecOf<typename IntOf<T>::type>::type;
template <typename T>
DGSNET_ALWAYS_INLINE IVec<T> sign_mask(Vec<T> v) {
  return reinterpret_cast<IVec<T>>(v) >> (8 * sizeof(T) - 1);
}
template <typename T>
DGSNET_ALWAYS_INLINE Vec<T> vmin0(Vec<T> v) {
  return reinterpret_cast<Vec<T>>(reinterpret_cast<IVec<T>>(v) & sign_mask<T>(v));
}
template <typename T>
DGSNET_ALWAYS_INLINE Vec<T> vmax0(Vec<T> v) {
  return reinterpret_cast<Vec<T>>(reinterpret_cast<IVec<T>>(v) & ~sign_mask<T>(v));
}
#endif

}  // namespace simd
}  // namespace dgsnet
