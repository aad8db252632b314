// Times the CPU activations' vector math alone (csrc/laaf_vec_math.h and the generated
// laaf_activations.h), one thread, 4096 lanes in L1, in ns a lane, beside at::vec's own
// (Sleef) calls; and prints the fp32 functions' worst error in ulp on a dense grid.
//
// Why it exists: at stop 24 the same inline exp ran at 0.30 or 1.05 ns a lane on
// AVX-512 depending only on how a bound and a blend were written (at::vec::maximum's
// NaN test and at::vec's vector masks: see laaf_vec_math.h's lane masks). Such a
// change shows here in seconds, long before it shows through bench.run's noise. Build
// it for both ISAs on an AVX-512 machine and compare the columns: zmm code slower
// per lane than ymm code is a sign of the same trouble.
//
// Build and run, from the repository root (TORCH = torch's folder, e.g.
// .venv/lib/python3.11/site-packages/torch; Sleef comes from libtorch_cpu):
//
//   AVX512="-mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c -DCPU_CAPABILITY=AVX512 -DCPU_CAPABILITY_AVX512"
//   AVX2="-mavx2 -mfma -mf16c -DCPU_CAPABILITY=AVX2 -DCPU_CAPABILITY_AVX2"
//   g++ -O3 -std=c++17 $AVX512 -Icsrc -isystem $TORCH/include tools/vec_math_bench.cpp \
//       -L$TORCH/lib -ltorch_cpu -lc10 -Wl,-rpath,$TORCH/lib -o /tmp/vec_math_bench
//   /tmp/vec_math_bench
//
// Stop 24, Intel Xeon (AVX-512), gcc 12, fp32 ns a lane, zmm / ymm build: sigmoid
// 0.45 / 0.67, sigmoid_ramp 0.52 / 0.84, cbrt 0.62 / 1.39, tanh 0.42 / 0.44.
// Stop 31, same machine, fp32 zmm: tanh 0.33-0.34 -> 0.29 (tanh_by_slots), relu_tanh
// 0.42-0.45 -> 0.36-0.37, tanh_ramp 0.43 -> 0.36-0.38; worst tanh error 2.38 -> 1.40 ulp.
// Stop 25, same machine, fp64 ns a lane, zmm / ymm: cbrt 1.62 / 4.2 (cbrt_double_normalised)
// where the old path, exp(log|z| / 3) and a Halley step, took 3.86 / 8.56; relu_poly
// 1.95 / 4.4, from 4.03 / 9.09.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <vector>

#include "laaf_activations.h"

namespace {

constexpr int kLanes = 4096;
constexpr int kReps = 10000;

// Best of 5 runs of y = f(z, a, b) over kLanes lanes, repeated kReps times: ns a lane.
template <typename T, typename F>
double ns_per_lane(F f, int zero_every = 0) {
  using V = at::vec::Vectorized<T>;
  std::vector<T> z(kLanes), y(kLanes), a(kLanes, T(0.4)), b(kLanes, T(0.3));
  for (int i = 0; i < kLanes; ++i) z[i] = T((i % 97 - 48.5) * 0.07);  // no exact zero
  if (zero_every > 0)
    for (int i = 0; i < kLanes; i += zero_every) z[i] = T(0);
  double best = 1e30;
  for (int run = 0; run < 5; ++run) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int rep = 0; rep < kReps; ++rep)
      for (int i = 0; i < kLanes; i += V::size())
        f(V::loadu(z.data() + i), V::loadu(a.data() + i), V::loadu(b.data() + i)).store(y.data() + i);
    const std::chrono::duration<double> t = std::chrono::steady_clock::now() - t0;
    best = std::min(best, t.count() / (double(kReps) * kLanes) * 1e9);
  }
  volatile T sink = y[7];
  (void)sink;
  return best;
}

// Worst error in fp32 ulp of f against the double-precision `truth` on [lo, hi].
template <typename F, typename G>
double worst_ulp(F f, G truth, float lo, float hi) {
  using V = at::vec::Vectorized<float>;
  const int n = 1 << 22;
  std::vector<float> z(n), y(n);
  for (int i = 0; i < n; ++i) z[i] = lo + (hi - lo) * float(i) / float(n);
  for (int i = 0; i < n; i += V::size()) f(V::loadu(z.data() + i)).store(y.data() + i);
  double worst = 0;
  for (int i = 0; i < n; ++i) {
    const double t = truth(double(z[i]));
    const float tf = float(t);
    const double ulp = double(std::nextafter(std::fabs(tf), INFINITY)) - std::fabs(tf);
    worst = std::max(worst, std::fabs(double(y[i]) - t) / ulp);
  }
  return worst;
}

template <typename T>
void time_all(const char* lanes) {
  using V = at::vec::Vectorized<T>;
  using namespace laaf;
  std::printf("%s, %d lanes a vector, ns a lane:\n", lanes, int(V::size()));
  const auto row = [](const char* name, double ns) { std::printf("  %-26s %.3f\n", name, ns); };
  row("exp_nonpositive", ns_per_lane<T>([](V z, V, V) { return exp_nonpositive(z.abs().neg()); }));
  row("at::vec exp (Sleef)", ns_per_lane<T>([](V z, V, V) { return z.abs().neg().exp(); }));
  row("sigmoid", ns_per_lane<T>([](V z, V, V) { return sigmoid(z); }));
  row("fast_tanh", ns_per_lane<T>([](V z, V, V) { return fast_tanh(z); }));
  row("at::vec tanh (Sleef)", ns_per_lane<T>([](V z, V, V) { return z.tanh(); }));
  row("cbrt", ns_per_lane<T>([](V z, V, V) { return cbrt(z); }));
  row("exp(log|z| / 3) (Sleef)",
      ns_per_lane<T>([](V z, V, V) { return (z.abs().log() * V(T(1) / T(3))).exp(); }));
  row("cbrt, a zero in 97 lanes", ns_per_lane<T>([](V z, V, V) { return cbrt(z); }, 97));
  row("relu_poly", ns_per_lane<T>([](V z, V a, V b) { return Flex<0>::value(z, a, b); }));
  row("relu_tanh", ns_per_lane<T>([](V z, V a, V b) { return Flex<1>::value(z, a, b); }));
  row("sigmoid_ramp", ns_per_lane<T>([](V z, V a, V b) { return Flex<2>::value(z, a, b); }));
  row("tanh_ramp", ns_per_lane<T>([](V z, V a, V b) { return Flex<3>::value(z, a, b); }));
}

}  // namespace

int main() {
  time_all<float>("float");
  time_all<double>("double");
  using V = at::vec::Vectorized<float>;
  std::printf("fp32 worst error, ulp (tests/ assert 3; tanh 1.5 on AVX-512, 3 on AVX2; cbrt 1):\n");
  std::printf("  sigmoid on [-80, 80]  %.2f\n",
              worst_ulp([](V z) { return laaf::sigmoid(z); },
                        [](double z) { return 1.0 / (1.0 + std::exp(-z)); }, -80.f, 80.f));
  std::printf("  tanh on [-12, 12]     %.2f\n",
              worst_ulp([](V z) { return laaf::fast_tanh(z); },
                        [](double z) { return std::tanh(z); }, -12.f, 12.f));
  std::printf("  cbrt on [-1e6, 1e6]   %.2f\n",
              worst_ulp([](V z) { return laaf::cbrt(z); },
                        [](double z) { return std::cbrt(z); }, -1e6f, 1e6f));
}
