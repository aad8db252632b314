// laaf_kernels: fused CPU kernels of the "cpp" backend (torch.ops.laaf.cpp_*).
//
// Forward of the linear layer:
//     z = x W^T + b            narrow layers (K, N <= 128): our GEMM (laaf_cpu_gemm.h),
//                              one 64-row chunk at a time (bf16 / fp16 chunks
//                              widened to fp32: ChunkStage);
//                              otherwise one ATen GEMM (at::addmm: MKL / oneDNN)
//     y = act(s * z)           ONE pass over z, vectorised (at::vec) and threaded;
//                              narrow layers: on each chunk while it is in cache
// Backward, given g = dL/dy:
//     gh = g act'(h), gz = gh s          one pass over (g, z[, y]) that also forms the
//     db = sum_rows gz, ds = sum gh z    partial column sums of this row chunk
//     dx = gz W, dW = gz^T x             narrow layers: our GEMM on each chunk's gz
//                                        buffer (dW per fixed group of chunks);
//                                        otherwise ATen GEMMs
// Narrow layers whose act' is a function of y (tanh, sigmoid, relu, ...) keep no z
// at all: the backward runs on gh = g act'(y) and forms ds from G = gh^T x, the dW
// GEMM's own sum, as sum_n W(n, :) . G(n, :) + b(n) sum gh(:, n) (linear_bwd_narrow);
// autograd then saves x and y, 2/3 of eager's x, z and y.
//
// Determinism: rows are cut into fixed chunks of kRowsPerChunk (and dW's groups
// depend on the row count alone), whatever the thread count; each chunk or group
// writes its own partial sums, and one thread adds them in order. The same inputs
// give the same bits with 1 or N threads (ATen's GEMMs are thread-count-independent
// on these machines too; tests/test_fused_linear.py checks both paths).
//
// The activation math (Act<ID>::value / d1) comes from laaf_activations.h,
// generated from the one table in laaf_kernels/activations.py.
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <optional>
#include <tuple>
#include <type_traits>

#include "laaf_activations.h"
#include "laaf_cpu_common.h"
#include "laaf_cpu_gemm.h"
#include "laaf_cpu_gemm_bf16.h"

