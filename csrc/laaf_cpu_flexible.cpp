// laaf_kernels: CPU kernels of the combined flexible activations
// (torch.ops.laaf.cpp_flex_*), y = f_KIND(z; p0, p1), per-channel p0 = params[0],
// p1 = params[1] along `dim`.
//
// Forward: one vectorised, threaded pass over z.
// Backward, given g = dL/dy, one pass over (g, z):
//     dz = g f_z                       written when asked for
//     dp_k = sum of g f_{p_k}          per-chunk (columns) or per-row (rows) partials,
//                                      folded in a fixed order: the same bits whatever
//                                      the thread count
// The formulas (Flex<KIND>::value / dz / dp0 / dp1) come from laaf_activations.h,
// generated from the table in laaf_kernels/flexible.py.
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

template <typename T, int KIND>
void flex_forward_pass(const T* z, T* y, const ParamGrids<Compute<T>>& p) {
  using V = Vectorized<Compute<T>>;
  const int64_t cols = p.p0.cols;
  at::parallel_for(0, p.p0.rows, grain(cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t c = 0; c < cols; c += V::size()) {
        const int64_t n = std::min<int64_t>(V::size(), cols - c);
        const int64_t at = r * cols + c;
        const V zv = Io<T>::load(z + at, n);
        Io<T>::store(Flex<KIND>::value(zv, p.p0.slope(r, c, n), p.p1.slope(r, c, n)), y + at, n);
      }
    }
  });
}

// Columns: chunk k of rows writes dp_part[k, :] (k < chunks) and
// dp_part[chunks + k, :]; rows: row r writes dp_part[r] and dp_part[rows + r].
template <typename T, int KIND>
void flex_backward_pass(const T* g, const T* z, T* dz, double* dp_part,
                        const ParamGrids<Compute<T>>& p) {
  using C = Compute<T>;
  using V = Vectorized<C>;
  const int64_t rows = p.p0.rows, cols = p.p0.cols;
  const bool on_rows = p.p0.on_rows;
  const int64_t chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
  at::parallel_for(0, chunks, grain(kRowsPerChunk * cols), [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t r_begin = k * kRowsPerChunk, r_end = std::min(rows, r_begin + kRowsPerChunk);
      for (int64_t c = 0; c < cols; c += V::size()) {
        const int64_t n = std::min<int64_t>(V::size(), cols - c);
        V acc0(C(0)), acc1(C(0));
        for (int64_t r = r_begin; r < r_end; ++r) {
          const int64_t at = r * cols + c;
          const V zv = Io<T>::load(z + at, n), gv = Io<T>::load(g + at, n);
          const V p0 = p.p0.slope(r, c, n), p1 = p.p1.slope(r, c, n);
          if (dz != nullptr) Io<T>::store(gv * Flex<KIND>::dz(zv, p0, p1), dz + at, n);
          if (dp_part == nullptr) continue;
          const V g0 = gv * Flex<KIND>::dp0(zv, p0, p1), g1 = gv * Flex<KIND>::dp1(zv, p0, p1);
          if (on_rows) {
            dp_part[r] += lane_sum(g0, n);
            dp_part[rows + r] += lane_sum(g1, n);
          } else {
            acc0 = acc0 + g0;
            acc1 = acc1 + g1;
          }
        }
        if (on_rows || dp_part == nullptr) continue;
        C lanes0[V::size()], lanes1[V::size()];
        acc0.store(lanes0);
        acc1.store(lanes1);
        for (int64_t i = 0; i < n; ++i) {
          dp_part[k * cols + c + i] = lanes0[i];
          dp_part[(chunks + k) * cols + c + i] = lanes1[i];
        }
      }
    }
  });
}

Tensor flex_fwd(const Tensor& z_in, const Tensor& params, c10::string_view kind, int64_t dim) {
  check_dtype(z_in, "z");
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
  const int kind_id = flexible_kind_id(kind);
  const Tensor z = z_in.contiguous(), g = g_in.contiguous();
  const Tensor empty = at::empty({0}, z.options());
  if (z.numel() == 0) {
    return {need_dz ? at::zeros_like(z) : empty, need_dp ? at::zeros_like(params) : empty};
  }
  const ActLayout L = act_layout(z, params.select(0, 0), dim);
  const Tensor params_c = slope_in(params, z.scalar_type());
  const int64_t chunks = (L.rows + kRowsPerChunk - 1) / kRowsPerChunk;
  const auto dbl = z.options().dtype(at::kDouble);
  Tensor dz = need_dz ? at::empty_like(z) : Tensor();
  // Rows: one partial per row and parameter (zeroed: rows accumulate); columns: per chunk.
  Tensor dp_part = !need_dp ? Tensor()
                   : L.on_rows ? at::zeros({2, L.rows}, dbl) : at::empty({2, chunks, L.cols}, dbl);
  LAAF_DISPATCH_CPU_TYPES(z.scalar_type(), "laaf_cpp_flex_bwd", [&] {
    const auto grids = param_grids<scalar_t>(params_c, L);
    LAAF_FLEX_SWITCH(kind_id, [&] {
      flex_backward_pass<scalar_t, KIND>(g.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(),
                                         need_dz ? dz.data_ptr<scalar_t>() : nullptr,
                                         need_dp ? dp_part.data_ptr<double>() : nullptr, grids);
    });
  });
  Tensor dp = empty;
  if (need_dp) {  // rows of the on_rows layout are (outer, C): fold them onto the channels
    const int64_t width = L.on_rows ? L.channels : L.cols;
    dp = at::stack({sum_parts(dp_part.select(0, 0), width),
                    sum_parts(dp_part.select(0, 1), width)})
             .to(params.scalar_type());
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
