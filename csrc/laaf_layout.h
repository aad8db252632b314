// laaf_kernels: host-side helpers shared by the CPU (laaf_cpu*.cpp) and CUDA
// (laaf_cuda*.cu) sources: the slope kinds, how an activation's input is seen as
// the 2-D (rows, cols) grid that the kernels walk, and the dispatch over the
// activations whose act' is written in y (the grad_y ops).
#pragma once
#include <ATen/ATen.h>

#include <type_traits>

#include "laaf_activation_ids.h"

namespace laaf {

// The slope s = n * a: absent (standard activation), one value (GAAF, L-LAAF)
// or one per channel (N-LAAF).
enum SlopeKind : int { kNone = 0, kScalar = 1, kVector = 2 };

inline int slope_kind(const c10::optional<at::Tensor>& s) {
  if (!s.has_value()) return kNone;
  return s->dim() == 0 ? kScalar : kVector;
}

inline c10::optional<at::Tensor> contiguous(const c10::optional<at::Tensor>& t) {
  if (!t.has_value()) return t;
  return t->contiguous();
}

// ---------------------------------------------------------------------------
// Shape checks of the raw ops. The public API (laaf_kernels.functional) checks its
// arguments before dispatch, in the user's terms; these keep a direct
// torch.ops.laaf.* call from reading or writing out of bounds.
// ---------------------------------------------------------------------------

// `t` must have `like`'s shape (an absent optional passes).
inline void check_shape_like(const char* op, const char* name, const at::Tensor& t,
                             const char* like_name, const at::Tensor& like) {
  TORCH_CHECK(t.sizes() == like.sizes(), "laaf ", op, ": ", name, " must have ", like_name,
              "'s shape ", like.sizes(), ", got ", t.sizes());
}
inline void check_shape_like(const char* op, const char* name,
                             const c10::optional<at::Tensor>& t, const char* like_name,
                             const at::Tensor& like) {
  if (t.has_value()) check_shape_like(op, name, *t, like_name, like);
}

// Per-channel values along `dim` of z: absent, 0-d, or (C,) with C = z.size(dim).
inline void check_channel_values(const char* op, const char* name,
                                 const c10::optional<at::Tensor>& s, const at::Tensor& z,
                                 int64_t dim) {
  if (!s.has_value() || s->dim() == 0) return;
  const int64_t channels = z.dim() == 0 ? 1 : z.size(at::maybe_wrap_dim(dim, z.dim()));
  TORCH_CHECK(s->dim() == 1 && s->size(0) == channels, "laaf ", op, ": ", name,
              " must be 0-d or (C,) with C = z.size(", dim, ") = ", channels, ", got ",
              s->sizes());
}

// A flexible kind's params: (2, C), C = z.size(dim).
inline void check_flex_params(const char* op, const at::Tensor& params, const at::Tensor& z,
                              int64_t dim) {
  TORCH_CHECK(params.dim() == 2 && params.size(0) == 2, "laaf ", op,
              ": params must be (2, C), got ", params.sizes());
  check_channel_values(op, "params[0]", params.select(0, 0), z, dim);
}

// The linear layer: x (rows, K), weight (N, K), bias (N,), s 0-d or (N,).
inline void check_linear_shapes(const char* op, const at::Tensor& x, const at::Tensor& weight,
                                const c10::optional<at::Tensor>& bias,
                                const c10::optional<at::Tensor>& s) {
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1), "laaf ", op,
              ": x must be (rows, K) and weight (N, K), got ", x.sizes(), " and ",
              weight.sizes());
  const int64_t N = weight.size(0);
  TORCH_CHECK(!bias.has_value() || (bias->dim() == 1 && bias->size(0) == N), "laaf ", op,
              ": bias must be (N,) with N = ", N, ", got ", bias->sizes());
  TORCH_CHECK(!s.has_value() || s->dim() == 0 || (s->dim() == 1 && s->size(0) == N), "laaf ",
              op, ": s must be 0-d or (N,) with N = ", N, ", got ", s->sizes());
}

