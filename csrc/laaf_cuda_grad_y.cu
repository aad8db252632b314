// laaf_kernels: CUDA kernels of gz = g act'(h) s with act' from the saved
// y = act(h), and of its first two vector-Jacobian products
// (torch.ops.laaf.cuda_grad_y*): the create_graph passes of a PINN. The math is
// laaf_cpu_grad_y.cpp's (and laaf_kernels/ops/grad_y.py's), with phi = d1_y(y),
// phi' = d1_y_dy(y), phi'' = d1_y_dyy(y):
//
//   grad_y       gz = g phi s
//   grad_y_vjp   dg = u phi s      dy = u g s phi'      ds = sum u g phi
//   grad_y_vjp2  du = s mix + us g phi                  mix = ug phi + uy g phi'
//                dg = u (uy s phi' + us phi)
//                dy = u (ug s phi' + uy g s phi'' + us g phi')
//                ds = sum u mix
//
// Each op is one channel-sum pass (laaf_cuda_common.cuh: launch_channel_sums): a
// Body functor stores the element-wise outputs of element `at` and returns the
// term of ds, summed per channel in a fixed order: the same bits every run.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "laaf_activations_cuda.cuh"
#include "laaf_cuda_common.cuh"

namespace laaf {
namespace {

// What every op shares: y's (rows, cols) layout, s (and us) in the arithmetic
// type, and the ds partials (undefined unless wanted).
struct Frame {
  ActLayout layout;
  at::ScalarType acc;
  Tensor s_acc, us_acc, part;
  int kind;
};

Frame make_frame(const Tensor& y, const c10::optional<Tensor>& s,
                 const c10::optional<Tensor>& us, int64_t dim, bool need_ds) {
  Frame f{act_layout(y, s, dim), at::toOpMathType(y.scalar_type()), Tensor(), Tensor(),
          Tensor(), slope_kind(s)};
  f.s_acc = slope_in(s, f.acc);
  f.us_acc = slope_in(us, f.acc);
  if (need_ds) {
    const auto options = y.options().dtype(f.acc);
    f.part = f.layout.on_rows ? at::empty({f.layout.rows}, options)
                              : at::empty({chunks_of(f.layout.rows), f.layout.cols}, options);
  }
  return f;
}

// Launch the pass of `body` over the frame's grid on the current stream.
template <typename A, typename Body>
void run_pass(const Frame& f, const Body& body, int device) {
  const ActLayout& L = f.layout;
  const auto s = slope_grid<A>(f.s_acc, f.kind, L.on_rows, L.channels);
  const auto us = slope_grid<A>(f.us_acc, f.us_acc.defined() ? f.kind : kNone, L.on_rows,
                                L.channels);
  launch_channel_sums<1, A>(body, s, us, SumParts<A, 1>{{data_or_null<A>(f.part)}}, L.rows,
                            L.cols, L.on_rows, device);
}

// ds folded from the partials, in the slope's shape and dtype (empty if not wanted).
Tensor finish(const Frame& f, const c10::optional<Tensor>& s, const Tensor& empty) {
  if (!f.part.defined()) return empty;
  const int64_t width = f.layout.on_rows ? f.layout.channels : f.layout.cols;
  return finish_ds(fold_parts(f.part.reshape({-1, width}), width), *s);
}

// ===========================================================================
// The three bodies (phi and its derivatives in y from gpu::Act<ACT>)
// ===========================================================================

template <typename T, int ACT>
struct GradYBody {
  const T *g, *y;
  T* gz;
  using A = at::opmath_type<T>;
  __device__ Terms<A, 1> operator()(int64_t at, A s, A) const {
    gz[at] = static_cast<T>(A(g[at]) * gpu::Act<ACT>::d1_y(A(y[at])) * s);
    return {{A(0)}};
  }
};

template <typename T, int ACT>
struct VjpBody {
  const T *u, *g, *y;
  T *dg, *dy;
  using A = at::opmath_type<T>;
  __device__ Terms<A, 1> operator()(int64_t at, A s, A) const {
    const A uv = A(u[at]), gv = A(g[at]), yv = A(y[at]);
    const A phi = gpu::Act<ACT>::d1_y(yv);
    if (dg != nullptr) dg[at] = static_cast<T>(uv * s * phi);
    if (dy != nullptr) dy[at] = static_cast<T>(uv * s * gv * gpu::Act<ACT>::d1_y_dy(yv));
    return {{uv * gv * phi}};
  }
};

// us arrives from a channel grid, whose value where absent is 1 (a slope's): has_us
// makes an absent us the zero it stands for.
template <typename T, int ACT>
struct Vjp2Body {
  const T *ug, *uy, *u, *g, *y;
  T *du, *dg, *dy;
  bool has_us;
  using A = at::opmath_type<T>;
  __device__ Terms<A, 1> operator()(int64_t at, A s, A us_grid) const {
    const A us = has_us ? us_grid : A(0);
    const A uv = A(u[at]), gv = A(g[at]), yv = A(y[at]);
    const A ugv = ug != nullptr ? A(ug[at]) : A(0), uyv = uy != nullptr ? A(uy[at]) : A(0);
    const A phi = gpu::Act<ACT>::d1_y(yv), phi1 = gpu::Act<ACT>::d1_y_dy(yv);
    const A mix = ugv * phi + uyv * gv * phi1;
    if (du != nullptr) du[at] = static_cast<T>(s * mix + us * gv * phi);
    if (dg != nullptr) dg[at] = static_cast<T>(uv * (uyv * s * phi1 + us * phi));
    if (dy != nullptr) {
      const A inner = ugv * s * phi1 + uyv * gv * s * gpu::Act<ACT>::d1_y_dyy(yv) + us * gv * phi1;
      dy[at] = static_cast<T>(uv * inner);
    }
    return {{uv * mix}};
  }
};

// ===========================================================================
// Host side
// ===========================================================================

void check_args(const Tensor& y, std::initializer_list<const Tensor*> same) {
  check_cuda(y, "y");
  for (const Tensor* t : same) {
    TORCH_CHECK(t->sizes() == y.sizes() && t->scalar_type() == y.scalar_type() &&
                    t->device() == y.device(),
                "laaf cuda_grad_y: every tensor argument must have y's shape ", y.sizes(),
                ", dtype ", y.scalar_type(), " and device, got ", t->sizes(), " ",
                t->scalar_type());
  }
}

Tensor grad_y(const Tensor& g_in, const Tensor& y_in, const c10::optional<Tensor>& s,
              c10::string_view activation, int64_t dim) {
  check_args(y_in, {&g_in});
  const c10::cuda::CUDAGuard guard(y_in.device());
  const int act = activation_id(activation);
  const Tensor y = y_in.contiguous(), g = g_in.contiguous();
  Tensor gz = at::empty_like(y);
  if (y.numel() == 0) return gz;
  const Frame f = make_frame(y, s, c10::nullopt, dim, false);
  LAAF_DISPATCH_CUDA_TYPES(y.scalar_type(), "laaf_cuda_grad_y", [&] {
    with_y_activation<gpu::Act>(act, [&](auto act_c) {
      constexpr int ACT = decltype(act_c)::value;
      const GradYBody<scalar_t, ACT> body{g.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                                          gz.data_ptr<scalar_t>()};
      run_pass<at::opmath_type<scalar_t>>(f, body, y.get_device());
    });
  });
  return gz;
}

std::tuple<Tensor, Tensor, Tensor> grad_y_vjp(const Tensor& u_in, const Tensor& g_in,
                                              const Tensor& y_in, const c10::optional<Tensor>& s,
                                              c10::string_view activation, int64_t dim,
                                              bool need_g, bool need_y, bool need_s) {
  check_args(y_in, {&u_in, &g_in});
  const c10::cuda::CUDAGuard guard(y_in.device());
  const int act = activation_id(activation);
  need_s = need_s && s.has_value();
  const Tensor y = y_in.contiguous(), g = g_in.contiguous(), u = u_in.contiguous();
  const Tensor empty = at::empty({0}, y.options());
  if (y.numel() == 0) {
    return {need_g ? at::zeros_like(y) : empty, need_y ? at::zeros_like(y) : empty,
            need_s ? at::zeros_like(*s) : empty};
  }
  Tensor dg = empty_if(need_g, y), dy = empty_if(need_y, y);
  const Frame f = make_frame(y, s, c10::nullopt, dim, need_s);
  LAAF_DISPATCH_CUDA_TYPES(y.scalar_type(), "laaf_cuda_grad_y_vjp", [&] {
    with_y_activation<gpu::Act>(act, [&](auto act_c) {
      constexpr int ACT = decltype(act_c)::value;
      const VjpBody<scalar_t, ACT> body{u.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(),
                                        y.data_ptr<scalar_t>(), data_or_null<scalar_t>(dg),
                                        data_or_null<scalar_t>(dy)};
      run_pass<at::opmath_type<scalar_t>>(f, body, y.get_device());
    });
  });
  return {need_g ? dg : empty, need_y ? dy : empty, finish(f, s, empty)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> grad_y_vjp2(
    const c10::optional<Tensor>& ug_in, const c10::optional<Tensor>& uy_in,
    const c10::optional<Tensor>& us, const Tensor& u_in, const Tensor& g_in, const Tensor& y_in,
    const c10::optional<Tensor>& s, c10::string_view activation, int64_t dim, bool need_u,
    bool need_g, bool need_y, bool need_s) {
  check_args(y_in, {&u_in, &g_in});
  for (const auto* t : {&ug_in, &uy_in}) {
    if (t->has_value()) check_args(y_in, {&t->value()});
  }
  TORCH_CHECK(!us.has_value() || (s.has_value() && us->sizes() == s->sizes()),
              "laaf cuda_grad_y_vjp2: us must have the slope's shape");
  const c10::cuda::CUDAGuard guard(y_in.device());
  const int act = activation_id(activation);
  need_s = need_s && s.has_value();
  const Tensor y = y_in.contiguous(), g = g_in.contiguous(), u = u_in.contiguous();
  const Tensor ug = ug_in.has_value() ? ug_in->contiguous() : Tensor();
  const Tensor uy = uy_in.has_value() ? uy_in->contiguous() : Tensor();
  const Tensor empty = at::empty({0}, y.options());
  if (y.numel() == 0) {
    return {need_u ? at::zeros_like(y) : empty, need_g ? at::zeros_like(y) : empty,
            need_y ? at::zeros_like(y) : empty, need_s ? at::zeros_like(*s) : empty};
  }
  Tensor du = empty_if(need_u, y), dg = empty_if(need_g, y), dy = empty_if(need_y, y);
  const Frame f = make_frame(y, s, us, dim, need_s);
  LAAF_DISPATCH_CUDA_TYPES(y.scalar_type(), "laaf_cuda_grad_y_vjp2", [&] {
    using T = scalar_t;
    with_y_activation<gpu::Act>(act, [&](auto act_c) {
      constexpr int ACT = decltype(act_c)::value;
      const Vjp2Body<T, ACT> body{data_or_null<T>(ug), data_or_null<T>(uy),
                                  u.data_ptr<T>(), g.data_ptr<T>(), y.data_ptr<T>(),
                                  data_or_null<T>(du), data_or_null<T>(dg), data_or_null<T>(dy),
                                  f.us_acc.defined()};
      run_pass<at::opmath_type<T>>(f, body, y.get_device());
    });
  });
  return {need_u ? du : empty, need_g ? dg : empty, need_y ? dy : empty, finish(f, s, empty)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(laaf, m) {
  m.def("cuda_grad_y(Tensor g, Tensor y, Tensor? s, str activation, int dim) -> Tensor");
  m.def("cuda_grad_y_vjp(Tensor u, Tensor g, Tensor y, Tensor? s, str activation, int dim, "
        "bool need_g, bool need_y, bool need_s) -> (Tensor, Tensor, Tensor)");
  m.def("cuda_grad_y_vjp2(Tensor? ug, Tensor? uy, Tensor? us, Tensor u, Tensor g, Tensor y, "
        "Tensor? s, str activation, int dim, bool need_u, bool need_g, bool need_y, "
        "bool need_s) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(laaf, CUDA, m) {
  m.impl("cuda_grad_y", &grad_y);
  m.impl("cuda_grad_y_vjp", &grad_y_vjp);
  m.impl("cuda_grad_y_vjp2", &grad_y_vjp2);
}

}  // namespace laaf
