// laaf_kernels: the GEMMs of a bfloat16 NARROW layer on AVX512-BF16's vdpbf16ps,
// for CPUs that have it (Intel Cooper Lake and later, AMD Zen 4 and later):
//
//   forward    z_chunk = x_chunk W^T + b      x, W in bfloat16, z in float lanes
//   backward   dx_chunk = gz_chunk W,  dW += gz_chunk^T x_chunk
//              (gz formed in float, rounded to bf16 once per GEMM operand:
//              round_row_pairs, fill_pairs; laaf_cpu.cpp: backward_pairs_chunk)
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

  // Room for `depth` values along the depth; refill() may then hold fewer.
  PairPanel(int64_t depth, int64_t width)
      : depth_(depth), width_(width), padded_((width + kLanes - 1) / kLanes * kLanes),
        data_(std::max<int64_t>(1, pairs()) * padded_, 0u) {}

  // B(d, n) = src[d * sd + n * sw], ORed into zeroed words (a new panel, or reset's
  // with `zero`).
  void pack(const c10::BFloat16* src, int64_t sd, int64_t sw) {
    for (int64_t d = 0; d < depth_; ++d) {
      uint32_t* row = data_.data() + (d / 2) * padded_;
      const int shift = d % 2 == 0 ? 0 : 16;
      for (int64_t n = 0; n < width_; ++n) row[n] |= uint32_t(src[d * sd + n * sw].x) << shift;
    }
  }
  // Hold `depth` values (at most the constructor's) from here on: a chunk's panel,
  // refilled chunk by chunk (fill_pairs writes every word of rows [0, pairs())); with
  // `zero`, those words are first set to zero (for pack's ORs).
  void reset(int64_t depth, bool zero) {
    TORCH_INTERNAL_ASSERT(depth >= 0 && (depth + 1) / 2 * padded_ <= int64_t(data_.size()));
    depth_ = depth;
    if (zero) std::fill(data_.begin(), data_.begin() + pairs() * padded_, 0u);
  }
  int64_t depth() const { return depth_; }
  int64_t pairs() const { return (depth_ + 1) / 2; }
  int64_t width() const { return width_; }
  int64_t padded() const { return padded_; }
  const uint32_t* row(int64_t q) const { return data_.data() + q * padded_; }
  uint32_t* row(int64_t q) { return data_.data() + q * padded_; }

 private:
  int64_t depth_, width_, padded_;
  std::vector<uint32_t> data_;
};

// How a pair GEMM reads A(r, d), a pair (d = 2q, 2q + 1) at a time as one 32-bit
// word (the lower d in the low half). RowPairs: bf16 rows with a contiguous depth
// (the forward's x), where an odd depth's last value is alone; WordPairs: words
// already paired, word (r, q) at words[r * row_stride + q * pair_stride], an odd
// depth's last high half zero (the backward's gz, and gh^T as a pair panel).
struct RowPairs {
  const c10::BFloat16* a;
  int64_t lda, depth;
};
struct WordPairs {
  const uint32_t* words;
  int64_t row_stride, pair_stride;
};

#if LAAF_HAS_BF16_DOT
// Pair q of A's row r, q below the last pair. An odd depth's last pair (last_word)
// is A(r, depth - 1) alone, zero-extended: the word past it (the next row's first
// value, or past x's end) is not read, so an Inf or NaN there cannot turn the zero
// of B's padding into a NaN.
inline uint32_t word(const RowPairs& A, int64_t r, int64_t q) {
  uint32_t w;
  std::memcpy(&w, A.a + r * A.lda + 2 * q, sizeof(w));
  return w;
}
inline uint32_t last_word(const RowPairs& A, int64_t r, int64_t q) {
  return 2 * q + 1 < A.depth ? word(A, r, q) : uint32_t(A.a[r * A.lda + 2 * q].x);
}
inline uint32_t word(const WordPairs& A, int64_t r, int64_t q) {
  return A.words[r * A.row_stride + q * A.pair_stride];
}
inline uint32_t last_word(const WordPairs& A, int64_t r, int64_t q) { return word(A, r, q); }

