// MKL VML's double tanh for the forward epilogue, where it is faster than what the
// build has otherwise.
//
// y = tanh(h) in double costs a vector tanh per lane. On AVX2 builds our inline
// fast_tanh_double (laaf_vec_math.h) beats Sleef by 2x. AVX-512 builds have no inline
// double paths (they lost to Sleef there) and would call Sleef's tanh_u10: 3.9 ns a
// lane on one Intel Xeon thread, where MKL's vmdTanh (what torch.tanh itself calls
// on x86) takes 1.6. libtorch_cpu links MKL statically and exports its VML entry
// points, so the extension declares vmdTanh as a *weak* symbol: resolved from
// libtorch_cpu when it has one (x86 wheels), null otherwise (other builds), and then
// Sleef runs as before.
#pragma once
#include <cstdint>
#include <type_traits>

// Linux (ELF weak references) AVX-512 builds only; elsewhere the hook is off.
#if defined(__linux__) && defined(CPU_CAPABILITY_AVX512)
#define LAAF_VML_TANH 1
extern "C" {
// MKL's LP64 interface: void vmdTanh(MKL_INT n, const double* a, double* r, MKL_INT64 mode).
void vmdTanh(int n, const double* a, double* r, long long mode) __attribute__((weak));
}
#else
#define LAAF_VML_TANH 0
#endif

namespace laaf {
namespace cpu {

// VML_HA | VML_ERRMODE_IGNORE: the high-accuracy variant (< 1 ulp), no errno/callbacks,
// as ATen's own vml::vtanh asks for.
constexpr long long kVmlHighAccuracy = 0x2 | 0x100;

// Elements per VML call: small enough that h, written into y just before, is still
// in L1/L2 when VML reads it back.
constexpr int64_t kVmlBlock = 2048;

// Whether the double tanh forward goes through VML: Linux AVX-512 builds (the others
// keep their inline or Sleef paths) whose libtorch exports vmdTanh.
inline bool vml_tanh_double() {
#if LAAF_VML_TANH
  return &vmdTanh != nullptr;
#else
  return false;
#endif
}

// y[0, n) = tanh(y[0, n)) in place, in blocks of kVmlBlock (only when vml_tanh_double());
// a template so that the forward passes of every dtype compile the call (only the
// double one is ever reached).
template <typename T>
inline void vml_tanh_in_place(T* y, int64_t n) {
#if LAAF_VML_TANH
  if constexpr (std::is_same_v<T, double>) {
    for (int64_t at = 0; at < n; at += kVmlBlock) {
      const int count = static_cast<int>(n - at < kVmlBlock ? n - at : kVmlBlock);
      vmdTanh(count, y + at, y + at, kVmlHighAccuracy);
    }
    return;
  }
#endif
  (void)y;
  (void)n;
}

}  // namespace cpu
}  // namespace laaf
