// laaf_kernels: fused CPU kernels of the "cpp" backend (torch.ops.laaf.cpp_*).
//
// Forward of the linear layer:
//     z = x W^T + b            one ATen GEMM (at::addmm: MKL / oneDNN)
//     y = act(s * z)           ONE pass over z, vectorised (at::vec) and threaded
// Backward, given g = dL/dy:
//     gh = g act'(h), gz = gh s          one pass over (g, z[, y]) that also forms the
//     db = sum_rows gz, ds = sum gh z    partial column sums of this row chunk
//     dx = gz W, dW = gz^T x             ATen GEMMs
//
// Determinism: rows are cut into fixed chunks of kRowsPerChunk, whatever the
// thread count; each chunk writes its own partial sums, and one thread adds
// the partials in chunk order. The same inputs give the same bits with 1 or N
// threads (ATen's GEMMs are thread-count-independent on these machines too;
// tests/test_cpp.py checks the whole backward).
//
// The activation math (Act<ID>::value / d1) comes from laaf_activations.h,
// generated from the one table in laaf_kernels/activations.py.
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <tuple>

#include "laaf_activations.h"
#include "laaf_cpu_common.h"

namespace laaf {
namespace {

using namespace cpu;  // Grid, Io, Compute, grain, lane_sum, sum_parts, slope_in, ...

// ---------------------------------------------------------------------------
// Forward epilogue: y = act(s * z), one vectorised pass (in place allowed)
// ---------------------------------------------------------------------------

// Slopes per row (channels in the middle): row by row.
template <typename T, int ACT>
void forward_rows(const T* z, T* y, const Grid<Compute<T>>& grid) {
  using V = Vectorized<Compute<T>>;
  at::parallel_for(0, grid.rows, grain(grid.cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* zr = z + r * grid.cols;
      T* yr = y + r * grid.cols;
      for (int64_t c = 0; c < grid.cols; c += V::size()) {
        const int64_t n = std::min<int64_t>(V::size(), grid.cols - c);
        const V h = Io<T>::load(zr + c, n) * grid.slope(r, c, n);
        Io<T>::store(Act<ACT>::value(h), yr + c, n);
      }
    }
  });
}

// Narrow grids with slopes per column, one or none: a flat walk (FlatWalk).
template <typename T, int ACT>
void forward_flat(const T* z, T* y, const Grid<Compute<T>>& grid) {
  using V = Vectorized<Compute<T>>;
  const FlatWalk<Compute<T>> walk(grid);
  const int64_t total = grid.rows * grid.cols;
  const int64_t vectors = (total + V::size() - 1) / V::size();
  at::parallel_for(0, vectors, grain(V::size()), [&](int64_t v0, int64_t v1) {
    for (int64_t v = v0, p = walk.phase_of(v0); v < v1; ++v, p = walk.next(p)) {
      const int64_t at = v * V::size();
      const int64_t n = std::min<int64_t>(V::size(), total - at);
      const V h = Io<T>::load(z + at, n) * walk.slope(p);
      Io<T>::store(Act<ACT>::value(h), y + at, n);
    }
  });
}

template <typename T, int ACT>
void forward_pass(const T* z, T* y, const Grid<Compute<T>>& grid) {
  if (grid.rows * grid.cols == 0) return;  // (a flat walk takes columns modulo cols)
  if (grid.on_rows || grid.cols > kMaxFlatCols) {
    forward_rows<T, ACT>(z, y, grid);
  } else {
    forward_flat<T, ACT>(z, y, grid);
  }
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

// Slopes per row: row r adds the sum of gh * z over its columns to ds_part[r].
template <typename T, int ACT>
void backward_rows(const T* g, const T* z, const T* y, T* gz, double* ds_part,
                   const Grid<Compute<T>>& grid) {
  using V = Vectorized<Compute<T>>;
  at::parallel_for(0, grid.rows, grain(grid.cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t c = 0; c < grid.cols; c += V::size()) {
        const int64_t n = std::min<int64_t>(V::size(), grid.cols - c);
        const int64_t at = r * grid.cols + c;
        const V s = grid.slope(r, c, n);
        const V zv = Io<T>::load(z + at, n);
        const V gh = Io<T>::load(g + at, n) * act_d1<T, ACT>(y, zv * s, at, n);
        if (gz != nullptr) Io<T>::store(gh * s, gz + at, n);
        if (ds_part != nullptr) ds_part[r] += lane_sum(gh * zv, n);
      }
    }
  });
}

