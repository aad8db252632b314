// laaf_kernels: CPU kernels of gz = g act'(h) s with act' taken from the saved
// y = act(h), and of its first two vector-Jacobian products
// (torch.ops.laaf.cpp_grad_y*). They are the create_graph passes of a PINN: u_x
// (grad_y), u_xx (grad_y_vjp) and the loss's backward through both (grad_y_vjp,
// grad_y_vjp2). Without them each of those passes is a chain of ATen element-wise
// ops (tanh_backward, its double backward, a mul per factor), a pass over memory each.
//
// With phi = d1_y(y) = act'(h), phi' = d1_y_dy(y), phi'' = d1_y_dyy(y) (derivatives
// in y, from the table in laaf_kernels/activations.py), s per channel (1 when
// absent) and "sum" over everything but the channel:
//
//   grad_y       gz = g phi s
//   grad_y_vjp   given u = dL/dgz:
//                  dg = u phi s       dy = u g s phi'      ds = sum u g phi
//   grad_y_vjp2  given ug, uy, us = dL/d(dg, dy, ds) (each optional):
//                  du = ug phi s + uy g s phi' + us g phi
//                  dg = uy u s phi' + us u phi
//                  dy = ug u s phi' + uy u g s phi'' + us u g phi'
//                  ds = sum ug u phi + uy u g phi'
//
// Each is one vectorised, threaded pass (channel_pass); ds goes to per-chunk (or
// per-row) partials folded in a fixed order: the same bits for any thread count.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#include "laaf_activations.h"
#include "laaf_cpu_common.h"

