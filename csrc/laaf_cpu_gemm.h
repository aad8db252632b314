// laaf_kernels: a small register-blocked GEMM for NARROW layers (K, N <= kMaxNarrow:
// the PINN widths), used by laaf_cpu.cpp to fuse the linear layer's GEMMs with its
// epilogues, chunk by chunk, while the chunk is still in cache:
//
//   forward:   z_chunk = x_chunk W^T + b     then y_chunk = act(s z_chunk)
//   backward:  gz_chunk (epilogue)           then dx_chunk = gz_chunk W
//                                             and  dW_group += gz_chunk^T x_chunk
//
// Why not ATen's GEMM: at these widths MKL's sgemm runs at ~60 % of this CPU's FMA
// peak (its AVX2 kernels are tuned for large K), and each GEMM call is a separate
// pass over memory: z written, then read back by the epilogue. Here each chunk of
// rows goes GEMM -> epilogue in L1/L2, and z, gz never make an extra trip.
//
// The kernel: C(r, :) = init(r) + sum_d A(r, d) B(d, :), B packed row-major with
// its width padded to whole vectors (zeros), A read through two strides so that
// the same kernel takes x (A = x), gz (A = gz) and gz^T (dW). A tile of R = 4 rows
// by P = 2 vectors keeps 8 accumulators, the two B vectors of depth d and one
// broadcast A(r, d) in registers (11 of AVX2's 16): per depth step 2 loads,
// 4 broadcasts, 8 FMAs, so the FMA units, not the loads, set the pace. An odd
// number of column vectors ends in one 4 x 3 tile (12 accumulators), placed so
// that it ends at C's last column (gemm_rows). AVX-512's 32 registers hold a 4 x 4
// tile (16 accumulators, 21 registers): N = 50 in fp32 is then one panel of 4 zmm
// vectors (kMaxPanel, next_panel_vectors).
// On AVX-512 an overwritten C's few columns past its last whole vector are dot
// products instead (dot_tail_columns, dot_tail_rows): the tiles then cover whole
// vectors only. Every sum runs in a fixed order, whatever the thread count
// (deterministic).
#pragma once
#include <ATen/cpu/vec/vec.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include "laaf_cpu_lane_sums.h"  // lane_sums, LAAF_HAS_LANE_SUMS

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

