// Prints gpu::Act<ID>::value / d1 / d2 (and d1_y at y = value) of every activation
// for the inputs h read from stdin, in double and in float, one line per (type, id, h):
//   <type> <id> <h> <value> <d1> <d2> <d1_y or nan>
// Built for the host by tests/test_cuda_sources.py (the functors are __host__ __device__)
// to check the generated CUDA header against the Python table without a GPU.
#include <cmath>
#include <cstdio>
#include <utility>
#include <vector>

#include "laaf_activations_cuda.cuh"

template <typename T, int ACT>
void print_one(const char* type, double h_in) {
  using F = laaf::gpu::Act<ACT>;
  const T h = static_cast<T>(h_in);
  const T y = F::value(h);
  double d1_y = NAN;
  if constexpr (F::kD1FromY) d1_y = static_cast<double>(F::d1_y(y));
  std::printf("%s %d %.17g %.17g %.17g %.17g %.17g\n", type, ACT, static_cast<double>(h),
              static_cast<double>(y), static_cast<double>(F::d1(h)),
              static_cast<double>(F::d2(h)), d1_y);
}

template <int... IDS>
void print_all(double h, std::integer_sequence<int, IDS...>) {
  (print_one<double, IDS>("double", h), ...);
  (print_one<float, IDS>("float", h), ...);
}

int main() {
  double h;
  while (std::scanf("%lf", &h) == 1) {
    print_all(h, std::make_integer_sequence<int, laaf::kNumActivations>{});
  }
  return 0;
}
