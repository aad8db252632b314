"""Fit the coefficients of the C++ CPU fast paths (csrc/laaf_activations.h).

    python tools/fit_minimax.py [fp32_tanh | fp32_tanh_slots | fp64_tanh | fp64_exp | fp64_cbrt ...]   (all by default)

Each fit is a weighted minimax of a rational N/D (D(0) = 1; a polynomial where D has
degree 0), by Lawson's iteratively reweighted least squares in 40-digit mpmath, the
rational linearised by dividing by the previous iteration's D. It prints the
coefficients as C literals of the target type and the largest weighted error, both of
the exact fit and of the coefficients rounded to that type. Needs mpmath (torch ships it).

fp32_tanh (``fast_tanh`` on float lanes; about a minute). The form, x clamped to
[-10, 10], v = x^2:

    T = x + x v N(v) / D(v)        ~ 2 tanh(x / 2)   (N, D quadratics)
    tanh(x) = 4 T / (4 + T^2)       the doubling formula tanh(2h) = 2t / (1 + t^2)

An error dt in t = tanh(h) reaches tanh(2h) scaled by (1 - t^2) / (1 + t^2), which
vanishes where t -> 1, and the rational enters t only as the correction h u R(u)
(u = h^2), small where h is small. So the rounding of the rational's own evaluation
hardly reaches the result, which is what a plain x P(u) / Q(u) of tanh suffers from (5.8
ulp measured, against 2.4 here); and the result is exactly 1 once T rounds to 2. The
fit: t / h = 1 + u R(u), R = N / D, over h in [0, 5], of the error that reaches
tanh(2h), u |dR| / (t / h) * (1 - t^2) / (1 + t^2), with a floor of 1e-3 u on that
weight, so that R stays accurate to the clamp and tanh saturates to exactly 1 there.
Printed in v = x^2: N(v / 4) / 4 and D(v / 4).

fp64_tanh (``fast_tanh`` on double lanes, |x| < 0.55): tanh(x) = x + x v P(v), P of
degree 10 over v in [0, 0.55^2], weighted by the error that reaches tanh, v / (tanh(x) / x).
As a correction, P's rounding reaches the result scaled by v / 3 <= 0.1.

fp64_exp (``exp_nonpositive`` on double lanes): exp(r) = 1 + r + r^2 Q(r), Q of degree 9
over the reduced range |r| <= ln2 / 2, weighted by r^2 / exp(r) (relative error).

fp64_cbrt (``cbrt_double_normalised``, the first guess): u(m) ~ m^(-1/3) for the mantissa m in
[1, 2], a polynomial of degree 4 weighted by 1 / m^(-1/3) (relative error). The guess only
needs ~4e-5: one cubic step and one Newton step follow.
"""
import sys

import mpmath as mp
import numpy as np

#: Units the errors are printed in: the target type's unit roundoff times 2 (an ulp at 1).
ULP_AT_ONE = {"float": 2.0 ** -23, "double": 2.0 ** -52}


def poly(coefs, x):
    return sum(c * x ** k for k, c in enumerate(coefs))


def chebyshev_points(lo, hi, count):
    return [lo + (hi - lo) * (1 - mp.cos(mp.pi * (i + 0.5) / count)) / 2 for i in range(count)]


def lawson(xs, target, weight, deg_n, deg_d, scale, iterations):
    """Coefficients (in x / scale) of N and D minimising max weight * |N / D - target|.

    Each pass solves the least squares of weight * sqrt(lawson) / D_prev * (N - target D),
    linear in the coefficients, then scales each point's Lawson weight by its error.
    """
    lawson_w = [mp.mpf(1)] * len(xs)
    d_prev = [mp.mpf(1)] * len(xs)
    for _ in range(iterations):
        rows, rhs = [], []
        for x, g, r, w, dp in zip(xs, target, weight, lawson_w, d_prev):
            s, v = mp.sqrt(w) * r / dp, x / scale
            rows.append([s * v ** k for k in range(deg_n + 1)] + [-s * g * v ** k for k in range(1, deg_d + 1)])
            rhs.append(s * g)
        a = mp.matrix(rows)
        sol = mp.lu_solve(a.T * a, a.T * mp.matrix(rhs))
        num = [sol[k] for k in range(deg_n + 1)]
        den = [mp.mpf(1)] + [sol[deg_n + 1 + k] for k in range(deg_d)]
        d_prev = [poly(den, x / scale) for x in xs]
        err = [abs(poly(num, x / scale) / dp - g) * r for x, dp, g, r in zip(xs, d_prev, target, weight)]
        total = sum(w * e for w, e in zip(lawson_w, err))
        lawson_w = [w * e / total * len(err) for w, e in zip(lawson_w, err)]
    return num, den, max(err)