namespace laaf {
namespace cpu {

using at::vec::Vectorized;

constexpr int64_t kMaxNarrow = 128;  // K and N at most this: the fused path

// The fp32 forward keeps ATen's GEMM above this K * N. Measured A/B (M = 5e4 and
// 16384, 2 threads, fused epilogue included): at K = N = 128 MKL's sgemm was 10-15 %
// faster than ours (W's packed panel, 64 KB, no longer fits L1), at 120 x 120 they
// tied, and at 112 x 112 and below ours won. The backward won or tied at every
// K, N <= 128, and fp64 won everywhere. bf16 and fp16 take the narrow path at every
// K, N <= 128 (ChunkStage: our fp32 GEMM on widened chunks). Stop 30, Intel Xeon, 2
// threads, M = 16384, K = N = 128, training forward / forward + backward, ms, against
// the build before (ATen's 16-bit GEMMs): bf16 2.39-2.47 / 7.55-7.99 against 4.15-4.21
// / 12.1-12.2; fp16, whose ATen GEMM runs on AVX512-FP16 here, 2.29-2.50 / 7.43-8.19
// against 2.56-2.67 / 7.36-7.59, a tie; from K = N = 100 down both won clearly.
constexpr int64_t kMaxNarrowForwardArea = 120 * 120;
// The same for a gram product's fp32 C (m x n, summed over a long depth:
// laaf_cpu_matmul.cpp), whose partials of C are the panel's rows. Stop 32, AMD EPYC
// (Zen 4), 2 threads, (w x 5e4) (5e4 x w), ms, MKL / ours: w = 50 3.33 / 3.21,
// 64 4.42 / 3.49, 80 5.45 / 5.46, 100 9.28 / 9.88, 128 11.37 / 12.07; fp64 won at
// every w (128: 32.2 / 26.5).
constexpr int64_t kMaxNarrowGramArea = 80 * 80;

// Whether the environment variable `name` leaves a path on: unset or not "0". Read
// at every call, so that benchmarks and tests can compare two paths in one process.
inline bool env_switch_on(const char* name) {
  const char* env = std::getenv(name);
  return env == nullptr || std::string(env) != "0";
}

// Whether the narrow GEMM runs at all: LAAF_CPU_NARROW is not "0".
inline bool narrow_enabled() { return env_switch_on("LAAF_CPU_NARROW"); }

// Whether C = A B with B (K x N) of dtype takes the narrow GEMM as a tall product (A's
// rows in chunks: the layer's forward z = x W^T, its dx = gz W, cpp_matmul's tall
// shape): K and N at most kMaxNarrow, and for fp32 K * N at most
// kMaxNarrowForwardArea, above which MKL's sgemm measured faster. The layer's
// backward passes forward = false: it took the narrow path at every K, N <= 128.
inline bool narrow_shape(c10::ScalarType dtype, int64_t N, int64_t K, bool forward = true) {
  const bool sgemm_wins = forward && dtype == c10::kFloat && K * N > kMaxNarrowForwardArea;
  return N <= kMaxNarrow && K <= kMaxNarrow && !sgemm_wins;
}

// How an accumulated C's partial sums are grouped (dW = gz^T x, a gram matmul):
// per_group chunks of depth per partial (at least 4, i.e. 256 rows), at most 256
// partials in all. A function of the depth only, so the sums do not depend on the
// threads.
struct DwGroups {
  int64_t per_group, count;
  explicit DwGroups(int64_t chunks)
      : per_group(std::max<int64_t>(4, (chunks + 255) / 256)),
        count((chunks + per_group - 1) / per_group) {}
};

// `width` rounded up to whole vectors of T: the row length of a PackedPanel, a
// padded_row and an accumulated C (gemm_rows).
template <typename T>
constexpr int64_t padded_width(int64_t width) {
  constexpr int64_t L = Vectorized<T>::size();
  return (width + L - 1) / L * L;
}

// The dot-product tail (dot_tail_gemm): how many of an overwritten C's `width`
// columns are left out of the vector tiles and formed as dot products along a
// contiguous depth instead, 0 where the tiles are cheaper. The tiles cover whole
// vectors of columns, so C's last `rem` = width mod L columns cost a whole vector
// column of FMAs, `depth` a row; as dot products they cost ceil(depth / L) FMAs a
// row and column, plus ~3 instructions a sum (lane_sums). Taken for rem <= L / 4
// when that is at most half the vector column: fp32 N = 50 (3 vectors + 2) at
// K = 50, and a PINN's output layer (N = 1) behind a hidden layer of 20 or more;
// not a K = 3 input layer. The tail reads A's chunk a second time, so only where a
// 64-row chunk of it fits 32 KB of L1 (a row of at most 512 bytes): fp64 at K = 100
// and 128 had streamed it from L2 and lost (N = 66: 262 -> 345 ns a row). AVX-512
// builds only (lane_sums), where L = 16 makes the padding of N = 50 14 lanes in 64.
// Measured (tools/narrow_gemm_bench.cpp's loop, one thread, a 64-row chunk in L1, ns
// a row, without / with the tail): fp32 N = K = 50 45.7 / 37.1, N = 1 K = 50 17.5 /
// 3.1, N = 17 K = 64 28.6 / 24.6; fp64 N = K = 50 85.2 / 75.0.
constexpr int64_t kDotTailMaxRowBytes = 512;
template <typename T>
constexpr int64_t dot_tail_columns(int64_t width, int64_t depth) {
  constexpr int64_t L = Vectorized<T>::size();
  const int64_t rem = width % L, depth_vectors = (depth + L - 1) / L;
  const bool cheaper = rem > 0 && rem <= L / 4 && 2 * rem * (depth_vectors + 3) <= depth &&
                       depth * int64_t(sizeof(T)) <= kDotTailMaxRowBytes;
  return LAAF_HAS_LANE_SUMS && cheaper ? rem : 0;
}

// What the tiles read of a PackedPanel, by value: gemm_row_tiles takes it (and A,
// init and the epilogue) by value, as locals that GCC keeps in registers across the
// tiles; through references to the panel it had loaded the fields again for every
// tile.
template <typename T>
struct PanelView {
  const T* data;
  int64_t padded, width, depth;
  const T* row(int64_t d) const { return data + d * padded; }
};

// B(d, w) for d < depth, w < width + tail_columns(): row-major in `depth` rows of
// `padded` lanes for the tiles' columns w < width(), and with dot_tail (an
// overwritten C, an A whose depth is contiguous) the last dot_tail_columns of them
// apart, transposed: tail_row(t)[d] = B(d, width() + t), padded with zeros to whole
// vectors of depth.
template <typename T>
class PackedPanel {
 public:
  PackedPanel(int64_t max_depth, int64_t width, bool dot_tail = false)
      : tail_(dot_tail ? dot_tail_columns<T>(width, max_depth) : 0),
        width_(width - tail_), padded_(padded_width<T>(width_)),
        depth_padded_(padded_width<T>(max_depth)),
        data_(std::max<int64_t>(1, max_depth) * padded_, T(0)),
        tail_data_(tail_ * depth_padded_, T(0)) {}

