// laaf_kernels: the forward GEMM of a bfloat16 NARROW layer on AVX512-BF16's
// vdpbf16ps, for CPUs that have it (Intel Cooper Lake and later, AMD Zen 4 and later):
//
//   z_chunk = x_chunk W^T + b      x, W in bfloat16, z in float lanes
//
// Without it (laaf_cpu.cpp: ChunkStage) a bf16 layer widens each chunk of x to
// float and runs the fp32 GEMM of laaf_cpu_gemm.h. vdpbf16ps instead takes x's and
// W's bf16 values as they are, in pairs along the depth d:
//
//   acc(lane) += A(r, 2q) B(2q, lane) + A(r, 2q + 1) B(2q + 1, lane)
//
// two multiply-adds per float lane and instruction, where an FMA does one, and no
// widening pass over x. Each product of two bf16 values is exact in float; the sums
// are float sums, as on the widened path, in another order (a pair at a time). The
// instruction treats denormal inputs as zero and flushes denormal results (DAZ /
// FTZ): a bf16 x or W below 2^-126 in magnitude contributes nothing, however large
// the other factor (x = 2^-130 times W = 2^100 loses z's 2^-30:
// tests/test_cpu_bf16_gemm.py). Eager's bf16 torch.mm on a Zen 4 drops that product
// too. LAAF_CPU_BF16_DOT=0 keeps the widened path's exact products.
//
// The tiles are the fp32 GEMM's (gemm_tile): R = 4 rows by P <= 4 vectors of 16
// float lanes, 16 accumulators + 4 B vectors + 1 broadcast of A's pair in AVX-512's
// 32 registers; per pair of depth steps P loads, R broadcasts, R P vdpbf16ps. A
// panel's lanes past C's last column are masked at the store (one AVX-512 masked
// store; no overlapping vectors as in gemm_rows), so each lane of C is stored once
// and a forward epilogue may run on the tiles. Every sum runs in a fixed order,
// whatever the thread count (deterministic).
#pragma once
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>

#include "laaf_cpu_gemm.h"  // env_switch_on, next_panel_vectors, StoreAsIs

#include <cstdint>
#include <cstring>
#include <vector>

// The build can emit vdpbf16ps (in functions marked LAAF_BF16_TARGET): AVX-512 builds
// by GCC >= 10 or clang >= 12. Whether the CPU runs it is asked at run time
// (bf16_dot_enabled).
#if defined(CPU_CAPABILITY_AVX512) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 10))
#define LAAF_HAS_BF16_DOT 1
#include <immintrin.h>
#define LAAF_BF16_TARGET __attribute__((target("avx512bf16")))
#else
#define LAAF_HAS_BF16_DOT 0
#endif

namespace laaf {
namespace cpu {

// The narrowest C (N, a layer's outputs) the pair GEMM takes. Narrower ones, a PINN's
// output layer, keep the widened path, whose fp32 GEMM forms them as dot products
// along x's rows (laaf_cpu_gemm.h: dot_tail_columns), where a pair tile would fill 1
// or 2 of a vector's 16 lanes. tools/narrow_gemm_bench.cpp, one thread, 10^5 rows, AMD
// EPYC (Zen 4), ms, widened / pairs: N = 1, K = 20 0.345 / 0.357, K = 32 0.405 / 0.557,
// K = 50 0.599 / 0.916; N = 2, K = 50 0.813 / 0.905; N = 3, K = 50 1.251 / 1.200; N = 4,
// K = 50 1.727 / 0.928; N = K = 20 0.90 / 0.45 (twice as fast from here up: N = K = 50
// 6.95 / 3.12, N = K = 128 37.2 / 17.1).
constexpr int64_t kMinPairWidth = 3;

// Whether a bf16 layer's forward GEMM runs on vdpbf16ps: the build has it, the CPU
// has AVX512-BF16 and LAAF_CPU_BF16_DOT is not "0" (read at every call, so that tests
// and benchmarks compare the two paths in one process).
inline bool bf16_dot_enabled() {
#if LAAF_HAS_BF16_DOT
  static const bool cpu_has = __builtin_cpu_supports("avx512bf16");
  return cpu_has && env_switch_on("LAAF_CPU_BF16_DOT");
#else
  return false;
#endif
}

// B(d, n) for d < depth, n < width, in pairs along the depth: word (q, n) holds
// B(2q, n)'s bits in its low half and B(2q + 1, n)'s in its high half (vdpbf16ps's
// order: the lower-addressed bf16 of a pair is the low half), in rows of `padded`
// words (width rounded up to 16 lanes). The words past `width` and the high half of
// an odd depth's last pair are zero.
class PairPanel {
 public:
  static constexpr int64_t kLanes = 16;  // float lanes of a zmm, pairs per B vector

