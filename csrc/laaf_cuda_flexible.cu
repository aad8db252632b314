// laaf_kernels: CUDA kernels of the combined flexible activations
// (torch.ops.laaf.cuda_flex_*), y = f_KIND(z; p0, p1), per-channel p0 = params[0],
// p1 = params[1] along `dim`.
//
// Forward: one elementwise pass. Backward, given g = dL/dy, one pass over (g, z):
//     dz = g f_z                     written when asked for
//     dp_k = sum of g f_{p_k}        per-chunk partials (channels last: a block of
//                                    32 columns x 8 row lanes per chunk of rows), or
//                                    per-row sums (channels in the middle: a warp per
//                                    row); then fold_parts_kernel in a fixed order.
// No atomics: the same inputs give the same bits. Arithmetic in at::opmath_type<T>.
// The formulas (gpu::Flex<KIND>) come from laaf_activations_cuda.cuh, generated
// from the table in laaf_kernels/flexible.py.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "laaf_activations_cuda.cuh"
#include "laaf_cuda_common.cuh"

namespace laaf {
namespace {

// The two parameter rows as per-channel values on the (rows, cols) grid.
template <typename A>
struct ParamGrids {
  SlopeGrid<A> p0, p1;
};

template <typename T, int KIND>
__global__ void flex_forward_kernel(const T* __restrict__ z, T* __restrict__ y,
                                    ParamGrids<at::opmath_type<T>> p, int64_t rows,
                                    int64_t cols) {
  using A = at::opmath_type<T>;
  const int64_t n = rows * cols;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t r = i / cols, c = i - r * cols;
    y[i] = static_cast<T>(
        gpu::Flex<KIND>::value(static_cast<A>(z[i]), p.p0.at(r, c), p.p1.at(r, c)));
  }
}

// Channels last: block (32 columns) x (8 row lanes) over chunk blockIdx.y of the rows;
// dp_part is (2, chunks, cols).
template <typename T, int KIND>
__global__ void flex_backward_cols_kernel(const T* __restrict__ g, const T* __restrict__ z,
                                          T* __restrict__ dz,
                                          at::opmath_type<T>* __restrict__ dp_part,
                                          ParamGrids<at::opmath_type<T>> p, int64_t rows,
                                          int64_t cols, int64_t rows_per_chunk) {
  using A = at::opmath_type<T>;
  __shared__ A s0[8][32], s1[8][32];
  const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
  const int64_t c = int64_t(blockIdx.x) * 32 + tx;
  const int64_t r_begin = int64_t(blockIdx.y) * rows_per_chunk;
  const int64_t r_end = std::min(rows, r_begin + rows_per_chunk);
  A acc0 = A(0), acc1 = A(0);
  if (c < cols) {
    const A p0 = p.p0.at(0, c), p1 = p.p1.at(0, c);
    for (int64_t r = r_begin + ty; r < r_end; r += 8) {
      const int64_t at = r * cols + c;
      const A zv = static_cast<A>(z[at]), gv = static_cast<A>(g[at]);
      const gpu::FlexGrads<A> f = gpu::Flex<KIND>::grads(zv, p0, p1);
      if (dz != nullptr) dz[at] = static_cast<T>(gv * f.dz);
      acc0 += gv * f.dp0;
      acc1 += gv * f.dp1;
    }
  }
  acc0 = sum_over_row_lanes(acc0, s0);
  acc1 = sum_over_row_lanes(acc1, s1);
  if (ty == 0 && c < cols && dp_part != nullptr) {
    const int64_t half = int64_t(gridDim.y) * cols;
    dp_part[int64_t(blockIdx.y) * cols + c] = acc0;
    dp_part[half + int64_t(blockIdx.y) * cols + c] = acc1;
  }
}

// Channels in the middle: one warp per row r (channel r % C); dp_row is (2, rows).
template <typename T, int KIND>
__global__ void flex_backward_rows_kernel(const T* __restrict__ g, const T* __restrict__ z,
                                          T* __restrict__ dz,
                                          at::opmath_type<T>* __restrict__ dp_row,
                                          ParamGrids<at::opmath_type<T>> p, int64_t rows,
                                          int64_t cols) {
  using A = at::opmath_type<T>;
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (kThreads / 32);
  for (int64_t r = int64_t(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32; r < rows;
       r += warps) {
    const A p0 = p.p0.at(r, 0), p1 = p.p1.at(r, 0);
    A acc0 = A(0), acc1 = A(0);
    for (int64_t c = lane; c < cols; c += 32) {
      const int64_t at = r * cols + c;
      const A zv = static_cast<A>(z[at]), gv = static_cast<A>(g[at]);
      const gpu::FlexGrads<A> f = gpu::Flex<KIND>::grads(zv, p0, p1);
      if (dz != nullptr) dz[at] = static_cast<T>(gv * f.dz);
      acc0 += gv * f.dp0;
      acc1 += gv * f.dp1;
    }
    acc0 = warp_sum(acc0);
    acc1 = warp_sum(acc1);
    if (lane == 0 && dp_row != nullptr) {
      dp_row[r] = acc0;
      dp_row[rows + r] = acc1;
    }
  }
}

template <typename A>
ParamGrids<A> param_grids(const Tensor& params_acc, const ActLayout& L) {
  const A* base = params_acc.data_ptr<A>();
  const int64_t C = params_acc.size(1);
  return {SlopeGrid<A>{base, kVector, L.on_rows, L.channels},
          SlopeGrid<A>{base + C, kVector, L.on_rows, L.channels}};
}

Tensor flex_fwd(const Tensor& z_in, const Tensor& params, c10::string_view kind, int64_t dim) {
  check_cuda(z_in, "z");
  const c10::cuda::CUDAGuard guard(z_in.device());
  const int kind_id = flexible_kind_id(kind);
  const Tensor z = z_in.contiguous();
  Tensor y = at::empty_like(z);
  if (z.numel() == 0) return y;
  const ActLayout L = act_layout(z, params.select(0, 0), dim);
  const Tensor params_acc = slope_in(params, at::toOpMathType(z.scalar_type()));
  LAAF_DISPATCH_CUDA_TYPES(z.scalar_type(), "laaf_cuda_flex_fwd", [&] {
    const auto grids = param_grids<at::opmath_type<scalar_t>>(params_acc, L);
    LAAF_FLEX_SWITCH(kind_id, [&] {
      flex_forward_kernel<scalar_t, KIND>
          <<<blocks_for(L.rows * L.cols, z.get_device()), kThreads, 0,
             c10::cuda::getCurrentCUDAStream()>>>(z.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                                                 grids, L.rows, L.cols);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return y;
}

std::tuple<Tensor, Tensor> flex_bwd(const Tensor& g_in, const Tensor& z_in, const Tensor& params,
                                    c10::string_view kind, int64_t dim, bool need_dz,
                                    bool need_dp) {
  check_cuda(z_in, "z");
  const c10::cuda::CUDAGuard guard(z_in.device());
  const int kind_id = flexible_kind_id(kind);
  const Tensor z = z_in.contiguous(), g = g_in.contiguous();
  const Tensor empty = at::empty({0}, z.options());
  if (z.numel() == 0) {
    return {need_dz ? at::zeros_like(z) : empty, need_dp ? at::zeros_like(params) : empty};
  }
  const ActLayout L = act_layout(z, params.select(0, 0), dim);
  const at::ScalarType acc = at::toOpMathType(z.scalar_type());
  const Tensor params_acc = slope_in(params, acc);
  Tensor dz = empty_if(need_dz, z);
  const int64_t chunk = rows_per_chunk(L.rows), chunks = chunks_of(L.rows);
  // Rows: (2, rows) row sums; columns: (2, chunks, cols) chunk partials.
  Tensor dp_part = !need_dp ? Tensor()
                   : L.on_rows ? at::empty({2, L.rows}, z.options().dtype(acc))
                               : at::empty({2, chunks, L.cols}, z.options().dtype(acc));
  LAAF_DISPATCH_CUDA_TYPES(z.scalar_type(), "laaf_cuda_flex_bwd", [&] {
    using A = at::opmath_type<scalar_t>;
    const auto grids = param_grids<A>(params_acc, L);
    scalar_t* dz_ptr = data_or_null<scalar_t>(dz);
    A* part_ptr = data_or_null<A>(dp_part);
    const auto stream = c10::cuda::getCurrentCUDAStream();
    LAAF_FLEX_SWITCH(kind_id, [&] {
      if (L.on_rows) {
        flex_backward_rows_kernel<scalar_t, KIND>
            <<<blocks_for(L.rows * 32, z.get_device()), kThreads, 0, stream>>>(
                g.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), dz_ptr, part_ptr, grids, L.rows,
                L.cols);
      } else {
        const dim3 grid((L.cols + 31) / 32, chunks);
        flex_backward_cols_kernel<scalar_t, KIND><<<grid, kThreads, 0, stream>>>(
            g.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), dz_ptr, part_ptr, grids, L.rows,
            L.cols, chunk);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  Tensor dp = empty;
  if (need_dp) {  // rows of the on_rows layout are (outer, C): fold them onto the channels
    const int64_t width = L.on_rows ? L.channels : L.cols;
    dp = at::stack({fold_parts(dp_part.select(0, 0), width),
                    fold_parts(dp_part.select(0, 1), width)})
             .to(params.scalar_type());
  }
  return {need_dz ? dz : empty, dp};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(laaf, m) {
  m.def("cuda_flex_fwd(Tensor z, Tensor params, str kind, int dim) -> Tensor");
  m.def("cuda_flex_bwd(Tensor g, Tensor z, Tensor params, str kind, int dim, bool need_dz, "
        "bool need_dp) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(laaf, CUDA, m) {
  m.impl("cuda_flex_fwd", &flex_fwd);
  m.impl("cuda_flex_bwd", &flex_bwd);
}

}  // namespace laaf