def rounded(coefs, c_type):
    return [float(np.float32(float(c))) if c_type == "float" else float(c) for c in coefs]


def literals(coefs, c_type):
    if c_type == "float":
        return ", ".join(f"{np.float32(c):.9g}f" for c in coefs)
    return ", ".join(repr(c) for c in coefs)


def report(name, exact_err, fits, target, weight, c_type):
    """Print the fit's error, the rounded coefficients' error and the literals.

    fits: [(label, coefficients in the printed variable, variable of each point)] for
    N (and D): the rounded rational is re-evaluated in mpmath at every point."""
    unit = ULP_AT_ONE[c_type]
    print(f"{name}: max weighted error {mp.nstr(exact_err, 4)} ({float(exact_err) / unit:.3g} ulp at 1)")
    values = []
    for label, coefs, at in fits:
        coefs = rounded(coefs, c_type)
        values.append([poly([mp.mpf(c) for c in coefs], x) for x in at])
        print(f"  {label} {literals(coefs, c_type)}")
    approx = values[0] if len(values) == 1 else [n / d for n, d in zip(*values)]
    err = max(abs(a - g) * r for a, g, r in zip(approx, target, weight))
    print(f"  with {c_type} coefficients: {float(err) / unit:.3g} ulp at 1")


def fit_fp32_tanh():
    h_max, floor, points = 5, 1e-3, 2500
    hs = [h for h in chebyshev_points(0, h_max, points) if h > mp.mpf("1e-4")]
    us = [h * h for h in hs]
    target = [(mp.tanh(h) / h - 1) / u for h, u in zip(hs, us)]
    weight = [max(floor * u, u / (mp.tanh(h) / h) * (1 - mp.tanh(h) ** 2) / (1 + mp.tanh(h) ** 2))
              for h, u in zip(hs, us)]
    scale = mp.mpf(h_max) ** 2  # fit in u / scale: a well-conditioned basis
    num, den, err = lawson(us, target, weight, 2, 2, scale, iterations=40)
    # In u: coefficient k / scale^k. In v = 4u, with N's extra 1/4: / 4^k (and / 4).
    n_v = [num[k] / scale ** k / 4 ** (k + 1) for k in range(3)]
    d_v = [den[k] / scale ** k / 4 ** k for k in range(3)]
    # N(v) / D(v) at v = 4u is R(u) / 4: the error, against target / 4, weighs 4 times.
    vs = [4 * u for u in us]
    report("fp32_tanh", err, [("N", n_v, vs), ("D", d_v, vs)],
           [g / 4 for g in target], [4 * r for r in weight], "float")


def fit_fp64_tanh():
    cut, degree, points = mp.mpf("0.55"), 10, 400
    vs = chebyshev_points(mp.mpf("1e-10"), cut ** 2, points)
    ratio = [mp.tanh(mp.sqrt(v)) / mp.sqrt(v) for v in vs]  # tanh(x) / x
    target = [(q - 1) / v for q, v in zip(ratio, vs)]
    weight = [v / q for q, v in zip(ratio, vs)]
    num, _, err = lawson(vs, target, weight, degree, 0, cut ** 2, iterations=25)
    p = [num[k] / (cut ** 2) ** k for k in range(degree + 1)]
    report("fp64_tanh", err, [("P", p, vs)], target, weight, "double")


