// laaf_kernels: C = A B for the narrow matrices of a PINN's derivative passes
// (torch.ops.laaf.cpp_matmul), on the GEMM of laaf_cpu_gemm.h.
//
// Under create_graph=True (u_x, u_xx) the linear layer's backward is built from
// differentiable ops (laaf_kernels/ops/autograd.py: differentiable_linear_grads):
//     dx = gz W   (M x N) (N x K)        dW = gz^T x   (N x M) (M x K)
// and the loss's backward runs those products' own backwards, C = A B giving
//     dA = dC B^T                        dB = A^T dC.
// Every one is one of two shapes, with M the batch (10^4 collocation points) and
// the rest a layer's width (K, N <= 128):
//     tall:   A (m x k), B (k x n), k, n <= kMaxNarrow      C row by row
//     gram:   A (m x k), B (k x n), m, n <= kMaxNarrow      C summed over a long k
// ATen sends both to MKL, whose kernels are tuned for large matrices: on the
// machines of bench/README a (10^4 x 20) (20 x 20) product took ~85 us and a
// (10^4 x 20) (20 x 2) one ~110 us, for 8 and 0.8 MFLOP. Here:
//  * tall: B is packed once (PackedPanel); the rows of A go in chunks of
//    kRowsPerChunk over the threads, each chunk one narrow_gemm;
//  * gram: k is cut into chunks of kRowsPerChunk, the chunks into DwGroups (a
//    function of k alone); each group accumulates its own padded m x n partial
//    (B's chunk packed, A's columns read through its strides), and one thread adds
//    the partials in group order, in double, rounded once: the same bits for any
//    thread count, as the linear layer's dW.
// Other shapes and dtypes (bf16, fp16) go to at::mm. LAAF_CPU_NARROW=0 sends all of
// them there (narrow_enabled), so that benchmarks can compare the two.
// Stop 32, AMD EPYC (Zen 4, AVX-512), 2 threads, medians of 300 calls, us, MKL / ours:
//   fp32  (1e4 x 20)(20 x 20) 98.8 / 75.9    (20 x 1e4)(1e4 x 20) 101.4 / 91.8
//         (1e4 x 20)(20 x 2) 102.7 / 22.8    (20 x 1e4)(1e4 x 2) 141.9 / 56.1
//         (1e4 x 1)(1 x 20) 54.3 / 19.3
//   fp64  (1e4 x 20)(20 x 20) 357.7 / 120.3  (20 x 1e4)(1e4 x 20) 492.3 / 131.5
// and one Burgers PINN step (6 x 20 N-LAAF, 10^4 points, bench/models.py), the same
// process alternating the two: fp32 24.0 -> 20.6 ms, fp64 40.2 -> 27.1 ms.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <vector>

#include "laaf_cpu_common.h"
#include "laaf_cpu_gemm.h"

