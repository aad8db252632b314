// laaf_kernels: CPU kernels of the combined flexible activations
// (torch.ops.laaf.cpp_flex_*), y = f_KIND(z; p0, p1), per-channel p0 = params[0],
// p1 = params[1] along `dim`.
//
// Forward: one vectorised, threaded pass over z (channel_pass, nothing summed).
// Backward, given g = dL/dy, one pass over (g, z) (channel_pass):
//     dz = g f_z                       written when asked for
//     dp_k = sum of g f_{p_k}          per-chunk (columns) or per-row (rows) partials,
//                                      folded in a fixed order: the same bits whatever
//                                      the thread count
// The formulas (Flex<KIND>::value, and grads = the three derivatives, with shared
// subexpressions evaluated once) come from laaf_activations.h, generated from the
// table in laaf_kernels/flexible.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <tuple>

#include "laaf_activations.h"
#include "laaf_cpu_common.h"

namespace laaf {
namespace {

using namespace cpu;

// The two parameter rows as grids over the same (rows, cols) view of z.
template <typename C>
struct ParamGrids {
  Grid<C> p0, p1;
};

template <typename T>
ParamGrids<Compute<T>> param_grids(const Tensor& params_c, const ActLayout& L) {
  const Tensor p0 = params_c.select(0, 0), p1 = params_c.select(0, 1);
  return {make_grid<T>(L.rows, L.cols, p0, kVector, L.on_rows, L.channels),
          make_grid<T>(L.rows, L.cols, p1, kVector, L.on_rows, L.channels)};
}

// y = f(z; p0, p1): channel_pass with nothing to sum (so a narrow channels-last grid
// is one flat walk on whole vectors; row by row, 10^4 x 20 fp32 relu_tanh had a
// partial vector at the end of every row: ~90 -> 51 us on two Zen 4 threads).
template <typename T, int KIND>
void flex_forward_pass(const T* z, T* y, const ParamGrids<Compute<T>>& p) {
  using V = Vectorized<Compute<T>>;
  channel_pass<Compute<T>, 0>(p.p0, p.p1, {}, [=](int64_t at, int64_t n,
                                                  const ChannelLanes<Compute<T>>& ch) {
    Io<T>::store(Flex<KIND>::value(Io<T>::load(z + at, n), ch.a, ch.b), y + at, n);
    return std::array<V, 0>{};
  });
}

// Given g = dL/dy: dz = g f_z (unless dz is null) and the channel_pass partials of
// dp_k = sum g f_{p_k} in parts[k] (null: not wanted).
template <typename T, int KIND>
void flex_backward_pass(const T* g, const T* z, T* dz, const std::array<double*, 2>& parts,
                        const ParamGrids<Compute<T>>& p) {
  using V = Vectorized<Compute<T>>;
  channel_pass<Compute<T>, 2>(p.p0, p.p1, parts, [=](int64_t at, int64_t n,
                                                     const ChannelLanes<Compute<T>>& ch) {
    const V zv = Io<T>::load(z + at, n), gv = Io<T>::load(g + at, n);
    const FlexGrads<V> f = Flex<KIND>::grads(zv, ch.a, ch.b);
    if (dz != nullptr) Io<T>::store(gv * f.dz, dz + at, n);
    return std::array<V, 2>{gv * f.dp0, gv * f.dp1};
  });
}

Tensor flex_fwd(const Tensor& z_in, const Tensor& params, c10::string_view kind, int64_t dim) {
  check_dtype(z_in, "z");
  check_flex_params("cpp_flex_fwd", params, z_in, dim);
  const int kind_id = flexible_kind_id(kind);
  const Tensor z = z_in.contiguous();
  Tensor y = at::empty_like(z);
  if (z.numel() == 0) return y;
  const ActLayout L = act_layout(z, params.select(0, 0), dim);
  const Tensor params_c = slope_in(params, z.scalar_type());
  LAAF_DISPATCH_CPU_TYPES(z.scalar_type(), "laaf_cpp_flex_fwd", [&] {
    const auto grids = param_grids<scalar_t>(params_c, L);
    LAAF_FLEX_SWITCH(kind_id, [&] {
      flex_forward_pass<scalar_t, KIND>(z.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), grids);
    });
  });
  return y;
}

std::tuple<Tensor, Tensor> flex_bwd(const Tensor& g_in, const Tensor& z_in, const Tensor& params,
                                    c10::string_view kind, int64_t dim, bool need_dz,
                                    bool need_dp) {
  check_dtype(z_in, "z");
  check_flex_params("cpp_flex_bwd", params, z_in, dim);
  check_shape_like("cpp_flex_bwd", "g", g_in, "z", z_in);
  const int kind_id = flexible_kind_id(kind);
  const Tensor z = z_in.contiguous(), g = g_in.contiguous();
  const Tensor empty = at::empty({0}, z.options());
  if (z.numel() == 0) {
    return {need_dz ? at::zeros_like(z) : empty, need_dp ? at::zeros_like(params) : empty};
  }
  const ActLayout L = act_layout(z, params.select(0, 0), dim);
  const Tensor params_c = slope_in(params, z.scalar_type());
  Tensor dz = empty_if(need_dz, z);
  Tensor dp_part = channel_partials(need_dp, 2, L.rows, L.cols, L.on_rows, z.options());
  LAAF_DISPATCH_CPU_TYPES(z.scalar_type(), "laaf_cpp_flex_bwd", [&] {
    const auto grids = param_grids<scalar_t>(params_c, L);
    LAAF_FLEX_SWITCH(kind_id, [&] {
      flex_backward_pass<scalar_t, KIND>(g.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(),
                                         data_or_null<scalar_t>(dz),
                                         partial_slots<2>(dp_part), grids);
    });
  });
  Tensor dp = empty;
  if (need_dp) {
    const auto fold = [&](int64_t j) {
      return fold_channel_partials(dp_part.select(0, j), L.on_rows, L.channels, L.cols);
    };
    dp = at::stack({fold(0), fold(1)}).to(params.scalar_type());
  }
  return {need_dz ? dz : empty, dp};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(laaf, m) {
  m.def("cpp_flex_fwd(Tensor z, Tensor params, str kind, int dim) -> Tensor");
  m.def("cpp_flex_bwd(Tensor g, Tensor z, Tensor params, str kind, int dim, bool need_dz, "
        "bool need_dp) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(laaf, CPU, m) {
  m.impl("cpp_flex_fwd", &flex_fwd);
  m.impl("cpp_flex_bwd", &flex_bwd);
}

}  // namespace laaf
