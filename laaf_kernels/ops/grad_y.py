"""The fused derivatives of gz = g act'(h) s, act' taken from the saved y = act(h).

A PINN differentiates its network twice with ``create_graph=True`` (u_x, then
u_xx) and then backpropagates through both passes. Each layer of those passes
forms gz = g act'(h) s; its derivatives are what the later passes run. Built
from ATen ops, every factor and every term is a pass over memory of its own
(``tanh_backward``, its double backward's three multiplies, ...). Here each is
one pass, with phi = act'(h) = d1_y(y) and its derivatives in y, phi' = d1_y_dy
and phi'' = d1_y_dyy, from the table (:mod:`laaf_kernels.activations`)::

    grad_y       gz = g phi s
    grad_y_vjp   given u = dL/dgz:
                   dg = u phi s      dy = u g s phi'      ds = sum u g phi
    grad_y_vjp2  given ug, uy, us = dL/d(dg, dy, ds) (each may be absent):
                   du = s (ug phi + uy g phi') + us g phi
                   dg = uy u s phi' + us u phi
                   dy = ug u s phi' + uy u g s phi'' + us u g phi'
                   ds = sum u (ug phi + uy g phi')

s is None (standard activation), 0-d or (C,) along ``dim``; "sum" runs over all
dims but ``dim`` (all of them for a 0-d s).

A backend provides the three as ``torch.ops.laaf.<prefix>_grad_y``,
``<prefix>_grad_y_vjp`` and ``<prefix>_grad_y_vjp2``; :func:`register_grad_y_ops`
gives them fakes and autograd. grad_y's backward is grad_y_vjp, called with its
own autograd when that backward is itself differentiated; grad_y_vjp's backward
is grad_y_vjp2, or, when differentiated once more (a fourth derivative),
:func:`vjp2_torch`, the same formulas as differentiable torch ops. So
derivatives of any order stay exact, and the orders a PINN step runs are fused.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..activations import evaluate
from ..activations import get as get_activation
from ..reference import along
from .autograd import call_op, needed_inputs, present, register_autograd_rule, sum_like_slope

__all__ = ["register_grad_y_ops", "make_grad_y", "grad_y_torch", "vjp_torch", "vjp2_torch",
           "check_grad_y_args"]


def check_grad_y_args(activation: str, y, *like_y, s=None, us=None) -> None:
    """The raw ops' argument checks (the C++ ops make the same ones): an activation
    whose act' is a function of y, tensors of y's shape and dtype, us shaped as s."""
    if get_activation(activation).d1_y is None:
        raise ValueError(f"grad_y: {activation}'s act' is not a function of y "
                         "(the table has no d1_y for it)")
    for t in like_y:
        if t is not None and (t.shape != y.shape or t.dtype != y.dtype):
            raise ValueError(f"grad_y: every tensor argument must have y's shape {tuple(y.shape)} "
                             f"and dtype {y.dtype}, got {tuple(t.shape)} {t.dtype}")
    if us is not None and (s is None or us.shape != s.shape):
        raise ValueError("grad_y_vjp2: us must have the slope's shape")


# ---------------------------------------------------------------------------
# The formulas as torch ops (the fourth-order fallback, and the tests' reference)
# ---------------------------------------------------------------------------

def _phis(y, activation: str):
    return (evaluate(activation, "d1_y", y), evaluate(activation, "d1_y_dy", y),
            evaluate(activation, "d1_y_dyy", y))


def _slope_along(s, ndim: int, dim: int):
    return 1.0 if s is None else along(s, ndim, dim)


def grad_y_torch(g, y, s, activation: str, dim: int):
    """gz = g phi s."""
    return g * evaluate(activation, "d1_y", y) * _slope_along(s, y.dim(), dim)


def vjp_torch(u, g, y, s, activation: str, dim: int, need=(True, True, True)):
    """(dg, dy, ds) of gz = g phi s given u = dL/dgz; None where not needed."""
    phi, phi1, _ = _phis(y, activation)
    s_b = _slope_along(s, y.dim(), dim)
    return (u * phi * s_b if need[0] else None,
            u * g * s_b * phi1 if need[1] else None,
            sum_like_slope(u * g * phi, s, dim) if need[2] and s is not None else None)


def vjp2_torch(ug, uy, us, u, g, y, s, activation: str, dim: int, need=(True,) * 4):
    """(du, dg, dy, ds) of :func:`vjp_torch`'s outputs given their cotangents
    ug, uy, us (None: zero); None where not needed."""
    phi, phi1, phi2 = _phis(y, activation)
    s_b = _slope_along(s, y.dim(), dim)
    ug = 0.0 if ug is None else ug
    uy = 0.0 if uy is None else uy
    us_b = 0.0 if us is None else along(us, y.dim(), dim)
    mix = ug * phi + uy * g * phi1
    return (s_b * mix + us_b * g * phi if need[0] else None,
            u * (uy * s_b * phi1 + us_b * phi) if need[1] else None,
            u * (ug * s_b * phi1 + uy * g * s_b * phi2 + us_b * g * phi1) if need[2] else None,
            sum_like_slope(u * mix, s, dim) if need[3] and s is not None else None)


# ---------------------------------------------------------------------------
# Fakes and autograd of a backend's three ops
# ---------------------------------------------------------------------------

def _like_y_or_empty(need: bool, y: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(y, memory_format=torch.contiguous_format) if need else y.new_empty((0,))


def _slope_grad_or_empty(need: bool, s, y: torch.Tensor) -> torch.Tensor:
    return s.new_empty(s.shape) if need and s is not None else y.new_empty((0,))


def _register_fakes(prefix: str) -> None:
    @torch.library.register_fake(f"laaf::{prefix}_grad_y")
    def _(g, y, s, activation, dim):
        return torch.empty_like(y, memory_format=torch.contiguous_format)

    @torch.library.register_fake(f"laaf::{prefix}_grad_y_vjp")
    def _(u, g, y, s, activation, dim, need_g, need_y, need_s):
        return (_like_y_or_empty(need_g, y), _like_y_or_empty(need_y, y),
                _slope_grad_or_empty(need_s, s, y))

    @torch.library.register_fake(f"laaf::{prefix}_grad_y_vjp2")
    def _(ug, uy, us, u, g, y, s, activation, dim, need_u, need_g, need_y, need_s):
        return (_like_y_or_empty(need_u, y), _like_y_or_empty(need_g, y),
                _like_y_or_empty(need_y, y), _slope_grad_or_empty(need_s, s, y))


def register_grad_y_ops(prefix: str) -> None:
    """Fakes and autograd of torch.ops.laaf.<prefix>_grad_y{,_vjp,_vjp2} (see the module
    docstring). grad_y_vjp2 has no autograd of its own: it runs only where no graph
    is recorded, the fourth order going through :func:`vjp2_torch`."""
    _register_fakes(prefix)
    ops = torch.ops.laaf
    vjp_name = f"laaf::{prefix}_grad_y_vjp"
    vjp2_op = getattr(ops, f"{prefix}_grad_y_vjp2")

    def setup_context(ctx, inputs, output):
        ctx.activation, ctx.dim = inputs[-2], inputs[-1]
        ctx.save_for_backward(*inputs[:-2])

    def grad_y_backward(ctx, u):
        g, y, s = ctx.saved_tensors
        need = needed_inputs(ctx, 3)
        if u is None or not any(need):
            return None, None, None, None, None
        # call_op also where no graph is recorded: called as torch.ops.laaf.*_vjp, the
        # op would go through torch.library's Python autograd wrapper first (~6 us).
        grads = call_op(vjp_name, u, g, y, s, ctx.activation, ctx.dim, *need)
        return (*present(grads, need), None, None)

    def vjp_setup_context(ctx, inputs, output):
        ctx.set_materialize_grads(False)
        ctx.activation, ctx.dim = inputs[4], inputs[5]
        ctx.save_for_backward(*inputs[:4])

    def vjp_backward(ctx, ug, uy, us):
        u, g, y, s = ctx.saved_tensors
        need = needed_inputs(ctx, 4)
        nothing = (None,) * 9
        if (ug is None and uy is None and us is None) or not any(need):
            return nothing
        if torch.is_grad_enabled():  # differentiated again: differentiable torch ops
            grads = vjp2_torch(ug, uy, us, u, g, y, s, ctx.activation, ctx.dim, need)
        else:
            grads = present(vjp2_op(ug, uy, us, u, g, y, s, ctx.activation, ctx.dim, *need),
                            need)
        return (*grads, *nothing[4:])

    register_autograd_rule(f"laaf::{prefix}_grad_y", grad_y_backward, setup_context)
    register_autograd_rule(vjp_name, vjp_backward, vjp_setup_context)


def make_grad_y(prefix: str) -> Callable:
    """The backend's ``grad_y(g, y, s, activation, dim)`` = g act'(h) s, with autograd."""

    def grad_y(g: torch.Tensor, y: torch.Tensor, s: Optional[torch.Tensor], activation: str,
               dim: int) -> torch.Tensor:
        return call_op(f"laaf::{prefix}_grad_y", g, y, s, activation, dim)

    return grad_y