def fit_fp64_exp():
    half, degree, points = mp.log(2) / 2, 9, 400
    rs = chebyshev_points(-half, half, points)
    target = [(mp.exp(r) - 1 - r) / r ** 2 for r in rs]
    weight = [r ** 2 / mp.exp(r) for r in rs]
    num, _, err = lawson(rs, target, weight, degree, 0, half, iterations=25)
    q = [num[k] / half ** k for k in range(degree + 1)]
    report("fp64_exp", err, [("Q", q, rs)], target, weight, "double")


def fit_fp64_cbrt():
    degree, points = 4, 300
    ms = chebyshev_points(1, 2, points)
    target = [m ** (-mp.mpf(1) / 3) for m in ms]
    weight = [1 / t for t in target]
    num, _, err = lawson(ms, target, weight, degree, 0, 1, iterations=25)
    report("fp64_cbrt", err, [("P", num, ms)], target, weight, "double")


# fp32_tanh_slots: csrc/laaf_tanh_slots.h, the tables of tanh_by_slots (AVX-512 fp32).
# The slot of a = min(|x|, CLAMP) is the low 5 bits of max(a, FLOOR)'s bits >> 21: the
# low 3 exponent bits and the top 2 mantissa bits, so that the 8 octaves [2^-4, 16)
# are 4 slots each (vpermt2ps reads only those 5 bits of an index). The first slot also
# takes every a below 2^-4; a stops at CLAMP, inside [8, 10). Each slot holds a degree-5
# polynomial in w = a - center (center 0 in the first slot, where c0 = 0, c1 = 1 and the
# rest is fitted to tanh's relative error, so that tiny a give a exactly).
TANH_SLOTS_CLAMP, TANH_SLOTS_FLOOR, TANH_SLOTS_DEGREE = 9.5, 2.0 ** -4, 5
TANH_SLOTS_HEADER = "csrc/laaf_tanh_slots.h"


def tanh_slot_of(a):
    """The slot of a float a in [0, CLAMP] (what tanh_by_slots computes in lanes)."""
    bits = int(np.array(max(np.float32(a), np.float32(TANH_SLOTS_FLOOR)), np.float32).view(np.uint32))
    return (bits >> 21) & 31


def tanh_slot_ranges():
    """{slot: (lo, hi)}: the a each reachable slot covers."""
    ranges = {}
    for octave in range(-4, 4):
        for quarter in range(4):
            lo, hi = 2.0 ** octave * (1 + quarter / 4), 2.0 ** octave * (1 + (quarter + 1) / 4)
            if octave == 3 and quarter > 0:
                continue  # past the clamp
            ranges[tanh_slot_of(lo)] = (0.0 if lo == TANH_SLOTS_FLOOR else lo,
                                        min(hi, TANH_SLOTS_CLAMP))
    return ranges


def fit_tanh_slot(lo, hi, points=120):
    """(center, [c0 .. c5]) of one slot: minimax of tanh's relative error."""
    deg = TANH_SLOTS_DEGREE
    if lo == 0.0:  # tanh(a) = a + a^2 P(a): fit P, weighted by a^2 / tanh(a)
        xs = chebyshev_points(mp.mpf("1e-6"), hi, points)
        target = [(mp.tanh(a) - a) / a ** 2 for a in xs]
        weight = [a ** 2 / mp.tanh(a) for a in xs]
        num, _, _ = lawson(xs, target, weight, deg - 2, 0, mp.mpf(hi), iterations=25)
        return 0.0, [0.0, 1.0] + [num[k] / mp.mpf(hi) ** k for k in range(deg - 1)]
    center = float(np.float32((lo + hi) / 2))
    half = mp.mpf(hi - lo) / 2
    ws = [a - center for a in chebyshev_points(mp.mpf(lo), mp.mpf(hi), points)]
    target = [mp.tanh(w + center) for w in ws]
    num, _, _ = lawson(ws, target, [1 / t for t in target], deg, 0, half, iterations=25)
    return center, [num[k] / half ** k for k in range(deg + 1)]


