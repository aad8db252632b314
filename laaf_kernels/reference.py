"""The pure-PyTorch reference: the same functional API in plain torch ops.

It runs on any device and dtype PyTorch supports and is differentiable to any
order, since it is built only from differentiable PyTorch ops. Every fused
backend is tested against it.

    z = x W^T + b        s = scale * slope        h = s * z        y = act(h)

With ``slope=None`` the activation is the standard one: h = z.

Precision in float16 / bfloat16: the LAAF ops here compute as eager PyTorch does,
each op (z, h, act) rounded to the input's dtype; the fused kernels accumulate z and
compute h and act(h) in float32, rounding once at the end, so they land nearer the
float64 truth. The tests bound both by the error of eager PyTorch in that dtype
(``tests/helpers.assert_close_to_truth``), never the one by the other. The flexible
kinds are the exception: they compute in float32 here too (``flexible.compute_dtype``),
since their z^3 overflows float16 from |z| = 40 and 0 * inf would give NaN at init.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch
import torch.nn.functional as F

from .activations import get as get_activation
from .flexible import compute_dtype, get_kind
from .checks import check_activation_args, check_linear_args, check_scale

__all__ = ["laaf_linear", "laaf_activation", "slope_recovery"]


# ---------------------------------------------------------------------------
# Unchecked kernels of the reference backend (arguments already validated)
# ---------------------------------------------------------------------------

def along(p: torch.Tensor, ndim: int, dim: int) -> torch.Tensor:
    """A (C,) tensor shaped to broadcast along ``dim`` of an ``ndim``-dim tensor
    (a 0-d tensor broadcasts as it is)."""
    if p.dim() == 0:
        return p
    view = [1] * ndim
    view[dim] = p.shape[0]
    return p.reshape(view)


def linear_impl(x, weight, bias, slope, activation: str, scale: float) -> torch.Tensor:
    """y = act(scale * slope * (x W^T + b)); the slope broadcasts along the last dim."""
    z = F.linear(x, weight, bias)
    h = z if slope is None else z * (scale * slope)
    return get_activation(activation).torch_fn(h)


def activation_impl(z, slope, activation: str, scale: float, dim: int) -> torch.Tensor:
    """y = act(scale * slope * z), a (C,) slope broadcast along ``dim``."""
    if slope is None:
        h = z
    else:
        s = scale * slope
        h = z * along(s, z.dim(), dim)
    return get_activation(activation).torch_fn(h)


def flexible_operands(z, params, dim: int):
    """(z, p0, p1) in the dtype the torch-op paths compute in (float32 for float16
    and bfloat16, see flexible.compute_dtype), p0 and p1 shaped along ``dim``."""
    dtype = compute_dtype(z.dtype)
    p0, p1 = (along(p.to(dtype), z.dim(), dim) for p in params.unbind(0))
    return z.to(dtype), p0, p1


def flexible_activation_impl(z, params, kind: str, dim: int) -> torch.Tensor:
    """The flexible activation ``kind`` of z, with the (2, C) params along ``dim``,
    rounded once to z's dtype."""
    return get_kind(kind).torch_value(*flexible_operands(z, params, dim)).to(z.dtype)


# ---------------------------------------------------------------------------
# The public reference API
# ---------------------------------------------------------------------------

def laaf_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                slope: Optional[torch.Tensor] = None, *, activation: str = "tanh",
                scale: float = 1.0) -> torch.Tensor:
    """``act(scale * slope * (x @ weight.T + bias))`` in plain PyTorch.

    x: (..., K); weight: (N, K); bias: (N,) or None; slope: None (standard
    activation, ``scale`` unused), () (global / layer-wise) or (N,) (neuron-wise).
    """
    check_linear_args(x, weight, bias, slope)
    return linear_impl(x, weight, bias, slope, activation, _checked(activation, scale))


def laaf_activation(z: torch.Tensor, slope: Optional[torch.Tensor] = None, *,
                    activation: str = "tanh", scale: float = 1.0, dim: int = -1) -> torch.Tensor:
    """``act(scale * slope * z)``, a (C,) slope broadcast along ``dim``, in plain PyTorch."""
    dim = check_activation_args(z, slope, dim)
    return activation_impl(z, slope, activation, _checked(activation, scale), dim)


def slope_recovery(slopes: Iterable[torch.Tensor]) -> torch.Tensor:
    """The slope recovery term ``S = 1 / mean_k exp(mean(a^k))`` (LAAF paper, eq. 3).

    ``slopes`` holds one tensor per hidden layer that carries a slope: 0-d for
    GAAF / L-LAAF, (N,) for N-LAAF. It is computed on the raw ``a``, not on
    ``n * a``, and divides by the number of layers L (the paper), not by 1 (the
    authors' TF script). The result is a differentiable 0-d tensor.
    """
    if isinstance(slopes, torch.Tensor):
        raise TypeError("slopes must be an iterable of slope tensors (one per layer), "
                        "not a single tensor; wrap it in a list")
    slopes = list(slopes)
    if not slopes:
        raise ValueError("slopes must hold at least one slope tensor, got none")
    terms = []
    for k, a in enumerate(slopes):
        if not isinstance(a, torch.Tensor) or not a.is_floating_point():
            raise TypeError(f"slopes[{k}] must be a floating-point tensor, got {a!r:.60}")
        if a.numel() == 0:
            raise ValueError(f"slopes[{k}] is empty; every slope tensor needs at least one element")
        terms.append(torch.exp(a.mean()))
    return 1.0 / torch.stack(terms).mean()


def _checked(activation: str, scale) -> float:
    get_activation(activation)
    return check_scale(scale)
