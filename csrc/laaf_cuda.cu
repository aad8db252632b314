// laaf_kernels: CUDA kernels of the "cuda" backend (torch.ops.laaf.cuda_*).
//
// Forward of the linear layer, y = act(h), h = s * z, z = x W^T + b:
//   * narrow layers (N, K <= 128, the PINN widths): ONE kernel. Each block
//     stages W (and b, s) in shared memory once, then walks tiles of 64 rows
//     of x: the tile is copied to shared memory, each thread forms z for 8 rows
//     x (32 * NJ) columns in registers, and writes y (and z when training a
//     layer that keeps it). x is read once and y written once.
//   * wide layers: z from cuBLAS (at::addmm), then one epilogue pass y = act(s z).
// Backward, given g = dL/dy:
//   * narrow layers (narrow_backward_layer, laaf_cuda_narrow.cuh): the forward kept
//     no z; ONE kernel forms z again and every gradient (laaf_cuda_narrow_bwd.cu).
//     Where the device cannot run it, z comes from cuBLAS and the wide path follows.
//   * wide layers, given the saved z:
//       gh = g act'(h), gz = gh s        one pass over (g, z) that also writes the
//       db = sum gz, ds = sum gh z       per-chunk partial column sums
//       dx = gz W, dW = gz^T x           cuBLAS GEMMs (at::mm)
//
// Determinism: no atomics. Every partial sum has a fixed home (a chunk of rows
// and a column) and is summed in a fixed order, then the partials are folded by
// fold_parts_into, also in a fixed order: the same inputs give the same bits.
//
// Arithmetic is in A = at::opmath_type<T> (float for fp32/fp16/bf16, double for
// fp64). The activation math comes from laaf_activations_cuda.cuh, generated
// from the one table in laaf_kernels/activations.py.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "laaf_activations_cuda.cuh"
#include "laaf_cuda_common.cuh"
#include "laaf_cuda_narrow.cuh"