namespace laaf {
namespace {

using namespace cpu;  // Grid, Io, Compute, grain, sum_parts, slope_in, ...

// ---------------------------------------------------------------------------
// Forward epilogue: y = act(s * z), one vectorised pass (in place allowed)
// ---------------------------------------------------------------------------

// Vectors [v0, v1) of a flat walk (FlatWalk) over `total` elements: y = act(s z).
template <typename T, int ACT>
void forward_flat_range(const T* z, T* y, const WalkView<Compute<T>> walk, int64_t v0,
                        int64_t v1, int64_t total) {
  using V = Vectorized<Compute<T>>;
  for (int64_t v = v0, p = walk.phase_of(v0); v < v1; ++v, p = walk.next(p)) {
    const int64_t at = v * V::size();
    const int64_t n = std::min<int64_t>(V::size(), total - at);
    const V h = Io<T>::load(z + at, n) * walk.slope(p);
    Io<T>::store(Act<ACT>::value(h), y + at, n);
  }
}

// y = act(s z) over the whole grid: channel_pass with nothing to sum (a flat walk on
// whole vectors for narrow channels-last grids, row by row otherwise).
template <typename T, int ACT>
void forward_pass(const T* z, T* y, const Grid<Compute<T>>& grid) {
  using C = Compute<T>;
  channel_pass<C, 0>(grid, grid, {}, [=](int64_t at, int64_t n, const ChannelLanes<C>& ch)
                                         __attribute__((always_inline)) {
    Io<T>::store(Act<ACT>::value(Io<T>::load(z + at, n) * ch.a), y + at, n);
    return std::array<Vectorized<C>, 0>{};
  });
}

// ---------------------------------------------------------------------------
// Backward epilogue: gz and the per-chunk partial sums
// ---------------------------------------------------------------------------

// act'(h) for lanes [at, at + n): from the saved y where the table allows (no
// transcendental), else from h = s * z.
template <typename T, int ACT>
Vectorized<Compute<T>> act_d1(const T* y, const Vectorized<Compute<T>>& h, int64_t at,
                              int64_t n) {
  if constexpr (Act<ACT>::kD1FromY) {
    if (y != nullptr) return Act<ACT>::d1_y(Io<T>::load(y + at, n));
  }
  return Act<ACT>::d1(h);
}

// gh = g act'(h) and gz = gh s at lanes [at, at + n), s the lanes' slopes:
// {gz, gh z}, the terms of db and ds.
template <typename T, int ACT>
inline __attribute__((always_inline)) std::array<Vectorized<Compute<T>>, 2> grad_terms(
    const T* g, const T* z, const T* y, int64_t at, int64_t n, const Vectorized<Compute<T>>& s) {
  const auto zv = Io<T>::load(z + at, n);
  const auto gh = Io<T>::load(g + at, n) * act_d1<T, ACT>(y, zv * s, at, n);
  return {gh * s, gh * zv};
}

// Elements [at0, end) of a flat backward walk (FlatWalk), at0 a whole number of
// vectors: gz to gz_out[at - at0] (unless null), column sums of gz and gh z into
// db and ds (unless null). The narrow linear backward's epilogue, chunk by chunk.
// FROM_Y (no z; act' from y, Act<ACT>::kD1FromY): gh instead of gz, and its column
// sums into db (ds comes from the dW GEMM instead: see linear_bwd_narrow).
// G: the gz buffer's type (a 16-bit layer's narrow backward keeps it in float).
template <typename T, int ACT, bool FROM_Y = false, typename G = T>
void backward_flat_chunk(const T* g, const T* z, const T* y, G* gz_out, int64_t at0, int64_t end,
                         const WalkView<Compute<T>> walk, const PhaseSlots<Compute<T>> db,
                         const PhaseSlots<Compute<T>> ds) {
  static_assert(std::is_same_v<Compute<T>, Compute<G>>, "gz in T's compute type");
  using C = Compute<T>;
  using V = Vectorized<C>;
  constexpr int64_t L = V::size();
  int64_t p = walk.phase_of(at0 / L);
  for (int64_t at = at0; at < end; at += L, p = walk.next(p)) {
    const int64_t n = std::min<int64_t>(L, end - at);
    if constexpr (FROM_Y) {
      const V gh = Io<T>::load(g + at, n) * Act<ACT>::d1_y(Io<T>::load(y + at, n));
      if (gz_out != nullptr) Io<G>::store(gh, gz_out + (at - at0), n);
      if (db.data != nullptr) db.add(p, V::set(V(C(0)), gh, n));
      continue;
    }
    const auto terms = grad_terms<T, ACT>(g, z, y, at, n, walk.slope(p));
    if (gz_out != nullptr) Io<G>::store(terms[0], gz_out + (at - at0), n);
    // (V::set keeps the n live lanes: the rest must not reach the sums.)
    if (db.data != nullptr) db.add(p, V::set(V(C(0)), terms[0], n));
    if (ds.data != nullptr) ds.add(p, V::set(V(C(0)), terms[1], n));
  }
}

// Narrow grids with slopes per column, one or none: chunk k of kRowsPerChunk rows
// is one flat walk (backward_flat_chunk), whose column sums become db_part[k, :]
// and ds_part[k, :].
template <typename T, int ACT>
void backward_flat(const T* g, const T* z, const T* y, T* gz, double* db_part,
                   double* ds_part, const Grid<Compute<T>>& grid) {
  using C = Compute<T>;
  const FlatWalk<C> walk(grid);
  const int64_t total = grid.rows * grid.cols;
  const int64_t per_chunk = kRowsPerChunk * grid.cols;  // a multiple of the lanes
  const int64_t chunks = (grid.rows + kRowsPerChunk - 1) / kRowsPerChunk;
  at::parallel_for(0, chunks, grain(per_chunk), [&](int64_t k0, int64_t k1) {
    PhaseSums<C> db(grid.cols, walk.period()), ds(grid.cols, walk.period());
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t at0 = k * per_chunk;
      db.clear();
      ds.clear();
      backward_flat_chunk<T, ACT>(g, z, y, gz == nullptr ? nullptr : gz + at0, at0,
                                  std::min(total, at0 + per_chunk), walk.view(),
                                  wanted_slots(db_part, db), wanted_slots(ds_part, ds));
      if (db_part != nullptr) db.fold(db_part + k * grid.cols);
      if (ds_part != nullptr) ds.fold(ds_part + k * grid.cols);
    }
  });
}

// gz (unless null) and the channel_pass partials of db = sum gz and ds = sum gh z
// (each unless null; db only for slopes per column). Narrow channels-last grids:
// backward_flat, the narrow linear backward's own walk; channel_pass's flat walk ran
// this body ~4 % slower (act_bwd 10^4 x 20 fp32 tanh, one Zen 4 thread: 101 vs 105 us,
// stop 36; cause not found). Slopes per row and wide grids: channel_pass.
template <typename T, int ACT>
void backward_pass(const T* g, const T* z, const T* y, T* gz, double* db_part, double* ds_part,
                   const Grid<Compute<T>>& grid) {
  using C = Compute<T>;
  if (!grid.on_rows && grid.cols <= kMaxFlatCols && grid.rows * grid.cols > 0) {
    backward_flat<T, ACT>(g, z, y, gz, db_part, ds_part, grid);
    return;
  }
  channel_pass<C, 2>(grid, grid, {db_part, ds_part},
                     [=](int64_t at, int64_t n, const ChannelLanes<C>& ch)
                         __attribute__((always_inline)) {
    const auto terms = grad_terms<T, ACT>(g, z, y, at, n, ch.a);
    if (gz != nullptr) Io<T>::store(terms[0], gz + at, n);
    return terms;
  });
}


// ---------------------------------------------------------------------------
// Narrow layers (K, N <= kMaxNarrow; every dtype): GEMMs fused with the epilogues
// ---------------------------------------------------------------------------

// Whether the linear layer takes the fused narrow path: narrow_shape (laaf_cpu_gemm.h)
// and narrow_enabled() (LAAF_CPU_NARROW is not "0").
inline bool narrow_fused(const Tensor& x, const Tensor& weight, bool forward) {
  return narrow_enabled() && narrow_shape(x.scalar_type(), weight.size(0), weight.size(1), forward);
}

// narrow_gemm's forward epilogue (see StoreAsIs): y = act(s z) on a vector of z
// still in registers, `factor` the per-column slopes s (1 without a slope), padded.
template <typename T, int ACT>
struct ActEpilogue {
  static constexpr bool kActive = true;
  const T* factor;
  Vectorized<T> apply(const Vectorized<T>& z, const Vectorized<T>& s) const {
    return Act<ACT>::value(z * s);
  }
};

// ---- 16-bit layers: chunks staged in float ------------------------------------
// (On a CPU with AVX512-BF16 a bf16 layer's GEMMs take bf16 pairs instead, forward
// and backward: laaf_cpu_gemm_bf16.h; the epilogues stay on float chunks.)
// A bfloat16 or float16 layer runs the same float GEMMs and epilogues: each chunk of
// x is widened into a float buffer (in L1), z, y, gz and dx live in float chunk
// buffers, and y, z and dx round to the 16-bit type once, at the store. ATen's bf16
// GEMM on the Intel Xeon of bench/README (no AMX) took 4.05 ms for 10^5 x 50 x 50
// where fp32's took 2.26, and it rounds z to 16 bits before the activation sees it;
// through this path the bf16 layer's training forward went from 5.4-5.8 to 3.1-3.4 ms
// (the raw op); y is off act(s z) (in float64) by about half an ulp, the rounding
// itself, where ATen's path was off by up to ~1 ulp; and each output is the fp32
// path's on the widened values, rounded once (tests/test_fused_linear.py).

// A task's chunk buffers for a 16-bit layer (none for fp32 / fp64): `a`, a chunk
// of x widened (the forward's GEMM operand; the backward widens x straight into dW's
// packed panel instead); `c`, the GEMM's output chunk (z and y; dx); `gathered`, a
// chunk of x copied with a contiguous depth, for the pair GEMM where x's depth is
// strided (sized at first use).
template <typename T>
struct ChunkStage {
  static constexpr bool kWidened = !std::is_same_v<T, Compute<T>>;
  std::vector<Compute<T>> a, c;
  std::vector<T> gathered;
  ChunkStage(int64_t a_cols, int64_t c_cols)
      : a(kWidened ? kRowsPerChunk * a_cols : 0), c(kWidened ? kRowsPerChunk * c_cols : 0) {}
};

// rows x cols values src[r * rs + c * cs] into dst, row-major (a contiguous copy).
template <typename T>
void gather_rows(const T* src, int64_t rs, int64_t cs, int64_t rows, int64_t cols, T* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) dst[r * cols + c] = src[r * rs + c * cs];
  }
}