// The first min(16, max(n, 0)) of 16 lanes.
inline __mmask16 first_lanes(int64_t n) {
  return __mmask16((uint32_t(1) << std::clamp<int64_t>(n, 0, PairPanel::kLanes)) - 1u);
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

// One R x P tile of C = A B (+ init, through the epilogue) at rows [r0, r0 + R) of A
// and C and columns [col, col + 16 P): the lanes below `cols` are stored. As
// gemm_tile, with the depth in pairs. init: null (0), a row for every row (the
// bias), or, with `accumulate`, C itself (its live lanes: dW += gh^T x).
template <int R, int P, typename A, typename Ep>
LAAF_BF16_TARGET inline __attribute__((always_inline)) void pair_tile(
    const A& a, int64_t r0, const PairPanel& B, int64_t col, float* c, int64_t ldc,
    int64_t cols, const float* init_row, bool accumulate, const Ep& ep) {
  using V = Vectorized<float>;
  constexpr int64_t L = PairPanel::kLanes;
  __mmask16 live[P];
#pragma GCC unroll 4
  for (int p = 0; p < P; ++p) {
    live[p] = first_lanes(cols - col - p * L);
  }
  __m512 acc[R][P];
#pragma GCC unroll 4
  for (int p = 0; p < P; ++p) {
    const __m512 start = init_row == nullptr ? _mm512_setzero_ps()
                                             : _mm512_loadu_ps(init_row + col + p * L);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      acc[r][p] = accumulate ? _mm512_maskz_loadu_ps(live[p], c + (r0 + r) * ldc + col + p * L)
                             : start;
    }
  }
  const int64_t whole_pairs = B.depth() / 2;
  for (int64_t q = 0; q < whole_pairs; ++q) {
    __m512i bcast[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) bcast[r] = _mm512_set1_epi32(int(word(a, r0 + r, q)));
    pair_step<R, P>(acc, bcast, B.row(q) + col);
  }
  if (whole_pairs < B.pairs()) {  // (an odd depth: its last value alone)
    __m512i bcast[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      bcast[r] = _mm512_set1_epi32(int(last_word(a, r0 + r, whole_pairs)));
    }
    pair_step<R, P>(acc, bcast, B.row(whole_pairs) + col);
  }
#pragma GCC unroll 4
  for (int p = 0; p < P; ++p) {
    V f;
    if constexpr (Ep::kActive) f = V::loadu(ep.factor + col + p * L);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      __m512 out = acc[r][p];
      if constexpr (Ep::kActive) out = ep.apply(V(out), f);
      _mm512_mask_storeu_ps(c + (r0 + r) * ldc + col + p * L, live[p], out);
    }
  }
}

// R rows of C from row r0, all of B's columns, in panels of next_panel_vectors
// (laaf_cpu_gemm.h).
template <int R, typename A, typename Ep>
LAAF_BF16_TARGET inline __attribute__((always_inline)) void pair_rows(
    const A& a, int64_t r0, const PairPanel& B, float* c, int64_t ldc, const float* init_row,
    bool accumulate, const Ep& ep) {
  constexpr int64_t L = PairPanel::kLanes;
  const int64_t cols = B.width();
  int64_t left = B.padded() / L;
  for (int64_t col = 0; left > 0;) {
    const int64_t vectors = next_panel_vectors(left);
    switch (vectors) {
      case 1: pair_tile<R, 1>(a, r0, B, col, c, ldc, cols, init_row, accumulate, ep); break;
      case 2: pair_tile<R, 2>(a, r0, B, col, c, ldc, cols, init_row, accumulate, ep); break;
      case 3: pair_tile<R, 3>(a, r0, B, col, c, ldc, cols, init_row, accumulate, ep); break;
      default: pair_tile<R, 4>(a, r0, B, col, c, ldc, cols, init_row, accumulate, ep);
    }
    left -= vectors;
    col += vectors * L;
  }
}

