"""Fit the coefficients of the C++ fp32 tanh (csrc/laaf_activations.h: fast_tanh).

The form (x clamped to [-10, 10], v = x^2):

    T = x + x v N(v) / D(v)        ~ 2 tanh(x / 2)   (N, D quadratics, D(0) = 1)
    tanh(x) = 4 T / (4 + T^2)       the doubling formula tanh(2h) = 2t / (1 + t^2)

Why this form: an error dt in t = tanh(h) reaches tanh(2h) scaled by
(1 - t^2) / (1 + t^2), which vanishes where t -> 1, and the rational enters t only as
the correction h u R(u) (u = h^2), small where h is small. So the rounding of the
rational's own evaluation hardly reaches the result, which is what a plain x P(u) / Q(u)
of tanh suffers from (5.8 ulp measured, against 2.4 here); and the result is exactly 1
once T rounds to 2.

The fit: t / h = 1 + u R(u), R = N / D, over h in [0, 5], minimax (Lawson-weighted,
linearised least squares in 40-digit mpmath) of the error that reaches tanh(2h):
u |dR| / (t / h) * (1 - t^2) / (1 + t^2), with a floor of 1e-3 u on that weight, so
that R stays accurate to the clamp and tanh saturates to exactly 1 there.

    python tools/fit_tanh.py        (about a minute; needs mpmath, which torch ships)
prints the coefficients in v = x^2 (N(v / 4) / 4 and D(v / 4)) as fp32 literals.
"""
import mpmath as mp
import numpy as np

DEG_N, DEG_D, H_MAX, WEIGHT_FLOOR, POINTS, ITERATIONS = 2, 2, 5, 1e-3, 2500, 40


def poly(coefs, v):
    return sum(c * v ** k for k, c in enumerate(coefs))


def fit():
    mp.mp.dps = 40
    hs = [H_MAX * (1 - mp.cos(mp.pi * (i + 0.5) / POINTS)) / 2 for i in range(POINTS)]
    hs = [h for h in hs if h > mp.mpf("1e-4")]
    us = [h * h for h in hs]
    target = [(mp.tanh(h) / h - 1) / u for h, u in zip(hs, us)]
    reach = [max(WEIGHT_FLOOR * u, u / (mp.tanh(h) / h) * (1 - mp.tanh(h) ** 2) / (1 + mp.tanh(h) ** 2))
             for h, u in zip(hs, us)]
    scale = mp.mpf(H_MAX) ** 2  # fit in u / scale: a well-conditioned basis
    lawson = [mp.mpf(1)] * len(hs)
    d_prev = [mp.mpf(1)] * len(hs)
    for _ in range(ITERATIONS):
        rows, rhs = [], []
        for u, g, r, w, dp in zip(us, target, reach, lawson, d_prev):
            s, v = mp.sqrt(w) * r / dp, u / scale
            rows.append([s * v ** k for k in range(DEG_N + 1)] + [-s * g * v ** k for k in range(1, DEG_D + 1)])
            rhs.append(s * g)
        a = mp.matrix(rows)
        sol = mp.lu_solve(a.T * a, a.T * mp.matrix(rhs))
        num = [sol[k] for k in range(DEG_N + 1)]
        den = [mp.mpf(1)] + [sol[DEG_N + 1 + k] for k in range(DEG_D)]
        d_prev = [poly(den, u / scale) for u in us]
        err = [abs(poly(num, u / scale) / dp - g) * r for u, dp, g, r in zip(us, d_prev, target, reach)]
        total = sum(w * e for w, e in zip(lawson, err))
        lawson = [w * e / total * len(err) for w, e in zip(lawson, err)]
    print(f"max weighted error {mp.nstr(max(err), 4)} ({float(max(err)) * 2 ** 24:.2f} ulp at 1)")
    # In u: coefficient k / scale^k. In v = 4u, with N's extra 1/4: / 4^k (and / 4).
    n_v = [num[k] / scale ** k / 4 ** (k + 1) for k in range(DEG_N + 1)]
    d_v = [den[k] / scale ** k / 4 ** k for k in range(DEG_D + 1)]
    for name, coefs in (("N", n_v), ("D", d_v)):
        print(name, ", ".join(f"{np.float32(float(c)):.9g}f" for c in coefs))


if __name__ == "__main__":
    fit()