// One chunk of a 16-bit layer's forward: z = x W^T + b on float lanes into stage.c
// (x widened into stage.a and the float GEMM; or, given `pairs`, a bf16 x's pairs on
// vdpbf16ps: laaf_cpu_gemm_bf16.h), z rounded into z_chunk where it is kept,
// y = act(s z) in place on the float z (on the GEMM's tiles where on_tiles, else a
// flat pass), then rounded once into y_chunk. A chunk starts at phase 0 of the walk
// (64 rows of cols values are whole periods of it), so the walk runs over the
// chunk's own indices.
template <typename T, int ACT>
void forward_widened_chunk(const T* x_rows, int64_t x_row_stride, int64_t x_col_stride,
                           int64_t K, int64_t rows, int64_t cols,
                           const PackedPanel<Compute<T>>& wt, const PairPanel* pairs,
                           const GemmInit<Compute<T>>& init, const Compute<T>* slopes,
                           bool on_tiles, const FlatWalk<Compute<T>>& walk,
                           ChunkStage<T>& stage, T* z_chunk, T* y_chunk) {
  using C = Compute<T>;
  constexpr int64_t L = Vectorized<C>::size();
  const int64_t count = rows * cols;
  C* c = stage.c.data();
  // z (through the epilogue ep) into c.
  auto form_z = [&](const auto& ep) {
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      if (pairs != nullptr && x_col_stride == 1) {
        return pair_gemm(x_rows, x_row_stride, rows, *pairs, c, cols, init.row, ep);
      }
      if (pairs != nullptr) {  // (a strided depth: gathered first, for the pairs' loads)
        stage.gathered.resize(kRowsPerChunk * K);
        gather_rows(x_rows, x_row_stride, x_col_stride, rows, K, stage.gathered.data());
        return pair_gemm(stage.gathered.data(), K, rows, *pairs, c, cols, init.row, ep);
      }
    }
    widen_rows(x_rows, x_row_stride, x_col_stride, rows, K, stage.a.data());
    narrow_gemm(StridedA<C>{stage.a.data(), K, 1}, rows, wt, c, cols, init, ep);
  };
  if (on_tiles) {
    form_z(ActEpilogue<C, ACT>{slopes});
  } else {
    form_z(StoreAsIs{});
    if (z_chunk != y_chunk) narrow_run(c, count, z_chunk);
    forward_flat_range<C, ACT>(c, c, walk.view(), 0, (count + L - 1) / L, count);
  }
  narrow_run(c, count, y_chunk);
}

// Forward: chunk by chunk of kRowsPerChunk rows, z = x W^T + b (narrow_gemm) and
// y = act(s z). Without z to keep (z_out == y) and where the GEMM stores each lane
// once, the activation is narrow_gemm's epilogue, applied to each tile in registers
// (`slopes`: s per column, padded to whole vectors); otherwise narrow_gemm writes
// z_out and a flat pass over the chunk, still in cache, writes y. Both round z, then
// s z, then act, the same way (bit for bit). The epilogue, fp32 tanh, M = 10^5,
// K = N = 50, two threads, the raw op: 2.85-2.90 -> 2.67-2.79 ms (medians of 41,
// eight alternating runs each). 16-bit layers: forward_widened_chunk (`pairs`: W's
// pair panel where a bf16 layer's GEMM runs on vdpbf16ps, else null; `wt` is then
// empty).
template <typename T, int ACT>
void linear_forward_narrow(const T* x, int64_t x_row_stride, int64_t x_col_stride, int64_t K,
                           const PackedPanel<Compute<T>>& wt, const PairPanel* pairs,
                           const Compute<T>* bias_row, const Compute<T>* slopes, T* z_out,
                           T* y, const Grid<Compute<T>>& grid) {
  using C = Compute<T>;
  using V = Vectorized<C>;
  const FlatWalk<C> walk(grid);
  const int64_t total = grid.rows * grid.cols;
  const int64_t chunks = (grid.rows + kRowsPerChunk - 1) / kRowsPerChunk;
  const bool on_tiles = z_out == y && (pairs != nullptr || stores_each_lane_once(wt));
  const GemmInit<C> init{bias_row, false};
  at::parallel_for(0, chunks, grain(kRowsPerChunk * (K + grid.cols)), [&](int64_t k0, int64_t k1) {
    ChunkStage<T> stage(pairs != nullptr ? 0 : K, grid.cols);  // (pairs: x is not widened)
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t r0 = k * kRowsPerChunk;
      const int64_t rows = std::min(kRowsPerChunk, grid.rows - r0);
      const T* x_rows = x + r0 * x_row_stride;
      T* z_chunk = z_out + r0 * grid.cols;
      T* y_chunk = y + r0 * grid.cols;
      if constexpr (ChunkStage<T>::kWidened) {
        forward_widened_chunk<T, ACT>(x_rows, x_row_stride, x_col_stride, K, rows, grid.cols, wt,
                                      pairs, init, slopes, on_tiles, walk, stage, z_chunk, y_chunk);
      } else if (on_tiles) {
        narrow_gemm(StridedA<T>{x_rows, x_row_stride, x_col_stride}, rows, wt, y_chunk,
                    grid.cols, init, ActEpilogue<T, ACT>{slopes});
      } else {
        narrow_gemm(StridedA<T>{x_rows, x_row_stride, x_col_stride}, rows, wt, z_chunk,
                    grid.cols, init);
        const int64_t v0 = r0 * grid.cols / V::size();  // (64 cols is whole vectors)
        const int64_t v1 = ((r0 + rows) * grid.cols + V::size() - 1) / V::size();
        forward_flat_range<T, ACT>(z_out, y, walk.view(), v0, v1, total);
      }
    }
  });
}

// A bf16 chunk's backward GEMMs on vdpbf16ps (laaf_cpu_gemm_bf16.h), from the float
// buffer `gbuf` (rows x cols: gz, or gh where the caller scales by s afterwards):
//     dx_chunk = bf16(gbuf diag(dx_scale)) W         (dx_scale: s for gh, else null)
//     dW_group += bf16(gbuf)^T x_chunk
// Each operand is rounded to bf16 once, in a pass over the chunk in cache; eager's
// bf16 backward rounds gh and then gz = gh s before its GEMMs. The products are exact
// in float and summed in float (dW per group, folded in double by the caller), as on
// the widened path.
struct PairBackwardStage {
  std::vector<uint32_t> gz_words;  // dx's A: the chunk's rows in pairs (round_row_pairs)
  PairPanel gh_t, x_pairs;         // dW's A (gbuf^T's pairs) and B (x's rows in pairs)
  PairBackwardStage(int64_t cols, int64_t K)
      : gz_words(kRowsPerChunk * ((cols + 1) / 2), 0u),
        gh_t(kRowsPerChunk, cols),
        x_pairs(kRowsPerChunk, K) {}
};