// The linear backward's tensors: g (x.size(0), N); z g's shape, or empty where the
// forward kept none (the backward forms it again, or needs none); y g's shape, if
// given. Whether z was kept.
inline bool check_linear_grads(const char* op, const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& g, const at::Tensor& z,
                               const c10::optional<at::Tensor>& y) {
  TORCH_CHECK(g.dim() == 2 && g.size(0) == x.size(0) && g.size(1) == weight.size(0), "laaf ",
              op, ": g must have shape (x.size(0), weight.size(0)) = (", x.size(0), ", ",
              weight.size(0), "), got ", g.sizes());
  check_shape_like(op, "y", y, "g", g);
  const bool kept = z.sizes() == g.sizes();
  TORCH_CHECK(kept || z.numel() == 0, "laaf ", op, ": z must have g's shape ", g.sizes(),
              " or be empty (not kept by the forward), got ", z.sizes());
  return kept;
}

// Rows up to this wide stay rows when nothing is per channel (see ActLayout).
constexpr int64_t kMaxUnsplitRow = 512;

// z (contiguous) as the 2-D grid of the kernels:
//  * no per-channel slope (none, or 0-d): any view will do, so (numel / last, last),
//    unless rows are wider than kMaxUnsplitRow: then (numel / w, w), w the largest
//    power of two up to 64 that divides numel (1 if numel is odd). The passes split
//    rows (or chunks of rows) among threads, and a 1-D z, one row, would otherwise
//    run on one CPU thread (or one row of GPU lanes);
//  * channels last (all dims after `dim` of size 1): (numel / C, C), the slope
//    of element (r, c) being s[c];
//  * channels in the middle (NCHW with dim = 1, say): (outer * C, inner), the
//    slope of row r being s[r % C] (on_rows).
struct ActLayout {
  int64_t rows, cols, channels;
  bool on_rows;
};

inline ActLayout act_layout(const at::Tensor& z, const c10::optional<at::Tensor>& s,
                            int64_t dim) {
  if (z.dim() == 0) return {1, 1, 1, false};
  dim = at::maybe_wrap_dim(dim, z.dim());  // the raw ops take dim = -1 too
  const int64_t channels = z.size(dim);
  int64_t inner = 1;
  for (int64_t d = dim + 1; d < z.dim(); ++d) inner *= z.size(d);
  if (!s.has_value() || s->dim() == 0) {  // no per-channel value: any 2-D view will do
    const int64_t last = z.size(z.dim() - 1);
    if (last > kMaxUnsplitRow) {
      int64_t w = 64;
      while (z.numel() % w != 0) w /= 2;
      return {z.numel() / w, w, channels, false};
    }
    return {last == 0 ? 0 : z.numel() / last, last, channels, false};
  }
  if (inner == 1) {  // channels last (trailing dims of size 1 included): (outer, C)
    return {channels == 0 ? 0 : z.numel() / channels, channels, channels, false};
  }
  return {z.numel() / inner, inner, channels, true};
}

// ds as the slope's shape: (C,) per channel, or the total for a 0-d slope.
inline at::Tensor finish_ds(const at::Tensor& per_channel, const at::Tensor& s) {
  at::Tensor ds = s.dim() == 0 ? per_channel.sum() : per_channel;
  return ds.to(s.scalar_type());
}

// A tensor's data, or null where it is undefined (an output not asked for, an
// absent optional input).
template <typename T>
T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}
template <typename T>
T* data_or_null(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? data_or_null<T>(*t) : nullptr;
}

// An uninitialised tensor like `like` where `need`, else an undefined one.
inline at::Tensor empty_if(bool need, const at::Tensor& like) {
  return need ? at::empty_like(like) : at::Tensor();
}

// f(std::integral_constant<int, ACT>) for the activation id `act`, where the table
// writes its act' in y (ActT<ACT>::kD1FromY, ActT = Act or gpu::Act): f's body is
// compiled for those activations only; any other is an error that says so.
template <template <int> class ActT, int ACT, typename F>
void call_if_from_y(const F& f) {
  if constexpr (ActT<ACT>::kD1FromY) {
    f(std::integral_constant<int, ACT>{});
  } else {
    TORCH_CHECK(false, "laaf grad_y: the activation's act' is not a function of y "
                "(the table has no d1_y for it)");
  }
}

template <template <int> class ActT, typename F>
void with_y_activation(int act, const F& f) {
  LAAF_ACT_SWITCH(act, [&] { call_if_from_y<ActT, ACT>(f); });
}

// Whether the table writes act' of activation id `act` in y (ActT<act>::kD1FromY).
template <template <int> class ActT>
bool d1_from_y(int act) {
  bool from_y = false;
  LAAF_ACT_SWITCH(act, [&] { from_y = ActT<ACT>::kD1FromY; });
  return from_y;
}

}  // namespace laaf
