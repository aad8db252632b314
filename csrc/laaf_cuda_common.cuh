// laaf_kernels: what the CUDA sources (laaf_cuda.cu, laaf_cuda_flexible.cu,
// laaf_cuda_grad_y.cu) share: per-channel values on the (rows, cols) grid, launch
// sizes, the channel-sum pass every backward runs, the deterministic fold of its
// partial sums, argument checks. Everything is in an unnamed
// namespace: each source gets its own copy of these small kernels and helpers.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <vector>

#include "laaf_layout.h"

namespace laaf {
namespace {

using at::Tensor;

constexpr int kThreads = 256;  // 8 warps per block, everywhere

// The slope of element (r, c) of the (rows, cols) grid: none, one value, one
// per column, or one per row (channel r % channels).
template <typename A>
struct SlopeGrid {
  const A* s;
  int kind;
  bool on_rows;
  int64_t channels;

  __device__ __forceinline__ A at(int64_t r, int64_t c) const {
    if (kind == kNone) return A(1);
    if (kind == kScalar) return s[0];
    return on_rows ? s[r % channels] : s[c];
  }
};

// The sum over a warp's 32 lanes, in a fixed butterfly order (the same bits every run).
template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// In a block of 32 column lanes x 8 row lanes (threadIdx.x = 32 * row lane + column
// lane): the sum of v over the 8 row lanes of each column lane, in row-lane order,
// valid in row lane 0. `scratch` is a __shared__ [8][32] array; every thread calls.
template <typename A>
__device__ __forceinline__ A sum_over_row_lanes(A v, A (&scratch)[8][32]) {
  const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
  scratch[ty][tx] = v;
  __syncthreads();
  if (ty == 0) {
    for (int i = 1; i < 8; ++i) v += scratch[i][tx];
  }
  return v;
}

// Up to kMaxFolds partial arrays, summed over their rows in one launch. Fold i reads
// in[i][p * stride[i] + w] for p < P, w < its width (> 0), and writes out[i][w]; the
// folds' columns are numbered one after another, fold i's ending (exclusive) at
// end[i], the last at width.
constexpr int kMaxFolds = 3;
template <typename A>
struct FoldSet {
  const A* in[kMaxFolds];
  int64_t stride[kMaxFolds];
  A* out[kMaxFolds];
  int64_t end[kMaxFolds];
  int64_t width;
  int count;