void backward_pairs_chunk(const float* gbuf, int64_t rows, int64_t cols, const float* dx_scale,
                          const PairPanel& w_pairs, const c10::BFloat16* x_rows,
                          int64_t x_row_stride, int64_t x_col_stride, float* dx_stage,
                          c10::BFloat16* dx, float* dw, PairBackwardStage& stage) {
  const int64_t K = w_pairs.width();
  if (dx != nullptr) {
    round_row_pairs(gbuf, rows, cols, dx_scale, stage.gz_words.data());
    pair_gemm_words(WordPairs{stage.gz_words.data(), (cols + 1) / 2, 1}, rows, w_pairs,
                    dx_stage, K, /*accumulate=*/false);
    narrow_run(dx_stage, rows * K, dx);
  }
  if (dw != nullptr) {
    fill_pairs(stage.gh_t, gbuf, rows, cols);
    fill_pairs(stage.x_pairs, x_rows, rows, x_row_stride, x_col_stride);
    pair_gemm_words(WordPairs{stage.gh_t.row(0), 1, stage.gh_t.padded()}, cols, stage.x_pairs,
                    dw, stage.x_pairs.padded(), /*accumulate=*/true);
  }
}

// Backward: chunk by chunk, gz (the flat epilogue, with the db / ds partials of
// the chunk) into a chunk-sized buffer, then from that buffer, still in cache,
// dx_chunk = gz W and dW_group += gz^T x_chunk. dW is summed per group of
// DwGroups::per_group chunks (dw_parts[group], N rows of k_padded = x_chunk's
// padded width, as narrow_gemm accumulates; zeroed here); the caller folds the
// groups in order and drops the padding. A null output is not computed.
// FROM_Y (z null): the buffer holds gh, `w` must be packed as diag(s) W (so that
// dx = gh diag(s) W = gz W), db_part gets the sums of gh and dw_parts those of
// gh^T x: the caller scales them by s (linear_bwd_narrow).
// w_pairs (a bf16 layer on vdpbf16ps, else null): W's pairs (depth N), and the GEMMs
// run in backward_pairs_chunk (`w` unused; dx_scale: s per column where the buffer
// holds gh, else null).
template <typename T, int ACT, bool FROM_Y = false>
void linear_backward_narrow(const T* g, const T* x, int64_t x_row_stride, int64_t x_col_stride,
                            int64_t K, const T* z, const T* y,
                            const PackedPanel<Compute<T>>& w, const PairPanel* w_pairs,
                            const Compute<T>* dx_scale, T* dx, Compute<T>* dw_parts,
                            double* db_part, double* ds_part, const Grid<Compute<T>>& grid) {
  using C = Compute<T>;
  const FlatWalk<C> walk(grid);
  const int64_t cols = grid.cols, total = grid.rows * cols;
  const int64_t chunks = (grid.rows + kRowsPerChunk - 1) / kRowsPerChunk;
  const DwGroups groups(chunks);
  const int64_t per_group = groups.per_group;
  at::parallel_for(0, groups.count, 1, [&](int64_t g0, int64_t g1) {
    std::vector<C> gz(kRowsPerChunk * cols);
    PackedPanel<C> x_chunk(w_pairs != nullptr ? 0 : kRowsPerChunk, K);  // (pairs: x_pairs)
    ChunkStage<T> stage(0, K);  // (16-bit: dx in float; x is widened into x_chunk)
    const int64_t dw_size = cols * x_chunk.padded();
    PhaseSums<C> db(cols, walk.period()), ds(cols, walk.period());
    std::optional<PairBackwardStage> pair_stage;
    if (w_pairs != nullptr) pair_stage.emplace(cols, K);
    for (int64_t grp = g0; grp < g1; ++grp) {
      C* dw = dw_parts == nullptr ? nullptr : dw_parts + grp * dw_size;
      if (dw != nullptr) std::fill(dw, dw + dw_size, C(0));
      for (int64_t k = grp * per_group; k < std::min(chunks, (grp + 1) * per_group); ++k) {
        const int64_t r0 = k * kRowsPerChunk;
        const int64_t rows = std::min(kRowsPerChunk, grid.rows - r0);
        db.clear();
        ds.clear();
        backward_flat_chunk<T, ACT, FROM_Y, C>(g, z, y, gz.data(), r0 * cols,
                                    std::min(total, (r0 + rows) * cols), walk.view(),
                                    wanted_slots(db_part, db), wanted_slots(ds_part, ds));
        if (db_part != nullptr) db.fold(db_part + k * cols);
        if (ds_part != nullptr) ds.fold(ds_part + k * cols);
        if constexpr (std::is_same_v<T, c10::BFloat16>) {
          if (w_pairs != nullptr) {
            backward_pairs_chunk(gz.data(), rows, cols, dx_scale, *w_pairs,
                                 x + r0 * x_row_stride, x_row_stride, x_col_stride,
                                 stage.c.data(), dx == nullptr ? nullptr : dx + r0 * K, dw,
                                 *pair_stage);
            continue;
          }
        }
        if (dx != nullptr) {  // dx(r, :) = sum_n gz(r, n) W(n, :)
          const StridedA<C> gz_rows{gz.data(), cols, 1};
          if constexpr (ChunkStage<T>::kWidened) {
            narrow_gemm(gz_rows, rows, w, stage.c.data(), K, GemmInit<C>{});
            narrow_run(stage.c.data(), rows * K, dx + r0 * K);
          } else {
            narrow_gemm(gz_rows, rows, w, dx + r0 * K, K, GemmInit<C>{});
          }
        }
        if (dw != nullptr) {  // dW(n, :) += sum_r gz(r, n) x(r, :)
          const T* x_rows = x + r0 * x_row_stride;
          if constexpr (ChunkStage<T>::kWidened) {  // (straight into the panel: one copy)
            x_chunk.pack_rows(rows, [&](int64_t r, C* row) {
              widen_rows(x_rows + r * x_row_stride, x_row_stride, x_col_stride, 1, K, row);
            });
          } else {
            x_chunk.pack(x_rows, rows, x_row_stride, x_col_stride);
          }
          narrow_gemm(StridedA<C>{gz.data(), 1, cols}, cols, x_chunk, dw, x_chunk.padded(),
                      GemmInit<C>{nullptr, true});
        }
      }
    }
  });
}

