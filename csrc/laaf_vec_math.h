// Elementary functions on at::vec::Vectorized<T> lanes that the CPU activations need
// faster than at::vec's Sleef calls: exp on x <= 0, sigmoid, tanh and cbrt.
//
// Hand-written (the generated laaf_activations.h calls them from the activation
// table's formulas). Each fast path is inline FMA arithmetic for float and double
// lanes on AVX2 / AVX-512; other lanes (bf16 and fp16 are widened to float before they
// get here; builds without AVX2) fall back to at::vec. Accuracy of each path is
// asserted in tests/test_fused_linear.py and tests/test_fused_flexible.py; polynomial
// and rational coefficients come from tools/fit_minimax.py.
#pragma once
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "laaf_tanh_slots.h"  // tanh_by_slots' tables (generated)

namespace laaf {

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#define LAAF_VEC_FAST_MATH 1
#else
#define LAAF_VEC_FAST_MATH 0
#endif

// The double paths (exp, tanh) run on AVX2 and AVX-512 lanes alike. Measured one
// thread, 4096 lanes in L1 (stop 24, Intel Xeon with AVX-512, gcc 12), AVX-512 build:
// exp 0.81 against Sleef's 1.03 ns a lane, tanh 2.02 against 4.18. (Until stop 24 they
// were AVX2-only: built for AVX-512 they had lost to Sleef, because at::vec::maximum's
// mask-register NaN test next to a blend made GCC's code 3-4x slower; the bounds are
// now at::vec::clamp_min / clamp_max, one instruction each, NaN kept.)
template <typename V>
inline constexpr bool kIsFloatLanes = std::is_same_v<V, at::vec::Vectorized<float>>;
template <typename V>
inline constexpr bool kIsDoubleLanes = std::is_same_v<V, at::vec::Vectorized<double>>;

// ---------------------------------------------------------------------------
// Lane masks: mask_lt(a, b) ... mask_ne(a, b), and select(m, a, b) = m ? a : b
// ---------------------------------------------------------------------------
// Every comparison and blend of the activations goes through these. Elsewhere they
// are at::vec's: a comparison gives a vector of all-ones / all-zero lanes, which
// V::blendv(b, a, m) takes. On AVX-512 a comparison's natural result is a mask
// register (__mmask16 for 16 float lanes, __mmask8 for 8 double lanes), and at::vec
// turns it into such a vector (vpmovm2d) and blendv turns it back (vpcmpeqd): with a
// few of those in flight, GCC 12's code ran 3-4x slower than the same arithmetic on
// mask registers (one Intel Xeon thread, in L1: cbrt 2.36 against 0.55 ns a lane).
// The comparisons keep at::vec's semantics: ordered (false on NaN) except mask_ne,
// which is true on NaN, so mask_ne(x, x) finds NaN lanes.
template <typename V> inline V mask_lt(const V& a, const V& b) { return a < b; }
template <typename V> inline V mask_le(const V& a, const V& b) { return a <= b; }
template <typename V> inline V mask_gt(const V& a, const V& b) { return a > b; }
template <typename V> inline V mask_ge(const V& a, const V& b) { return a >= b; }
template <typename V> inline V mask_eq(const V& a, const V& b) { return a == b; }
template <typename V> inline V mask_ne(const V& a, const V& b) { return a != b; }
template <typename V> inline V select(const V& m, const V& a, const V& b) { return V::blendv(b, a, m); }

#if defined(CPU_CAPABILITY_AVX512)
#define LAAF_MASK_COMPARE(name, predicate)                                              \
  inline __mmask16 name(const at::vec::Vectorized<float>& a,                           \
                        const at::vec::Vectorized<float>& b) {                         \
    return _mm512_cmp_ps_mask(a, b, predicate);                                        \
  }                                                                                    \
  inline __mmask8 name(const at::vec::Vectorized<double>& a,                           \
                       const at::vec::Vectorized<double>& b) {                         \
    return _mm512_cmp_pd_mask(a, b, predicate);                                        \
  }
LAAF_MASK_COMPARE(mask_lt, _CMP_LT_OQ)
LAAF_MASK_COMPARE(mask_le, _CMP_LE_OQ)
LAAF_MASK_COMPARE(mask_gt, _CMP_GT_OQ)
LAAF_MASK_COMPARE(mask_ge, _CMP_GE_OQ)
LAAF_MASK_COMPARE(mask_eq, _CMP_EQ_OQ)
LAAF_MASK_COMPARE(mask_ne, _CMP_NEQ_UQ)
#undef LAAF_MASK_COMPARE

// (Masks combine with | and &, which give an int: it converts back on the way in.)
inline at::vec::Vectorized<float> select(__mmask16 m, const at::vec::Vectorized<float>& a,
                                         const at::vec::Vectorized<float>& b) {
  return _mm512_mask_blend_ps(m, b, a);
}
inline at::vec::Vectorized<double> select(__mmask8 m, const at::vec::Vectorized<double>& a,
                                          const at::vec::Vectorized<double>& b) {
  return _mm512_mask_blend_pd(m, b, a);
}
#endif

// maximum / minimum of two lane vectors, NaN from either operand (torch.maximum's rule),
// on the lane masks (against a literal the generated code takes at::vec::clamp_min /
// clamp_max instead, one instruction).
template <typename V>
inline V nan_maximum(const V& a, const V& b) {
  return select(mask_gt(a, b) | mask_ne(a, a), a, b);
}
template <typename V>
inline V nan_minimum(const V& a, const V& b) {
  return select(mask_lt(a, b) | mask_ne(a, a), a, b);
}

// exp(x) for x <= 0 (NaN propagates). x = n ln2 + r with n = round(x log2 e) and
// |r| <= ln2 / 2, exp(x) = 2^n exp(r), 2^n built from n's exponent bits; an x whose
// e^x lies below the normal range gives 0. Inline, where Sleef's exp is a call per
// vector: sigmoid_ramp's fp32 forward at 65536 x 256, one thread, went from 24.1 to
// 17.8 ms.
//  * float: ln2 in two parts (r exact to ~1e-12), exp(r) = 1 + r + r^2 P(r) with
//    Cephes' degree-5 P (relative error ~1e-7); x < -87.33 gives 0.
//  * double: n from the 1.5 * 2^52 trick (adding it rounds x log2 e to an integer in
//    the low mantissa bits, so k's bits + 1023, shifted left by 52, are 2^n's); ln2
//    in Cody-Waite parts, ln2_hi with 32 significant bits, so that n ln2_hi and
//    x - n ln2_hi are exact; exp(r) = 1 + (r + r^2 Q(r)), Q of degree 9 (minimax,
//    0.05 ulp); x < -708.39 gives 0. Within 1.03 ulp of the true exp on [-40, 0]
//    (at::vec's Sleef exp_u10: 1.0).
template <typename V>
inline V exp_nonpositive(const V& x) {
#if LAAF_VEC_FAST_MATH
  if constexpr (kIsFloatLanes<V>) {
    // max(-87.33, x): n >= -126, so 2^n stays normal; a NaN x stays NaN.
    const V xc = at::vec::clamp_min(x, V(-87.33f));
    const V n = (xc * V(1.44269504f)).round();
    V r = at::vec::fmadd(n, V(-0.693145751953125f), xc);  // ln2's high part: n ln2_hi exact
    r = at::vec::fmadd(n, V(-1.42860677e-06f), r);
    V p = at::vec::fmadd(V(1.9875691500e-4f), r, V(1.3981999507e-3f));
    p = at::vec::fmadd(p, r, V(8.3334519073e-3f));
    p = at::vec::fmadd(p, r, V(4.1665795894e-2f));
    p = at::vec::fmadd(p, r, V(1.6666665459e-1f));
    p = at::vec::fmadd(p, r, V(5.0000001201e-1f));
    const V er = at::vec::fmadd(p, r * r, r + V(1.0f));
    // 2^n: the float (n + 127) 2^23, exact, read as an integer is 2^n's bit pattern.
    const V biased = at::vec::fmadd(n, V(8388608.0f), V(1065353216.0f));
    const V two_n = at::vec::cast<float>(at::vec::convert_to_int_of_same_size(biased));
    return select(mask_lt(x, V(-87.33f)), V(0.0f), er * two_n);
  }
  if constexpr (kIsDoubleLanes<V>) {
    using I = at::vec::Vectorized<int64_t>;
    const V xc = at::vec::clamp_min(x, V(-708.39));  // n >= -1022: 2^n stays normal
    const V k = at::vec::fmadd(xc, V(1.4426950408889634), V(0x1.8p52));
    const V n = k - V(0x1.8p52);
    V r = at::vec::fmadd(n, V(-0.69314718036912381649), xc);  // exact
    r = at::vec::fmadd(n, V(-1.9082149292705877000e-10), r);
    V q = at::vec::fmadd(V(2.500009635115723e-08), r, V(2.7630236861148136e-07));
    q = at::vec::fmadd(q, r, V(2.7557586206860384e-06));
    q = at::vec::fmadd(q, r, V(2.4801493127389595e-05));
    q = at::vec::fmadd(q, r, V(0.00019841269506820695));
    q = at::vec::fmadd(q, r, V(0.0013888888943606793));
    q = at::vec::fmadd(q, r, V(0.008333333333494331));
    q = at::vec::fmadd(q, r, V(0.04166666666653023));
    q = at::vec::fmadd(q, r, V(0.16666666666666413));
    q = at::vec::fmadd(q, r, V(0.5000000000000011));
    // r + r^2 Q first, then 1 + that: one rounding at the result's scale.
    const V er = at::vec::fmadd(q, r * r, r) + V(1.0);
    const V two_n = at::vec::cast<double>((at::vec::cast<int64_t>(k) + I(1023)) << I(52));
    return select(mask_lt(x, V(-708.39)), V(0.0), er * two_n);
  }
#endif
  return x.exp();
}

// sigmoid(x) = q = 1 / (1 + e) for x >= 0 and e q for x < 0, with e = exp(-|x|) in (0, 1]:
// nothing overflows, and the small side keeps its relative accuracy (1 - tiny is
// never formed). fp32: within 2.9 ulp of the true sigmoid wherever it is a normal
// float (torch.sigmoid: 2.4; tests/test_fused_linear.py asserts 3).
template <typename V>
inline V sigmoid(const V& x) {
  const V e = exp_nonpositive(x.abs().neg());
  const V q = V(1.0) / (V(1.0) + e);
  return select(mask_ge(x, V(0.0)), q, e * q);
}

// tanh on double lanes, from a = min(|x|, 20) (tanh rounds to 1 from 19.06; NaN
// propagates) and x's sign bit:
//  * a < 0.55: tanh(a) = a + a v P(v), v = a^2, P of degree 10 (minimax; P's own
//    rounding reaches the result scaled by v / 3 <= 0.1).
//  * a >= 0.55: tanh(a) = (1 - e) / (1 + e), e = exp(-2a) in (0, 0.333]. Formed
//    naively, the roundings of 1 - e, 1 + e and the quotient add up to 1.5 ulp, so:
//      u = 1 + e (rounded), eps = e - (u - 1) its exact error: 1 + e = u + eps;
//      n = 2 - u, exact (Sterbenz): 1 - e = n - eps;
//      t0 = n / u, res = n - t0 u exact (FMA), and w = (1 + t0) / 2 ~ 1 / u, so
//      tanh = (n - eps) / (u + eps) ~ t0 + (res - 2 eps w) w   (to first order).
//    What is left is exp's error, scaled by 2e / (1 - e^2) <= 0.75, and one rounding.
template <typename V>
inline V fast_tanh_double(const V& x) {
  const V a = at::vec::clamp_max(x.abs(), V(20.0));
  const V v = a * a;
  V p = at::vec::fmadd(V(-1.9494592077937513e-05), v, V(8.331628600168302e-05));
  p = at::vec::fmadd(p, v, V(-0.0002333814471588407));
  p = at::vec::fmadd(p, v, V(0.0005884444372453533));
  p = at::vec::fmadd(p, v, V(-0.001455542833116998));
  p = at::vec::fmadd(p, v, V(0.0035920920283346977));
  p = at::vec::fmadd(p, v, V(-0.008863232601215883));
  p = at::vec::fmadd(p, v, V(0.02186948838584068));
  p = at::vec::fmadd(p, v, V(-0.05396825396376001));
  p = at::vec::fmadd(p, v, V(0.1333333333332662));
  p = at::vec::fmadd(p, v, V(-0.333333333333333));
  const V small = at::vec::fmadd(a * v, p, a);

  const V e = exp_nonpositive(a * V(-2.0));
  const V u = V(1.0) + e;
  const V eps = e - (u - V(1.0));
  const V n = V(2.0) - u;
  const V t0 = n / u;
  const V w = at::vec::fmadd(t0, V(0.5), V(0.5));
  const V res = at::vec::fmadd(t0.neg(), u, n);
  const V large = at::vec::fmadd(at::vec::fmadd((eps + eps).neg(), w, res), w, t0);

  const V t = select(mask_lt(a, V(0.55)), small, large);
  return t | (x & V(-0.0));  // x's sign: tanh is odd, and tanh(-0) = -0
}

#if defined(CPU_CAPABILITY_AVX512)
// tanh on AVX-512 float lanes from 32 polynomial slots, with no division:
//   a = min(|x|, 9.5)                           (NaN kept)
//   i = low 5 bits of bits(max(a, 2^-4)) >> 21  (3 exponent bits, 2 mantissa bits)
//   w = a - center[i],  t = c0[i] + w (c1[i] + ... + w c5[i]),  tanh = t with x's sign
// Each octave of a in [2^-4, 16) is 4 slots, read with one vpermt2ps per table (32
// floats in two registers). Slot 12 also takes every a below 2^-4, with center 0,
// c0 = 0 and c1 = 1, so that a tiny x gives x exactly. Tables and their fit:
// laaf_tanh_slots.h, from tools/fit_minimax.py (fp32_tanh_slots). Within 1.4 ulp, exactly
// +-1 from 9.5 on, -0 and NaN kept. 18 instructions a vector (7 vpermt2ps) against the doubling
// formula's ~21 and a division (a zmm vdivps holds the divider for 3.4 ns): one thread,
// in L1, 0.33-0.34 -> 0.29 ns a lane (tools/vec_math_bench.cpp), and as the GEMM
// epilogue of 10^5 x 50 x 50 (fp32, in L1) ~16 -> ~12 ns a row.
inline __m512 tanh_slot_table(__m512i slot, const float* table) {
  return _mm512_permutex2var_ps(_mm512_load_ps(table), slot, _mm512_load_ps(table + 16));
}
inline at::vec::Vectorized<float> tanh_by_slots(const at::vec::Vectorized<float>& x) {
  using namespace tanh_slots;
  // min(kClamp, |x|): vminps returns its second operand where either is NaN, so a NaN x
  // stays NaN (vrangeps, one instruction for both, returns the other operand instead).
  const __m512 a = _mm512_min_ps(_mm512_set1_ps(kClamp), _mm512_abs_ps(x));
  const __m512i slot =
      _mm512_srli_epi32(_mm512_castps_si512(_mm512_max_ps(a, _mm512_set1_ps(kFloor))), 21);
  const __m512 w = _mm512_sub_ps(a, tanh_slot_table(slot, kCenter));
  __m512 t = tanh_slot_table(slot, kC5);
  t = _mm512_fmadd_ps(t, w, tanh_slot_table(slot, kC4));
  t = _mm512_fmadd_ps(t, w, tanh_slot_table(slot, kC3));
  t = _mm512_fmadd_ps(t, w, tanh_slot_table(slot, kC2));
  t = _mm512_fmadd_ps(t, w, tanh_slot_table(slot, kC1));
  t = _mm512_fmadd_ps(t, w, tanh_slot_table(slot, kC0));
  // t | (x & -0): tanh is odd (0xF8: A | (B & C))
  return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(
      _mm512_castps_si512(t), _mm512_castps_si512(x), _mm512_set1_epi32(INT32_MIN), 0xF8));
}
#endif