namespace laaf {
namespace {

// act'(h), from the saved y = act(h) where the table allows and y was saved.
template <int ACT, typename A>
__device__ __forceinline__ A act_d1(const A h, const A y, bool have_y) {
  if constexpr (gpu::Act<ACT>::kD1FromY) {
    if (have_y) return gpu::Act<ACT>::d1_y(y);
  }
  return gpu::Act<ACT>::d1(h);
}

// ===========================================================================
// Kernels
// ===========================================================================

// y = act(s z) over a (rows, cols) grid; y may be z itself (in place).
template <typename T, int ACT>
__global__ void forward_epilogue_kernel(const T* z, T* y, SlopeGrid<at::opmath_type<T>> slope,
                                        int64_t rows, int64_t cols) {
  using A = at::opmath_type<T>;
  const int64_t n = rows * cols;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t r = i / cols;
    const A h = slope.at(r, i - r * cols) * static_cast<A>(z[i]);
    y[i] = static_cast<T>(gpu::Act<ACT>::value(h));
  }
}

// --- The narrow fused forward ------------------------------------------------

// Shared memory of the narrow kernel, in A: W^T as (K4, 32 NJ) and one x tile
// as (kTileRows, K4), K4 = K rounded up to 4; the padding holds zeros.
template <typename A>
size_t narrow_smem_bytes(int64_t K, int nj) {
  return size_t(round_up4(K)) * (32 * nj + kTileRows) * sizeof(A);
}

// Lane l of a warp owns columns c = l + 32 j (j < NJ); warp w owns rows
// w*8 .. w*8+7 of the tile; z's register tile is tile_product's (laaf_cuda_narrow.cuh),
// on rows of W^T (consecutive lanes, consecutive columns: no bank conflict).
template <typename T, int ACT, int NJ>
__global__ void __launch_bounds__(kThreads)
narrow_linear_forward_kernel(const T* __restrict__ x, const T* __restrict__ w,
                             const T* __restrict__ b, SlopeGrid<at::opmath_type<T>> slope,
                             T* __restrict__ y, T* __restrict__ z_out, int64_t M, int N, int K) {
  using A = at::opmath_type<T>;
  constexpr int WCOLS = 32 * NJ;
  const int K4 = static_cast<int>(round_up4(K));
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* w_s = reinterpret_cast<A*>(smem_raw);  // w_s[k * WCOLS + c] = W[c, k]
  A* x_s = w_s + K4 * WCOLS;                // x_s[r * K4 + k] = x[r0 + r, k]

  // Stage W^T once per block (zeros outside N x K), and zero x's k padding.
  for (int i = threadIdx.x; i < K4 * WCOLS; i += kThreads) {
    const int k = i / WCOLS, c = i - k * WCOLS;
    w_s[i] = (k < K && c < N) ? static_cast<A>(w[int64_t(c) * K + k]) : A(0);
  }
  for (int i = threadIdx.x; i < kTileRows * (K4 - K); i += kThreads) {
    x_s[(i / (K4 - K)) * K4 + K + i % (K4 - K)] = A(0);
  }
  A bias[NJ], s_col[NJ];
  load_column_params<NJ>(b, slope, N, bias, s_col);

  for_each_block_tile(M, [&](int64_t r0, int rows_here) {
    // The tile is one contiguous span of x: coalesced loads.
    const T* x_tile = x + r0 * K;
    for (int i = threadIdx.x; i < rows_here * K; i += kThreads) {
      x_s[(i / K) * K4 + i % K] = static_cast<A>(x_tile[i]);
    }
    __syncthreads();

    // z (without b) for this thread's 8 rows x NJ columns.
    A acc[kRowsPerThread][NJ];
    tile_product<NJ>(x_s, K4, w_s, WCOLS, 1, K4, acc);

    // Epilogue: z = acc + b, h = s z, y = act(h); consecutive lanes write
    // consecutive columns of a row.
    for_each_tile_cell<NJ>([&](int r, int row, int j, int c) {
      if (row >= rows_here || c >= N) return;
      const A zv = acc[r][j] + bias[j];
      const int64_t at = (r0 + row) * N + c;
      y[at] = static_cast<T>(gpu::Act<ACT>::value(s_col[j] * zv));
      if (z_out != nullptr) z_out[at] = static_cast<T>(zv);
    });
  });
}

// --- Backward epilogue -------------------------------------------------------

// The channel-sum body (laaf_cuda_common.cuh) of the backward, at element `at`
// with slope s: gh = g act'(s z), gz = gh s (stored unless null); the terms of
// db and ds are gz and gh z.
template <typename T, int ACT>
struct GradBody {
  using A = at::opmath_type<T>;
  const T *g, *z, *y;  // y: the saved output, or null
  T* gz;
  __device__ Terms<A, 2> operator()(int64_t at, A s, A) const {
    const A zv = static_cast<A>(z[at]);
    const A yv = y != nullptr ? static_cast<A>(y[at]) : A(0);
    const A gh = static_cast<A>(g[at]) * act_d1<ACT>(s * zv, yv, y != nullptr);
    const A gzv = gh * s;
    if (gz != nullptr) gz[at] = static_cast<T>(gzv);
    return {{gzv, gh * zv}};
  }
};

// ===========================================================================
// Launchers
// ===========================================================================

template <typename T, int ACT>
void launch_forward_epilogue(const Tensor& z, Tensor& y, const SlopeGrid<at::opmath_type<T>>& sg,
                             int64_t rows, int64_t cols) {
  if (rows * cols == 0) return;
  const int device = z.get_device();
  forward_epilogue_kernel<T, ACT>
      <<<blocks_for(rows * cols, device), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          z.data_ptr<T>(), y.data_ptr<T>(), sg, rows, cols);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Whether the narrow forward runs this layer: N, K <= 128, and its shared memory
// fits this device (narrow_smem_fits: LAAF_CUDA_NARROW=0 switches it off).
template <typename A>
bool narrow_fits(int64_t N, int64_t K, int device) {
  if (N > kNarrowMax || K > kNarrowMax || N == 0 || K == 0) return false;
  return narrow_smem_fits(narrow_smem_bytes<A>(K, column_groups(N)), device);
}

template <typename T, int ACT, int NJ>
void launch_narrow_nj(const Tensor& x, const Tensor& w, const c10::optional<Tensor>& b,
                      const SlopeGrid<at::opmath_type<T>>& sg, Tensor& y, T* z_out) {
  using A = at::opmath_type<T>;
  const int64_t M = x.size(0);
  const int N = static_cast<int>(w.size(0)), K = static_cast<int>(w.size(1));
  const size_t smem = narrow_smem_bytes<A>(K, NJ);
  auto kernel = narrow_linear_forward_kernel<T, ACT, NJ>;
  const int64_t blocks =
      persistent_grid(kernel, smem, x.get_device(), row_tiles(M));
  kernel<<<blocks, kThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr<T>(), w.data_ptr<T>(), data_or_null<T>(b), sg,
      y.data_ptr<T>(), z_out, M, N, K);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int ACT>
void launch_narrow(const Tensor& x, const Tensor& w, const c10::optional<Tensor>& b,
                   const SlopeGrid<at::opmath_type<T>>& sg, Tensor& y, T* z_out) {
  with_column_groups(w.size(0), [&](auto nj) {
    launch_narrow_nj<T, ACT, decltype(nj)::value>(x, w, b, sg, y, z_out);
  });
}

// gz (if asked for) and the partials of db and ds (each unless undefined): per
// chunk (chunks, cols) for slopes per column, per row (rows,) for on_rows (no db).
template <typename T, int ACT>
void launch_backward(const Tensor& g, const Tensor& z, const c10::optional<Tensor>& y,
                     Tensor& gz, Tensor& db_part, Tensor& ds_part,
                     const SlopeGrid<at::opmath_type<T>>& sg, int64_t rows, int64_t cols,
                     bool on_rows) {
  using A = at::opmath_type<T>;
  const GradBody<T, ACT> body{g.data_ptr<T>(), z.data_ptr<T>(), data_or_null<T>(y),
                              data_or_null<T>(gz)};
  const SlopeGrid<A> unused{nullptr, kNone, false, 0};
  launch_channel_sums<2, A>(body, sg, unused,
                            SumParts<A, 2>{{data_or_null<A>(db_part), data_or_null<A>(ds_part)}},
                            rows, cols, on_rows, z.get_device());
}

// ===========================================================================
// The ops
// ===========================================================================

// Whether a training layer keeps z: all but a narrow_backward_layer, whose backward
// forms z again. A function of the shape and dtype alone, not of the device or
// LAAF_CUDA_NARROW (a device without the fused backward forms z with cuBLAS
// instead). cuda_linear_fwd writes z as its caller says (store_z); the caller's
// policy, cuda_backend.stores_z, is this one in plain Python, so that torch.compile
// writes its answer into the traced graph, and a test holds the two equal.
bool linear_stores_z(int64_t n_out, int64_t k_in, bool training, at::ScalarType dtype) {
  return training && !narrow_backward_layer(n_out, k_in, dtype);
}

std::tuple<Tensor, Tensor> linear_fwd(const Tensor& x_in, const Tensor& weight_in,
                                      const c10::optional<Tensor>& bias_in,
                                      const c10::optional<Tensor>& s, c10::string_view activation,
                                      bool keep_z) {
  check_cuda(x_in, "x");
  check_linear_shapes("cuda_linear_fwd", x_in, weight_in, bias_in, s);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const int act = activation_id(activation);
  const Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  const auto bias = contiguous(bias_in);
  const int64_t M = x.size(0), N = weight.size(0);
  const at::ScalarType acc = at::toOpMathType(x.scalar_type());
  const Tensor s_acc = slope_in(s, acc);
  Tensor y, z;
  LAAF_DISPATCH_CUDA_TYPES(x.scalar_type(), "laaf_cuda_linear_fwd", [&] {
    using A = at::opmath_type<scalar_t>;
    const auto sg = slope_grid<A>(s_acc, slope_kind(s), false, 0);
    if (M > 0 && narrow_fits<A>(N, weight.size(1), x.get_device())) {
      y = at::empty({M, N}, x.options());
      z = keep_z ? at::empty({M, N}, x.options()) : at::empty({0}, x.options());
      LAAF_ACT_SWITCH(act, [&] {
        launch_narrow<scalar_t, ACT>(x, weight, bias, sg, y,
                                     keep_z ? z.data_ptr<scalar_t>() : nullptr);
      });
      return;
    }
    // Wide (or empty): cuBLAS, then the epilogue; unless z is kept, z's buffer becomes y.
    z = bias.has_value() ? at::addmm(*bias, x, weight.t()) : at::mm(x, weight.t());
    y = keep_z ? at::empty_like(z) : z;
    LAAF_ACT_SWITCH(act, [&] { launch_forward_epilogue<scalar_t, ACT>(z, y, sg, M, N); });
    if (!keep_z) z = at::empty({0}, x.options());
  });
  return {y, z};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> linear_bwd(
    const Tensor& g_in, const Tensor& x_in, const Tensor& weight_in,
    const c10::optional<Tensor>& bias_in, const Tensor& z_in, const c10::optional<Tensor>& s,
    const c10::optional<Tensor>& y_in, c10::string_view activation, bool need_dx, bool need_dw,
    bool need_db, bool need_ds) {
  check_cuda(x_in, "x");
  check_linear_shapes("cuda_linear_bwd", x_in, weight_in, bias_in, s);
  const bool kept_z = check_linear_grads("cuda_linear_bwd", x_in, weight_in, g_in, z_in, y_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const int act = activation_id(activation);
  need_ds = need_ds && s.has_value();
  const Tensor g = g_in.contiguous();
  Tensor x = x_in, weight = weight_in;  // as given: cuBLAS reads transposed layouts
  auto bias = bias_in;
  const int64_t N = weight.size(0);
  if (!kept_z && x.size(0) > 0 && narrow_backward_layer(N, weight.size(1), x.scalar_type())) {
    // The fused kernel reads them contiguous; a device that cannot run it takes the
    // wide path below on these same copies.
    x = x_in.contiguous(), weight = weight_in.contiguous(), bias = contiguous(bias_in);
    const auto fused = narrow_linear_backward(g, x, weight, bias, s, act, need_dx, need_dw,
                                              need_db, need_ds);
    if (fused.has_value()) return *fused;
  }
  // The wide path, on the saved z or (a forward that kept none) z formed again.
  const Tensor z = kept_z ? z_in.contiguous()
                          : (bias.has_value() ? at::addmm(*bias, x, weight.t())
                                              : at::mm(x, weight.t()));
  const auto y = contiguous(y_in);
  const int64_t rows = z.size(0), cols = z.size(1);
  const at::ScalarType acc = at::toOpMathType(x.scalar_type());
  const Tensor s_acc = slope_in(s, acc);
  const auto part_options = x.options().dtype(acc);
  Tensor gz = empty_if(need_dx || need_dw, z);
  Tensor db_part = need_db ? at::empty({chunks_of(rows), cols}, part_options) : Tensor();
  Tensor ds_part = need_ds ? at::empty({chunks_of(rows), cols}, part_options) : Tensor();
  LAAF_DISPATCH_CUDA_TYPES(z.scalar_type(), "laaf_cuda_linear_bwd", [&] {
    const auto sg = slope_grid<at::opmath_type<scalar_t>>(s_acc, slope_kind(s), false, 0);
    LAAF_ACT_SWITCH(act, [&] {
      launch_backward<scalar_t, ACT>(g, z, y, gz, db_part, ds_part, sg, rows, cols, false);
    });
  });
  const Tensor empty = at::empty({0}, x.options());
  // db and ds: both folds in one launch.
  const Tensor db = need_db ? at::empty({cols}, part_options) : Tensor();
  const Tensor ds = need_ds ? at::empty({cols}, part_options) : Tensor();
  std::vector<Fold> folds;
  if (need_db) folds.push_back({db_part, db});
  if (need_ds) folds.push_back({ds_part, ds});
  if (!folds.empty()) fold_parts_into(folds);
  return {need_dx ? at::mm(gz, weight) : empty,
          need_dw ? at::mm(gz.t(), x) : empty,
          need_db ? db.to(x.scalar_type()) : empty,
          need_ds ? finish_ds(ds, *s) : empty};
}

Tensor act_fwd(const Tensor& z_in, const c10::optional<Tensor>& s, c10::string_view activation,
               int64_t dim) {
  check_cuda(z_in, "z");
  check_channel_values("cuda_act_fwd", "s", s, z_in, dim);
  const c10::cuda::CUDAGuard guard(z_in.device());
  const int act = activation_id(activation);
  const Tensor z = z_in.contiguous();
  Tensor y = at::empty_like(z);
  if (z.numel() == 0) return y;
  const ActLayout L = act_layout(z, s, dim);
  const Tensor s_acc = slope_in(s, at::toOpMathType(z.scalar_type()));
  LAAF_DISPATCH_CUDA_TYPES(z.scalar_type(), "laaf_cuda_act_fwd", [&] {
    const auto sg =
        slope_grid<at::opmath_type<scalar_t>>(s_acc, slope_kind(s), L.on_rows, L.channels);
    LAAF_ACT_SWITCH(act, [&] {
      launch_forward_epilogue<scalar_t, ACT>(z, y, sg, L.rows, L.cols);
    });
  });
  return y;
}

std::tuple<Tensor, Tensor> act_bwd(const Tensor& g_in, const Tensor& z_in,
                                   const c10::optional<Tensor>& s,
                                   const c10::optional<Tensor>& y_in, c10::string_view activation,
                                   int64_t dim, bool need_dz, bool need_ds) {
  check_cuda(z_in, "z");
  check_channel_values("cuda_act_bwd", "s", s, z_in, dim);
  check_shape_like("cuda_act_bwd", "g", g_in, "z", z_in);
  check_shape_like("cuda_act_bwd", "y", y_in, "z", z_in);
  const c10::cuda::CUDAGuard guard(z_in.device());
  const int act = activation_id(activation);
  need_ds = need_ds && s.has_value();
  const Tensor z = z_in.contiguous(), g = g_in.contiguous();
  const auto y = contiguous(y_in);
  const Tensor empty = at::empty({0}, z.options());
  if (z.numel() == 0) {
    return {need_dz ? at::zeros_like(z) : empty, need_ds ? at::zeros_like(*s) : empty};
  }
  const ActLayout L = act_layout(z, s, dim);
  const at::ScalarType acc = at::toOpMathType(z.scalar_type());
  const Tensor s_acc = slope_in(s, acc);
  Tensor dz = empty_if(need_dz, z), no_db;
  // One ds per row (on_rows, folded onto the channels below), or per chunk and column.
  const auto part_options = z.options().dtype(acc);
  Tensor ds_part = !need_ds   ? Tensor()
                   : L.on_rows ? at::empty({L.rows}, part_options)
                               : at::empty({chunks_of(L.rows), L.cols}, part_options);
  LAAF_DISPATCH_CUDA_TYPES(z.scalar_type(), "laaf_cuda_act_bwd", [&] {
    const auto sg =
        slope_grid<at::opmath_type<scalar_t>>(s_acc, slope_kind(s), L.on_rows, L.channels);
    LAAF_ACT_SWITCH(act, [&] {
      launch_backward<scalar_t, ACT>(g, z, y, dz, no_db, ds_part, sg, L.rows, L.cols,
                                     L.on_rows);
    });
  });
  Tensor ds = empty;
  if (need_ds) {
    // Rows of the on_rows layout are (outer, C): fold them onto the channels.
    ds = finish_ds(fold_parts(ds_part, L.on_rows ? L.channels : L.cols), *s);
  }
  return {need_dz ? dz : empty, ds};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(laaf, m) {
  m.def("cuda_linear_fwd(Tensor x, Tensor weight, Tensor? bias, Tensor? s, str activation, "
        "bool store_z) -> (Tensor, Tensor)");
  m.def("cuda_linear_bwd(Tensor g, Tensor x, Tensor weight, Tensor? bias, Tensor z, Tensor? s, "
        "Tensor? y, str activation, bool need_dx, bool need_dw, bool need_db, bool need_ds) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("cuda_act_fwd(Tensor z, Tensor? s, str activation, int dim) -> Tensor");
  m.def("cuda_linear_stores_z(int n_out, int k_in, bool training, ScalarType dtype) -> bool",
        &linear_stores_z);
  m.def("cuda_act_bwd(Tensor g, Tensor z, Tensor? s, Tensor? y, str activation, int dim, "
        "bool need_dz, bool need_ds) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(laaf, CUDA, m) {
  m.impl("cuda_linear_fwd", &linear_fwd);
  m.impl("cuda_linear_bwd", &linear_bwd);
  m.impl("cuda_act_fwd", &act_fwd);
  m.impl("cuda_act_bwd", &act_bwd);
}

}  // namespace laaf