// B(k, n) = W(n, k): the forward's panel (x W^T); B(n, k) = W(n, k): the backward's (gz W).
// dot_tail: the GEMM's A (x, or the gz buffer) has a contiguous depth, so that C's last
// few columns may be dot products (laaf_cpu_gemm.h: dot_tail_columns). The panel is
// in T's compute type (a 16-bit W widened).
template <typename T>
PackedPanel<Compute<T>> pack_weight(const Tensor& weight_in, bool transposed, bool dot_tail) {
  using C = Compute<T>;
  const Tensor weight = weight_in.to(c10::CppTypeToScalarType<C>::value);
  const int64_t N = weight.size(0), K = weight.size(1);
  PackedPanel<C> panel(transposed ? K : N, transposed ? N : K, dot_tail);
  const C* w = weight.data_ptr<C>();
  if (transposed) {
    panel.pack(w, K, weight.stride(1), weight.stride(0));
  } else {
    panel.pack(w, N, weight.stride(0), weight.stride(1));
  }
  return panel;
}

// s's values in C (s_c's type: slope_in), one per output n (1 without s): the per-row
// factors of diag(s) W, and the forward epilogue's per-column slopes.
template <typename T>
std::vector<T> slope_per_row(const Tensor& s_c, int kind, int64_t N) {
  std::vector<T> factor(N, T(1));
  if (kind == kScalar) std::fill(factor.begin(), factor.end(), s_c.data_ptr<T>()[0]);
  if (kind == kVector) std::copy(s_c.data_ptr<T>(), s_c.data_ptr<T>() + N, factor.begin());
  return factor;
}

// Whether a narrow layer's GEMMs run on bf16 pairs (laaf_cpu_gemm_bf16.h): bf16, a
// GEMM output at least kMinPairWidth columns wide (z: N forward; dx and dW: K
// backward), and bf16_dot_enabled(). (An x whose depth is strided is gathered or
// paired a chunk at a time, so that its outputs are the contiguous x's, bit for bit.)
inline bool pair_shape(at::ScalarType dtype, int64_t N, int64_t K, bool forward) {
  return dtype == at::kBFloat16 && (forward ? N : K) >= kMinPairWidth && bf16_dot_enabled();
}
bool layer_on_pairs(const Tensor& x, const Tensor& weight, bool forward) {
  return weight.scalar_type() == at::kBFloat16 &&
         pair_shape(x.scalar_type(), weight.size(0), weight.size(1), forward);
}

// W in bf16 pairs along the depth: transposed, B(k, n) = W(n, k) (the forward's panel,
// x W^T); else B(n, k) = W(n, k) (the backward's, gz W).
PairPanel pack_weight_pairs(const Tensor& weight, bool transposed) {
  const int64_t N = weight.size(0), K = weight.size(1);
  PairPanel panel(transposed ? K : N, transposed ? N : K);
  if (transposed) {
    panel.pack(weight.data_ptr<c10::BFloat16>(), weight.stride(1), weight.stride(0));
  } else {
    panel.pack(weight.data_ptr<c10::BFloat16>(), weight.stride(0), weight.stride(1));
  }
  return panel;
}

// keep_z: write z as well as y (the op's store_z: the policy asks it in training for
// an act' that needs h; otherwise the backward needs only x and y, see
// linear_bwd_narrow, and z is an empty tensor).
std::tuple<Tensor, Tensor> linear_fwd_narrow(const Tensor& x, const Tensor& weight,
                                             const c10::optional<Tensor>& bias, const Tensor& s_c,
                                             int kind, int act, bool keep_z) {
  const int64_t rows = x.size(0), K = x.size(1), N = weight.size(0);
  Tensor y = at::empty({rows, N}, x.options());
  Tensor z = keep_z ? at::empty({rows, N}, x.options()) : y;
  if (rows * N == 0) return {y, keep_z ? z : at::empty({0}, x.options())};
  LAAF_DISPATCH_CPU_TYPES(x.scalar_type(), "laaf_cpp_linear_fwd_narrow", [&] {
    using C = Compute<scalar_t>;
    // W's pairs where a bf16 layer runs on them; else W^T packed for our float GEMM (a
    // 16-bit x is widened into a contiguous chunk: the dot tail's A).
    const std::optional<PairPanel> pairs =
        layer_on_pairs(x, weight, /*forward=*/true) ? std::optional(pack_weight_pairs(weight, true))
                                                   : std::nullopt;
    const bool contiguous_depth = x.stride(1) == 1 || ChunkStage<scalar_t>::kWidened;
    const auto wt = pairs ? PackedPanel<C>(0, 0)
                          : pack_weight<scalar_t>(weight, true, /*dot_tail=*/contiguous_depth);
    const Tensor bias_c =
        bias.has_value() ? bias->to(c10::CppTypeToScalarType<C>::value).contiguous() : Tensor();
    const auto bias_row = padded_row<C>(data_or_null<C>(bias_c), N);
    const auto grid = make_grid<scalar_t>(rows, N, s_c, kind, false, 0);
    const auto slopes = padded_row(slope_per_row<C>(s_c, kind, N).data(), N);
    LAAF_ACT_SWITCH(act, [&] {
      linear_forward_narrow<scalar_t, ACT>(x.data_ptr<scalar_t>(), x.stride(0), x.stride(1), K,
                                           wt, pairs ? &*pairs : nullptr, bias_row.data(),
                                           slopes.data(), z.data_ptr<scalar_t>(),
                                           y.data_ptr<scalar_t>(), grid);
    });
  });
  return {y, keep_z ? z : at::empty({0}, x.options())};
}

struct Needs {
  bool dx, dw, db, ds;
};

// ds from its per-channel sums (laaf_layout.h's finish_ds: their total for a 0-d s,
// in s's dtype).
Tensor ds_of(const std::vector<double>& per_channel, const Tensor& s) {
  return finish_ds(doubles_tensor(per_channel, s.options()), s);
}