// Wide grids with slopes per column: chunk k of kRowsPerChunk rows sums each
// column vector over its rows into db_part[k, :] and ds_part[k, :].
template <typename T, int ACT>
void backward_columns(const T* g, const T* z, const T* y, T* gz, double* db_part,
                      double* ds_part, const Grid<Compute<T>>& grid) {
  using C = Compute<T>;
  using V = Vectorized<C>;
  const int64_t chunks = (grid.rows + kRowsPerChunk - 1) / kRowsPerChunk;
  at::parallel_for(0, chunks, grain(kRowsPerChunk * grid.cols), [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t r_end = std::min(grid.rows, (k + 1) * kRowsPerChunk);
      for (int64_t c = 0; c < grid.cols; c += V::size()) {
        const int64_t n = std::min<int64_t>(V::size(), grid.cols - c);
        const V s = grid.slope(0, c, n);
        V db_acc(C(0)), ds_acc(C(0));
        for (int64_t r = k * kRowsPerChunk; r < r_end; ++r) {
          const int64_t at = r * grid.cols + c;
          const V zv = Io<T>::load(z + at, n);
          const V gh = Io<T>::load(g + at, n) * act_d1<T, ACT>(y, zv * s, at, n);
          const V gzv = gh * s;
          if (gz != nullptr) Io<T>::store(gzv, gz + at, n);
          db_acc = db_acc + gzv;
          ds_acc = ds_acc + gh * zv;
        }
        C db_lanes[V::size()], ds_lanes[V::size()];
        db_acc.store(db_lanes);
        ds_acc.store(ds_lanes);
        for (int64_t i = 0; i < n; ++i) {
          if (db_part != nullptr) db_part[k * grid.cols + c + i] = db_lanes[i];
          if (ds_part != nullptr) ds_part[k * grid.cols + c + i] = ds_lanes[i];
        }
      }
    }
  });
}

// Narrow grids with slopes per column, one or none: chunk k of kRowsPerChunk rows
// is one flat walk (FlatWalk), whose column sums (PhaseSums) become db_part[k, :]
// and ds_part[k, :].
template <typename T, int ACT>
void backward_flat(const T* g, const T* z, const T* y, T* gz, double* db_part,
                   double* ds_part, const Grid<Compute<T>>& grid) {
  using C = Compute<T>;
  using V = Vectorized<C>;
  const FlatWalk<C> walk(grid);
  const int64_t total = grid.rows * grid.cols;
  const int64_t per_chunk = kRowsPerChunk * grid.cols;  // a multiple of the lanes
  const int64_t chunks = (grid.rows + kRowsPerChunk - 1) / kRowsPerChunk;
  at::parallel_for(0, chunks, grain(per_chunk), [&](int64_t k0, int64_t k1) {
    PhaseSums<C> db(grid.cols, walk.period()), ds(grid.cols, walk.period());
    for (int64_t k = k0; k < k1; ++k) {
      db.clear();
      ds.clear();
      const int64_t end = std::min(total, (k + 1) * per_chunk);
      int64_t p = walk.phase_of(k * per_chunk / V::size());
      for (int64_t at = k * per_chunk; at < end; at += V::size(), p = walk.next(p)) {
        const int64_t n = std::min<int64_t>(V::size(), end - at);
        const V s = walk.slope(p);
        const V zv = Io<T>::load(z + at, n);
        const V gh = Io<T>::load(g + at, n) * act_d1<T, ACT>(y, zv * s, at, n);
        const V gzv = gh * s;
        if (gz != nullptr) Io<T>::store(gzv, gz + at, n);
        // (V::set keeps the n live lanes: the rest must not reach the sums.)
        if (db_part != nullptr) db.add(p, V::set(V(C(0)), gzv, n));
        if (ds_part != nullptr) ds.add(p, V::set(V(C(0)), gh * zv, n));
      }
      if (db_part != nullptr) db.fold(db_part + k * grid.cols);
      if (ds_part != nullptr) ds.fold(ds_part + k * grid.cols);
    }
  });
}

template <typename T, int ACT>
void backward_pass(const T* g, const T* z, const T* y, T* gz, double* db_part, double* ds_part,
                   const Grid<Compute<T>>& grid) {
  if (grid.rows * grid.cols == 0) return;  // nothing to sum: the partials stay empty
  if (grid.on_rows) {
    backward_rows<T, ACT>(g, z, y, gz, ds_part, grid);
  } else if (grid.cols > kMaxFlatCols) {
    backward_columns<T, ACT>(g, z, y, gz, db_part, ds_part, grid);
  } else {
    backward_flat<T, ACT>(g, z, y, gz, db_part, ds_part, grid);
  }
}


// ---------------------------------------------------------------------------
// The ops
// ---------------------------------------------------------------------------