  // B(d, w) = src[d * sd + w * sw] for d < depth (the padding lanes stay zero).
  void pack(const T* src, int64_t depth, int64_t sd, int64_t sw) {
    write_rows(depth, [&](int64_t d, T* row) {
      if (sw == 1) {
        std::copy(src + d * sd, src + d * sd + width_, row);
      } else {
        for (int64_t w = 0; w < width_; ++w) row[w] = src[d * sd + w * sw];
      }
    });
    for (int64_t t = 0; t < tail_; ++t) {
      T* row = tail_data_.data() + t * depth_padded_;
      for (int64_t d = 0; d < depth; ++d) row[d] = src[d * sd + (width_ + t) * sw];
      std::fill(row + depth, row + depth_padded_, T(0));
    }
  }
  // B(d, :) for d < depth written by write_row(d, row), width() values into `row` (its
  // padding lanes stay zero): a source pack() cannot read, e.g. a 16-bit x widened
  // straight into the panel. A panel without a dot tail only.
  template <typename F>
  void pack_rows(int64_t depth, const F& write_row) {
    TORCH_INTERNAL_ASSERT(tail_ == 0, "PackedPanel::pack_rows: the panel has a dot tail");
    write_rows(depth, write_row);
  }
  int64_t depth() const { return depth_; }
  int64_t width() const { return width_; }  // the tiles' columns
  int64_t padded() const { return padded_; }
  int64_t tail_columns() const { return tail_; }
  const T* row(int64_t d) const { return data_.data() + d * padded_; }
  const T* tail_row(int64_t t) const { return tail_data_.data() + t * depth_padded_; }
  PanelView<T> view() const { return {data_.data(), padded_, width_, depth_}; }
  // B(d, :) *= factor[d] for d < depth (the padding lanes stay zero).
  void scale_rows(const T* factor) {
    for (int64_t d = 0; d < depth_; ++d) {
      T* r = data_.data() + d * padded_;
      for (int64_t w = 0; w < width_; ++w) r[w] *= factor[d];
      for (int64_t t = 0; t < tail_; ++t) tail_data_[t * depth_padded_ + d] *= factor[d];
    }
  }

 private:
  template <typename F>
  void write_rows(int64_t depth, const F& write_row) {
    depth_ = depth;
    for (int64_t d = 0; d < depth; ++d) write_row(d, data_.data() + d * padded_);
  }