// The narrow backward's dW, db and ds from its folded sums (double, rounded once at
// the end): `gram` the N x k_padded sum gz^T x (from y: G = gh^T x), `cols` the column
// sums of gz (gh), `ds_sums` the z path's per-channel sums of gh z. From y, with
// s_n = s_rows[n] (slope_per_row: s's value for column n, 1 without s):
//     dW(n, :) = s_n G(n, :),   db(n) = s_n cols(n),
//     ds per channel = W(n, :) . G(n, :) + b(n) cols(n).
// Plain loops over N x K values: for a PINN's small layers, a dozen ATen ops on
// tensors this size took longer than the kernel itself.
template <typename T>
std::tuple<Tensor, Tensor, Tensor> narrow_param_grads(
    const std::vector<double>& gram, int64_t k_padded, const std::vector<double>& cols,
    const std::vector<double>& ds_sums, const std::vector<Compute<T>>& s_rows, const Tensor& x,
    const Tensor& weight, const c10::optional<Tensor>& bias, const c10::optional<Tensor>& s,
    Needs need, bool from_y) {
  const int64_t N = weight.size(0), K = weight.size(1);
  std::vector<double> s_n(N, 1.0);  // (the z path's sums have s in them already)
  if (from_y) std::copy(s_rows.begin(), s_rows.end(), s_n.begin());
  const Tensor empty = at::empty({0}, x.options());
  Tensor dw = empty, db = empty, ds = empty;
  if (need.dw) {
    dw = at::empty({N, K}, x.options());
    T* out = dw.data_ptr<T>();
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t k = 0; k < K; ++k) {
        out[n * K + k] = static_cast<T>(gram[n * k_padded + k] * s_n[n]);
      }
    }
  }
  if (need.db) {
    db = at::empty({N}, x.options());
    T* out = db.data_ptr<T>();
    for (int64_t n = 0; n < N; ++n) out[n] = static_cast<T>(cols[n] * s_n[n]);
  }
  if (need.ds && !from_y) ds = ds_of(ds_sums, *s);
  if (need.ds && from_y) {
    const Tensor w_c = weight.contiguous();
    const Tensor b_c = bias.has_value() ? bias->contiguous() : Tensor();
    const T* w = w_c.data_ptr<T>();
    const T* b = data_or_null<T>(b_c);
    std::vector<double> per_channel(N, 0.0);
    for (int64_t n = 0; n < N; ++n) {
      double dot = 0;
      for (int64_t k = 0; k < K; ++k) {
        dot += static_cast<double>(w[n * K + k]) * gram[n * k_padded + k];
      }
      per_channel[n] = b != nullptr ? dot + static_cast<double>(b[n]) * cols[n] : dot;
    }
    ds = ds_of(per_channel, *s);
  }
  return {dw, db, ds};
}

// The narrow backward. With z: gz, its db / ds partials, and the GEMMs on gz
// (linear_backward_narrow). Without z (from_y: the forward kept none, act' comes
// from y): the same pass on gh = g act'(h); since gz = gh s column by column,
//     dx = gh (diag(s) W),   dW = diag(s) G,   db = s * sum_rows gh,   G = gh^T x,
//     ds = sum gh z = sum_n ( W(n, :) . G(n, :) + b(n) sum_rows gh(:, n) )
// (z = x W^T + b, summed in another order), so z is neither stored nor read: the
// training forward writes y alone and autograd keeps x and y, not z. G, the column
// sums and ds are folded and formed in double (narrow_param_grads).
std::tuple<Tensor, Tensor, Tensor, Tensor> linear_bwd_narrow(
    const Tensor& g, const Tensor& x, const Tensor& weight, const c10::optional<Tensor>& bias,
    const Tensor& z, const c10::optional<Tensor>& s, const Tensor& s_c,
    const c10::optional<Tensor>& y, int act, int64_t chunks, Needs need, bool from_y) {
  const int64_t rows = g.size(0), N = g.size(1), K = x.size(1);
  const int64_t groups = DwGroups(chunks).count;
  const auto dbl = x.options().dtype(at::kDouble);
  // What the kernel sums: gz^T x (or G) and the column sums of gz (or gh), gh z.
  const bool want_g = need.dw || (from_y && need.ds);
  const bool want_cols = need.db || (from_y && need.ds && bias.has_value());
  Tensor dx = need.dx ? at::empty({rows, K}, x.options()) : at::empty({0}, x.options());
  Tensor db_part = want_cols ? at::empty({chunks, N}, dbl) : Tensor();
  Tensor ds_part = need.ds && !from_y ? at::empty({chunks, N}, dbl) : Tensor();
  std::tuple<Tensor, Tensor, Tensor> params;
  LAAF_DISPATCH_CPU_TYPES(x.scalar_type(), "laaf_cpp_linear_bwd_narrow", [&] {
    using C = Compute<scalar_t>;
    const auto s_rows = slope_per_row<C>(s_c, slope_kind(s), N);
    // W's pairs where a bf16 layer's GEMMs run on them (s then scales gh as it is
    // rounded: dx_scale; empty without dx); else W packed for our float GEMM (diag(s) W
    // from y).
    std::optional<PairPanel> w_pairs;
    if (layer_on_pairs(x, weight, /*forward=*/false)) {
      w_pairs.emplace(need.dx ? pack_weight_pairs(weight, false) : PairPanel(0, K));
    }
    const C* dx_scale = w_pairs && from_y && s.has_value() ? s_rows.data() : nullptr;
    auto w = need.dx && !w_pairs ? pack_weight<scalar_t>(weight, false, /*dot_tail=*/true)
                                 : PackedPanel<C>(0, K);  // (A = gz)
    if (from_y && need.dx && s.has_value() && !w_pairs) w.scale_rows(s_rows.data());
    const auto grid = make_grid<scalar_t>(rows, N, s_c, slope_kind(s), false, 0);
    const int64_t k_padded = padded_width<C>(K);  // dW's rows (narrow_gemm accumulates)
    const auto c_options = x.options().dtype(c10::CppTypeToScalarType<C>::value);
    Tensor dw_parts = want_g ? at::empty({groups, N, k_padded}, c_options) : Tensor();
    const auto run = [&](auto act_c, auto from_y_c) {
      linear_backward_narrow<scalar_t, decltype(act_c)::value, decltype(from_y_c)::value>(
          g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), x.stride(0), x.stride(1), K,
          data_or_null<scalar_t>(z), data_or_null<scalar_t>(y),
          w, w_pairs ? &*w_pairs : nullptr, dx_scale, need.dx ? dx.data_ptr<scalar_t>() : nullptr,
          data_or_null<C>(dw_parts), data_or_null<double>(db_part),
          data_or_null<double>(ds_part), grid);
    };
    if (from_y) {  // only for an act' written in y: any other is an error, not a no-op
      with_y_activation<Act>(act, [&](auto act_c) { run(act_c, std::true_type{}); });
    } else {
      LAAF_ACT_SWITCH(act, [&] { run(std::integral_constant<int, ACT>{}, std::false_type{}); });
    }
    const std::vector<double> gram =
        want_g ? fold_sums(dw_parts.data_ptr<C>(), groups, N * k_padded)
               : std::vector<double>();
    const std::vector<double> cols =
        want_cols ? fold_sums(db_part.data_ptr<double>(), chunks, N) : std::vector<double>();
    const std::vector<double> ds_sums =
        ds_part.defined() ? fold_sums(ds_part.data_ptr<double>(), chunks, N)
                          : std::vector<double>();
    params = narrow_param_grads<scalar_t>(gram, k_padded, cols, ds_sums, s_rows, x, weight, bias,
                                          s, need, from_y);
  });
  return {dx, std::get<0>(params), std::get<1>(params), std::get<2>(params)};
}

