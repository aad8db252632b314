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
// Every sum runs in a fixed order, whatever the thread count (deterministic).
#pragma once
#include <ATen/cpu/vec/vec.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <vector>

namespace laaf {
namespace cpu {

using at::vec::Vectorized;

constexpr int64_t kMaxNarrow = 128;  // K and N at most this: the fused path

// `width` rounded up to whole vectors of T: the row length of a PackedPanel, a
// padded_row and an accumulated C (gemm_rows).
template <typename T>
constexpr int64_t padded_width(int64_t width) {
  constexpr int64_t L = Vectorized<T>::size();
  return (width + L - 1) / L * L;
}

// B(d, w) for d < depth, w < width, row-major in `depth` rows of `padded` lanes.
template <typename T>
class PackedPanel {
 public:
  PackedPanel(int64_t max_depth, int64_t width)
      : width_(width), padded_(padded_width<T>(width)),
        data_(std::max<int64_t>(1, max_depth) * padded_, T(0)) {}

  // B(d, w) = src[d * sd + w * sw] for d < depth (the padding lanes stay zero).
  void pack(const T* src, int64_t depth, int64_t sd, int64_t sw) {
    depth_ = depth;
    for (int64_t d = 0; d < depth; ++d) {
      T* row = data_.data() + d * padded_;
      if (sw == 1) {
        std::copy(src + d * sd, src + d * sd + width_, row);
      } else {
        for (int64_t w = 0; w < width_; ++w) row[w] = src[d * sd + w * sw];
      }
    }
  }
  int64_t depth() const { return depth_; }
  int64_t width() const { return width_; }
  int64_t padded() const { return padded_; }
  const T* row(int64_t d) const { return data_.data() + d * padded_; }
  // B(d, :) *= factor[d] for d < depth (the padding lanes stay zero).
  void scale_rows(const T* factor) {
    for (int64_t d = 0; d < depth_; ++d) {
      T* r = data_.data() + d * padded_;
      for (int64_t w = 0; w < width_; ++w) r[w] *= factor[d];
    }
  }