  // Fold i's column w: in + p * stride is its partial in row p, out its sum.
  struct Column {
    const A* in;
    int64_t stride;
    A* out;
  };
  // Column c (< width) of the folds: the last fold whose columns start at or before
  // c. The unrolled loop keeps the arrays' indices constant, so that they stay in
  // parameter space (a computed index would copy the whole set to the stack).
  __device__ __forceinline__ Column column(int64_t c) const {
    Column at{in[0] + c, stride[0], out[0] + c};
#pragma unroll
    for (int i = 1; i < kMaxFolds; ++i) {
      if (i < count && c >= end[i - 1]) {
        const int64_t w = c - end[i - 1];
        at = Column{in[i] + w, stride[i], out[i] + w};
      }
    }
    return at;
  }
};

// One block per column: thread t sums p = t, t + 256, ... in order, then a fixed tree
// over the 256 threads.
template <typename A>
__global__ void fold_parts_kernel(FoldSet<A> folds, int64_t P) {
  __shared__ A partial[kThreads];
  const auto col = folds.column(blockIdx.x);
  A total = A(0);
  for (int64_t p = threadIdx.x; p < P; p += kThreads) total += col.in[p * col.stride];
  partial[threadIdx.x] = total;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) *col.out = partial[0];
}

// The same fold for many columns and few parts: a block of 32 column lanes x 8 row
// lanes; row lane t sums p = t, t + 8, ... in order, then the 8 row lanes in order
// (sum_over_row_lanes). (One block per column would launch a block per value.)
template <typename A>
__global__ void fold_columns_kernel(FoldSet<A> folds, int64_t P) {
  __shared__ A scratch[8][32];
  const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
  const int64_t c = int64_t(blockIdx.x) * 32 + tx;
  const bool inside = c < folds.width;
  const auto col = folds.column(inside ? c : 0);
  A total = A(0);
  if (inside) {
    for (int64_t p = ty; p < P; p += 8) total += col.in[p * col.stride];
  }
  total = sum_over_row_lanes(total, scratch);
  if (ty == 0 && inside) *col.out = total;
}

// ---------------------------------------------------------------------------
// Channel sums: one element-wise pass that also sums NSUMS terms per channel
// ---------------------------------------------------------------------------
//
// Every backward here is such a pass (gz with db and ds; dz with dp0 and dp1; the
// grad_y passes with ds). A Body functor does the element-wise part:
//     Terms<A, NSUMS> body(int64_t at, A a, A b)
// stores element `at`'s outputs itself and returns its terms; a and b are the
// element's channel values of two per-channel grids (a slope s, a second tensor
// us; or a flexible kind's p0, p1). Sum j goes to parts[j] (null: not wanted):
//   channels last (columns): chunk blockIdx.y of the rows, a block of 32 column
//     lanes x 8 row lanes; parts[j] is (chunks, cols);
//   channels in the middle (on_rows): one warp per row; parts[j] is (rows,).
// Each sum runs in a fixed order (row lane by row lane, then the lanes in order;
// or a warp butterfly); fold_parts then adds the partials in a fixed order. No
// atomics: the same inputs give the same bits.

template <typename A, int NSUMS>
struct Terms {
  A v[NSUMS];
};

template <typename A, int NSUMS>
struct SumParts {
  A* parts[NSUMS];
};

template <int NSUMS, typename A, typename Body>
__global__ void channel_cols_kernel(Body body, SlopeGrid<A> a, SlopeGrid<A> b,
                                    SumParts<A, NSUMS> out, int64_t rows, int64_t cols,
                                    int64_t rows_per_chunk) {
  __shared__ A scratch[NSUMS][8][32];
  const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
  const int64_t c = int64_t(blockIdx.x) * 32 + tx;
  const int64_t r_end = std::min(rows, (int64_t(blockIdx.y) + 1) * rows_per_chunk);
  A acc[NSUMS];
#pragma unroll
  for (int j = 0; j < NSUMS; ++j) acc[j] = A(0);
  if (c < cols) {
    const A a_c = a.at(0, c), b_c = b.at(0, c);  // the column's channel values, hoisted
    for (int64_t r = int64_t(blockIdx.y) * rows_per_chunk + ty; r < r_end; r += 8) {
      const Terms<A, NSUMS> t = body(r * cols + c, a_c, b_c);
#pragma unroll
      for (int j = 0; j < NSUMS; ++j) acc[j] += t.v[j];
    }
  }
#pragma unroll
  for (int j = 0; j < NSUMS; ++j) {
    acc[j] = sum_over_row_lanes(acc[j], scratch[j]);
    if (ty == 0 && c < cols && out.parts[j] != nullptr) {
      out.parts[j][int64_t(blockIdx.y) * cols + c] = acc[j];
    }
  }
}

template <int NSUMS, typename A, typename Body>
__global__ void channel_rows_kernel(Body body, SlopeGrid<A> a, SlopeGrid<A> b,
                                    SumParts<A, NSUMS> out, int64_t rows, int64_t cols) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (kThreads / 32);
  for (int64_t r = int64_t(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32; r < rows;
       r += warps) {
    const A a_r = a.at(r, 0), b_r = b.at(r, 0);  // the row's channel values, hoisted
    A acc[NSUMS];
#pragma unroll
    for (int j = 0; j < NSUMS; ++j) acc[j] = A(0);
    for (int64_t c = lane; c < cols; c += 32) {
      const Terms<A, NSUMS> t = body(r * cols + c, a_r, b_r);
#pragma unroll
      for (int j = 0; j < NSUMS; ++j) acc[j] += t.v[j];
    }
#pragma unroll
    for (int j = 0; j < NSUMS; ++j) {
      acc[j] = warp_sum(acc[j]);
      if (lane == 0 && out.parts[j] != nullptr) out.parts[j][r] = acc[j];
    }
  }
}

int device_attribute(cudaDeviceAttr attribute, int device) {
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, device));
  return value;
}

int64_t blocks_for(int64_t work, int device) {
  const int64_t cap = int64_t(device_attribute(cudaDevAttrMultiProcessorCount, device)) * 8;
  return std::max<int64_t>(1, std::min(cap, (work + kThreads - 1) / kThreads));
}

// s = n * a in the kernels' arithmetic type (the slope may be fp32 under autocast).
Tensor slope_in(const c10::optional<Tensor>& s, at::ScalarType acc) {
  return s.has_value() ? s->to(acc).contiguous() : Tensor();
}

template <typename A>
SlopeGrid<A> slope_grid(const Tensor& s_acc, int kind, bool on_rows, int64_t channels) {
  return SlopeGrid<A>{data_or_null<A>(s_acc), kind, on_rows, channels};
}