  int64_t tail_, width_, padded_, depth_padded_, depth_ = 0;
  std::vector<T> data_, tail_data_;
};

// The operand A(r, d) = a[r * row_stride + d * depth_stride].
template <typename T>
struct StridedA {
  const T* a;
  int64_t row_stride, depth_stride;
  T at(int64_t r, int64_t d) const { return a[r * row_stride + d * depth_stride]; }
  StridedA rows_from(int64_t r) const { return {a + r * row_stride, row_stride, depth_stride}; }
};

// Where C's accumulators start: a row vector broadcast down the rows (the bias;
// zeros when it is null), or C itself (accumulate).
template <typename T>
struct GemmInit {
  const T* row = nullptr;  // padded to whole vectors
  bool accumulate = false;
};

// What a tile does with its finished C vectors before it stores them. StoreAsIs:
// nothing (z, dx, dW). A forward epilogue (laaf_cpu.cpp's ActEpilogue) has kActive
// and turns a vector of C, columns [c0, c0 + L), into y = act(f C), f the vector of
// its columns' factors:
//   const T* factor;                          // f(col), padded to whole vectors
//   Vectorized<T> apply(const Vectorized<T>& c, const Vectorized<T>& f) const;
// Only where narrow_gemm stores each of C's lanes once (stores_each_lane_once):
// where a vector is moved onto its neighbour, the activation of the overlap would be
// paid twice (fp32 N = K = 20, in L1: 16.3 ns a row as GEMM then a flat pass, 20.8
// with the epilogue on the tiles).
struct StoreAsIs {
  static constexpr bool kActive = false;
};

// Where a tile of C starts: C itself (accumulate), the init row, or zeros.
template <typename T>
inline Vectorized<T> tile_start(const T* cp, int64_t live, const T* init_row,
                                const GemmInit<T>& init) {
  using V = Vectorized<T>;
  return init.accumulate ? V::loadu(cp, live) : init.row ? V::loadu(init_row) : V(T(0));
}

// Stores `live` lanes of v at cp.
template <typename T>
inline void store_lanes(const Vectorized<T>& v, T* cp, int64_t live) {
  if (live == Vectorized<T>::size()) {
    v.store(cp);
  } else if (live > 0) {
    v.store(cp, live);
  }
}

// The vector registers of the build's ISA: AVX-512's 32 zmm, else AVX2's 16 ymm.
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kVectorRegisters = 32;
#else
constexpr int kVectorRegisters = 16;
#endif

// The widest panel (vectors of C per gemm_tile) that a 4-row tile keeps in registers:
// 4 x 2 accumulators + 2 B vectors + 1 broadcast of AVX2's 16, 4 x 4 + 4 + 1 of
// AVX-512's 32.
constexpr int64_t kMaxPanel = kVectorRegisters >= 32 ? 4 : 2;

// The width in vectors of the next panel of a row, `left` vectors of C still to
// cover: all of them when they fit one panel (3 fit AVX2's 4 x 3 tile too), 3 when
// one more than a panel is left (never a panel of a lone vector after others: a
// 4 x 1 tile has too few FMA chains per broadcast), else a whole panel. AVX2:
// 7 vectors are 2 + 2 + 3; AVX-512: 4 are one panel, 5 are 3 + 2, 7 are 4 + 3.
constexpr int64_t next_panel_vectors(int64_t left) {
  return left <= kMaxPanel || left == 3 ? left : left == kMaxPanel + 1 ? 3 : kMaxPanel;
}

// One R x P tile of C at columns [col, col + P vectors): those below `cols` are
// real (C has ldc columns; lanes past `cols` are neither loaded nor stored). The
// unroll pragmas keep the accumulators in registers whatever the surrounding code
// (in one standalone build GCC 12 had left a tile's on the stack, a load and a
// store around every FMA, at half the speed), and always_inline keeps GCC's
// inlining budget out of it: in a standalone harness, K = N = 50 in L1, the
// default inlining ran at 64 GFLOP/s and this at 77.
//   With kTail (C one panel, (P - 1) L < cols <= P L; see gemm_rows_of)
// the last vector is moved left by cols - P L columns (a negative shift) to end at
// C's last column. It is written as "+ moved(p)" on the unchanged column
// expressions, which is + 0 for every other tile: GCC then gives gemm_rows the same
// code as without kTail (checked in the disassembly). A column array at[p] instead
// had changed its register allocation (two more row pointers spilled in the hot
// 4 x 3 loop) and K = N = 50 fell from 75 to 71 GFLOP/s.
//   kWhole (whole_tiles: every lane of every tile one of C's columns, or of an
// accumulated C's padding): the accumulators start from the init row, zero or C
// itself, and every load and store of C is whole, with no run-time lane counts. With
// those (the general code) GCC 12 had kept the accumulators on the stack around the
// depth loop and branched on each lane count (see whole_tiles for the gain).
//   An active epilogue (see StoreAsIs) turns the accumulators into y before the store.
template <typename T, int R, int P, bool kTail, bool kWhole, typename Ep>
inline __attribute__((always_inline)) void gemm_tile(const StridedA<T>& A,
                                                     const PanelView<T>& B, int64_t col,
                                                     T* c, int64_t ldc, int64_t cols,
                                                     const GemmInit<T>& init, const Ep& ep) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  // kTail: vector P - 1 moves by `shift` (< 0) columns, to end at C's last column.
  const int64_t shift = kTail ? cols - col - P * L : 0;
  auto moved = [&](int p) -> int64_t { return kTail && p == P - 1 ? shift : 0; };
  int64_t live[P];
  for (int p = 0; p < P; ++p) {
    live[p] = kWhole ? L : std::clamp<int64_t>(cols - col - p * L - moved(p), 0, L);
  }
  V acc[R][P];
  if constexpr (kWhole) {
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) {
      const V start = init.row == nullptr ? V(T(0)) : V::loadu(init.row + col + p * L + moved(p));
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        acc[r][p] = init.accumulate ? V::loadu(c + r * ldc + col + p * L + moved(p)) : start;
      }
    }
  } else {
    for (int p = 0; p < P; ++p) {
      const T* init_row = init.row == nullptr ? nullptr : init.row + col + p * L + moved(p);
      for (int r = 0; r < R; ++r) {
        acc[r][p] = tile_start(c + r * ldc + col + p * L + moved(p), live[p], init_row, init);
      }
    }
  }
  for (int64_t d = 0; d < B.depth; ++d) {
    V b[P];
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) b[p] = V::loadu(B.row(d) + col + p * L + moved(p));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const V a(A.at(r, d));
#pragma GCC unroll 8
      for (int p = 0; p < P; ++p) acc[r][p] = at::vec::fmadd(a, b[p], acc[r][p]);
    }
  }
  if constexpr (Ep::kActive) {
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) {
      const V f = V::loadu(ep.factor + col + p * L + moved(p));
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r][p] = ep.apply(acc[r][p], f);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) {
      store_lanes(acc[r][p], c + r * ldc + col + p * L + moved(p), live[p]);
    }
  }
}

