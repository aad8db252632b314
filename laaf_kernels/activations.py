"""The one table of activations: value, first and second derivative.

Every backend draws its activation math from ``TABLE`` below:

* the pure-PyTorch reference calls ``Activation.torch_fn`` (the PyTorch
  built-in, differentiable to any order) for the value, and
  :func:`evaluate` renders the derivative formulas as torch ops;
* fused backends render the same formula strings into their own language
  (Triton, C++), so no backend keeps its own copy of the math.

A formula is a Python expression string in the variable ``h`` (the
pre-activation ``h = s * z``) and in the names bound by ``let`` (shared
sub-expressions, evaluated in order). It may use only this vocabulary, which
each backend provides:

    tanh sigmoid exp expm1 log1p abs erf sin cos cbrt elementwise functions
    where(cond, a, b) maximum(a, b) minimum(a, b)      selection
    + - * /  > >= < <=  float literals                 arithmetic
    SQRT1_2 = 1/sqrt(2), INV_SQRT_2PI = 1/sqrt(2 pi)   constants

``d1_y`` is act' written in ``y = act(h)`` alone, where that is cheap and
exact (tanh: 1 - y^2): a backend that saves y then needs no transcendental in
its backward. It is None where act' is not such a function of y. Where it is
given, so are its derivatives in y, ``d1_y_dy`` and ``d1_y_dyy`` (tanh: -2 y
and -2): the fused double and triple backward of g act'(h) s
(:mod:`laaf_kernels.ops.grad_y`) take them, as a PINN's u_xx does.
``torch_grad_y(g, y)`` is PyTorch's own fused op for g * d1_y(y) where one
exists (aten.tanh_backward, ...): one kernel, with its own double backward.

A formula that is a bare constant (``"0.0"``) is broadcast to the shape of
``h`` by the renderer. Branches of ``where`` that could overflow in the
unselected half are clamped (``exp(minimum(h, 0.0))``) so that no inf or NaN
leaks into a gradient taken through the rendered formula.

Kinks and thresholds follow PyTorch's conventions: relu'(0) = 0,
leaky_relu'(0) = 0.01, and softplus is h itself above h = 20 (F.softplus's
threshold), where log1p(e^h) - h < 2.1e-9.
"""
from __future__ import annotations

import ast
import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["Activation", "TABLE", "FORMULAS", "Y_FORMULAS", "ACTIVATIONS", "get", "evaluate", "grad_from_y", "PRIMITIVES",
           "formula_function", "lets_needed", "is_constant", "cbrt", "cbrt_d1", "CBRT_EPS"]

#: The names a formula may call, beside arithmetic and comparisons.
PRIMITIVES = (
    "tanh", "sigmoid", "exp", "expm1", "log1p", "abs", "erf", "sin", "cos", "cbrt",
    "where", "maximum", "minimum",
)
CONSTANTS = {"SQRT1_2": 1.0 / math.sqrt(2.0), "INV_SQRT_2PI": 1.0 / math.sqrt(2.0 * math.pi)}


#: The formulas of a table row: in h, and (the last three) in y = act(h).
Y_FORMULAS = ("d1_y", "d1_y_dy", "d1_y_dyy")
FORMULAS = ("value", "d1", "d2") + Y_FORMULAS


@dataclass(frozen=True)
class Activation:
    """One row of the table.

    ``value``, ``d1`` and ``d2`` are act(h), act'(h) and act''(h) as formula
    strings; ``let`` holds shared sub-expressions; ``torch_fn`` is the PyTorch
    built-in with the same value, which the reference backend calls.
    """

    name: str
    torch_fn: Callable[[torch.Tensor], torch.Tensor]
    value: str
    d1: str
    d2: str
    let: Tuple[Tuple[str, str], ...] = field(default=())
    d1_y: Optional[str] = None
    d1_y_dy: Optional[str] = None
    d1_y_dyy: Optional[str] = None
    torch_grad_y: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None

    def formula(self, which: str) -> str:
        """The formula string for ``which``, one of ``FORMULAS``."""
        if which not in FORMULAS:
            raise ValueError(f"which must be one of {', '.join(FORMULAS)}, got {which!r}")
        if which in Y_FORMULAS and self.d1_y is None:
            raise ValueError(f"{self.name}'s act' is not a function of y alone (no d1_y)")
        return getattr(self, which)

    def lets_for(self, source: str) -> Tuple[Tuple[str, str], ...]:
        """The let-bindings ``source`` uses, directly or through other bindings, in order."""
        return lets_needed(self.let, source)