namespace laaf {
namespace {

using namespace cpu;

// Which of the two narrow shapes C = A B is (A m x k, B k x n), if either, for the
// narrow GEMM; kOther goes to at::mm. fp32 keeps MKL's sgemm where it won
// (laaf_cpu_gemm.h: narrow_shape for the tall one, kMaxNarrowGramArea).
enum class MatmulShape { kTall, kGram, kOther };

MatmulShape matmul_shape(int64_t m, int64_t k, int64_t n, at::ScalarType dtype) {
  if (narrow_shape(dtype, n, k)) return MatmulShape::kTall;
  if (m <= kMaxNarrow && n <= kMaxNarrow && !(dtype == at::kFloat && m * n > kMaxNarrowGramArea)) {
    return MatmulShape::kGram;
  }
  return MatmulShape::kOther;
}

// tall: C (m x n, contiguous) = A B, chunks of A's rows over the threads. B's panel
// keeps a dot tail (C's last few columns as dot products) only where A's depth (its
// rows) is contiguous.
template <typename T>
void tall_matmul(const Tensor& a, const Tensor& b, T* c) {
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  PackedPanel<T> panel(k, n, /*dot_tail=*/a.stride(1) == 1);
  panel.pack(b.data_ptr<T>(), k, b.stride(0), b.stride(1));
  const T* a_data = a.data_ptr<T>();
  const int64_t chunks = (m + kRowsPerChunk - 1) / kRowsPerChunk;
  at::parallel_for(0, chunks, grain(kRowsPerChunk * (k + n)), [&](int64_t k0, int64_t k1) {
    for (int64_t chunk = k0; chunk < k1; ++chunk) {
      const int64_t r0 = chunk * kRowsPerChunk;
      const StridedA<T> rows{a_data + r0 * a.stride(0), a.stride(0), a.stride(1)};
      narrow_gemm(rows, std::min(kRowsPerChunk, m - r0), panel, c + r0 * n, n, GemmInit<T>{});
    }
  });
}

// gram: C (m x n, contiguous) = sum over chunks j of A(:, j) B(j, :), j the chunks of
// k; each DwGroups group into its own partial (m rows of B's padded width), folded in
// group order in double and rounded once into C.
template <typename T>
void gram_matmul(const Tensor& a, const Tensor& b, T* c) {
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  const int64_t chunks = (k + kRowsPerChunk - 1) / kRowsPerChunk;
  const DwGroups groups(chunks);
  const int64_t padded = padded_width<T>(n), part_size = m * padded;
  std::vector<T> parts(groups.count * part_size, T(0));
  const T* a_data = a.data_ptr<T>();
  const T* b_data = b.data_ptr<T>();
  at::parallel_for(0, groups.count, 1, [&](int64_t g0, int64_t g1) {
    PackedPanel<T> b_chunk(kRowsPerChunk, n);
    for (int64_t grp = g0; grp < g1; ++grp) {
      const int64_t end = std::min(chunks, (grp + 1) * groups.per_group);
      for (int64_t chunk = grp * groups.per_group; chunk < end; ++chunk) {
        const int64_t d0 = chunk * kRowsPerChunk;
        b_chunk.pack(b_data + d0 * b.stride(0), std::min(kRowsPerChunk, k - d0), b.stride(0),
                     b.stride(1));
        const StridedA<T> cols{a_data + d0 * a.stride(1), a.stride(0), a.stride(1)};
        narrow_gemm(cols, m, b_chunk, parts.data() + grp * part_size, padded,
                    GemmInit<T>{nullptr, true});
      }
    }
  });
  const std::vector<double> sums = fold_sums(parts.data(), groups.count, part_size);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t j = 0; j < n; ++j) c[r * n + j] = static_cast<T>(sums[r * padded + j]);
  }
}

void check_matmul_args(const Tensor& a, const Tensor& b) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2, "laaf cpp_matmul: a and b must be 2-D, got ",
              a.dim(), "-D and ", b.dim(), "-D");
  TORCH_CHECK(a.size(1) == b.size(0), "laaf cpp_matmul: a's columns (", a.size(1),
              ") must equal b's rows (", b.size(0), ")");
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "laaf cpp_matmul: a and b must have one dtype, got ",
              a.scalar_type(), " and ", b.scalar_type());
  check_dtype(a, "a");
}

// The kernel that C = A B runs on: kOther (at::mm) also for the 16-bit dtypes, an
// empty C or depth, and LAAF_CPU_NARROW=0.
MatmulShape matmul_path(int64_t m, int64_t k, int64_t n, at::ScalarType dtype) {
  const bool ours = narrow_enabled() && (dtype == at::kFloat || dtype == at::kDouble) &&
                    m * n > 0 && k > 0;
  return ours ? matmul_shape(m, k, n, dtype) : MatmulShape::kOther;
}

// cpp_matmul_path: matmul_path by name ("tall", "gram", "aten"), for the tests.
std::string matmul_path_name(int64_t m, int64_t k, int64_t n, at::ScalarType dtype) {
  switch (matmul_path(m, k, n, dtype)) {
    case MatmulShape::kTall: return "tall";
    case MatmulShape::kGram: return "gram";
    default: return "aten";
  }
}

Tensor matmul(const Tensor& a, const Tensor& b) {
  check_matmul_args(a, b);
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  const auto dtype = a.scalar_type();
  const MatmulShape shape = matmul_path(m, k, n, dtype);
  if (shape == MatmulShape::kOther) return at::mm(a, b);
  Tensor c = at::empty({m, n}, a.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "laaf_cpp_matmul", [&] {
    if (shape == MatmulShape::kTall) {
      tall_matmul<scalar_t>(a, b, c.data_ptr<scalar_t>());
    } else {
      gram_matmul<scalar_t>(a, b, c.data_ptr<scalar_t>());
    }
  });
  return c;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(laaf, m) {
  m.def("cpp_matmul(Tensor a, Tensor b) -> Tensor");
  m.def("cpp_matmul_path(int m, int k, int n, ScalarType dtype) -> str", &matmul_path_name);
}

TORCH_LIBRARY_IMPL(laaf, CPU, m) {
  m.impl("cpp_matmul", &matmul);
}

}  // namespace laaf