// ---------------------------------------------------------------------------
// The ops
// ---------------------------------------------------------------------------

// Whether a training layer keeps z: unless its shape is a narrow one and act' is a
// function of y (linear_bwd_narrow needs no z then). A function of the shape, dtype
// and activation alone, not of LAAF_CPU_NARROW (with the switch off, the backward
// forms z again). cpp_linear_fwd writes z as its caller says (store_z); the caller's
// policy, cpp_backend.stores_z, is this one in plain Python, so that torch.compile
// writes its answer into the traced graph, and a test holds the two equal.
bool linear_stores_z(int64_t n_out, int64_t k_in, bool training, at::ScalarType dtype,
                     c10::string_view activation) {
  return training && !(narrow_shape(dtype, n_out, k_in, /*forward=*/true) &&
                       d1_from_y<Act>(activation_id(activation)));
}

std::tuple<Tensor, Tensor> linear_fwd(const Tensor& x, const Tensor& weight,
                                      const c10::optional<Tensor>& bias,
                                      const c10::optional<Tensor>& s,
                                      c10::string_view activation, bool keep_z) {
  check_dtype(x, "x");
  check_linear_shapes("cpp_linear_fwd", x, weight, bias, s);
  const int act = activation_id(activation);
  const Tensor s_c = slope_in(s, x.scalar_type());
  if (narrow_fused(x, weight, /*forward=*/true)) {
    return linear_fwd_narrow(x, weight, bias, s_c, slope_kind(s), act, keep_z);
  }
  Tensor z = bias.has_value() ? at::addmm(*bias, x, weight.t()) : at::mm(x, weight.t());
  // Unless z is kept: the epilogue runs in place, z's buffer becomes y.
  Tensor y = keep_z ? at::empty_like(z) : z;
  LAAF_DISPATCH_CPU_TYPES(z.scalar_type(), "laaf_cpp_linear_fwd", [&] {
    const auto grid = make_grid<scalar_t>(z.size(0), z.size(1), s_c, slope_kind(s), false, 0);
    LAAF_ACT_SWITCH(act, [&] {
      forward_pass<scalar_t, ACT>(z.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), grid);
    });
  });
  return {y, keep_z ? z : at::empty({0}, x.options())};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> linear_bwd(
    const Tensor& g_in, const Tensor& x, const Tensor& weight, const c10::optional<Tensor>& bias,
    const Tensor& z, const c10::optional<Tensor>& s, const c10::optional<Tensor>& y_in,
    c10::string_view activation, bool need_dx, bool need_dw, bool need_db, bool need_ds) {
  check_dtype(x, "x");
  check_linear_shapes("cpp_linear_bwd", x, weight, bias, s);
  const bool no_z = !check_linear_grads("cpp_linear_bwd", x, weight, g_in, z, y_in);
  const int act = activation_id(activation);
  const Tensor s_c = slope_in(s, x.scalar_type());
  need_ds = need_ds && s.has_value();
  const Tensor g = g_in.contiguous();
  const auto y = contiguous(y_in);
  const int64_t rows = g.size(0), cols = g.size(1);
  const int64_t chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
  const auto dbl = x.options().dtype(at::kDouble);
  // An empty z: the forward kept none (linear_fwd_narrow), and the narrow backward
  // takes act' from y. Anywhere else (no y given; LAAF_CPU_NARROW turned off between
  // the passes) z is formed again, as the forward formed it.
  if (rows * cols > 0 && narrow_fused(x, weight, /*forward=*/false) &&
      (!no_z || (y.has_value() && d1_from_y<Act>(act)))) {
    return linear_bwd_narrow(g, x, weight, bias, z, s, s_c, y, act, chunks,
                             {need_dx, need_dw, need_db, need_ds}, no_z);
  }
  const Tensor z_full =
      !no_z ? z : bias.has_value() ? at::addmm(*bias, x, weight.t()) : at::mm(x, weight.t());
  Tensor gz = empty_if(need_dx || need_dw, z_full);
  Tensor db_part = need_db ? at::empty({chunks, cols}, dbl) : Tensor();
  Tensor ds_part = need_ds ? at::empty({chunks, cols}, dbl) : Tensor();
  LAAF_DISPATCH_CPU_TYPES(x.scalar_type(), "laaf_cpp_linear_bwd", [&] {
    const auto grid = make_grid<scalar_t>(rows, cols, s_c, slope_kind(s), false, 0);
    LAAF_ACT_SWITCH(act, [&] {
      backward_pass<scalar_t, ACT>(
          g.data_ptr<scalar_t>(), z_full.data_ptr<scalar_t>(), data_or_null<scalar_t>(y),
          data_or_null<scalar_t>(gz), data_or_null<double>(db_part),
          data_or_null<double>(ds_part), grid);
    });
  });
  const Tensor empty = at::empty({0}, x.options());
  return {need_dx ? at::mm(gz, weight) : empty,
          need_dw ? at::mm(gz.t(), x) : empty,
          need_db ? sum_parts(db_part, cols).to(x.scalar_type()) : empty,
          need_ds ? finish_ds(sum_parts(ds_part, cols), *s) : empty};
}