// Rows per chunk of the column reductions: at least 256, and few enough chunks
// for gridDim.y (<= 65535). Depends on the shape alone, so the sums are deterministic.
int64_t rows_per_chunk(int64_t rows) {
  return std::max<int64_t>(256, (rows + 65534) / 65535);
}

// One fold of fold_parts_into: out (W,) = the sum over p of parts (P, W), a 2-D view
// whose columns are adjacent (stride 1); both of the kernels' arithmetic type.
struct Fold {
  Tensor parts, out;
};

// Every fold's partials summed over their P rows, deterministically, in one launch:
// one block per column (fold_parts_kernel) where there are at least as many rows as
// columns in all (a backward's per-chunk db and ds), else 32 columns a block
// (fold_columns_kernel: a narrow backward's dW has N K columns and one row per
// block). The choice and the order of the sums depend on the shapes alone. All
// folds have the same P; P = 0 gives zeros.
void fold_parts_into(const std::vector<Fold>& folds) {
  TORCH_INTERNAL_ASSERT(!folds.empty() && folds.size() <= size_t(kMaxFolds));
  const int64_t P = folds[0].parts.size(0);
  std::vector<const Fold*> with_columns;  // the kernels' set
  for (const Fold& f : folds) {
    TORCH_INTERNAL_ASSERT(f.parts.dim() == 2 && f.parts.size(0) == P &&
                          f.out.is_contiguous() && f.out.numel() == f.parts.size(1));
    if (f.parts.size(1) == 0) continue;
    TORCH_INTERNAL_ASSERT(f.parts.size(1) == 1 || f.parts.stride(1) == 1);
    if (P == 0) f.out.zero_();
    else with_columns.push_back(&f);
  }
  if (with_columns.empty()) return;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(folds[0].parts.scalar_type(), "laaf_cuda_fold_parts", [&] {
    FoldSet<scalar_t> set{};
    set.count = static_cast<int>(with_columns.size());
    for (int i = 0; i < set.count; ++i) {
      const Fold& f = *with_columns[size_t(i)];
      set.in[i] = f.parts.data_ptr<scalar_t>();
      set.stride[i] = f.parts.stride(0);
      set.out[i] = f.out.data_ptr<scalar_t>();
      set.end[i] = set.width += f.parts.size(1);
    }
    if (P >= set.width) {
      fold_parts_kernel<scalar_t><<<set.width, kThreads, 0, stream>>>(set, P);
    } else {
      fold_columns_kernel<scalar_t><<<(set.width + 31) / 32, kThreads, 0, stream>>>(set, P);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The (P, width) partials (any tensor of P * width values, row-major) summed over P.
Tensor fold_parts(const Tensor& parts, int64_t width) {
  Tensor out = at::empty({width}, parts.options());
  if (width > 0) fold_parts_into({{parts.reshape({-1, width}), out}});
  return out;
}

int64_t chunks_of(int64_t rows) {
  const int64_t chunk = rows_per_chunk(rows);
  return (rows + chunk - 1) / chunk;
}

// Launch the channel-sum pass of `body` over a (rows, cols) grid on the current
// stream (see channel_cols_kernel); parts[j] must be sized as it describes.
template <int NSUMS, typename A, typename Body>
void launch_channel_sums(const Body& body, const SlopeGrid<A>& a, const SlopeGrid<A>& b,
                         const SumParts<A, NSUMS>& out, int64_t rows, int64_t cols,
                         bool on_rows, int device) {
  if (rows * cols == 0) return;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (on_rows) {
    channel_rows_kernel<NSUMS, A><<<blocks_for(rows * 32, device), kThreads, 0, stream>>>(
        body, a, b, out, rows, cols);
  } else {
    const dim3 grid((cols + 31) / 32, chunks_of(rows));
    channel_cols_kernel<NSUMS, A><<<grid, kThreads, 0, stream>>>(body, a, b, out, rows, cols,
                                                                 rows_per_chunk(rows));
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void check_cuda(const Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "laaf cuda backend: ", name, " must be a CUDA tensor, got ", t.device());
  const auto dtype = t.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                  dtype == at::kBFloat16,
              "laaf cuda backend: ", name, " must be float32, float64, float16 or bfloat16, got ",
              dtype);
}

#define LAAF_DISPATCH_CUDA_TYPES(dtype, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, name, __VA_ARGS__)

}  // namespace
}  // namespace laaf