// tanh, by lane type:
//  * float on AVX-512: tanh_by_slots above.
//  * float on AVX2, x clamped to [-10, 10] (NaN propagates), v = x^2:
//      T = x + x v N(v) / D(v)  ~ 2 tanh(x / 2)      (N, D quadratics)
//      tanh(x) = 4 T / (4 + T^2)                   (tanh(2h) = 2t / (1 + t^2))
//    The doubling formula scales an error in t by (1 - t^2) / (1 + t^2), and the
//    rational only enters t as a correction, so its own rounding hardly reaches the
//    result: within 2.4 ulp of the true tanh, exactly +-1 from |x| ~ 9 on. On AVX2,
//    2.4 ns per 8 lanes where the expm1 formula it replaced took 4.5. (Until stop 31
//    AVX-512 ran it too, N / D from rcp14 and a Newton step: 0.33-0.36 ns a lane.)
//  * double on AVX2 / AVX-512: fast_tanh_double above, within 0.92 ulp, 12.6 ns per
//    4 lanes on Zen 3 where at::vec's Sleef tanh_u10 takes 24.5 (AVX-512: see the top).
template <typename V>
inline V fast_tanh(const V& x) {
#if LAAF_VEC_FAST_MATH
  if constexpr (kIsFloatLanes<V>) {
#if defined(CPU_CAPABILITY_AVX512)
    return tanh_by_slots(x);
#else
    // (at::vec::clamp keeps a NaN x on these ISAs: max(lo, x), then min(hi, .).)
    const V c = at::vec::clamp(x, V(-10.0f), V(10.0f));
    const V v = c * c;
    const V n = at::vec::fmadd(
        at::vec::fmadd(v, V(-6.57302976e-08f), V(-0.0009688586f)), v, V(-0.083333239f));
    const V d = at::vec::fmadd(
        at::vec::fmadd(v, V(0.00104459305f), V(0.111625187f)), v, V(1.0f));
    const V t2 = at::vec::fmadd(c * v, n / d, c);  // T = 2 tanh(x / 2)
    // (x's sign again: for x = -0, T = (-0 v) q + -0 is +0, and torch's tanh(-0) is -0)
    return (t2 * V(4.0f)) / at::vec::fmadd(t2, t2, V(4.0f)) | (x & V(-0.0f));
#endif
  }
  if constexpr (kIsDoubleLanes<V>) {
    return fast_tanh_double(x);
  }
#endif
  return x.tanh();
}

