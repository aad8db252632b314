"""The table of combined flexible activations (seed paper 003; shared/notes/math.md §2).

Each kind is a per-neuron mixture of base functions with P = 2 free parameters
``p0, p1`` per channel, stored as one ``(2, C)`` tensor (row p = parameter p, in
the formula's order)::

    relu_poly     p0 relu(z) + p1 z^3 + (1 - p0 - p1) cbrt(z)        (α1, α2)  init (1, 0)
    relu_tanh     p0 relu(z) + p1 z^3 + (1 - p0 - p1) tanh(z)        (α1, α2)  init (1, 0)
    sigmoid_ramp  p0 σ(z) + (1 - p0) clamp(p1 z + 1/2, 0, 1)         (α, β)    init (1, 0.1)
    tanh_ramp     p0 tanh(z) + (1 - p0) clamp(p1 z, -1, 1)           (α, β)    init (1, 0.1)

At ``init`` each kind equals its ``baseline`` activation exactly (relu, relu,
sigmoid, tanh): 1 * f + 0 * g + 0 is f, bit for bit, for every finite z. For
that the cubic term is evaluated p1 z z z, p1 first (0 * z^3 would be 0 * inf = NaN
where z^3 overflows), and the torch-op paths (the reference, and the backward
with create_graph) compute float16 and bfloat16 in float32, as the fused kernels
do (:func:`compute_dtype`). α outside [0, 1] is allowed (the paper does not
constrain it); the mixture is then not convex.

Like the LAAF table (:mod:`laaf_kernels.activations`), every kind is written as
formula strings in ``z``, ``p0``, ``p1`` over the same vocabulary: its value,
``dz`` (d value / dz) and ``dp`` (d value / d p_k). The reference backend
calls ``torch_value`` (torch built-ins, differentiable to any order); the fused
backends render the formulas. Derivative conventions are PyTorch's: relu'(0) = 0,
and clamp passes the gradient on the closed band (p1 z + 1/2 in [0, 1]).
cbrt'(z) is floored as documented in :data:`laaf_kernels.activations.CBRT_EPS`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F

from .activations import cbrt, formula_function, lets_needed

__all__ = ["FlexibleKind", "FLEXIBLE", "FLEXIBLE_KINDS", "get_kind", "evaluate_flexible",
           "compute_dtype", "NUM_PARAMS"]

#: Every kind has two free parameters per channel.
NUM_PARAMS = 2


@dataclass(frozen=True)
class FlexibleKind:
    """One row of the flexible table (see the module docstring)."""

    name: str
    param_names: Tuple[str, str]
    init: Tuple[float, float]
    baseline: str
    torch_value: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    let: Tuple[Tuple[str, str], ...]
    value: str
    dz: str
    dp: Tuple[str, str]

    def formula(self, which: str) -> str:
        """``which`` in {"value", "dz", "dp0", "dp1"}."""
        if which in ("value", "dz"):
            return getattr(self, which)
        if which in ("dp0", "dp1"):
            return self.dp[int(which[2])]
        raise ValueError(f"which must be 'value', 'dz', 'dp0' or 'dp1', got {which!r}")

    def lets_for(self, source: str):
        return lets_needed(self.let, source)


# The cubic term is p1 z z z, p1 first: at p1 = 0 it is 0 for every finite z (p1 z^3
# is 0 * inf = NaN once z^3 overflows: |z| > 7e12 in float32), and a small p1 keeps
# it finite longer.
def _relu_poly(z, p0, p1):
    return p0 * F.relu(z) + p1 * z * z * z + (1.0 - p0 - p1) * cbrt(z)


def _relu_tanh(z, p0, p1):
    return p0 * F.relu(z) + p1 * z * z * z + (1.0 - p0 - p1) * torch.tanh(z)


def _sigmoid_ramp(z, p0, p1):
    return p0 * torch.sigmoid(z) + (1.0 - p0) * torch.clamp(p1 * z + 0.5, 0.0, 1.0)


def _tanh_ramp(z, p0, p1):
    return p0 * torch.tanh(z) + (1.0 - p0) * torch.clamp(p1 * z, -1.0, 1.0)


_POLY_LETS = (
    ("r", "maximum(z, 0.0)"),
    ("step", "where(z > 0.0, 1.0, 0.0)"),
    ("cube", "z * z * z"),
)
#: cbrt'(z) = 1 / (3 cbrt(m)^2), m = max(|z|, CBRT_EPS = 1e-6). cbrt is monotone, so
#: cbrt(m) = max(|c|, cbrt(1e-6) = 0.01): one root serves the value and the derivative.
_CBRT_LETS = (
    ("c", "cbrt(z)"),
    ("cm", "maximum(abs(c), 0.01)"),
    ("dc", "1.0 / (3.0 * cm * cm)"),
)
_RAMP_LETS = (("band", "where(u >= lo, where(u <= hi, 1.0, 0.0), 0.0)"),
              ("ramp", "minimum(maximum(u, lo), hi)"))


def _ramp_lets(u: str, lo: str, hi: str):
    """clamp(u, lo, hi) and its band indicator, for u = p1 z (+ 1/2)."""
    return (("u", u),) + tuple((v, e.replace("lo", lo).replace("hi", hi)) for v, e in _RAMP_LETS)


FLEXIBLE: Dict[str, FlexibleKind] = {k.name: k for k in (
    FlexibleKind(
        "relu_poly", ("alpha1", "alpha2"), (1.0, 0.0), "relu", _relu_poly,
        let=_POLY_LETS + _CBRT_LETS,
        value="p0 * r + p1 * z * z * z + (1.0 - p0 - p1) * c",
        dz="p0 * step + 3.0 * p1 * z * z + (1.0 - p0 - p1) * dc",
        dp=("r - c", "cube - c")),
    FlexibleKind(  # the authors' code: tanh in place of cbrt
        "relu_tanh", ("alpha1", "alpha2"), (1.0, 0.0), "relu", _relu_tanh,
        let=_POLY_LETS + (("t", "tanh(z)"),),
        value="p0 * r + p1 * z * z * z + (1.0 - p0 - p1) * t",
        dz="p0 * step + 3.0 * p1 * z * z + (1.0 - p0 - p1) * (1.0 - t * t)",
        dp=("r - t", "cube - t")),
    FlexibleKind(  # the paper's P-Sig-Ramp
        "sigmoid_ramp", ("alpha", "beta"), (1.0, 0.1), "sigmoid", _sigmoid_ramp,
        let=(("sg", "sigmoid(z)"),) + _ramp_lets("p1 * z + 0.5", "0.0", "1.0"),
        value="p0 * sg + (1.0 - p0) * ramp",
        dz="p0 * sg * (1.0 - sg) + (1.0 - p0) * p1 * band",
        dp=("sg - ramp", "(1.0 - p0) * z * band")),
    FlexibleKind(
        "tanh_ramp", ("alpha", "beta"), (1.0, 0.1), "tanh", _tanh_ramp,
        let=(("t", "tanh(z)"),) + _ramp_lets("p1 * z", "-1.0", "1.0"),
        value="p0 * t + (1.0 - p0) * ramp",
        dz="p0 * (1.0 - t * t) + (1.0 - p0) * p1 * band",
        dp=("t - ramp", "(1.0 - p0) * z * band")),
)}

#: The flexible kind names.
FLEXIBLE_KINDS: Tuple[str, ...] = tuple(FLEXIBLE)


def get_kind(name: str) -> FlexibleKind:
    """The table row for ``name``; a ``ValueError`` lists the valid names."""
    try:
        return FLEXIBLE[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"kind must be one of {', '.join(FLEXIBLE_KINDS)}; got {name!r}") from None


@functools.lru_cache(maxsize=None)
def _formula(name: str, which: str):
    kind = get_kind(name)
    source = kind.formula(which)
    return formula_function(f"{name}.{which}", ("z", "p0", "p1"), kind.lets_for(source), source)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the torch-op paths compute a flexible activation in: float32 for
    float16 and bfloat16 (rounded once at the end, as the fused kernels do), else
    ``dtype``. In float16, z^3 overflows above |z| = 40 and z^2 above 256, and
    autograd through p1 z z z multiplies that inf by p1 = 0: NaN at init."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def evaluate_flexible(name: str, which: str, z: torch.Tensor, p0, p1) -> torch.Tensor:
    """The formula ``which`` (value, dz, dp0, dp1) of kind ``name`` as torch ops,
    with p0 and p1 broadcast against z."""
    return _formula(name, which)(z, p0, p1)
