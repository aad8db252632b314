// laaf_kernels: lane_sums(acc) -> s with s[i] = sum of acc[i]'s lanes, for as many
// vectors as a vector has lanes (AVX-512: 16 float or 8 double vectors).
//
// The narrow GEMM's dot-product tail (laaf_cpu_gemm.h: dot_tail_gemm) ends with one
// such sum per output. Reducing each vector on its own (_mm512_reduce_add_ps) costs
// ~8 shuffles and adds per sum; reducing all of them together, halving the width at
// each level and pairing vectors so that no lane is idle, costs ~3 (45 instructions
// for 16 float sums: 8 + 4 + 2 + 1 shuffle pairs and adds).
//
// The levels, float (four 128-bit blocks of 4 lanes; "a0" is block 0 of a):
//   1. 16 -> 8:  [a0 a1 b0 b1] + [a2 a3 b2 b3]     (shuffle_f32x4 0x44, 0xEE)
//   2.  8 -> 4:  [a0 a2 b0 b2] + [a1 a3 b1 b3]     (0x88, 0xDD): block k of u[i] now
//                holds 4 partial sums of v[4i + k] alone
//   3.  4 -> 2:  within each block, lanes (0 1 | 0 1) + (2 3 | 2 3) of a pair
//   4.  2 -> 1:  lanes (0 2 | 0 2) + (1 3 | 1 3): lane 4k + j = sum of v[4j + k]
// so the inputs go in transposed, v[4j + k] = acc[4k + j], and lane i = sum acc[i].
// Double (four blocks of 2 lanes) is levels 1 and 2, then unpacklo + unpackhi:
// lane 2k + j = sum of v[4j + k], v[4j + k] = acc[2k + j].
//
// The order of every sum is fixed (deterministic whatever the thread count).
// tests/test_cpu_sources.py compiles this header against scalar sums.
#pragma once
#include <ATen/cpu/vec/vec.h>

namespace laaf {
namespace cpu {

#if defined(CPU_CAPABILITY_AVX512)
#define LAAF_HAS_LANE_SUMS 1

// One level over 128-bit blocks, float and double alike: v[i] = shuffle(v[2i], v[2i+1],
// kLo) + shuffle(v[2i], v[2i+1], kHi) for i < n / 2 (in place: v[i] is written after
// v[2i] and v[2i + 1] are read).
template <int kLo, int kHi>
inline __m512 add_block_pair(__m512 a, __m512 b) {
  return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, kLo), _mm512_shuffle_f32x4(a, b, kHi));
}
template <int kLo, int kHi>
inline __m512d add_block_pair(__m512d a, __m512d b) {
  return _mm512_add_pd(_mm512_shuffle_f64x2(a, b, kLo), _mm512_shuffle_f64x2(a, b, kHi));
}
template <int kLo, int kHi, typename M, int n>
inline void add_block_pairs(M (&v)[n], int count) {
  for (int i = 0; i < count / 2; ++i) v[i] = add_block_pair<kLo, kHi>(v[2 * i], v[2 * i + 1]);
}

// Levels 1 and 2 on L vectors (in v's first L / 4 slots after them, block k of v[i]
// holds partial sums of input 4i + k alone).
template <typename M, int n>
inline void sum_into_blocks(M (&v)[n]) {
  add_block_pairs<0x44, 0xEE>(v, n);      // [a0 a1 b0 b1] + [a2 a3 b2 b3]
  add_block_pairs<0x88, 0xDD>(v, n / 2);  // [a0 a2 b0 b2] + [a1 a3 b1 b3]
}

inline at::vec::Vectorized<float> lane_sums(const at::vec::Vectorized<float> (&acc)[16]) {
  __m512 v[16];
  for (int m = 0; m < 16; ++m) v[m] = acc[(m % 4) * 4 + m / 4];
  sum_into_blocks(v);  // v[0..3]
  for (int i = 0; i < 2; ++i) {
    v[i] = _mm512_add_ps(_mm512_shuffle_ps(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  }
  return _mm512_add_ps(_mm512_shuffle_ps(v[0], v[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_ps(v[0], v[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

inline at::vec::Vectorized<double> lane_sums(const at::vec::Vectorized<double> (&acc)[8]) {
  __m512d v[8];
  for (int m = 0; m < 8; ++m) v[m] = acc[(m % 4) * 2 + m / 4];
  sum_into_blocks(v);  // v[0..1]
  return _mm512_add_pd(_mm512_unpacklo_pd(v[0], v[1]), _mm512_unpackhi_pd(v[0], v[1]));
}

#else
#define LAAF_HAS_LANE_SUMS 0
#endif

}  // namespace cpu
}  // namespace laaf