// The columns of C that gemm_rows and the single-panel tiles cover: B.width()
// overwriting, B.padded() accumulating (see gemm_rows).
template <typename T>
inline int64_t covered_cols(const PanelView<T>& B, const GemmInit<T>& init) {
  return init.accumulate ? B.padded : B.width;
}

// The R x P tile of C at column col, P = `vectors` (a run-time width; see gemm_tile).
template <typename T, int R, bool kWhole, typename Ep>
inline __attribute__((always_inline)) void gemm_panel(int64_t vectors, const StridedA<T>& A,
                                                      const PanelView<T>& B, int64_t col,
                                                      T* c, int64_t ldc, int64_t cols,
                                                      const GemmInit<T>& init, const Ep& ep) {
  switch (vectors) {
    case 1: gemm_tile<T, R, 1, false, kWhole>(A, B, col, c, ldc, cols, init, ep); break;
    case 2: gemm_tile<T, R, 2, false, kWhole>(A, B, col, c, ldc, cols, init, ep); break;
    case 3: gemm_tile<T, R, 3, false, kWhole>(A, B, col, c, ldc, cols, init, ep); break;
    default:
      if constexpr (kMaxPanel >= 4) {
        gemm_tile<T, R, 4, false, kWhole>(A, B, col, c, ldc, cols, init, ep);
      }
  }
}

// R rows of C, all of B's columns, in panels of next_panel_vectors from column 0.
//   Overwriting C (forward z, dx), the last panel is moved left to END at C's last
// column, overlapping its neighbour: N = 50 in AVX2's vectors of 8 is panels at 0..15
// and 16..31, then 3 vectors at 26..49, not 32..55 with 6 dead lanes. Every load and
// store is then whole; masked ones (vmaskmovps) had cost ~10 % of the GEMM on Zen 3.
// The overlapped columns are written twice, each time from the same inputs in the
// same order, so the result is still deterministic. A C of one panel (up to 3 vectors
// on AVX2, 4 on AVX-512) does not come here: it is one static tile (gemm_rows_of),
// where a C narrower than the panel moves its last vector left the same way; only
// N < L keeps masked lanes.
//   Accumulating into C (dW), an overlap would add twice: C must then be padded
// like B (ldc >= B.padded()), and the panels cover the padding instead.
// Measured in a standalone harness, K = N = 50, in L1, one Zen 3 core (FMA peak
// 103 GFLOP/s): the former 4 x 2 + 4 x 1 tiles with masked stores 69-70 GFLOP/s,
// this 77-82; in the extension, one thread, 10^5 x 50 x 50, the fused linear
// forward 9.9 -> 9.2 ms and backward 20.3 -> 18.1 ms.
//   AVX-512 (Intel Xeon, zmm FMA peak 174 GFLOP/s a core): panels of up to 4 vectors
// instead of AVX2's 2 (and one static tile for a one-panel C, gemm_rows_of), in the
// harness, 10^5 rows, one thread, fp32, medians of 5: K = N = 50 5.3 -> 4.8 ms,
// 32 x 32 2.5 -> 1.7, 100 x 100 19.8 -> 18.7, 128 x 128 43.7 -> 36.9, 3 -> 20 0.67 ->
// 0.56; in the extension, one thread, fp32, forward + backward: 50 x 50 29.2 -> 27.9 ms,
// 20 x 20 7.6 -> 6.9, 32 x 32 12.6 -> 11.0, 100 x 100 80.8 -> 76.2 (the forward alone
// unchanged within noise at 50 x 50; AVX2 builds unchanged).
template <typename T, int R, bool kWhole, typename Ep>
inline void gemm_rows(const StridedA<T>& A, const PanelView<T>& B, T* c, int64_t ldc,
                      const GemmInit<T>& init, const Ep& ep) {
  constexpr int64_t L = Vectorized<T>::size();
  const int64_t cols = covered_cols(B, init);
  int64_t left = (cols + L - 1) / L;
  for (int64_t col = 0; left > 0;) {
    const int64_t vectors = next_panel_vectors(left);
    left -= vectors;
    if (left == 0) col = std::max<int64_t>(0, cols - vectors * L);  // (accumulating: col)
    gemm_panel<T, R, kWhole>(vectors, A, B, col, c, ldc, cols, init, ep);
    col += vectors * L;
  }
}

