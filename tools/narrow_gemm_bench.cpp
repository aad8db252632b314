// Times csrc/laaf_cpu_gemm.h's narrow GEMM alone, on one thread, the way
// csrc/laaf_cpu.cpp calls it (64-row chunks over M = 100 000 rows):
//
//   fwd:  z_chunk = x_chunk W^T + b           (also the backward's dx = gz W)
//   dW:   dW += gz_chunk^T x_chunk            (x_chunk packed per chunk)
//   bf16 fwd, x and W rounded to bf16: widened (each chunk of x to float, then fwd's
//   GEMM) and, where the CPU has AVX512-BF16, pairs (laaf_cpu_gemm_bf16.h)
//   bf16 dW on pairs: gz's chunk rounded to gz^T's pairs, x's chunk paired, and the
//   accumulating pair GEMM (compare with dW above, whose x chunk is packed as well)
//
// Timings here depend on how the compiler treats this file, not only the header:
// in one such harness GCC 12 kept a tile's accumulators on the stack (N = 50:
// 10.8 ms where N = 48 took 5.3), which the extension's build did not. Confirm a
// gain in the extension itself (bench.run) before keeping it.
//
// Build and run, from the repository root (TORCH = torch's folder, e.g.
// .venv/lib/python3.11/site-packages/torch; c10 for the GEMM's internal asserts):
//
//   AVX2="-mavx2 -mfma -DCPU_CAPABILITY=AVX2 -DCPU_CAPABILITY_AVX2"
//   AVX512="-mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -DCPU_CAPABILITY=AVX512 -DCPU_CAPABILITY_AVX512"
//   g++ -O3 -std=c++17 $AVX512 -Icsrc -isystem $TORCH/include tools/narrow_gemm_bench.cpp \
//       -L$TORCH/lib -lc10 -Wl,-rpath,$TORCH/lib -o /tmp/narrow_gemm_bench
//   /tmp/narrow_gemm_bench 50 50        # N K
//
// It first prints how many columns took the dot tail (AVX-512 only) and z's largest
// error against a double-precision product, then the median and minimum over 15
// repetitions and GFLOP/s over the real (unpadded) FLOPs; compare with this CPU's FMA
// peak (per core and cycle: 2 x 8 x 2 flop on AVX2, 2 x 16 x 2 on AVX-512).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <vector>

#include "laaf_cpu_gemm.h"
#include "laaf_cpu_gemm_bf16.h"

using laaf::cpu::GemmInit;
using laaf::cpu::narrow_gemm;
using laaf::cpu::PackedPanel;
using laaf::cpu::StridedA;

namespace {

constexpr int64_t kRows = 100000, kChunk = 64;

struct Timing {
  double median_ms, min_ms;
};

// Wall time of `run` over `reps` repetitions: median and minimum (this VM is noisy).
Timing time_ms(const std::function<void()>& run, int reps = 15) {
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    run();
    const auto elapsed = std::chrono::steady_clock::now() - t0;
    ms.push_back(std::chrono::duration<double, std::milli>(elapsed).count());
  }
  std::sort(ms.begin(), ms.end());
  return {ms[ms.size() / 2], ms[0]};
}