def lets_needed(let, source: str) -> Tuple[Tuple[str, str], ...]:
    """Of the bindings ``let`` ((name, expr), ...), those ``source`` uses, in order."""
    needed = _names(source)
    keep = []
    for var, expr in reversed(let):
        if var in needed:
            keep.append((var, expr))
            needed |= _names(expr)
    return tuple(keep[::-1])


def _names(source: str) -> set:
    return {n.id for n in ast.walk(ast.parse(source, mode="eval")) if isinstance(n, ast.Name)}


def _leaky_relu(h: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(h, 0.01)


TABLE: Dict[str, Activation] = {a.name: a for a in (
    Activation(
        "tanh", torch.tanh,
        let=(("t", "tanh(h)"),),
        value="t", d1="1.0 - t * t", d2="-2.0 * t * (1.0 - t * t)", d1_y="1.0 - y * y",
        d1_y_dy="-2.0 * y", d1_y_dyy="-2.0", torch_grad_y=torch.ops.aten.tanh_backward),
    Activation(
        "sigmoid", torch.sigmoid,
        let=(("s", "sigmoid(h)"),),
        value="s", d1="s * (1.0 - s)", d2="s * (1.0 - s) * (1.0 - 2.0 * s)",
        d1_y="y * (1.0 - y)", d1_y_dy="1.0 - 2.0 * y", d1_y_dyy="-2.0",
        torch_grad_y=torch.ops.aten.sigmoid_backward),
    Activation(
        "relu", torch.relu,
        value="maximum(h, 0.0)", d1="where(h > 0.0, 1.0, 0.0)", d2="0.0",
        d1_y="where(y > 0.0, 1.0, 0.0)", d1_y_dy="0.0", d1_y_dyy="0.0",
        torch_grad_y=lambda g, y: torch.ops.aten.threshold_backward(g, y, 0)),
    Activation(
        "leaky_relu", _leaky_relu,
        value="where(h > 0.0, h, 0.01 * h)", d1="where(h > 0.0, 1.0, 0.01)", d2="0.0",
        d1_y="where(y > 0.0, 1.0, 0.01)", d1_y_dy="0.0", d1_y_dyy="0.0"),
    Activation(
        "elu", F.elu,
        let=(("e", "exp(minimum(h, 0.0))"),),
        value="where(h > 0.0, h, expm1(minimum(h, 0.0)))",
        d1="where(h > 0.0, 1.0, e)", d2="where(h > 0.0, 0.0, e)"),
    Activation(  # like F.softplus (threshold 20): exactly h above h = 20
        "softplus", F.softplus,
        let=(("s", "sigmoid(h)"),),
        value="where(h > 20.0, h, log1p(exp(minimum(h, 20.0))))",
        d1="where(h > 20.0, 1.0, s)", d2="where(h > 20.0, 0.0, s * (1.0 - s))"),
    Activation(  # value in PyTorch's order, h / (1 + e^-h): the same bits as F.silu
        "silu", F.silu,
        let=(("s", "sigmoid(h)"),),
        value="h / (1.0 + exp(-h))", d1="s * (1.0 + h * (1.0 - s))",
        d2="s * (1.0 - s) * (2.0 + h * (1.0 - 2.0 * s))"),
    Activation(  # value in PyTorch's order, (h / 2) (1 + erf): the same bits as F.gelu
        "gelu", F.gelu,
        let=(("cdf", "0.5 * (1.0 + erf(h * SQRT1_2))"),
             ("pdf", "INV_SQRT_2PI * exp(-0.5 * h * h)")),
        value="h * 0.5 * (1.0 + erf(h * SQRT1_2))", d1="cdf + h * pdf", d2="pdf * (2.0 - h * h)"),
    Activation(
        "sin", torch.sin,
        value="sin(h)", d1="cos(h)", d2="-sin(h)"),
    Activation(
        "identity", lambda h: h,
        value="h", d1="1.0", d2="0.0", d1_y="1.0", d1_y_dy="0.0", d1_y_dyy="0.0"),
)}

#: The supported activation names, core first.
ACTIVATIONS: Tuple[str, ...] = tuple(TABLE)


def get(name: str) -> Activation:
    """The table row for ``name``; a ``ValueError`` lists the valid names."""
    try:
        return TABLE[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"activation must be one of {', '.join(ACTIVATIONS)}; got {name!r}") from None


# ---------------------------------------------------------------------------
# Rendering the formulas as torch ops
# ---------------------------------------------------------------------------

def _const_like(ref: torch.Tensor, v):
    return torch.full_like(ref, v) if isinstance(v, (int, float)) else v


def _where(ref, cond, a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        a = _const_like(ref, a)
    return torch.where(cond, a, b)


def _maximum(ref, a, b):
    return torch.maximum(_const_like(ref, a), _const_like(ref, b))


def _minimum(ref, a, b):
    return torch.minimum(_const_like(ref, a), _const_like(ref, b))


#: Where cbrt's derivative 1 / (3 |z|^(2/3)) is unbounded (z -> 0), formulas use
#: 1 / (3 cbrt(m)^2) with m = max(|z|, CBRT_EPS): at most 3.3e3, never inf.
CBRT_EPS = 1e-6


def cbrt_d1(z: torch.Tensor) -> torch.Tensor:
    """cbrt'(z) with |z| floored at CBRT_EPS (differentiable: cbrt'' = 0 below it)."""
    root = z.abs().clamp_min(CBRT_EPS).pow(1.0 / 3.0)
    return 1.0 / (3.0 * root * root)


class _Cbrt(torch.autograd.Function):
    """The real cube root sign(z) |z|^(1/3), with the finite derivative ``cbrt_d1``;
    its backward is made of torch ops, so it is differentiable again."""

    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return torch.sign(z) * z.abs().pow(1.0 / 3.0)

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        return g * cbrt_d1(z)


def cbrt(z: torch.Tensor) -> torch.Tensor:
    """Real cube root, differentiable to any order with finite derivatives."""
    return _Cbrt.apply(z)


#: The formula vocabulary in torch. where/maximum/minimum take the formula's
#: variable as a first, hidden argument, so that Python constants get its dtype.
_TORCH_NAMESPACE = {
    "tanh": torch.tanh, "sigmoid": torch.sigmoid, "exp": torch.exp, "expm1": torch.expm1,
    "log1p": torch.log1p, "abs": torch.abs, "erf": torch.special.erf, "sin": torch.sin,
    "cos": torch.cos, "cbrt": cbrt, "where": _where, "maximum": _maximum, "minimum": _minimum,
    "full_like": torch.full_like, **CONSTANTS,
}


class _PassVariable(ast.NodeTransformer):
    """where(c, a, b) -> where(h, c, a, b) (the same for maximum and minimum)."""

    def __init__(self, var: str):
        self.var = var

    def visit_Call(self, node):
        self.generic_visit(node)
        if isinstance(node.func, ast.Name) and node.func.id in ("where", "maximum", "minimum"):
            node.args.insert(0, ast.Name(self.var, ast.Load()))
        return node


def is_constant(source: str) -> bool:
    """Whether a formula is a bare number (``0.0``, ``-2.0``), which renderers
    broadcast to the shape of the formula's variable."""
    body = ast.parse(source, mode="eval").body
    if isinstance(body, ast.UnaryOp) and isinstance(body.op, (ast.USub, ast.UAdd)):
        body = body.operand
    return isinstance(body, ast.Constant)


def _torch_source(source: str, var: str) -> str:
    tree = ast.parse(source, mode="eval")
    if is_constant(source):
        return f"full_like({var}, {source})"
    return ast.unparse(_PassVariable(var).visit(tree))


def formula_function(label: str, args: Tuple[str, ...], lets, formula: str):
    """A formula (with its let-bindings) as a Python function of torch tensors
    named ``args``; ``args[0]`` is the tensor whose shape and dtype literals take."""
    lines = [f"def formula({', '.join(args)}):"]
    lines += [f"    {v} = {_torch_source(e, args[0])}" for v, e in lets]
    lines.append(f"    return {_torch_source(formula, args[0])}")
    scope = dict(_TORCH_NAMESPACE)
    exec(compile("\n".join(lines), f"<laaf formula {label}>", "exec"), scope)
    return scope["formula"]


@functools.lru_cache(maxsize=None)
def _torch_function(name: str, which: str):
    """act / act' / act'' (or act' from y) of the table as a Python function of
    torch tensors, compiled once."""
    act = get(name)
    formula = act.formula(which)
    if which in Y_FORMULAS:
        return formula_function(f"{name}.{which}", ("y",), (), formula)
    return formula_function(f"{name}.{which}", ("h",), act.lets_for(formula), formula)


def grad_from_y(name: str, g: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """gh = g * act'(h) from the output y = act(h) (needs the table's d1_y):
    PyTorch's fused op where the table names one, else the d1_y formula."""
    act = get(name)
    if act.torch_grad_y is not None:
        return act.torch_grad_y(g, y)
    return g * evaluate(name, "d1_y", y)


def evaluate(name: str, which: str, h: torch.Tensor) -> torch.Tensor:
    """Evaluate act(h), act'(h) or act''(h) (``which`` = value/d1/d2) from the
    table; with ``which`` one of ``Y_FORMULAS``, ``h`` is y = act(h) and the
    result act'(h) (d1_y) or its first or second derivative in y.

    The result is differentiable by autograd wherever the formula is, and has
    the shape, dtype and device of ``h``.
    """
    return _torch_function(name, which)(h)