// R rows of C. kOnePanel > 0: C is one panel of that many vectors (next_panel_vectors
// of its vector count is all of them), one tile, its width a template argument; an
// overwritten C narrower than the panel (L < cols < P L) has the panel's last vector
// end at C's last column, cols - L, overlapping the one before it, so that no lane
// is masked (N = 20 in AVX2's fp32: vectors at 0..7, 8..15 and 12..19). kOnePanel = 0:
// gemm_rows. The panel width is chosen once per narrow_gemm call, not per tile: a
// branch in gemm_rows had moved GCC's register allocation of the hot 4 x 3 tile
// (more row pointers spilled, K = N = 50 forward 3-6 % slower on Zen 3), and a
// run-time width made N = 20 ~10 % and N = 32 ~7 % slower on AVX-512.
// Harness, one thread, 10^5 rows: N = K = 20 forward 40 -> 61 GFLOP/s, N = 20,
// K = 3 (a PINN's input layer) 1.13 -> 0.50 ms, N = K = 12 1.22 -> 0.69 ms (Zen 3).
template <typename T, int R, int kOnePanel, bool kWhole, typename Ep>
inline __attribute__((always_inline)) void gemm_rows_of(const StridedA<T>& A,
                                                        const PanelView<T>& B, T* c,
                                                        int64_t ldc, const GemmInit<T>& init,
                                                        const Ep& ep) {
  if constexpr (kOnePanel > 0) {  // (one vector: no shift, masked lanes below L)
    gemm_tile<T, R, kOnePanel, (kOnePanel > 1), kWhole>(A, B, 0, c, ldc, covered_cols(B, init),
                                                        init, ep);
  } else {
    gemm_rows<T, R, kWhole>(A, B, c, ldc, init, ep);
  }
}

// C(r, :) (+)= sum_d A(r, d) B(d, :) for r < rows, in tiles of 4 rows, then 2, then 1.
// Not inlined into the callers: inlined into a harness's main, GCC 12 kept the 4 x 4
// tile's accumulators on the stack (a store after every FMA, 2.5x slower). The tiles
// are inlined into it (gemm_rows_of is always_inline: as a call per tile, each had
// its own prologue and stack frame).
template <typename T, int kOnePanel, bool kWhole, typename Ep>
__attribute__((noinline)) void gemm_row_tiles(const StridedA<T> A, int64_t rows,
                                              const PanelView<T> B, T* c, int64_t ldc,
                                              const GemmInit<T> init, const Ep ep) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    gemm_rows_of<T, 4, kOnePanel, kWhole>(A.rows_from(r), B, c + r * ldc, ldc, init, ep);
  }
  if (r + 2 <= rows) {  // (dW's rows are N: 50 = 12 x 4 + 2, and 1-row tiles are load-bound)
    gemm_rows_of<T, 2, kOnePanel, kWhole>(A.rows_from(r), B, c + r * ldc, ldc, init, ep);
    r += 2;
  }
  if (r < rows) {
    gemm_rows_of<T, 1, kOnePanel, kWhole>(A.rows_from(r), B, c + r * ldc, ldc, init, ep);
  }
}

// Whether every tile of narrow_gemm is whole (gemm_tile's kWhole): C overwritten and
// at least one vector wide (a panel's last vector, and the last panel, are then
// moved to end at C's last column), or C accumulated (padded like B: the tiles cover
// its padding, each lane once). kWhole, PanelView and the inlined tiles together, one
// thread, one 64-row chunk in L1 again and again (tools/narrow_gemm_bench.cpp's call
// on one chunk), ns a row, before / after: fp32 N = K = 50 37.3 / 34.4, N = 48
// 32.1 / 29.8, N = K = 20 10.2 / 9.3, N = K = 128 312 / 291; fp64 N = K = 50 75-80 /
// 71, N = K = 20 17.5 / 13.3 (AVX2 builds on the same machine: 3-10 % faster).
// Stop 31 gave the accumulated C (dW += gz^T x_chunk) the same code: fp32, one
// 64-row chunk in L1, ns a row of x, N = K = 50 45.0 / 40.9 (with the packing of
// x's chunk 49.5 / 45.2; that packing, a std::copy a row, costs ~4.5 ns of it, and a
// whole-vector copy instead saved ~0.5, not kept). Through the op, 10^5
// rows on two threads, the backward did not move measurably (8.0-8.6 ms either way):
// there it waits on memory, x, g and y each read once (a burst of software prefetches
// of the next chunk, tried, made it slower).
template <typename T>
inline bool whole_tiles(const PackedPanel<T>& B, const GemmInit<T>& init) {
  return init.accumulate || B.width() >= Vectorized<T>::size();
}