  PairPanel(int64_t depth, int64_t width)
      : depth_(depth), width_(width), padded_((width + kLanes - 1) / kLanes * kLanes),
        data_(std::max<int64_t>(1, pairs()) * padded_, 0u) {}

  // B(d, n) = src[d * sd + n * sw].
  void pack(const c10::BFloat16* src, int64_t sd, int64_t sw) {
    for (int64_t d = 0; d < depth_; ++d) {
      uint32_t* row = data_.data() + (d / 2) * padded_;
      const int shift = d % 2 == 0 ? 0 : 16;
      for (int64_t n = 0; n < width_; ++n) row[n] |= uint32_t(src[d * sd + n * sw].x) << shift;
    }
  }
  int64_t depth() const { return depth_; }
  int64_t pairs() const { return (depth_ + 1) / 2; }
  int64_t width() const { return width_; }
  int64_t padded() const { return padded_; }
  const uint32_t* row(int64_t q) const { return data_.data() + q * padded_; }

 private:
  int64_t depth_, width_, padded_;
  std::vector<uint32_t> data_;
};

#if LAAF_HAS_BF16_DOT
// The pair A(r, 2q), A(r, 2q + 1) as one 32-bit word: a row's depth is contiguous.
// An odd depth's last pair is A(r, depth - 1) alone, zero-extended: the word past it
// (the next row's first value, or past x's end) is not read, so an Inf or NaN there
// cannot turn the zero of B's padding into a NaN.
inline uint32_t a_pair(const c10::BFloat16* row, int64_t q, int64_t depth) {
  if (2 * q + 1 < depth) {
    uint32_t word;
    std::memcpy(&word, row + 2 * q, sizeof(word));
    return word;
  }
  return row[2 * q].x;
}

// One pair of depth steps of an R x P tile: acc(r, p) += the pair bcast(r) . the P
// vectors of B's pair row at b_row.
template <int R, int P>
LAAF_BF16_TARGET inline __attribute__((always_inline)) void pair_step(
    __m512 (&acc)[R][P], const __m512i (&bcast)[R], const uint32_t* b_row) {
  constexpr int64_t L = PairPanel::kLanes;
  __m512i b[P];
#pragma GCC unroll 4
  for (int p = 0; p < P; ++p) b[p] = _mm512_loadu_si512(b_row + p * L);
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) {
      acc[r][p] = _mm512_dpbf16_ps(acc[r][p], (__m512bh)bcast[r], (__m512bh)b[p]);
    }
  }
}