// Cube root of a positive, finite double a (subnormals included), without a division:
//  * a = m 2^E (a subnormal a scaled by 2^300 first, the root by 2^-100 after), E split
//    as 3q + j with j in {0, 1, 2}, so that cbrt(a) = cbrt(f) 2^q, f = m 2^j in [1, 8);
//  * u ~ f^(-1/3) from m: u = P(m) 2^(-j/3), P of degree 4 (minimax on [1, 2),
//    relative error 3.8e-5, tools/fit_minimax.py fp64_cbrt);
//  * one cubically convergent step on u, division-free: e = 1 - f u^3,
//    u <- u (1 + e/3 + 2e^2/9)  (the series of (1 - e)^(-1/3)): 3.8e-5 -> ~3e-13;
//  * r = f u^2 ~ cbrt(f), and one Newton step on r, r <- r - (r^3 - f) u^2 / 3, whose
//    residual r^3 - f is formed exactly but for one rounding (r^2 split by an FMA):
//    within ~0.5 ulp (tests/test_fused_flexible.py asserts 1).
// Where exp(log a / 3) and a Halley step (Sleef's two calls and a division) took 3.86
// ns a lane on AVX-512 and 8.56 on AVX2, this takes 1.62 and 4.2 (one Intel Xeon
// thread, in L1, tools/vec_math_bench.cpp); what is left is instruction count (~60 a
// vector), not latency.
#if LAAF_VEC_FAST_MATH
// The biased exponent field of double lanes' bits, bits >> 52 (a logical shift by an
// immediate: at::vec's int64 >> is arithmetic and by a vector, emulated on AVX2).
inline at::vec::Vectorized<int64_t> exponent_field(const at::vec::Vectorized<int64_t>& bits) {
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_srli_epi64(bits, 52);
#else
  return _mm256_srli_epi64(bits, 52);
#endif
}