std::tuple<Tensor, Tensor> linear_fwd(const Tensor& x, const Tensor& weight,
                                      const c10::optional<Tensor>& bias,
                                      const c10::optional<Tensor>& s,
                                      c10::string_view activation, bool training) {
  check_dtype(x, "x");
  const int act = activation_id(activation);
  const Tensor s_c = slope_in(s, x.scalar_type());
  Tensor z = bias.has_value() ? at::addmm(*bias, x, weight.t()) : at::mm(x, weight.t());
  // Inference: the epilogue runs in place, z's buffer becomes y.
  Tensor y = training ? at::empty_like(z) : z;
  LAAF_DISPATCH_CPU_TYPES(z.scalar_type(), "laaf_cpp_linear_fwd", [&] {
    const auto grid = make_grid<scalar_t>(z.size(0), z.size(1), s_c, slope_kind(s), false, 0);
    LAAF_ACT_SWITCH(act, [&] {
      forward_pass<scalar_t, ACT>(z.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), grid);
    });
  });
  return {y, training ? z : at::empty({0}, x.options())};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> linear_bwd(
    const Tensor& g_in, const Tensor& x, const Tensor& weight, const c10::optional<Tensor>& bias,
    const Tensor& z, const c10::optional<Tensor>& s, const c10::optional<Tensor>& y_in,
    c10::string_view activation, bool need_dx, bool need_dw, bool need_db, bool need_ds) {
  check_dtype(x, "x");
  const int act = activation_id(activation);
  const Tensor s_c = slope_in(s, x.scalar_type());
  need_ds = need_ds && s.has_value();
  const Tensor g = g_in.contiguous();
  const auto y = contiguous(y_in);
  const int64_t rows = z.size(0), cols = z.size(1);
  const int64_t chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
  const auto dbl = x.options().dtype(at::kDouble);
  Tensor gz = (need_dx || need_dw) ? at::empty_like(z) : Tensor();
  Tensor db_part = need_db ? at::empty({chunks, cols}, dbl) : Tensor();
  Tensor ds_part = need_ds ? at::empty({chunks, cols}, dbl) : Tensor();
  LAAF_DISPATCH_CPU_TYPES(z.scalar_type(), "laaf_cpp_linear_bwd", [&] {
    const auto grid = make_grid<scalar_t>(rows, cols, s_c, slope_kind(s), false, 0);
    LAAF_ACT_SWITCH(act, [&] {
      backward_pass<scalar_t, ACT>(
          g.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(),
          y.has_value() ? y->data_ptr<scalar_t>() : nullptr,
          gz.defined() ? gz.data_ptr<scalar_t>() : nullptr,
          need_db ? db_part.data_ptr<double>() : nullptr,
          need_ds ? ds_part.data_ptr<double>() : nullptr, grid);
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
  const int64_t chunks = (L.rows + kRowsPerChunk - 1) / kRowsPerChunk;
  const auto dbl = z.options().dtype(at::kDouble);
  Tensor dz = need_dz ? at::empty_like(z) : Tensor();
  // Row slopes: one partial per row (zeroed: rows accumulate); column slopes: per chunk.
  Tensor ds_part = !need_ds ? Tensor()
                   : L.on_rows ? at::zeros({L.rows}, dbl) : at::empty({chunks, L.cols}, dbl);
  LAAF_DISPATCH_CPU_TYPES(z.scalar_type(), "laaf_cpp_act_bwd", [&] {
    const auto grid = make_grid<scalar_t>(L.rows, L.cols, s_c, slope_kind(s), L.on_rows,
                                          L.channels);
    LAAF_ACT_SWITCH(act, [&] {
      backward_pass<scalar_t, ACT>(g.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(),
                                   y.has_value() ? y->data_ptr<scalar_t>() : nullptr,
                                   need_dz ? dz.data_ptr<scalar_t>() : nullptr, nullptr,
                                   need_ds ? ds_part.data_ptr<double>() : nullptr, grid);
    });
  });
  Tensor ds = empty;
  if (need_ds) {
    // Rows of the on_rows layout are (outer, C): fold them onto channels in order.
    ds = L.on_rows ? finish_ds(sum_parts(ds_part, L.channels), *s)
                   : finish_ds(sum_parts(ds_part, L.cols), *s);
  }
  return {need_dz ? dz : empty, ds};
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

}  // namespace

TORCH_LIBRARY_FRAGMENT(laaf, m) {
  m.def("cpp_parallel_threads() -> int", &parallel_threads);
  m.def("cpp_linear_fwd(Tensor x, Tensor weight, Tensor? bias, Tensor? s, str activation, "
        "bool training) -> (Tensor, Tensor)");
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
