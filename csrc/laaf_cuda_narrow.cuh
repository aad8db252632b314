// laaf_kernels: what the narrow CUDA kernels share (laaf_cuda.cu's fused forward,
// laaf_cuda_narrow_bwd.cu's fused backward): the row tiles, the column groups of a
// warp, the shared-memory loads, and which layers keep no z.
//
// A narrow layer has N, K <= kNarrowMax (the PINN widths). Its kernels stage W in
// shared memory once per block and walk tiles of kTileRows rows of x; warp w owns
// rows w * kRowsPerThread .. + kRowsPerThread - 1 of a tile, and lane l the columns
// l + 32 j, j < NJ (the column groups: 1, 2 or 4 of 32).
#pragma once
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>

#include "laaf_cuda_common.cuh"

namespace laaf {
namespace {

constexpr int kNarrowMax = 128;                              // N, K <= this
constexpr int kTileRows = 64;                                // rows of x per tile
constexpr int kRowsPerThread = kTileRows / (kThreads / 32);  // 8: one warp owns 8 rows

// Column groups of 32 lanes that cover `width` (<= kNarrowMax) columns: 1, 2 or 4.
__host__ __device__ inline int column_groups(int64_t width) {
  return width <= 32 ? 1 : (width <= 64 ? 2 : 4);
}

// f(std::integral_constant<int, J>{}) with J = column_groups(width): the one place
// where a width becomes the narrow kernels' template argument NJ or KJ.
template <typename F>
decltype(auto) with_column_groups(int64_t width, const F& f) {
  switch (column_groups(width)) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    default: return f(std::integral_constant<int, 4>{});
  }
}

__host__ __device__ inline int64_t round_up4(int64_t k) { return (k + 3) / 4 * 4; }

// The tiles of kTileRows rows that cover M rows (the last one may be partial).
__host__ __device__ inline int64_t row_tiles(int64_t M) { return (M + kTileRows - 1) / kTileRows; }

// The tile loop of a persistent narrow kernel: f(r0, rows_here) for tiles blockIdx.x,
// blockIdx.x + gridDim.x, ... of the M rows (r0 the tile's first row, rows_here <=
// kTileRows of them in M). Each call comes after a barrier, so what the block staged
// before (W), or the previous call's use of shared memory, is complete.
template <typename F>
__device__ __forceinline__ void for_each_block_tile(int64_t M, const F& f) {
  const int64_t tiles = row_tiles(M);
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t r0 = tile * kTileRows;
    __syncthreads();
    f(r0, static_cast<int>(std::min<int64_t>(kTileRows, M - r0)));
  }
}

// Four consecutive values of a 16-byte aligned shared array (one LDS.128 for float).
template <typename A>
__device__ __forceinline__ void load4(const A* p, A out[4]) {
#pragma unroll
  for (int q = 0; q < 4; ++q) out[q] = p[q];
}
template <>
__device__ __forceinline__ void load4<float>(const float* p, float out[4]) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
}

// f(r, row, j, col) for each cell of this thread's share of a tile, unrolled: its
// kRowsPerThread rows (r the register index, row = 8 warp + r the row of the tile)
// times its J columns (j the register index, col = lane + 32 j). The cells of
// tile_product's acc[r][j], in the order consecutive lanes touch consecutive columns.
template <int J, typename F>
__device__ __forceinline__ void for_each_tile_cell(const F& f) {
  const int lane = threadIdx.x % 32, row0 = threadIdx.x / 32 * kRowsPerThread;
#pragma unroll
  for (int r = 0; r < kRowsPerThread; ++r)
#pragma unroll
    for (int j = 0; j < J; ++j) f(r, row0 + r, j, lane + 32 * j);
}

// This lane's bias b[c] and slope s[c] at its columns c = lane + 32 j, j < J (0 and 1
// past N, or where there is no bias): both narrow kernels keep them in registers.
template <int J, typename T, typename A>
__device__ __forceinline__ void load_column_params(const T* b, const SlopeGrid<A>& slope, int N,
                                                   A (&bias)[J], A (&s_col)[J]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int c = lane + 32 * j;
    bias[j] = (b != nullptr && c < N) ? static_cast<A>(b[c]) : A(0);
    s_col[j] = c < N ? slope.at(0, c) : A(1);
  }
}