template <typename V>
inline V cbrt_double_normalised(const V& a) {
  using I = at::vec::Vectorized<int64_t>;
  const auto tiny = mask_lt(a, V(0x1p-1022));
  const V as = select(tiny, a * V(0x1p300), a);
  const I bits = at::vec::cast<int64_t>(as);
  // E as a double: the biased exponent field OR-ed into the mantissa of 2^52.
  const V e = at::vec::cast<double>(exponent_field(bits) | I(0x4330000000000000)) - V(0x1p52 + 1023);
  const V q = ((e + V(0.5)) * V(1.0 / 3.0)).floor();  // E = 3q + j (E + 0.5: no rounding down)
  const V j = e - q * V(3.0);
  const V m = at::vec::cast<double>((bits & I(0x000FFFFFFFFFFFFF)) | I(0x3FF0000000000000));
  const auto j1 = mask_eq(j, V(1.0)), j2 = mask_eq(j, V(2.0));
  const V f = m * select(j1, V(2.0), select(j2, V(4.0), V(1.0)));
  V u = at::vec::fmadd(V(0.028589010894489657), m, V(-0.2212257804490869));
  u = at::vec::fmadd(u, m, V(0.6954559992802771));
  u = at::vec::fmadd(u, m, V(-1.1728546070228179));
  u = at::vec::fmadd(u, m, V(1.669997693481625));
  u = u * select(j1, V(0.79370052598409974), select(j2, V(0.62996052494743658), V(1.0)));
  const V u2 = u * u;
  const V err = at::vec::fmadd(f.neg(), u2 * u, V(1.0));
  const V step = err * at::vec::fmadd(err, V(2.0 / 9.0), V(1.0 / 3.0));
  u = at::vec::fmadd(u, step, u);
  const V w = u * u;  // ~ f^(-2/3) = 1 / cbrt(f)^2
  V r = f * w;
  const V r2 = r * r;
  const V r2_low = at::vec::fmadd(r, r, r2.neg());  // r^2 = r2 + r2_low exactly
  const V residual = at::vec::fmadd(r2_low, r, at::vec::fmadd(r2, r, f.neg()));
  r = at::vec::fmadd(residual.neg(), w * V(1.0 / 3.0), r);
  // 2^q (|q| <= 342, normal) from q's bits, as exp_nonpositive builds 2^n.
  const V two_q = at::vec::cast<double>((at::vec::cast<int64_t>(q + V(0x1.8p52)) + I(1023)) << I(52));
  return r * two_q * select(tiny, V(0x1p-100), V(1.0));
}
#endif  // LAAF_VEC_FAST_MATH

