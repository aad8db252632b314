// laaf_kernels: CUDA kernels of the combined flexible activations
// (torch.ops.laaf.cuda_flex_*), y = f_KIND(z; p0, p1), per-channel p0 = params[0],
// p1 = params[1] along `dim`.
//
// Forward: one elementwise pass. Backward, given g = dL/dy, one channel-sum pass
// over (g, z) (laaf_cuda_common.cuh: launch_channel_sums):
//     dz = g f_z                     written when asked for
//     dp_k = sum of g f_{p_k}        per-chunk or per-row partials, then
//                                    fold_parts_into in a fixed order.
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

// The channel-sum body (laaf_cuda_common.cuh) of the backward, at element `at`
// with parameters p0, p1: dz = g f_z (stored unless null); the terms of dp0 and
// dp1 are g f_p0 and g f_p1.
template <typename T, int KIND>
struct FlexGradBody {
  using A = at::opmath_type<T>;
  const T *g, *z;
  T* dz;
  __device__ Terms<A, 2> operator()(int64_t at, A p0, A p1) const {
    const A gv = static_cast<A>(g[at]);
    const gpu::FlexGrads<A> f = gpu::Flex<KIND>::grads(static_cast<A>(z[at]), p0, p1);
    if (dz != nullptr) dz[at] = static_cast<T>(gv * f.dz);
    return {{gv * f.dp0, gv * f.dp1}};
  }
};

template <typename A>
ParamGrids<A> param_grids(const Tensor& params_acc, const ActLayout& L) {
  const A* base = params_acc.data_ptr<A>();
  const int64_t C = params_acc.size(1);
  return {SlopeGrid<A>{base, kVector, L.on_rows, L.channels},
          SlopeGrid<A>{base + C, kVector, L.on_rows, L.channels}};
}

Tensor flex_fwd(const Tensor& z_in, const Tensor& params, c10::string_view kind, int64_t dim) {
  check_cuda(z_in, "z");
  check_flex_params("cuda_flex_fwd", params, z_in, dim);
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
  check_flex_params("cuda_flex_bwd", params, z_in, dim);
  check_shape_like("cuda_flex_bwd", "g", g_in, "z", z_in);
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
  const int64_t chunks = chunks_of(L.rows);
  // Rows: (2, rows) row sums; columns: (2, chunks, cols) chunk partials.
  Tensor dp_part = !need_dp ? Tensor()
                   : L.on_rows ? at::empty({2, L.rows}, z.options().dtype(acc))
                               : at::empty({2, chunks, L.cols}, z.options().dtype(acc));
  LAAF_DISPATCH_CUDA_TYPES(z.scalar_type(), "laaf_cuda_flex_bwd", [&] {
    using A = at::opmath_type<scalar_t>;
    const auto grids = param_grids<A>(params_acc, L);
    // dp_part's two halves: the partials of dp0, then of dp1.
    A* dp0 = data_or_null<A>(dp_part);
    A* dp1 = dp0 == nullptr ? nullptr : dp0 + dp_part.numel() / 2;
    LAAF_FLEX_SWITCH(kind_id, [&] {
      const FlexGradBody<scalar_t, KIND> body{g.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(),
                                              data_or_null<scalar_t>(dz)};
      launch_channel_sums<2, A>(body, grids.p0, grids.p1, SumParts<A, 2>{{dp0, dp1}}, L.rows,
                                L.cols, L.on_rows, z.get_device());
    });
  });
  Tensor dp = empty;
  if (need_dp) {  // rows of the on_rows layout are (outer, C): fold them onto the channels
    const int64_t width = L.on_rows ? L.channels : L.cols;
    const Tensor sums = at::empty({2, width}, dp_part.options());  // dp0 and dp1, one launch
    fold_parts_into({{dp_part.select(0, 0).reshape({-1, width}), sums.select(0, 0)},
                     {dp_part.select(0, 1).reshape({-1, width}), sums.select(0, 1)}});
    dp = sums.to(params.scalar_type());
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