// All `rows` rows: tiles of 4 rows, then 2, then 1.
template <typename A, typename Ep>
LAAF_BF16_TARGET inline __attribute__((always_inline)) void pair_all_rows(
    const A& a, int64_t rows, const PairPanel& B, float* c, int64_t ldc, const float* init_row,
    bool accumulate, const Ep& ep) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) pair_rows<4>(a, r, B, c, ldc, init_row, accumulate, ep);
  if (r + 2 <= rows) {
    pair_rows<2>(a, r, B, c, ldc, init_row, accumulate, ep);
    r += 2;
  }
  if (r < rows) pair_rows<1>(a, r, B, c, ldc, init_row, accumulate, ep);
}

// 16 bf16 values (round to nearest even) of the float lanes `live` of src, times
// scale's (if not null); the other lanes 0.
LAAF_BF16_TARGET inline __m256i rounded_bf16(const float* src, const float* scale,
                                             __mmask16 live) {
  __m512 v = _mm512_maskz_loadu_ps(live, src);
  if (scale != nullptr) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(live, scale));
  return (__m256i)_mm512_cvtneps_pbh(v);
}
// The rows a panel is paired from (fill_pairs), row d at src + d * ld: FloatRows
// rounded to bf16 (rounded_bf16), Bf16Rows as they are. half_words(rows, d, n, live):
// row d's values at columns [n, n + 16) (lanes `live`, the others 0), each
// zero-extended into a 32-bit lane: the low halves of 16 pair words.
struct FloatRows {
  const float* src;
  int64_t ld;
};
struct Bf16Rows {
  const c10::BFloat16* src;
  int64_t ld;
};
LAAF_BF16_TARGET inline __m512i half_words(const FloatRows& rows, int64_t d, int64_t n,
                                           __mmask16 live) {
  return _mm512_cvtepu16_epi32(rounded_bf16(rows.src + d * rows.ld + n, nullptr, live));
}
LAAF_BF16_TARGET inline __m512i half_words(const Bf16Rows& rows, int64_t d, int64_t n,
                                           __mmask16 live) {
  const void* at = rows.src + d * rows.ld + n;
  return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(live, at));
}

// B.reset(depth), then pair row q of B = rows 2q (low halves) and 2q + 1 (high halves,
// zero past `depth`), 16 columns at a time: every word of rows [0, B.pairs()) written.
template <typename Rows>
LAAF_BF16_TARGET inline void fill_pair_rows(PairPanel& B, int64_t depth, const Rows& rows) {
  constexpr int64_t L = PairPanel::kLanes;
  B.reset(depth, /*zero=*/false);
  for (int64_t q = 0; q < B.pairs(); ++q) {
    const bool has_hi = 2 * q + 1 < depth;
    for (int64_t n = 0; n < B.width(); n += L) {
      const __mmask16 live = first_lanes(B.width() - n);
      __m512i w = half_words(rows, 2 * q, n, live);
      if (has_hi) {
        w = _mm512_or_si512(w, _mm512_slli_epi32(half_words(rows, 2 * q + 1, n, live), 16));
      }
      _mm512_storeu_si512(B.row(q) + n, w);
    }
  }
}
#endif  // LAAF_HAS_BF16_DOT

// An out-of-line entry point into the AVX512-BF16 code. In builds without it the
// entry points are stubs that fail an internal assert: callers check
// bf16_dot_enabled() first.
#if LAAF_HAS_BF16_DOT
#define LAAF_BF16_ENTRY LAAF_BF16_TARGET __attribute__((noinline))
#else
#define LAAF_BF16_ENTRY
#endif
#define LAAF_NO_BF16_DOT_CODE(name) \
  TORCH_INTERNAL_ASSERT(false, name ": this build has no AVX512-BF16 code")

// C(r, :) = init + sum_d A(r, d) B(d, :) for r < rows, through the epilogue `ep`
// (StoreAsIs, or laaf_cpu.cpp's ActEpilogue on float lanes): A(r, d) =
// a[r * lda + d] in bfloat16 (a contiguous depth), C float, row-major with ldc
// columns, B.width() of them written; init_row null or padded to whole vectors.
// Serial, in tiles of 4 rows, then 2, then 1. Only where bf16_dot_enabled().
template <typename Ep = StoreAsIs>
LAAF_BF16_ENTRY void pair_gemm(const c10::BFloat16* a, int64_t lda, int64_t rows,
                               const PairPanel& B, float* c, int64_t ldc, const float* init_row,
                               const Ep& ep = Ep()) {
#if LAAF_HAS_BF16_DOT
  pair_all_rows(RowPairs{a, lda, B.depth()}, rows, B, c, ldc, init_row, false, ep);
#else
  LAAF_NO_BF16_DOT_CODE("pair_gemm");
#endif
}