// The register tile of a narrow kernel's products: for this warp's kRowsPerThread rows
// of a tile and the lane's J columns c_j = lane + 32 j,
//     acc[r][j] = sum_{i < depth} a(8 warp + r, i) b(i, c_j),
// a(r, i) = a_s[r * a_stride + i] (16-byte aligned rows), b(i, c) = b_s[i * b_row + c * b_col].
// Per 4 values of i: 8 broadcast 16-byte loads of a (all lanes read the same row) and
// 4 J loads of b (conflict-free where consecutive lanes' c are 1, or an odd stride,
// apart), for 32 J FMAs. Past the true depth, up to a multiple of 4, a and b hold zeros.
template <int J, typename A>
__device__ __forceinline__ void tile_product(const A* a_s, int a_stride, const A* b_s, int b_row,
                                             int b_col, int depth,
                                             A (&acc)[kRowsPerThread][J]) {
  const int lane = threadIdx.x % 32, row0 = threadIdx.x / 32 * kRowsPerThread;
#pragma unroll
  for (int r = 0; r < kRowsPerThread; ++r)
#pragma unroll
    for (int j = 0; j < J; ++j) acc[r][j] = A(0);
  for (int i = 0; i < depth; i += 4) {
    A bv[4][J];
#pragma unroll
    for (int q = 0; q < 4; ++q)
#pragma unroll
      for (int j = 0; j < J; ++j) bv[q][j] = b_s[(i + q) * b_row + (lane + 32 * j) * b_col];
#pragma unroll
    for (int r = 0; r < kRowsPerThread; ++r) {
      A av[4];
      load4(a_s + (row0 + r) * a_stride + i, av);
#pragma unroll
      for (int q = 0; q < 4; ++q)
#pragma unroll
        for (int j = 0; j < J; ++j) acc[r][j] = fma(av[q], bv[q][j], acc[r][j]);
    }
  }
}

// Whether the device gives a block `bytes` of (opt-in) shared memory, and the
// narrow kernels are not switched off (LAAF_CUDA_NARROW=0, for benchmarking both paths).
inline bool narrow_smem_fits(size_t bytes, int device) {
  const char* env = std::getenv("LAAF_CUDA_NARROW");
  if (env != nullptr && env[0] == '0') return false;
  return bytes <= size_t(device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
}

// The grid of a persistent narrow kernel over `tiles` row tiles: as many blocks as
// the device holds at once (blocks per SM from the occupancy calculator, times the
// SMs), at most one per tile, at least one. Opts `kernel` in to `smem` bytes of
// dynamic shared memory first.
//
// The opt-in and the occupancy query are driver calls that cost microseconds, about
// as much as a PINN-sized layer's kernel, and their answers never change: they are
// asked once per (kernel, device, smem) and kept. The opt-in is only ever raised,
// since a launch with less dynamic shared memory than the kernel's limit is valid
// (the forward's smem depends on K, so one kernel meets several sizes).
template <typename Kernel>
int64_t persistent_grid(Kernel* kernel, size_t smem, int device, int64_t tiles) {
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, size_t> opted_in;
  static std::map<std::tuple<const void*, int, size_t>, int64_t> resident;
  const void* key = reinterpret_cast<const void*>(kernel);
  int64_t blocks = 0;
  {
    const std::lock_guard<std::mutex> lock(mutex);
    size_t& limit = opted_in[{key, device}];
    if (smem > limit) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
      limit = smem;
    }
    const auto found = resident.find({key, device, smem});
    if (found != resident.end()) {
      blocks = found->second;
    } else {
      int per_sm = 0;
      C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem));
      blocks = int64_t(device_attribute(cudaDevAttrMultiProcessorCount, device)) *
               std::max(per_sm, 1);
      resident.emplace(std::make_tuple(key, device, smem), blocks);
    }
  }
  return std::max<int64_t>(1, std::min(tiles, blocks));
}

}  // namespace

// Whether a layer's backward is the fused narrow kernel, which forms z again from x
// (so that a training forward keeps no z): N, K <= kNarrowMax, and in fp64 at most
// 8 column groups NJ(N) x KJ(K), whose 4 NJ x KJ dW accumulators per thread stay in
// registers. A function of the shape and dtype alone (cuda_linear_stores_z, and
// cuda_backend.stores_z in Python); where the device cannot run the kernel
// (shared memory, LAAF_CUDA_NARROW=0) the backward forms z with cuBLAS instead.
inline bool narrow_backward_layer(int64_t n_out, int64_t k_in, at::ScalarType dtype) {
  if (n_out < 1 || k_in < 1 || n_out > kNarrowMax || k_in > kNarrowMax) return false;
  return dtype != at::kDouble || column_groups(n_out) * column_groups(k_in) <= 8;
}

// (dx, dW, db, ds) of a narrow_backward_layer from g and x alone, or nothing where
// this device cannot run the fused kernel (laaf_cuda_narrow_bwd.cu). An output not
// asked for is an empty tensor; s is the slope (s = n a) as given, act the id.
std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>> narrow_linear_backward(
    const at::Tensor& g, const at::Tensor& x, const at::Tensor& weight,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& s, int act,
    bool need_dx, bool need_dw, bool need_db, bool need_ds);

}  // namespace laaf