 private:
  int64_t width_, padded_, depth_ = 0;
  std::vector<T> data_;
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
template <typename T, int R, int P, bool kTail = false>
inline __attribute__((always_inline)) void gemm_tile(const StridedA<T>& A,
                                                     const PackedPanel<T>& B, int64_t col,
                                                     T* c, int64_t ldc, int64_t cols,
                                                     const GemmInit<T>& init) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  // kTail: vector P - 1 moves by `shift` (< 0) columns, to end at C's last column.
  const int64_t shift = kTail ? cols - col - P * L : 0;
  auto moved = [&](int p) -> int64_t { return kTail && p == P - 1 ? shift : 0; };
  int64_t live[P];
  for (int p = 0; p < P; ++p) {
    live[p] = std::clamp<int64_t>(cols - col - p * L - moved(p), 0, L);
  }
  V acc[R][P];
  for (int p = 0; p < P; ++p) {
    const T* init_row = init.row == nullptr ? nullptr : init.row + col + p * L + moved(p);
    for (int r = 0; r < R; ++r) {
      acc[r][p] = tile_start(c + r * ldc + col + p * L + moved(p), live[p], init_row, init);
    }
  }
  for (int64_t d = 0; d < B.depth(); ++d) {
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
  for (int r = 0; r < R; ++r) {
    for (int p = 0; p < P; ++p) {
      store_lanes(acc[r][p], c + r * ldc + col + p * L + moved(p), live[p]);
    }
  }
}

// The columns of C that gemm_rows and the single-panel tiles cover: B.width()
// overwriting, B.padded() accumulating (see gemm_rows).
template <typename T>
inline int64_t covered_cols(const PackedPanel<T>& B, const GemmInit<T>& init) {
  return init.accumulate ? B.padded() : B.width();
}

// The R x P tile of C at column col, P = `vectors` (a run-time width; see gemm_tile).
template <typename T, int R>
inline __attribute__((always_inline)) void gemm_panel(int64_t vectors, const StridedA<T>& A,
                                                      const PackedPanel<T>& B, int64_t col,
                                                      T* c, int64_t ldc, int64_t cols,
                                                      const GemmInit<T>& init) {
  switch (vectors) {
    case 1: gemm_tile<T, R, 1>(A, B, col, c, ldc, cols, init); break;
    case 2: gemm_tile<T, R, 2>(A, B, col, c, ldc, cols, init); break;
    case 3: gemm_tile<T, R, 3>(A, B, col, c, ldc, cols, init); break;
    default:
      if constexpr (kMaxPanel >= 4) gemm_tile<T, R, 4>(A, B, col, c, ldc, cols, init);
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
template <typename T, int R>
inline void gemm_rows(const StridedA<T>& A, const PackedPanel<T>& B, T* c, int64_t ldc,
                      const GemmInit<T>& init) {
  constexpr int64_t L = Vectorized<T>::size();
  const int64_t cols = covered_cols(B, init);
  int64_t left = (cols + L - 1) / L;
  for (int64_t col = 0; left > 0;) {
    const int64_t vectors = next_panel_vectors(left);
    left -= vectors;
    if (left == 0) col = std::max<int64_t>(0, cols - vectors * L);  // (accumulating: col)
    gemm_panel<T, R>(vectors, A, B, col, c, ldc, cols, init);
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
template <typename T, int R, int kOnePanel>
inline void gemm_rows_of(const StridedA<T>& A, const PackedPanel<T>& B, T* c, int64_t ldc,
                         const GemmInit<T>& init) {
  if constexpr (kOnePanel > 0) {  // (one vector: no shift, masked lanes below L)
    gemm_tile<T, R, kOnePanel, (kOnePanel > 1)>(A, B, 0, c, ldc, covered_cols(B, init), init);
  } else {
    gemm_rows<T, R>(A, B, c, ldc, init);
  }
}

// C(r, :) (+)= sum_d A(r, d) B(d, :) for r < rows, in tiles of 4 rows, then 2, then 1.
// Not inlined into the callers: inlined into a harness's main, GCC 12 kept the 4 x 4
// tile's accumulators on the stack (a store after every FMA, 2.5x slower).
template <typename T, int kOnePanel>
__attribute__((noinline)) void gemm_row_tiles(const StridedA<T>& A, int64_t rows,
                                              const PackedPanel<T>& B, T* c, int64_t ldc,
                                              const GemmInit<T>& init) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    gemm_rows_of<T, 4, kOnePanel>(A.rows_from(r), B, c + r * ldc, ldc, init);
  }
  if (r + 2 <= rows) {  // (dW's rows are N: 50 = 12 x 4 + 2, and 1-row tiles are load-bound)
    gemm_rows_of<T, 2, kOnePanel>(A.rows_from(r), B, c + r * ldc, ldc, init);
    r += 2;
  }
  if (r < rows) gemm_rows_of<T, 1, kOnePanel>(A.rows_from(r), B, c + r * ldc, ldc, init);
}

// C(r, :) (+)= sum_d A(r, d) B(d, :) for r < rows; C row-major with ldc columns,
// covered_cols of them written. Serial: the callers run it on one chunk per task.
template <typename T>
void narrow_gemm(const StridedA<T>& A, int64_t rows, const PackedPanel<T>& B, T* c,
                 int64_t ldc, const GemmInit<T>& init) {
  TORCH_INTERNAL_ASSERT(!init.accumulate || ldc >= B.padded(),
                        "narrow_gemm: an accumulated C must be padded like B");
  const int64_t vectors = B.padded() / Vectorized<T>::size();
  switch (next_panel_vectors(vectors) == vectors ? vectors : 0) {
    case 1: gemm_row_tiles<T, 1>(A, rows, B, c, ldc, init); break;
    case 2: gemm_row_tiles<T, 2>(A, rows, B, c, ldc, init); break;
    case 3: gemm_row_tiles<T, 3>(A, rows, B, c, ldc, init); break;
    case 4:
      if constexpr (kMaxPanel >= 4) {
        gemm_row_tiles<T, 4>(A, rows, B, c, ldc, init);
        break;
      }
      [[fallthrough]];  // (AVX2: 4 vectors are two panels, never one)
    default: gemm_row_tiles<T, 0>(A, rows, B, c, ldc, init);
  }
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