def tanh_by_slots_f32(a, center, coefs):
    """tanh_by_slots on float32 a >= 0 in numpy: float32 steps, each FMA rounded once
    (the product of two floats is exact in float64)."""
    a = np.minimum(a.astype(np.float32), np.float32(TANH_SLOTS_CLAMP))
    slot = (np.maximum(a, np.float32(TANH_SLOTS_FLOOR)).view(np.uint32) >> 21) & 31
    w = (a - center[slot]).astype(np.float32)
    r = coefs[-1][slot]
    for c in coefs[-2::-1]:
        r = (r.astype(np.float64) * w + c[slot]).astype(np.float32)
    return r


def float_literal(x):
    text = f"{x:.9g}"
    return (text if any(c in text for c in ".en") else text + ".0") + "f"


def fit_fp32_tanh_slots(path=TANH_SLOTS_HEADER):
    with mp.workdps(40):
        header, report_line = tanh_slots_header()
    with open(path, "w") as out:
        out.write(header)
    print(report_line + f"\n  wrote {path}")


def tanh_slots_header():
    """(the text of laaf_tanh_slots.h, a line on its accuracy)."""
    center, coefs = np.ones(32, np.float32) * 8.75, np.zeros((TANH_SLOTS_DEGREE + 1, 32), np.float32)
    coefs[0] = 1.0  # the slots past the clamp (never read): tanh = 1
    for slot, (lo, hi) in sorted(tanh_slot_ranges().items()):
        c, cs = fit_tanh_slot(lo, hi)
        center[slot] = c
        coefs[:, slot] = rounded(cs, "float")
    a = np.concatenate([np.linspace(0, 12, 2_000_001), np.geomspace(1e-30, 0.1, 20_001)]).astype(np.float32)
    got = tanh_by_slots_f32(a, center, coefs).astype(np.float64)
    truth = np.tanh(a.astype(np.longdouble))
    t32 = truth.astype(np.float32)
    ulp = (np.nextafter(t32, np.float32(np.inf)) - t32).astype(np.float64)
    err = np.abs(got - truth).astype(np.float64) / ulp
    saturated = float(tanh_by_slots_f32(np.array([TANH_SLOTS_CLAMP]), center, coefs)[0])
    report_line = (f"fp32_tanh_slots: {len(tanh_slot_ranges())} slots, worst {err.max():.3f} ulp "
                   f"at a = {a[err.argmax()]:.9g}; tanh({TANH_SLOTS_CLAMP}) -> {saturated!r}")
    table = lambda name, v: (f"alignas(64) inline constexpr float {name}[32] = {{\n    "
                             + ",\n    ".join(", ".join(float_literal(x) for x in v[i:i + 4])
                                               for i in range(0, 32, 4)) + "};")
    body = "\n".join([table("kCenter", center)] +
                     [table(f"kC{k}", coefs[k]) for k in range(TANH_SLOTS_DEGREE + 1)])
    return TANH_SLOTS_TEMPLATE.format(clamp=TANH_SLOTS_CLAMP, floor=TANH_SLOTS_FLOOR,
                                      body=body), report_line


TANH_SLOTS_TEMPLATE = """// GENERATED by `python tools/fit_minimax.py fp32_tanh_slots`: do not edit.
// The tables of laaf_vec_math.h's tanh_by_slots (AVX-512 fp32 lanes): for slot i,
// tanh(a) ~ kC0[i] + w (kC1[i] + w (... + w kC5[i])), w = a - kCenter[i], a = min(|x|,
// kClamp), i = the low 5 bits of max(a, kFloor)'s bits >> 21 (see the tool).
// tests/test_codegen.py fails when this file is not the tool's output.
#pragma once

namespace laaf {{
namespace tanh_slots {{

constexpr float kClamp = {clamp}f, kFloor = {floor}f;
{body}

}}  // namespace tanh_slots
}}  // namespace laaf
"""


FITS = {"fp32_tanh": fit_fp32_tanh, "fp32_tanh_slots": fit_fp32_tanh_slots, "fp64_tanh": fit_fp64_tanh, "fp64_exp": fit_fp64_exp,
        "fp64_cbrt": fit_fp64_cbrt}

if __name__ == "__main__":
    mp.mp.dps = 40
    for name in sys.argv[1:] or FITS:
        FITS[name]()