std::vector<float> random_vector(int64_t n, std::mt19937& gen) {
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  std::vector<float> v(n);
  for (auto& e : v) e = dist(gen);
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s N K   (the layer's widths, at most 128)\n", argv[0]);
    return 2;
  }
  const int64_t N = std::atoll(argv[1]), K = std::atoll(argv[2]);
  if (N < 1 || K < 1 || N > laaf::cpu::kMaxNarrow || K > laaf::cpu::kMaxNarrow) {
    std::fprintf(stderr, "N and K must be in [1, %ld]\n", (long)laaf::cpu::kMaxNarrow);
    return 2;
  }
  std::mt19937 gen(0);
  const auto x = random_vector(kRows * K, gen), w = random_vector(N * K, gen);
  const auto bias = random_vector(N, gen), gz = random_vector(kChunk * N, gen);
  std::vector<float> z(kRows * N);

  PackedPanel<float> wt(K, N, /*dot_tail=*/true);  // B(k, n) = W(n, k)
  wt.pack(w.data(), K, 1, K);
  const auto bias_row = laaf::cpu::padded_row(bias.data(), N);
  const Timing fwd = time_ms([&] {
    for (int64_t r0 = 0; r0 < kRows; r0 += kChunk) {
      narrow_gemm(StridedA<float>{x.data() + r0 * K, K, 1}, std::min(kChunk, kRows - r0), wt,
                  z.data() + r0 * N, N, GemmInit<float>{bias_row.data(), false});
    }
  });

  PackedPanel<float> x_chunk(kChunk, K);
  std::vector<float> dw(N * x_chunk.padded(), 0.f);  // accumulated: padded like B (gemm_rows)
  const Timing dw_time = time_ms([&] {
    for (int64_t r0 = 0; r0 < kRows; r0 += kChunk) {
      x_chunk.pack(x.data() + r0 * K, std::min(kChunk, kRows - r0), K, 1);
      narrow_gemm(StridedA<float>{gz.data(), 1, N}, N, x_chunk, dw.data(), x_chunk.padded(),
                  GemmInit<float>{nullptr, true});
    }
  });

  // z against a double-precision x W^T + b on every 97th row (a wrong tile shows here).
  double worst = 0;
  for (int64_t r = 0; r < kRows; r += 97) {
    for (int64_t n = 0; n < N; ++n) {
      double truth = bias[n];
      for (int64_t k = 0; k < K; ++k) truth += double(x[r * K + k]) * w[n * K + k];
      worst = std::max(worst, std::abs(z[r * N + n] - truth));
    }
  }

  using Bf16 = c10::BFloat16;
  const std::vector<Bf16> x16(x.begin(), x.end()), w16(w.begin(), w.end());
  PackedPanel<float> wt16(K, N, /*dot_tail=*/true);  // W rounded to bf16, widened
  const std::vector<float> w16_wide(w16.begin(), w16.end());
  wt16.pack(w16_wide.data(), K, 1, K);
  std::vector<float> x_wide(kChunk * K);
  const Timing bf16_widened = time_ms([&] {
    for (int64_t r0 = 0; r0 < kRows; r0 += kChunk) {
      const int64_t rows = std::min(kChunk, kRows - r0);
      std::copy(x16.begin() + r0 * K, x16.begin() + (r0 + rows) * K, x_wide.begin());
      narrow_gemm(StridedA<float>{x_wide.data(), K, 1}, rows, wt16, z.data() + r0 * N, N,
                  GemmInit<float>{bias_row.data(), false});
    }
  });
  Timing bf16_pairs{0, 0}, bf16_dw_pairs{0, 0};
  if (laaf::cpu::bf16_dot_enabled()) {
    laaf::cpu::PairPanel pairs(K, N);
    pairs.pack(w16.data(), 1, K);
    bf16_pairs = time_ms([&] {
      for (int64_t r0 = 0; r0 < kRows; r0 += kChunk) {
        laaf::cpu::pair_gemm(x16.data() + r0 * K, K, std::min(kChunk, kRows - r0), pairs,
                             z.data() + r0 * N, N, bias_row.data());
      }
    });
    // dW as the backward runs it (laaf_cpu.cpp: backward_pairs_chunk): gz's chunk
    // rounded into gz^T's pairs, x's chunk paired, then the accumulating pair GEMM.
    laaf::cpu::PairPanel gz_t(kChunk, N), x_pairs(kChunk, K);
    bf16_dw_pairs = time_ms([&] {
      for (int64_t r0 = 0; r0 < kRows; r0 += kChunk) {
        const int64_t rows = std::min(kChunk, kRows - r0);
        laaf::cpu::fill_pairs(gz_t, gz.data(), rows, N);
        laaf::cpu::fill_pairs(x_pairs, x16.data() + r0 * K, rows, K, 1);
        laaf::cpu::pair_gemm_words(laaf::cpu::WordPairs{gz_t.row(0), 1, gz_t.padded()}, N,
                                   x_pairs, dw.data(), x_pairs.padded(), /*accumulate=*/true);
      }
    });
  }

  const double gflop = 2.0 * kRows * N * K / 1e9;
  std::printf("N=%ld K=%ld: %ld dot-tail columns, fwd max |z - exact| %.2e\n", (long)N,
              (long)K, (long)wt.tail_columns(), worst);
  std::printf("N=%ld K=%ld, M=%ld, one thread: median (min) ms, GFLOP/s of the median\n",
              (long)N, (long)K, (long)kRows);
  for (const auto& [name, t] :
       {std::pair{"fwd              ", fwd}, std::pair{"dW               ", dw_time},
        std::pair{"bf16 fwd, widened", bf16_widened}, std::pair{"bf16 fwd, pairs  ", bf16_pairs},
        std::pair{"bf16 dW, pairs   ", bf16_dw_pairs}}) {
    if (t.median_ms == 0) {
      std::printf("  %s (no AVX512-BF16 on this CPU or build)\n", name);
    } else {
      std::printf("  %s %.3f (%.3f) ms  %.1f GFLOP/s\n", name, t.median_ms, t.min_ms,
                  gflop / t.median_ms * 1e3);
    }
  }
  return 0;
}
