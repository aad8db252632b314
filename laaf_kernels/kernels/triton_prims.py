"""The formula vocabulary of ``laaf_kernels/activations.py`` as Triton functions.

The generated ``triton_activations.py`` pastes the table's formula strings
verbatim; this module gives their names meaning in Triton. On a GPU the
transcendental functions come from libdevice (accurate, like PyTorch's). The
Triton interpreter cannot run libdevice, so there (``TRITON_INTERPRET=1``)
they fall back to exp/log forms with absolute error of a few ulps.

All math is done in the dtype of its argument; the kernels upcast to fp32
(or keep fp64) before calling these.

``dot`` is here for the same reason: the interpreter's bf16 ``tl.dot`` is
wrong (Triton 3.8 returns garbage), so there its operands are upcast to the
accumulator's dtype first, which is exact (a bf16 product fits in fp32).
"""
import os

import triton
import triton.language as tl
from triton.language.extra import libdevice

__all__ = ["tanh", "sigmoid", "exp", "expm1", "log1p", "abs", "erf", "sin", "cos", "cbrt",
           "where", "maximum", "minimum", "zeros_like", "dot", "SQRT1_2", "INV_SQRT_2PI"]

USE_LIBDEVICE = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") != "1")
SQRT1_2 = tl.constexpr(0.7071067811865476)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def tanh(x):
    if USE_LIBDEVICE:
        out = libdevice.tanh(x)
    else:
        e = tl.exp(-2.0 * tl.abs(x))  # in (0, 1]: no overflow
        t = (1.0 - e) / (1.0 + e)
        out = tl.where(x < 0, -t, t)
    return out


@triton.jit
def sigmoid(x):
    return tl.sigmoid(x)


@triton.jit
def exp(x):
    return tl.exp(x)


@triton.jit
def expm1(x):
    if USE_LIBDEVICE:
        out = libdevice.expm1(x)
    else:
        out = tl.exp(x) - 1.0
    return out


@triton.jit
def log1p(x):
    if USE_LIBDEVICE:
        out = libdevice.log1p(x)
    else:
        out = tl.log(1.0 + x)
    return out


@triton.jit
def abs(x):
    return tl.abs(x)


@triton.jit
def erf(x):
    return tl.erf(x)


@triton.jit
def sin(x):
    return tl.sin(x)


@triton.jit
def cos(x):
    return tl.cos(x)


@triton.jit
def cbrt(x):
    """The real cube root sign(x) |x|^(1/3)."""
    if USE_LIBDEVICE:
        out = libdevice.cbrt(x)
    else:  # exp(log|x| / 3), then one Newton step (r -= (r^3 - a) / (3 r^2)): ~1 ulp
        a = tl.abs(x)
        positive = a > 0
        r = tl.exp(tl.log(tl.where(positive, a, 1.0)) / 3.0)
        r = tl.where(positive, r - (r * r * r - a) / (3.0 * r * r), 0.0)
        out = tl.where(x < 0, -r, r)
    return out


@triton.jit
def where(cond, a, b):
    return tl.where(cond, a, b)


@triton.jit
def maximum(a, b):
    """max(a, b), NaN where either is NaN, as torch.maximum (relu(NaN) is NaN).

    Not tl.maximum: its default (PropagateNan.NONE) leaves NaN to the hardware, and a
    GPU's max.f32 and the interpreter return the other operand, so relu(NaN) gave 0;
    PTX's NaN-propagating max.NaN exists for f32 but not f64, so PropagateNan.ALL
    relies on a lowering we could not run on a GPU. A compare and a select (what
    torch.compile's Triton helpers use) work for every dtype on every target."""
    return tl.where((a > b) | (a != a), a, b)


@triton.jit
def minimum(a, b):
    """min(a, b), NaN where either is NaN (see maximum)."""
    return tl.where((a < b) | (a != a), a, b)


@triton.jit
def zeros_like(x):
    return tl.zeros_like(x)


@triton.jit
def dot(a, b, acc, DOT_PRECISION: tl.constexpr):
    """acc + a @ b with tensor cores on a GPU; exact upcast operands in the interpreter."""
    # out_dtype: Triton 3.6 needs it spelled out for an fp64 accumulator.
    if USE_LIBDEVICE:
        out = tl.dot(a, b, acc, input_precision=DOT_PRECISION, out_dtype=acc.dtype)
    else:
        out = tl.dot(a.to(acc.dtype), b.to(acc.dtype), acc, input_precision=DOT_PRECISION,
                     out_dtype=acc.dtype)
    return out