// Whether narrow_gemm stores each lane of an overwritten C once: the tiles' columns
// are whole vectors, none moved onto another (or there are none: all of C is the dot
// tail, whose lanes are rows x columns). An epilogue needs this.
template <typename T>
inline bool stores_each_lane_once(const PackedPanel<T>& B) {
  return B.width() % Vectorized<T>::size() == 0;
}

// gemm_row_tiles with kWhole = whole_tiles(B, init) (always, with an epilogue:
// stores_each_lane_once; the general code is not compiled for it).
template <typename T, int kOnePanel, typename Ep>
inline void gemm_row_tiles_of(const StridedA<T>& A, int64_t rows, const PackedPanel<T>& B,
                              T* c, int64_t ldc, const GemmInit<T>& init, const Ep& ep) {
  constexpr bool kAlwaysWhole = Ep::kActive;
  if (kAlwaysWhole || whole_tiles(B, init)) {
    gemm_row_tiles<T, kOnePanel, true>(A, rows, B.view(), c, ldc, init, ep);
  } else if constexpr (!kAlwaysWhole) {
    gemm_row_tiles<T, kOnePanel, false>(A, rows, B.view(), c, ldc, init, ep);
  }
}

#if LAAF_HAS_LANE_SUMS
// Lanes [first, first + count) of v to p[0, count): one masked store (AVX-512, the
// dot tail's builds). As a store of the vector and `count` scalar copies it had cost
// a PINN's output layer (N = 1, K = 50, in L1) 3.45 ns a row fp32 and 4.8 fp64, this
// 3.1 and 3.4.
inline void store_lane_run(const Vectorized<float>& v, float* p, int first, int count) {
  _mm512_mask_storeu_ps(p - first, __mmask16(((1u << count) - 1u) << first), v);
}
inline void store_lane_run(const Vectorized<double>& v, double* p, int first, int count) {
  _mm512_mask_storeu_pd(p - first, __mmask8(((1u << count) - 1u) << first), v);
}

// C(r, t) = init(t) + sum_d A(r, d) Bt(t, d) for r < rows and the panel's kCols tail
// columns t (C and init start at the first of them; init may be null): dot products
// along the depth, A's rows read as vectors (its depth stride is 1). The rows go in
// groups of R = L / kCols, so that the group's R x kCols accumulators, one vector
// each, are at most one vector's lanes: lane_sums turns them into one vector of
// results. Per depth vector: kCols loads of Bt, R of A, L FMAs. The last depth
// vector is a masked load of A (a row's end), met by Bt's zero padding. A group's
// rows past `rows` read row rows - 1 again and are not stored. An active epilogue
// applies to the vector of results, with the factors of C's columns `first_col` + t
// (the tail's place in C) in the same lane order.
template <typename T, int kCols, typename Ep>
__attribute__((noinline)) void dot_tail_rows(const StridedA<T>& A, int64_t rows,
                                             const PackedPanel<T>& B, T* c, int64_t ldc,
                                             const T* init, const Ep& ep, int64_t first_col) {
  using V = Vectorized<T>;
  constexpr int L = V::size(), R = L / kCols;
  const int64_t depth = B.depth(), whole = depth / L * L;
  // start: lane r * kCols + t holds init(t); factor: the epilogue's f(first_col + t)
  T start[L] = {}, factor[L] = {};
  if (init != nullptr) {
    for (int i = 0; i < R * kCols; ++i) start[i] = init[i % kCols];
  }
  if constexpr (Ep::kActive) {
    for (int i = 0; i < R * kCols; ++i) factor[i] = ep.factor[first_col + i % kCols];
  }
  for (int64_t r0 = 0; r0 < rows; r0 += R) {
    const T* a[R];
    for (int r = 0; r < R; ++r) a[r] = A.a + std::min<int64_t>(r0 + r, rows - 1) * A.row_stride;
    V acc[L];
    for (int i = 0; i < L; ++i) acc[i] = V(T(0));
    // One depth vector at d, `live` lanes of A read (the rest zero).
    auto step = [&](int64_t d, int64_t live) __attribute__((always_inline)) {
      V b[kCols];
#pragma GCC unroll 4
      for (int t = 0; t < kCols; ++t) b[t] = V::loadu(B.tail_row(t) + d);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const V x = V::loadu(a[r] + d, live);
#pragma GCC unroll 4
        for (int t = 0; t < kCols; ++t) {
          acc[r * kCols + t] = at::vec::fmadd(x, b[t], acc[r * kCols + t]);
        }
      }
    };
    for (int64_t d = 0; d < whole; d += L) step(d, L);
    if (whole < depth) step(whole, depth - whole);
    V sums = lane_sums(acc) + V::loadu(start);
    if constexpr (Ep::kActive) sums = ep.apply(sums, V::loadu(factor));
    for (int64_t r = 0; r < std::min<int64_t>(R, rows - r0); ++r) {
      store_lane_run(sums, c + (r0 + r) * ldc, int(r) * kCols, kCols);
    }
  }
}