// C(r, :) (+)= sum_q word(A, r, q) . B's pair row q for r < rows: A's pairs already
// formed (WordPairs); C float with ldc columns, B.width() of them written; with
// `accumulate` onto C's values (dW's partial sums), else from zero. The backward's GEMMs.
inline LAAF_BF16_ENTRY void pair_gemm_words(const WordPairs& a, int64_t rows, const PairPanel& B,
                                            float* c, int64_t ldc, bool accumulate) {
#if LAAF_HAS_BF16_DOT
  pair_all_rows(a, rows, B, c, ldc, nullptr, accumulate, StoreAsIs{});
#else
  LAAF_NO_BF16_DOT_CODE("pair_gemm_words");
#endif
}

// The backward's pair operands, each a pass over a chunk in cache; bf16 values are
// rounded to nearest even (vcvtneps2bf16, which also flushes a denormal to zero, as
// vdpbf16ps would flush it in the GEMM).
//
// round_row_pairs: words[r * ((cols + 1) / 2) + q] = bf16(src(r, 2q) scale(2q)) and
// bf16(src(r, 2q + 1) scale(2q + 1)), src rows x cols floats (row-major), scale one
// per column or null; an odd row's last high half zero. dx's A: gz's rows, as
// WordPairs{words, (cols + 1) / 2, 1}.
inline LAAF_BF16_ENTRY void round_row_pairs(const float* src, int64_t rows, int64_t cols,
                                            const float* scale, uint32_t* words) {
#if LAAF_HAS_BF16_DOT
  constexpr int64_t L = PairPanel::kLanes;
  const int64_t row_words = (cols + 1) / 2;
  for (int64_t r = 0; r < rows; ++r) {
    uint16_t* out = reinterpret_cast<uint16_t*>(words + r * row_words);
    for (int64_t c = 0; c < cols; c += L) {
      const __mmask16 live = first_lanes(cols - c);
      const float* col_scale = scale == nullptr ? nullptr : scale + c;
      _mm256_mask_storeu_epi16(out + c, live, rounded_bf16(src + r * cols + c, col_scale, live));
    }
    if (cols % 2 == 1) out[cols] = 0;
  }
#else
  LAAF_NO_BF16_DOT_CODE("round_row_pairs");
#endif
}

// B.reset(depth), then B(d, n) = bf16(src[d * ld + n]) for n < B.width(): a chunk of
// gh rounded, whose pair rows are gh^T's pairs along the chunk's rows (dW's A, as
// WordPairs{B.row(0), 1, B.padded()}).
inline LAAF_BF16_ENTRY void fill_pairs(PairPanel& B, const float* src, int64_t depth,
                                       int64_t ld) {
#if LAAF_HAS_BF16_DOT
  fill_pair_rows(B, depth, FloatRows{src, ld});
#else
  LAAF_NO_BF16_DOT_CODE("fill_pairs");
#endif
}

// B.reset(depth), then B(d, n) = src[d * sd + n * sw]: a chunk of a bf16 x (dW's B).
inline LAAF_BF16_ENTRY void fill_pairs(PairPanel& B, const c10::BFloat16* src, int64_t depth,
                                       int64_t sd, int64_t sw) {
#if LAAF_HAS_BF16_DOT
  if (sw == 1) return fill_pair_rows(B, depth, Bf16Rows{src, sd});
  B.reset(depth, /*zero=*/true);  // (a strided x: value by value, ORed into zeros)
  B.pack(src, sd, sw);
#else
  LAAF_NO_BF16_DOT_CODE("fill_pairs");
#endif
}

}  // namespace cpu
}  // namespace laaf
