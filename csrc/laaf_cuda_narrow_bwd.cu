// laaf_kernels: the fused backward of a narrow linear layer (N, K <= 128), one kernel.
//
// Given g = dL/dy and x, with y = act(h), h = s z, z = x W^T + b:
//   z  = x W^T + b        formed again on chip (the forward kept no z)
//   gh = g act'(h), gz = gh s
//   dx = gz W             written once per row
//   dW = gz^T x, db = sum gz, ds = sum gh z      accumulated per block
// Each block stages W in shared memory once, then walks tiles of 64 rows: the
// tile of x is staged too, z is formed in registers, gz goes to shared memory,
// and from there dx (a 64 x K product) and dW's share of the tile (N x K, summed
// over 64 rows). g and x are read once, dx written once; z and gz never reach
// global memory. The Triton backend's narrow backward (triton_linear.py:
// linear_bwd_narrow_kernel) does the same with tl.dot.
//
// Determinism: no atomics. Each block sums its tiles in tile order and writes one
// row of partials of dW, db and ds (side by side in one array); one fold_parts_into
// launch adds the rows in a fixed order. The
// block count is a function of the device and the shape: the same bits every run
// there.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "laaf_activations_cuda.cuh"
#include "laaf_cuda_common.cuh"
#include "laaf_cuda_narrow.cuh"