Tensor act_fwd(const Tensor& z_in, const c10::optional<Tensor>& s, c10::string_view activation,
               int64_t dim) {
  check_dtype(z_in, "z");
  check_channel_values("cpp_act_fwd", "s", s, z_in, dim);
  const int act = activation_id(activation);
  const Tensor s_c = slope_in(s, z_in.scalar_type());
  const Tensor z = z_in.contiguous();
  Tensor y = at::empty_like(z);
  if (z.numel() == 0) return y;
  const ActLayout L = act_layout(z, s, dim);
  LAAF_DISPATCH_CPU_TYPES(z.scalar_type(), "laaf_cpp_act_fwd", [&] {
    const auto grid = make_grid<scalar_t>(L.rows, L.cols, s_c, slope_kind(s), L.on_rows,
                                          L.channels);
    LAAF_ACT_SWITCH(act, [&] {
      forward_pass<scalar_t, ACT>(z.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), grid);
    });
  });
  return y;
}

std::tuple<Tensor, Tensor> act_bwd(const Tensor& g_in, const Tensor& z_in,
                                   const c10::optional<Tensor>& s,
                                   const c10::optional<Tensor>& y_in, c10::string_view activation,
                                   int64_t dim, bool need_dz, bool need_ds) {
  check_dtype(z_in, "z");
  check_channel_values("cpp_act_bwd", "s", s, z_in, dim);
  check_shape_like("cpp_act_bwd", "g", g_in, "z", z_in);
  check_shape_like("cpp_act_bwd", "y", y_in, "z", z_in);
  const int act = activation_id(activation);
  const Tensor s_c = slope_in(s, z_in.scalar_type());
  need_ds = need_ds && s.has_value();
  const Tensor z = z_in.contiguous();
  const Tensor g = g_in.contiguous();
  const auto y = contiguous(y_in);
  const Tensor empty = at::empty({0}, z.options());
  if (z.numel() == 0) {
    return {need_dz ? at::zeros_like(z) : empty, need_ds ? at::zeros_like(*s) : empty};
  }
  const ActLayout L = act_layout(z, s, dim);
  Tensor dz = empty_if(need_dz, z);
  Tensor ds_part = channel_partials(need_ds, 1, L.rows, L.cols, L.on_rows, z.options());
  LAAF_DISPATCH_CPU_TYPES(z.scalar_type(), "laaf_cpp_act_bwd", [&] {
    const auto grid = make_grid<scalar_t>(L.rows, L.cols, s_c, slope_kind(s), L.on_rows,
                                          L.channels);
    LAAF_ACT_SWITCH(act, [&] {
      backward_pass<scalar_t, ACT>(g.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(),
                                   data_or_null<scalar_t>(y), data_or_null<scalar_t>(dz),
                                   nullptr, data_or_null<double>(ds_part), grid);
    });
  });
  return {need_dz ? dz : empty,
          need_ds ? finish_ds(fold_channel_partials(ds_part, L.on_rows, L.channels, L.cols), *s)
                  : empty};
}

// How many threads at::parallel_for really runs this library's loops on. ATen's
// parallel_for is a header template, so it is threaded only if *this* library was
// compiled with OpenMP (extension.py adds -fopenmp); otherwise this returns 1.
int64_t parallel_threads() {
  std::atomic<uint64_t> seen{0};
  at::parallel_for(0, 1 << 12, 1, [&](int64_t, int64_t) {
    seen |= uint64_t(1) << std::min(at::get_thread_num(), 63);
  });
  return __builtin_popcountll(seen.load());
}

// cpp_linear_fwd_gemm / cpp_linear_bwd_gemm: the GEMMs a layer's forward / backward
// runs on, for the tests and benchmarks: "bf16_pairs" (vdpbf16ps,
// laaf_cpu_gemm_bf16.h), "narrow" (our fp32 / fp64 GEMM, 16-bit values widened) or
// "aten" (ATen's), on this CPU, build and setting of LAAF_CPU_NARROW and
// LAAF_CPU_BF16_DOT. The pair GEMMs' C is z (N wide) forward, dx and dW (K wide) backward.
std::string linear_gemm_path(int64_t n_out, int64_t k_in, at::ScalarType dtype, bool forward) {
  if (!narrow_enabled() || !narrow_shape(dtype, n_out, k_in, forward)) return "aten";
  return pair_shape(dtype, n_out, k_in, forward) ? "bf16_pairs" : "narrow";
}
std::string linear_fwd_gemm(int64_t n_out, int64_t k_in, at::ScalarType dtype) {
  return linear_gemm_path(n_out, k_in, dtype, /*forward=*/true);
}
std::string linear_bwd_gemm(int64_t n_out, int64_t k_in, at::ScalarType dtype) {
  return linear_gemm_path(n_out, k_in, dtype, /*forward=*/false);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(laaf, m) {
  m.def("cpp_parallel_threads() -> int", &parallel_threads);
  m.def("cpp_linear_fwd_gemm(int n_out, int k_in, ScalarType dtype) -> str", &linear_fwd_gemm);
  m.def("cpp_linear_bwd_gemm(int n_out, int k_in, ScalarType dtype) -> str", &linear_bwd_gemm);
  m.def("cpp_linear_stores_z(int n_out, int k_in, bool training, ScalarType dtype, "
        "str activation) -> bool", &linear_stores_z);
  m.def("cpp_linear_fwd(Tensor x, Tensor weight, Tensor? bias, Tensor? s, str activation, "
        "bool store_z) -> (Tensor, Tensor)");
  m.def("cpp_linear_bwd(Tensor g, Tensor x, Tensor weight, Tensor? bias, Tensor z, Tensor? s, "
        "Tensor? y, str activation, bool need_dx, bool need_dw, bool need_db, bool need_ds) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("cpp_act_fwd(Tensor z, Tensor? s, str activation, int dim) -> Tensor");
  m.def("cpp_act_bwd(Tensor g, Tensor z, Tensor? s, Tensor? y, str activation, int dim, "
        "bool need_dz, bool need_ds) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(laaf, CPU, m) {
  m.impl("cpp_linear_fwd", &linear_fwd);
  m.impl("cpp_linear_bwd", &linear_bwd);
  m.impl("cpp_act_fwd", &act_fwd);
  m.impl("cpp_act_bwd", &act_bwd);
}

}  // namespace laaf

// An importable module for ahead-of-time builds (`import laaf_kernels._C`); the ops
// register themselves through the TORCH_LIBRARY blocks above when the library loads.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "laaf_kernels C++ ops", -1, nullptr};
  return PyModule_Create(&module);
}
