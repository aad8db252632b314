// Prints gpu::Act<ID>::value / d1 / d2 (and d1_y, d1_y_dy, d1_y_dyy at y = value) of
// every activation for the inputs h read from stdin, in double and in float, one line
// per (type, id, h):
//   <type> <id> <h> <value> <d1> <d2> <d1_y> <d1_y_dy> <d1_y_dyy>   (the last three nan
//                                                                    without kD1FromY)
// and gpu::Flex<KIND>::value and grads (dz, dp0, dp1) of every flexible kind at z = h,
// for each parameter pair of kParams:
//   flex-<type> <kind> <z> <p0> <p1> <value> <dz> <dp0> <dp1>
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
  double in_y[3] = {NAN, NAN, NAN};
  if constexpr (F::kD1FromY) {
    in_y[0] = static_cast<double>(F::d1_y(y));
    in_y[1] = static_cast<double>(F::d1_y_dy(y));
    in_y[2] = static_cast<double>(F::d1_y_dyy(y));
  }
  std::printf("%s %d %.17g %.17g %.17g %.17g %.17g %.17g %.17g\n", type, ACT,
              static_cast<double>(h), static_cast<double>(y), static_cast<double>(F::d1(h)),
              static_cast<double>(F::d2(h)), in_y[0], in_y[1], in_y[2]);
}

constexpr double kParams[][2] = {{0.3, 0.2}, {1.2, -0.4}, {1.0, 0.1}};

template <typename T, int KIND>
void print_flex(const char* type, double z_in) {
  using F = laaf::gpu::Flex<KIND>;
  const T z = static_cast<T>(z_in);
  for (const auto& p : kParams) {
    const T p0 = static_cast<T>(p[0]), p1 = static_cast<T>(p[1]);
    const laaf::gpu::FlexGrads<T> d = F::grads(z, p0, p1);
    std::printf("flex-%s %d %.17g %.17g %.17g %.17g %.17g %.17g %.17g\n", type, KIND,
                static_cast<double>(z), p[0], p[1], static_cast<double>(F::value(z, p0, p1)),
                static_cast<double>(d.dz), static_cast<double>(d.dp0),
                static_cast<double>(d.dp1));
  }
}

template <int... IDS>
void print_all(double h, std::integer_sequence<int, IDS...>) {
  (print_one<double, IDS>("double", h), ...);
  (print_one<float, IDS>("float", h), ...);
}

template <int... KINDS>
void print_all_flex(double z, std::integer_sequence<int, KINDS...>) {
  (print_flex<double, KINDS>("double", z), ...);
  (print_flex<float, KINDS>("float", z), ...);
}

int main() {
  double h;
  while (std::scanf("%lf", &h) == 1) {
    print_all(h, std::make_integer_sequence<int, laaf::kNumActivations>{});
    print_all_flex(h, std::make_integer_sequence<int, laaf::kNumFlexibleKinds>{});
  }
  return 0;
}