namespace laaf {
namespace {

// Shared memory of the backward, in A, with WCOLS = 32 NJ and KCOLS = 32 KJ:
//   w_s  (KCOLS, WCOLS + 1): w_s[k * (WCOLS + 1) + n] = W[n, k]. The odd row stride
//        serves both products: z reads a row (lanes over n), dx a column (lanes over
//        k, WCOLS + 1 apart: 32 different banks).
//   x_s  (kTileRows, KCOLS): the tile of x;  gz_s (kTileRows, WCOLS): its gz.
// Everything outside N x K (and the tile's rows) holds zeros, so that the products
// run over whole column groups and padded lanes add nothing.
template <typename A>
size_t narrow_bwd_smem_bytes(int nj, int kj) {
  const size_t wcols = 32 * nj, kcols = 32 * kj;
  return (kcols * (wcols + 1) + kTileRows * kcols + kTileRows * wcols) * sizeof(A);
}

// Lane l owns columns n = l + 32 j of z and gz (j < NJ) and k = l + 32 i of dx
// (i < KJ); warp w owns rows 8 w .. 8 w + 7 of the tile for both, and rows
// n in [4 NJ w, 4 NJ w + 4 NJ) of dW (times the lane's KJ columns k), whose
// accumulators stay in registers for the whole kernel.
// Blocks per SM that ptxas must leave room for: 2 (at most 128 registers a thread)
// where the dW accumulators are small, else 1 (up to 255). Without a minimum, ptxas
// capped some of these kernels at 64 registers and spilled (CUDA 13, sm_90).
template <typename A, int NJ, int KJ>
constexpr int narrow_bwd_min_blocks() {
  return 4 * NJ * KJ * sizeof(A) <= 64 ? 2 : 1;
}

template <typename T, int ACT, int NJ, int KJ>
__global__ void __launch_bounds__(kThreads, (narrow_bwd_min_blocks<at::opmath_type<T>, NJ, KJ>()))
narrow_linear_backward_kernel(const T* __restrict__ g, const T* __restrict__ x,
                              const T* __restrict__ w, const T* __restrict__ b,
                              SlopeGrid<at::opmath_type<T>> slope, T* __restrict__ dx,
                              at::opmath_type<T>* __restrict__ dw_part,
                              at::opmath_type<T>* __restrict__ db_part,
                              at::opmath_type<T>* __restrict__ ds_part, int64_t part_stride,
                              int64_t M, int N, int K) {
  using A = at::opmath_type<T>;
  constexpr int WCOLS = 32 * NJ, KCOLS = 32 * KJ, WS = WCOLS + 1;
  constexpr int NPW = 4 * NJ;  // rows n of dW per warp: 8 warps x NPW = WCOLS
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* w_s = reinterpret_cast<A*>(smem_raw);
  A* x_s = w_s + KCOLS * WS;
  A* gz_s = x_s + kTileRows * KCOLS;

  // Stage W once per block, zeros outside N x K (the padding column WS - 1 is unread).
  for (int i = threadIdx.x; i < KCOLS * WCOLS; i += kThreads) {
    const int k = i / WCOLS, n = i - k * WCOLS;
    w_s[k * WS + n] = (k < K && n < N) ? static_cast<A>(w[int64_t(n) * K + k]) : A(0);
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  A bias[NJ], s_col[NJ], db_acc[NJ], ds_acc[NJ];
  load_column_params<NJ>(b, slope, N, bias, s_col);
#pragma unroll
  for (int j = 0; j < NJ; ++j) db_acc[j] = ds_acc[j] = A(0);
  A dw_acc[NPW][KJ];
#pragma unroll
  for (int p = 0; p < NPW; ++p)
#pragma unroll
    for (int i = 0; i < KJ; ++i) dw_acc[p][i] = A(0);

  for_each_block_tile(M, [&](int64_t r0, int rows_here) {
    // -- The x tile, zeros past K and past the last row (they meet gz = 0 in dW).
    for (int i = threadIdx.x; i < kTileRows * KCOLS; i += kThreads) {
      const int r = i / KCOLS, k = i - r * KCOLS;
      x_s[i] = (r < rows_here && k < K) ? static_cast<A>(x[(r0 + r) * K + k]) : A(0);
    }
    __syncthreads();

    // -- z = x W^T (b added below) for 8 rows x NJ columns: rows of w_s.
    A acc[kRowsPerThread][NJ];
    tile_product<NJ>(x_s, KCOLS, w_s, WS, 1, K, acc);

    // -- gh = g act'(h), gz = gh s with h = s z; the column sums of gz and gh z stay
    //    in this thread's db_acc, ds_acc; gz goes to gz_s (0 outside the tile and N).
    for_each_tile_cell<NJ>([&](int r, int row, int j, int n) {
      A gz = A(0);
      if (row < rows_here && n < N) {
        const A z = acc[r][j] + bias[j];
        const A gh = static_cast<A>(g[(r0 + row) * N + n]) * gpu::Act<ACT>::d1(s_col[j] * z);
        gz = gh * s_col[j];
        db_acc[j] += gz;
        ds_acc[j] += gh * z;
      }
      gz_s[row * WCOLS + n] = gz;
    });
    __syncthreads();

    // -- dx = gz W for 8 rows x KJ columns k: columns of w_s.
    if (dx != nullptr) {
      A dx_acc[kRowsPerThread][KJ];
      tile_product<KJ>(gz_s, WCOLS, w_s, 1, WS, N, dx_acc);
      for_each_tile_cell<KJ>([&](int r, int row, int i, int k) {
        if (row < rows_here && k < K) dx[(r0 + row) * K + k] = static_cast<T>(dx_acc[r][i]);
      });
    }

    // -- dW += gz^T x over the tile's rows: per row, NJ broadcast float4 loads of gz
    //    (this warp's NPW rows n) and KJ conflict-free loads of x.
    if (dw_part != nullptr) {
      for (int row = 0; row < rows_here; ++row) {
        A gv[NPW], xv[KJ];
#pragma unroll
        for (int q = 0; q < NJ; ++q) load4(gz_s + row * WCOLS + warp * NPW + 4 * q, gv + 4 * q);
#pragma unroll
        for (int i = 0; i < KJ; ++i) xv[i] = x_s[row * KCOLS + lane + 32 * i];
#pragma unroll
        for (int p = 0; p < NPW; ++p)
#pragma unroll
          for (int i = 0; i < KJ; ++i) dw_acc[p][i] = fma(gv[p], xv[i], dw_acc[p][i]);
      }
    }
  });

  // -- The block's partials: dW as it is; db and ds summed over the 8 warps in
  //    warp order (through gz_s, free now).
  if (dw_part != nullptr) {
    A* out = dw_part + int64_t(blockIdx.x) * part_stride;
#pragma unroll
    for (int p = 0; p < NPW; ++p) {
      const int n = warp * NPW + p;
#pragma unroll
      for (int i = 0; i < KJ; ++i) {
        const int k = lane + 32 * i;
        if (n < N && k < K) out[n * K + k] = dw_acc[p][i];
      }
    }
  }
  A* per_warp = gz_s;  // (2, 8 warps, WCOLS)
  __syncthreads();     // every warp done with gz_s
#pragma unroll
  for (int j = 0; j < NJ; ++j) {
    per_warp[warp * WCOLS + lane + 32 * j] = db_acc[j];
    per_warp[(8 + warp) * WCOLS + lane + 32 * j] = ds_acc[j];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < 2 * WCOLS; i += kThreads) {
    const int sum = i / WCOLS, n = i - sum * WCOLS;
    A* part = sum == 0 ? db_part : ds_part;
    if (part == nullptr || n >= N) continue;
    A total = A(0);
    for (int v = 0; v < kThreads / 32; ++v) total += per_warp[(8 * sum + v) * WCOLS + n];
    part[int64_t(blockIdx.x) * part_stride + n] = total;
  }
}

// The partials of the wanted sums of dW (N K columns), db and ds (N each), side by
// side: one row per block of the backward, and one fold for them all.
struct NarrowParts {
  int64_t dw, db, ds;  // each sum's width: 0 where not wanted
  Tensor rows;         // (blocks, dw + db + ds), sized by the launch

  int64_t width() const { return dw + db + ds; }
  // The partials of sum `which` (0: dW, 1: db, 2: ds), a view of their columns of
  // rows (the kernel's row stride is width()), or undefined where not wanted.
  Tensor of(int which) const {
    const int64_t start[3] = {0, dw, dw + db}, size[3] = {dw, db, ds};
    return size[which] > 0 ? rows.narrow(1, start[which], size[which]) : Tensor();
  }
};

// Launch narrow_linear_backward_kernel<T, ACT, NJ, KJ>: persistent blocks, as many as
// fit the device (at most one per tile); false where its shared memory does not fit.
template <typename T, int ACT, int NJ, int KJ>
bool launch_narrow_backward(const Tensor& g, const Tensor& x, const Tensor& w,
                            const c10::optional<Tensor>& b,
                            const SlopeGrid<at::opmath_type<T>>& sg, Tensor& dx,
                            NarrowParts& parts) {
  using A = at::opmath_type<T>;
  const int device = x.get_device();
  const size_t smem = narrow_bwd_smem_bytes<A>(NJ, KJ);
  if (!narrow_smem_fits(smem, device)) return false;
  const int64_t M = x.size(0);
  const int N = static_cast<int>(w.size(0)), K = static_cast<int>(w.size(1));
  auto kernel = narrow_linear_backward_kernel<T, ACT, NJ, KJ>;
  const int64_t blocks = persistent_grid(kernel, smem, device, row_tiles(M));
  parts.rows = at::empty({blocks, parts.width()},
                         x.options().dtype(at::toOpMathType(x.scalar_type())));
  kernel<<<blocks, kThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
      g.data_ptr<T>(), x.data_ptr<T>(), w.data_ptr<T>(), data_or_null<T>(b), sg,
      data_or_null<T>(dx), data_or_null<A>(parts.of(0)), data_or_null<A>(parts.of(1)),
      data_or_null<A>(parts.of(2)), parts.width(), M, N, K);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

}  // namespace

std::optional<std::tuple<Tensor, Tensor, Tensor, Tensor>> narrow_linear_backward(
    const Tensor& g, const Tensor& x, const Tensor& weight, const c10::optional<Tensor>& bias,
    const c10::optional<Tensor>& s, int act, bool need_dx, bool need_dw, bool need_db,
    bool need_ds) {
  const int64_t N = weight.size(0), K = weight.size(1);
  TORCH_CHECK(narrow_backward_layer(N, K, x.scalar_type()), "laaf cuda: a ", N, " x ", K, " ",
              x.scalar_type(), " layer has no fused narrow backward");
  need_ds = need_ds && s.has_value();
  const at::ScalarType acc = at::toOpMathType(x.scalar_type());
  const Tensor s_acc = slope_in(s, acc);
  Tensor dx = need_dx ? at::empty({x.size(0), K}, x.options()) : Tensor();
  NarrowParts parts{need_dw ? N * K : 0, need_db ? N : 0, need_ds ? N : 0, Tensor()};
  bool launched = false;
  LAAF_DISPATCH_CUDA_TYPES(x.scalar_type(), "laaf_cuda_narrow_linear_bwd", [&] {
    using A = at::opmath_type<scalar_t>;
    const auto sg = slope_grid<A>(s_acc, slope_kind(s), false, 0);
    LAAF_ACT_SWITCH(act, [&] {
      // NJ x KJ = 16 in fp64 is no narrow_backward_layer, and is not compiled.
      launched = with_column_groups(N, [&](auto nj) {
        return with_column_groups(K, [&](auto kj) {
          constexpr int NJ = decltype(nj)::value, KJ = decltype(kj)::value;
          if constexpr (std::is_same_v<A, double> && NJ * KJ > 8) {
            TORCH_CHECK(false, "laaf cuda: no fused narrow backward for fp64 at N, K > 64");
            return false;
          } else {
            return launch_narrow_backward<scalar_t, ACT, NJ, KJ>(g, x, weight, bias, sg, dx,
                                                                 parts);
          }
        });
      });
    });
  });
  if (!launched) return std::nullopt;
  // The three sums in one launch, each into its own tensor of the kernels' type.
  std::vector<Fold> folds;
  Tensor sums[3];
  for (int which = 0; which < 3; ++which) {
    const Tensor rows = parts.of(which);
    if (!rows.defined()) continue;
    sums[which] = at::empty({rows.size(1)}, rows.options());
    folds.push_back({rows, sums[which]});
  }
  if (!folds.empty()) fold_parts_into(folds);
  const Tensor empty = at::empty({0}, x.options());
  return std::make_tuple(need_dx ? dx : empty,
                         need_dw ? sums[0].view({N, K}).to(x.scalar_type()) : empty,
                         need_db ? sums[1].to(x.scalar_type()) : empty,
                         need_ds ? finish_ds(sums[2], *s) : empty);
}

}  // namespace laaf
