"""The "triton" backend: the Triton kernels registered as ``torch.library`` custom
ops (``torch.ops.laaf.triton_*``), with fake implementations so that
``torch.compile(fullgraph=True)`` traces through them, and the shared autograd
formulas of :mod:`laaf_kernels.ops.autograd`.

It runs CUDA tensors compiled, and CPU tensors in Triton's interpreter
(``TRITON_INTERPRET=1``, set before triton is imported).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..kernels import triton_launchers as launch
from .autograd import (make_activation, make_flexible, make_linear, register_backend_ops,
                       register_flexible_ops)
from .grad_y import check_grad_y_args, make_grad_y, register_grad_y_ops

__all__ = ["linear", "activation", "flexible"]


# ---------------------------------------------------------------------------
# Linear
# ---------------------------------------------------------------------------

@torch.library.custom_op("laaf::triton_linear_fwd", mutates_args=())
def linear_fwd(x: Tensor, weight: Tensor, bias: Optional[Tensor], s: Optional[Tensor],
               activation: str, store_z: bool) -> Tuple[Tensor, Tensor]:
    """y = act(s (x W^T + b)) for 2-D x; also z = x W^T + b if ``store_z`` (in training,
    a wide layer: launch.stores_z), else an empty tensor."""
    return launch.linear_forward(x, weight, bias, s, activation, store_z)


@torch.library.custom_op("laaf::triton_linear_bwd", mutates_args=())
def linear_bwd(g: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], z: Tensor,
               s: Optional[Tensor], y: Optional[Tensor], activation: str, need_dx: bool,
               need_dw: bool, need_db: bool, need_ds: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dx, dW, db, ds); an output not asked for is an empty tensor. (y is not
    saved for this backend: it is always None.)"""
    grads = launch.linear_backward(g, x, weight, bias, z, s, activation,
                                   need_dx, need_dw, need_db, need_ds)
    return tuple(x.new_empty((0,)) if t is None else t for t in grads)


# ---------------------------------------------------------------------------
# Standalone activation
# ---------------------------------------------------------------------------

@torch.library.custom_op("laaf::triton_act_fwd", mutates_args=())
def act_fwd(z: Tensor, s: Optional[Tensor], activation: str, dim: int) -> Tensor:
    """y = act(s z), a (C,) s broadcast along ``dim``."""
    return launch.activation_forward(z, s, activation, dim)


@torch.library.custom_op("laaf::triton_act_bwd", mutates_args=())
def act_bwd(g: Tensor, z: Tensor, s: Optional[Tensor], y: Optional[Tensor], activation: str,
            dim: int, need_dz: bool, need_ds: bool) -> Tuple[Tensor, Tensor]:
    """(dz, ds); an output not asked for is an empty tensor."""
    dz, ds = launch.activation_backward(g, z, s, activation, dim, need_dz, need_ds)
    return (z.new_empty((0,)) if dz is None else dz, z.new_empty((0,)) if ds is None else ds)


# ---------------------------------------------------------------------------
# gz = g act'(h) s from y and its derivatives: the create_graph passes (ops.grad_y)
# ---------------------------------------------------------------------------

@torch.library.custom_op("laaf::triton_grad_y", mutates_args=())
def grad_y(g: Tensor, y: Tensor, s: Optional[Tensor], activation: str, dim: int) -> Tensor:
    """gz = g act'(h) s, act' from y = act(h)."""
    check_grad_y_args(activation, y, g)
    return launch.grad_y(g, y, s, activation, dim)


def _or_empty(grads, like: Tensor):
    return tuple(like.new_empty((0,)) if t is None else t for t in grads)


@torch.library.custom_op("laaf::triton_grad_y_vjp", mutates_args=())
def grad_y_vjp(u: Tensor, g: Tensor, y: Tensor, s: Optional[Tensor], activation: str, dim: int,
               need_g: bool, need_y: bool, need_s: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """(dg, dy, ds) given u = dL/dgz; an output not asked for is an empty tensor."""
    check_grad_y_args(activation, y, u, g)
    return _or_empty(launch.grad_y_vjp(u, g, y, s, activation, dim, need_g, need_y, need_s), y)


@torch.library.custom_op("laaf::triton_grad_y_vjp2", mutates_args=())
def grad_y_vjp2(ug: Optional[Tensor], uy: Optional[Tensor], us: Optional[Tensor], u: Tensor,
                g: Tensor, y: Tensor, s: Optional[Tensor], activation: str, dim: int,
                need_u: bool, need_g: bool, need_y: bool,
                need_s: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(du, dg, dy, ds) given the cotangents of grad_y_vjp's outputs."""
    check_grad_y_args(activation, y, ug, uy, u, g, s=s, us=us)
    return _or_empty(launch.grad_y_vjp2(ug, uy, us, u, g, y, s, activation, dim, need_u, need_g,
                                        need_y, need_s), y)


register_grad_y_ops("triton")
# y is not saved (the memory budget: x and s only, for narrow layers); the
# create_graph passes recompute z and y = act(s z) with torch, then run on grad_y.
register_backend_ops("triton", grad_y=make_grad_y("triton"))

linear = make_linear("triton", launch.stores_z)
activation = make_activation("triton")


# ---------------------------------------------------------------------------
# Flexible activations
# ---------------------------------------------------------------------------

@torch.library.custom_op("laaf::triton_flex_fwd", mutates_args=())
def flex_fwd(z: Tensor, params: Tensor, kind: str, dim: int) -> Tensor:
    """y = f_kind(z; params[0], params[1]), the (2, C) params along ``dim``."""
    return launch.flexible_forward(z, params, kind, dim)


@torch.library.custom_op("laaf::triton_flex_bwd", mutates_args=())
def flex_bwd(g: Tensor, z: Tensor, params: Tensor, kind: str, dim: int, need_dz: bool,
             need_dp: bool) -> Tuple[Tensor, Tensor]:
    """(dz, dparams); an output not asked for is an empty tensor."""
    dz, dp = launch.flexible_backward(g, z, params, kind, dim, need_dz, need_dp)
    return (z.new_empty((0,)) if dz is None else dz, z.new_empty((0,)) if dp is None else dp)


register_flexible_ops("triton")
flexible = make_flexible("triton")