// Real cube root of a = |x|, then x's sign; a = 0, inf and NaN are their own roots.
// Each refinement is a Halley step written as a correction,
//   r <- r - r e / (2 r^3 + a),   e = r^3 - a (one FMA: r^2 r - a),
// cubically convergent, and accurate since the correction, not r, carries the
// rounding. fp32 on AVX2 / AVX-512: the first guess comes from a's bits (bits / 3 +
// 0x2a5137a0, within ~4 %), two steps follow (4 % -> 1e-4 -> 1e-12), and a outside
// [2^-100, 2^100] (denormals included) is scaled by 2^-+96 first and the root by
// 2^+-32, so that nothing under- or overflows: within 0.73 ulp of the true root
// (tests/test_fused_flexible.py: <= 1), at ~2 ns per 8 lanes where exp(log a / 3)
// took 29. fp64 on AVX2 / AVX-512: cbrt_double_normalised above. Other lanes:
// exp(log a / 3), then one step.
template <typename V>
inline V cbrt(const V& x) {
  const V a = x.abs();
  // 0, inf and NaN are their own roots; the steps run on 1 there instead (a zero's
  // guess would cube to subnormals, which cost microcode assists).
  const auto special = mask_eq(a, V(0.0)) | mask_eq(a, V(INFINITY)) | mask_ne(a, a);
  const V a1 = select(special, V(1.0), a);
  const auto halley = [](const V& r, const V& a) {
    const V r2 = r * r;
    const V e = at::vec::fmadd(r2, r, a.neg());
    return r - r * (e / at::vec::fmadd(r2 * r, V(2.0), a));
  };
  V r;
#if LAAF_VEC_FAST_MATH
  if constexpr (kIsFloatLanes<V>) {
    using I = at::vec::Vectorized<int32_t>;
    const auto tiny = mask_lt(a1, V(0x1p-100f)), huge = mask_gt(a1, V(0x1p100f));
    const V as = select(tiny, a1 * V(0x1p96f), select(huge, a1 * V(0x1p-96f), a1));
    // bits / 3 by way of float (the integer's low bits do not matter at 4 %).
    const V third = at::vec::convert_to_fp_of_same_size<float>(at::vec::cast<int32_t>(as)) *
                    V(1.0f / 3.0f);
    r = at::vec::cast<float>(at::vec::convert_to_int_of_same_size(third) + I(0x2a5137a0));
    r = halley(halley(r, as), as);
    r = select(tiny, r * V(0x1p-32f), select(huge, r * V(0x1p32f), r));
  } else if constexpr (kIsDoubleLanes<V>) {
    r = cbrt_double_normalised(a1);
  } else
#endif
  {
    r = halley((a1.log() * V(1.0 / 3.0)).exp(), a1);
  }
  r = select(special, a, r);
  return select(mask_lt(x, V(0.0)), r.neg(), r);
}

}  // namespace laaf