// The panel's tail columns of C (see dot_tail_columns), dispatched on their count.
template <typename T, typename Ep>
void dot_tail_gemm(const StridedA<T>& A, int64_t rows, const PackedPanel<T>& B, T* c,
                   int64_t ldc, const T* init, const Ep& ep, int64_t first_col) {
  TORCH_INTERNAL_ASSERT(A.depth_stride == 1, "dot_tail_gemm: A's depth must be contiguous");
  switch (B.tail_columns()) {
    case 1: dot_tail_rows<T, 1>(A, rows, B, c, ldc, init, ep, first_col); break;
    case 2: dot_tail_rows<T, 2>(A, rows, B, c, ldc, init, ep, first_col); break;
    case 3: dot_tail_rows<T, 3>(A, rows, B, c, ldc, init, ep, first_col); break;
    case 4: dot_tail_rows<T, 4>(A, rows, B, c, ldc, init, ep, first_col); break;
    default: TORCH_INTERNAL_ASSERT(false, "dot_tail_gemm: ", B.tail_columns(), " tail columns");
  }
}
#endif

// C(r, :) (+)= sum_d A(r, d) B(d, :) for r < rows; C row-major with ldc columns,
// covered_cols of them written, each through the epilogue `ep` (StoreAsIs: as they
// are). Serial: the callers run it on one chunk per task.
template <typename T, typename Ep = StoreAsIs>
void narrow_gemm(const StridedA<T>& A, int64_t rows, const PackedPanel<T>& B, T* c,
                 int64_t ldc, const GemmInit<T>& init, const Ep& ep = Ep()) {
  TORCH_INTERNAL_ASSERT(!init.accumulate || ldc >= B.padded(),
                        "narrow_gemm: an accumulated C must be padded like B");
  TORCH_INTERNAL_ASSERT(!Ep::kActive || (!init.accumulate && stores_each_lane_once(B)),
                        "narrow_gemm: an epilogue needs an overwritten C, each lane stored once");
  const int64_t vectors = B.padded() / Vectorized<T>::size();
  switch (vectors == 0 ? -1 : next_panel_vectors(vectors) == vectors ? vectors : 0) {
    case -1: break;  // (all of C is the dot tail)
    case 1: gemm_row_tiles_of<T, 1>(A, rows, B, c, ldc, init, ep); break;
    case 2: gemm_row_tiles_of<T, 2>(A, rows, B, c, ldc, init, ep); break;
    case 3: gemm_row_tiles_of<T, 3>(A, rows, B, c, ldc, init, ep); break;
    case 4:
      if constexpr (kMaxPanel >= 4) {
        gemm_row_tiles_of<T, 4>(A, rows, B, c, ldc, init, ep);
        break;
      }
      [[fallthrough]];  // (AVX2: 4 vectors are two panels, never one)
    default: gemm_row_tiles_of<T, 0>(A, rows, B, c, ldc, init, ep);
  }
#if LAAF_HAS_LANE_SUMS
  if (B.tail_columns() > 0) {  // (after the tiles: A is then in L1)
    TORCH_INTERNAL_ASSERT(!init.accumulate, "narrow_gemm: a dot tail overwrites C");
    dot_tail_gemm(A, rows, B, c + B.width(), ldc,
                  init.row == nullptr ? nullptr : init.row + B.width(), ep, B.width());
  }
#endif
}

// A row vector padded to whole vectors with zeros (the bias as a GemmInit row).
template <typename T>
std::vector<T> padded_row(const T* v, int64_t width) {
  std::vector<T> out(padded_width<T>(width), T(0));
  if (v != nullptr) std::copy(v, v + width, out.begin());
  return out;
}

}  // namespace cpu
}  // namespace laaf
