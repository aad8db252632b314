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
// 4 broadcasts, 8 FMAs, so the FMA units, not the loads, set the pace. A last,
// single column vector (N = 50 is 6 vectors + 2 lanes) runs a 4 x 1 tile that
// splits the depth into even and odd steps, to keep 8 FMA chains too.
// Every sum runs in a fixed order, whatever the thread count (deterministic).
#pragma once
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <vector>

namespace laaf {
namespace cpu {

using at::vec::Vectorized;

constexpr int64_t kMaxNarrow = 128;  // K and N at most this: the fused path

// B(d, w) for d < depth, w < width, row-major in `depth` rows of `padded` lanes.
template <typename T>
class PackedPanel {
 public:
  static constexpr int64_t kLanes = Vectorized<T>::size();
  PackedPanel(int64_t max_depth, int64_t width)
      : width_(width), padded_((width + kLanes - 1) / kLanes * kLanes),
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

// One R x P tile of C at columns [col, col + P lanes): `cols` of them are real
// (C has ldc columns; lanes past `cols` are neither loaded nor stored). The unroll
// pragmas keep the accumulators in registers whatever the surrounding code: in
// one build (a standalone timing harness) GCC 12 had left the 4 x 1 tile's on the
// stack, a load and a store around every FMA, and N = 50 took 10.8 ms where
// N = 48 took 5.3. (The extension's own build had not.)
template <typename T, int R, int P>
inline void gemm_tile(const StridedA<T>& A, const PackedPanel<T>& B, int64_t col, T* c,
                      int64_t ldc, int64_t cols, const GemmInit<T>& init) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  int64_t live[P];
  for (int p = 0; p < P; ++p) live[p] = std::clamp<int64_t>(cols - col - p * L, 0, L);
  V acc[R][P];
  for (int p = 0; p < P; ++p) {
    const T* init_row = init.row == nullptr ? nullptr : init.row + col + p * L;
    for (int r = 0; r < R; ++r) {
      acc[r][p] = tile_start(c + r * ldc + col + p * L, live[p], init_row, init);
    }
  }
  for (int64_t d = 0; d < B.depth(); ++d) {
    V b[P];
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) b[p] = V::loadu(B.row(d) + col + p * L);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const V a(A.at(r, d));
#pragma GCC unroll 8
      for (int p = 0; p < P; ++p) acc[r][p] = at::vec::fmadd(a, b[p], acc[r][p]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int p = 0; p < P; ++p) store_lanes(acc[r][p], c + r * ldc + col + p * L, live[p]);
  }
}

// The 4 x 1 tile (4 rows, the last, single column vector), with 8 FMA chains
// instead of 4: a Zen 3 core issues 2 FMAs a cycle at a latency of 4, so 4 chains
// fill half its FMA slots unless out-of-order execution overlaps the next tile.
// Even depth steps go to c0..c3, odd ones to o0..o3, added at the end. Named
// variables, not arrays: an array version (acc[2][R][P]) stayed on the stack in
// GCC 12 whatever the pragmas. Measured in the extension, A/B at 10^5 x 50 x 50,
// three runs each: forward 5.28 -> 5.17 ms, backward 11.3 -> 10.8 ms.
template <typename T>
inline void gemm_tile_4x1(const StridedA<T>& A, const PackedPanel<T>& B, int64_t col, T* c,
                          int64_t ldc, int64_t cols, const GemmInit<T>& init) {
  using V = Vectorized<T>;
  const int64_t live = std::clamp<int64_t>(cols - col, 0, V::size());
  const T* init_row = init.row == nullptr ? nullptr : init.row + col;
  V c0 = tile_start(c + col, live, init_row, init);
  V c1 = tile_start(c + ldc + col, live, init_row, init);
  V c2 = tile_start(c + 2 * ldc + col, live, init_row, init);
  V c3 = tile_start(c + 3 * ldc + col, live, init_row, init);
  V o0(T(0)), o1(T(0)), o2(T(0)), o3(T(0));
  const int64_t depth = B.depth();
  int64_t d = 0;
  for (; d + 2 <= depth; d += 2) {
    const V b = V::loadu(B.row(d) + col), bn = V::loadu(B.row(d + 1) + col);
    c0 = at::vec::fmadd(V(A.at(0, d)), b, c0);
    c1 = at::vec::fmadd(V(A.at(1, d)), b, c1);
    c2 = at::vec::fmadd(V(A.at(2, d)), b, c2);
    c3 = at::vec::fmadd(V(A.at(3, d)), b, c3);
    o0 = at::vec::fmadd(V(A.at(0, d + 1)), bn, o0);
    o1 = at::vec::fmadd(V(A.at(1, d + 1)), bn, o1);
    o2 = at::vec::fmadd(V(A.at(2, d + 1)), bn, o2);
    o3 = at::vec::fmadd(V(A.at(3, d + 1)), bn, o3);
  }
  if (d < depth) {
    const V b = V::loadu(B.row(d) + col);
    c0 = at::vec::fmadd(V(A.at(0, d)), b, c0);
    c1 = at::vec::fmadd(V(A.at(1, d)), b, c1);
    c2 = at::vec::fmadd(V(A.at(2, d)), b, c2);
    c3 = at::vec::fmadd(V(A.at(3, d)), b, c3);
  }
  store_lanes(c0 + o0, c + col, live);
  store_lanes(c1 + o1, c + ldc + col, live);
  store_lanes(c2 + o2, c + 2 * ldc + col, live);
  store_lanes(c3 + o3, c + 3 * ldc + col, live);
}

// R rows of C, all of B's columns: panels of 2 vectors, then 1.
template <typename T, int R>
inline void gemm_rows(const StridedA<T>& A, const PackedPanel<T>& B, T* c, int64_t ldc,
                      const GemmInit<T>& init) {
  constexpr int64_t L = Vectorized<T>::size();
  int64_t col = 0;
  for (; col + 2 * L <= B.padded(); col += 2 * L) {
    gemm_tile<T, R, 2>(A, B, col, c, ldc, B.width(), init);
  }
  if (col < B.padded()) {
    if constexpr (R == 4) {
      gemm_tile_4x1<T>(A, B, col, c, ldc, B.width(), init);
    } else {
      gemm_tile<T, R, 1>(A, B, col, c, ldc, B.width(), init);
    }
  }
}

// C(r, :) (+)= sum_d A(r, d) B(d, :) for r < rows, in tiles of 4 rows, then 2, then 1;
// C row-major with ldc columns (B.width() of them written). Serial: the callers run it
// on one chunk per task.
template <typename T>
void narrow_gemm(const StridedA<T>& A, int64_t rows, const PackedPanel<T>& B, T* c,
                 int64_t ldc, const GemmInit<T>& init) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) gemm_rows<T, 4>(A.rows_from(r), B, c + r * ldc, ldc, init);
  if (r + 2 <= rows) {  // (dW's rows are N: 50 = 12 x 4 + 2, and 1-row tiles are load-bound)
    gemm_rows<T, 2>(A.rows_from(r), B, c + r * ldc, ldc, init);
    r += 2;
  }
  if (r < rows) gemm_rows<T, 1>(A.rows_from(r), B, c + r * ldc, ldc, init);
}

// A row vector padded to whole vectors with zeros (the bias as a GemmInit row).
template <typename T>
std::vector<T> padded_row(const T* v, int64_t width) {
  constexpr int64_t L = Vectorized<T>::size();
  std::vector<T> out((width + L - 1) / L * L, T(0));
  if (v != nullptr) std::copy(v, v + width, out.begin());
  return out;
}

}  // namespace cpu
}  // namespace laaf
