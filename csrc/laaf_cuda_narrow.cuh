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
#include <optional>
#include <tuple>

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

__host__ __device__ inline int64_t round_up4(int64_t k) { return (k + 3) / 4 * 4; }

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

}  // namespace

// Whether a layer's backward is the fused narrow kernel, which forms z again from x
// (so that a training forward keeps no z): N, K <= kNarrowMax, and in fp64 at most
// 8 column groups NJ(N) x KJ(K), whose 4 NJ x KJ dW accumulators per thread stay in
// registers. A function of the shape and dtype alone (the fake of cuda_linear_fwd
// asks it through cuda_linear_stores_z); where the device cannot run the kernel
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