// One R x P tile of C = A B (+ init, through the epilogue) at columns [col, col + 16 P):
// the lanes below `cols` are stored. As gemm_tile, with the depth in pairs.
template <int R, int P, typename Ep>
LAAF_BF16_TARGET inline __attribute__((always_inline)) void pair_tile(
    const c10::BFloat16* a, int64_t lda, const PairPanel& B, int64_t col, float* c,
    int64_t ldc, int64_t cols, const float* init_row, const Ep& ep) {
  using V = Vectorized<float>;
  constexpr int64_t L = PairPanel::kLanes;
  __m512 acc[R][P];
#pragma GCC unroll 4
  for (int p = 0; p < P; ++p) {
    const __m512 start = init_row == nullptr ? _mm512_setzero_ps()
                                             : _mm512_loadu_ps(init_row + col + p * L);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[r][p] = start;
  }
  const int64_t depth = B.depth(), whole_pairs = depth / 2;
  for (int64_t q = 0; q < whole_pairs; ++q) {
    __m512i bcast[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      uint32_t word;
      std::memcpy(&word, a + r * lda + 2 * q, sizeof(word));
      bcast[r] = _mm512_set1_epi32(int(word));
    }
    pair_step<R, P>(acc, bcast, B.row(q) + col);
  }
  if (whole_pairs < B.pairs()) {  // (an odd depth: its last value alone)
    __m512i bcast[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      bcast[r] = _mm512_set1_epi32(int(a_pair(a + r * lda, whole_pairs, depth)));
    }
    pair_step<R, P>(acc, bcast, B.row(whole_pairs) + col);
  }
#pragma GCC unroll 4
  for (int p = 0; p < P; ++p) {
    const int64_t live = std::clamp<int64_t>(cols - col - p * L, 0, L);
    const __mmask16 mask = __mmask16((uint32_t(1) << live) - 1u);
    V f;
    if constexpr (Ep::kActive) f = V::loadu(ep.factor + col + p * L);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      __m512 out = acc[r][p];
      if constexpr (Ep::kActive) out = ep.apply(V(out), f);
      _mm512_mask_storeu_ps(c + r * ldc + col + p * L, mask, out);
    }
  }
}

// R rows of C, all of B's columns, in panels of next_panel_vectors (laaf_cpu_gemm.h).
template <int R, typename Ep>
LAAF_BF16_TARGET inline __attribute__((always_inline)) void pair_rows(
    const c10::BFloat16* a, int64_t lda, const PairPanel& B, float* c, int64_t ldc,
    const float* init_row, const Ep& ep) {
  constexpr int64_t L = PairPanel::kLanes;
  const int64_t cols = B.width();
  int64_t left = B.padded() / L;
  for (int64_t col = 0; left > 0;) {
    const int64_t vectors = next_panel_vectors(left);
    switch (vectors) {
      case 1: pair_tile<R, 1>(a, lda, B, col, c, ldc, cols, init_row, ep); break;
      case 2: pair_tile<R, 2>(a, lda, B, col, c, ldc, cols, init_row, ep); break;
      case 3: pair_tile<R, 3>(a, lda, B, col, c, ldc, cols, init_row, ep); break;
      default: pair_tile<R, 4>(a, lda, B, col, c, ldc, cols, init_row, ep);
    }
    left -= vectors;
    col += vectors * L;
  }
}
#endif  // LAAF_HAS_BF16_DOT

// C(r, :) = init + sum_d A(r, d) B(d, :) for r < rows, through the epilogue `ep`
// (StoreAsIs, or laaf_cpu.cpp's ActEpilogue on float lanes): A(r, d) =
// a[r * lda + d] in bfloat16 (a contiguous depth), C float, row-major with ldc
// columns, B.width() of them written; init_row null or padded to whole vectors.
// Serial, in tiles of 4 rows, then 2, then 1. Only where bf16_dot_enabled().
template <typename Ep = StoreAsIs>
#if LAAF_HAS_BF16_DOT
LAAF_BF16_TARGET __attribute__((noinline))
#endif
void pair_gemm(const c10::BFloat16* a, int64_t lda, int64_t rows, const PairPanel& B, float* c,
               int64_t ldc, const float* init_row, const Ep& ep = Ep()) {
#if LAAF_HAS_BF16_DOT
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) pair_rows<4>(a + r * lda, lda, B, c + r * ldc, ldc, init_row, ep);
  if (r + 2 <= rows) {
    pair_rows<2>(a + r * lda, lda, B, c + r * ldc, ldc, init_row, ep);
    r += 2;
  }
  if (r < rows) pair_rows<1>(a + r * lda, lda, B, c + r * ldc, ldc, init_row, ep);
#else
  TORCH_INTERNAL_ASSERT(false, "pair_gemm: this build has no AVX512-BF16 code");
#endif
}

}  // namespace cpu
}  // namespace laaf