namespace laaf {
namespace {

using namespace cpu;

// The derivatives of act' in y at the lanes of y.
template <int ACT, typename V>
struct Phi {
  V d0, d1, d2;  // phi, phi', phi''
  explicit Phi(const V& y)
      : d0(Act<ACT>::d1_y(y)), d1(Act<ACT>::d1_y_dy(y)), d2(Act<ACT>::d1_y_dyy(y)) {}
};

// What every pass reads: the (rows, cols) view of y, the slope grid, the
// channel_pass partials of ds, and whether ds is wanted.
struct Frame {
  ActLayout layout;
  Tensor s_c, parts;
  int kind;
};

Frame make_frame(const Tensor& y, const c10::optional<Tensor>& s, int64_t dim, bool need_ds) {
  Frame f{act_layout(y, s, dim), slope_in(s, y.scalar_type()), Tensor(), slope_kind(s)};
  f.parts = channel_partials(need_ds, 1, f.layout.rows, f.layout.cols, f.layout.on_rows,
                             y.options());
  return f;
}

// The grid of per-channel values laid out as the slope (none if undefined).
template <typename T>
Grid<Compute<T>> grid_of(const Frame& f, const Tensor& values_c) {
  return make_grid<T>(f.layout.rows, f.layout.cols, values_c,
                      values_c.defined() ? f.kind : kNone, f.layout.on_rows, f.layout.channels);
}

// ds folded from the partials, in the slope's shape and dtype (empty if not wanted).
Tensor finish(const Frame& f, const c10::optional<Tensor>& s, const Tensor& empty) {
  if (!f.parts.defined()) return empty;
  const ActLayout& L = f.layout;
  return finish_ds(fold_channel_partials(f.parts.select(0, 0), L.on_rows, L.channels, L.cols),
                   *s);
}

void check_grad_y_args(const Tensor& y, std::initializer_list<const Tensor*> same) {
  check_dtype(y, "y");
  for (const Tensor* t : same) {
    TORCH_CHECK(t->sizes() == y.sizes() && t->scalar_type() == y.scalar_type(),
                "laaf cpp_grad_y: every tensor argument must have y's shape ", y.sizes(),
                " and dtype ", y.scalar_type(), ", got ", t->sizes(), " ", t->scalar_type());
  }
}

// ---------------------------------------------------------------------------
// gz = g phi s
// ---------------------------------------------------------------------------

Tensor grad_y(const Tensor& g_in, const Tensor& y_in, const c10::optional<Tensor>& s,
              c10::string_view activation, int64_t dim) {
  const int act = activation_id(activation);
  check_grad_y_args(y_in, {&g_in});
  const Tensor y = y_in.contiguous(), g = g_in.contiguous();
  Tensor gz = at::empty_like(y);
  const Frame f = make_frame(y, s, dim, false);
  LAAF_DISPATCH_CPU_TYPES(y.scalar_type(), "laaf_cpp_grad_y", [&] {
    using V = Vectorized<Compute<scalar_t>>;
    const auto grid = grid_of<scalar_t>(f, f.s_c);
    const scalar_t *gp = g.data_ptr<scalar_t>(), *yp = y.data_ptr<scalar_t>();
    scalar_t* out = gz.data_ptr<scalar_t>();
    with_y_activation<Act>(act, [&](auto act_c) {
      constexpr int ACT = decltype(act_c)::value;
      channel_pass<Compute<scalar_t>, 0>(grid, grid, {}, [=](int64_t at, int64_t n,
                                                             const auto& ch) {
        const V phi = Act<ACT>::d1_y(Io<scalar_t>::load(yp + at, n));
        Io<scalar_t>::store(Io<scalar_t>::load(gp + at, n) * phi * ch.a, out + at, n);
        return std::array<V, 0>{};
      });
    });
  });
  return gz;
}

// ---------------------------------------------------------------------------
// (dg, dy, ds) given u = dL/dgz
// ---------------------------------------------------------------------------

std::tuple<Tensor, Tensor, Tensor> grad_y_vjp(const Tensor& u_in, const Tensor& g_in,
                                              const Tensor& y_in, const c10::optional<Tensor>& s,
                                              c10::string_view activation, int64_t dim,
                                              bool need_g, bool need_y, bool need_s) {
  const int act = activation_id(activation);
  check_grad_y_args(y_in, {&u_in, &g_in});
  need_s = need_s && s.has_value();
  const Tensor y = y_in.contiguous(), g = g_in.contiguous(), u = u_in.contiguous();
  Tensor dg = empty_if(need_g, y), dy = empty_if(need_y, y);
  const Frame f = make_frame(y, s, dim, need_s);
  LAAF_DISPATCH_CPU_TYPES(y.scalar_type(), "laaf_cpp_grad_y_vjp", [&] {
    using T = scalar_t;
    using V = Vectorized<Compute<T>>;
    const auto grid = grid_of<T>(f, f.s_c);
    const T *up = u.data_ptr<T>(), *gp = g.data_ptr<T>(), *yp = y.data_ptr<T>();
    T *dg_out = data_or_null<T>(dg), *dy_out = data_or_null<T>(dy);
    with_y_activation<Act>(act, [&](auto act_c) {
      constexpr int ACT = decltype(act_c)::value;
      channel_pass<Compute<T>, 1>(grid, grid, partial_slots<1>(f.parts),
                                  [=](int64_t at, int64_t n, const auto& ch) {
        const V uv = Io<T>::load(up + at, n), gv = Io<T>::load(gp + at, n);
        const Phi<ACT, V> phi(Io<T>::load(yp + at, n));
        const V us = uv * ch.a;
        if (dg_out != nullptr) Io<T>::store(us * phi.d0, dg_out + at, n);
        if (dy_out != nullptr) Io<T>::store(us * gv * phi.d1, dy_out + at, n);
        return std::array<V, 1>{uv * gv * phi.d0};
      });
    });
  });
  const Tensor empty = at::empty({0}, y.options());
  return {need_g ? dg : empty, need_y ? dy : empty, finish(f, s, empty)};
}

// ---------------------------------------------------------------------------
// (du, dg, dy, ds) given ug, uy, us = dL/d(dg, dy, ds)
// ---------------------------------------------------------------------------

std::tuple<Tensor, Tensor, Tensor, Tensor> grad_y_vjp2(
    const c10::optional<Tensor>& ug_in, const c10::optional<Tensor>& uy_in,
    const c10::optional<Tensor>& us_in, const Tensor& u_in, const Tensor& g_in,
    const Tensor& y_in, const c10::optional<Tensor>& s, c10::string_view activation,
    int64_t dim, bool need_u, bool need_g, bool need_y, bool need_s) {
  const int act = activation_id(activation);
  check_grad_y_args(y_in, {&u_in, &g_in});
  for (const auto* t : {&ug_in, &uy_in}) {
    if (t->has_value()) check_grad_y_args(y_in, {&t->value()});
  }
  TORCH_CHECK(!us_in.has_value() || (s.has_value() && us_in->sizes() == s->sizes()),
              "laaf cpp_grad_y_vjp2: us must have the slope's shape");
  need_s = need_s && s.has_value();
  const Tensor y = y_in.contiguous(), g = g_in.contiguous(), u = u_in.contiguous();
  const Tensor ug = ug_in.has_value() ? ug_in->contiguous() : Tensor();
  const Tensor uy = uy_in.has_value() ? uy_in->contiguous() : Tensor();
  const Tensor us_c = us_in.has_value() ? slope_in(us_in, y.scalar_type()) : Tensor();
  Tensor du = empty_if(need_u, y), dg = empty_if(need_g, y), dy = empty_if(need_y, y);
  const Frame f = make_frame(y, s, dim, need_s);
  LAAF_DISPATCH_CPU_TYPES(y.scalar_type(), "laaf_cpp_grad_y_vjp2", [&] {
    using T = scalar_t;
    using C = Compute<T>;
    using V = Vectorized<C>;
    const auto grid = grid_of<T>(f, f.s_c);
    const auto us_grid = grid_of<T>(f, us_c);
    const T *up = u.data_ptr<T>(), *gp = g.data_ptr<T>(), *yp = y.data_ptr<T>();
    const T *ugp = data_or_null<T>(ug), *uyp = data_or_null<T>(uy);
    T *du_out = data_or_null<T>(du), *dg_out = data_or_null<T>(dg), *dy_out = data_or_null<T>(dy);
    const bool has_us = us_c.defined();
    with_y_activation<Act>(act, [&](auto act_c) {
      constexpr int ACT = decltype(act_c)::value;
      channel_pass<C, 1>(grid, us_grid, partial_slots<1>(f.parts),
                         [=](int64_t at, int64_t n, const auto& ch) {
        const V uv = Io<T>::load(up + at, n), gv = Io<T>::load(gp + at, n);
        const Phi<ACT, V> phi(Io<T>::load(yp + at, n));
        const V ugv = ugp != nullptr ? Io<T>::load(ugp + at, n) : V(C(0));
        const V uyv = uyp != nullptr ? Io<T>::load(uyp + at, n) : V(C(0));
        const V usv = has_us ? ch.b : V(C(0));
        const V s = ch.a;
        // Shared: mix = ug phi + uy g phi' (du = s mix + us g phi, ds = sum u mix).
        const V mix = ugv * phi.d0 + uyv * gv * phi.d1;
        const V uy_s_d1 = uyv * s * phi.d1;
        if (du_out != nullptr) Io<T>::store(s * mix + usv * gv * phi.d0, du_out + at, n);
        if (dg_out != nullptr) Io<T>::store(uv * (uy_s_d1 + usv * phi.d0), dg_out + at, n);
        if (dy_out != nullptr) {
          const V inner = ugv * s * phi.d1 + uyv * gv * s * phi.d2 + usv * gv * phi.d1;
          Io<T>::store(uv * inner, dy_out + at, n);
        }
        return std::array<V, 1>{uv * mix};
      });
    });
  });
  const Tensor empty = at::empty({0}, y.options());
  return {need_u ? du : empty, need_g ? dg : empty, need_y ? dy : empty, finish(f, s, empty)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(laaf, m) {
  m.def("cpp_grad_y(Tensor g, Tensor y, Tensor? s, str activation, int dim) -> Tensor");
  m.def("cpp_grad_y_vjp(Tensor u, Tensor g, Tensor y, Tensor? s, str activation, int dim, "
        "bool need_g, bool need_y, bool need_s) -> (Tensor, Tensor, Tensor)");
  m.def("cpp_grad_y_vjp2(Tensor? ug, Tensor? uy, Tensor? us, Tensor u, Tensor g, Tensor y, "
        "Tensor? s, str activation, int dim, bool need_u, bool need_g, bool need_y, "
        "bool need_s) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(laaf, CPU, m) {
  m.impl("cpp_grad_y", &grad_y);
  m.impl("cpp_grad_y_vjp", &grad_y_vjp);
  m.impl("cpp_grad_y_vjp2", &grad_y_vjp2);
}

}  // namespace laaf
