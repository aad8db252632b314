"""Argument checks shared by every entry point and backend.

Each check raises a ``TypeError`` (wrong kind of object, dtype) or a
``ValueError`` (wrong shape or value) whose message names the argument and
what was expected. Nothing is ever broadcast silently.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch

from .activations import get as get_activation
from .flexible import NUM_PARAMS, get_kind

__all__ = ["check_activation", "check_scale", "check_linear_args", "check_activation_args",
           "check_flexible_kind", "check_flexible_args", "check_flexible_linear_args"]


def check_activation(activation) -> str:
    """``activation`` must be a name of the table (the error lists them)."""
    get_activation(activation)
    return activation


def check_scale(scale) -> float:
    """``scale`` is the fixed factor n: a finite real number > 0."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number > 0, got {type(scale).__name__}")
    scale = float(scale)
    # Comparisons, not math.isfinite: torch.compile(dynamic=True) passes a module's
    # float attribute as a SymFloat, which compares (a guard) but has no isfinite.
    if not 0 < scale < math.inf:  # NaN fails both
        raise ValueError(f"scale must be a finite number > 0, got {scale}")
    return scale


def _check_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {t.dtype}")


def _check_same_dtype_device(named: dict) -> None:
    """All tensors in ``named`` (name -> tensor or None) share one dtype and device."""
    present = [(n, t) for n, t in named.items() if t is not None]
    first_name, first = present[0]
    for name, t in present[1:]:
        if t.dtype != first.dtype:
            raise TypeError(
                f"{name} has dtype {t.dtype} but {first_name} has {first.dtype}; "
                "all tensor arguments must share one dtype")
        if t.device != first.device:
            raise ValueError(
                f"{name} is on {t.device} but {first_name} is on {first.device}; "
                "all tensor arguments must be on one device")


def _check_slope(slope: Optional[torch.Tensor], features: int, what: str) -> None:
    if slope is None:
        return
    _check_tensor("slope", slope)
    if slope.dim() == 0:
        return
    if slope.dim() != 1 or slope.shape[0] != features:
        raise ValueError(
            f"slope must have shape () or ({features},) ({what}), got {tuple(slope.shape)}")


def check_linear_args(x, weight, bias, slope) -> None:
    """Checks for ``laaf_linear``: x (..., K), weight (N, K), bias (N,), slope () or (N,)."""
    _check_tensor("x", x)
    _check_tensor("weight", weight)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (N, K), got shape {tuple(weight.shape)}")
    n_out, k_in = weight.shape
    if x.dim() < 1 or x.shape[-1] != k_in:
        raise ValueError(
            f"x.shape[-1] must equal weight.shape[1] = {k_in} (K), got x of shape {tuple(x.shape)}")
    if bias is not None:
        _check_tensor("bias", bias)
        if bias.dim() != 1 or bias.shape[0] != n_out:
            raise ValueError(
                f"bias must have shape ({n_out},) (N = weight.shape[0]), got {tuple(bias.shape)}")
    _check_slope(slope, n_out, "N = weight.shape[0]")
    _check_same_dtype_device({"x": x, "weight": weight, "bias": bias, "slope": slope})


def _check_dim(z, dim) -> int:
    """``dim`` an int indexing z's dims (a 0-d z counts as 1-D); made non-negative."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    ndim = max(z.dim(), 1)
    if not -ndim <= dim < ndim:
        raise ValueError(f"dim must be in [{-ndim}, {ndim - 1}] for z of {z.dim()} dims, got {dim}")
    return dim % ndim


def check_activation_args(z, slope, dim: int) -> int:
    """Checks for ``laaf_activation``; returns ``dim`` made non-negative."""
    _check_tensor("z", z)
    dim = _check_dim(z, dim)
    if z.dim() == 0:
        _check_slope(slope, 0, "z is 0-d, so only a 0-d slope fits")
    else:
        _check_slope(slope, z.shape[dim], f"C = z.shape[{dim}]")
    _check_same_dtype_device({"z": z, "slope": slope})
    return dim


# ---------------------------------------------------------------------------
# Flexible activations
# ---------------------------------------------------------------------------

def _check_params(params, channels: int, what: str) -> None:
    _check_tensor("params", params)
    if params.shape != (NUM_PARAMS, channels):
        raise ValueError(f"params must have shape ({NUM_PARAMS}, {channels}) (one row per free "
                         f"parameter, {what}), got {tuple(params.shape)}")


def check_flexible_kind(kind) -> str:
    """``kind`` must be a name of the flexible table (the error lists them)."""
    get_kind(kind)
    return kind


def check_flexible_args(z, params, dim: int) -> int:
    """Checks for ``flexible_activation``: z with at least one dim, params (2, z.shape[dim]);
    returns ``dim`` made non-negative."""
    _check_tensor("z", z)
    if z.dim() == 0:
        raise ValueError("z must have at least one dim (the channels of params run along dim)")
    dim = _check_dim(z, dim)
    _check_params(params, z.shape[dim], f"C = z.shape[{dim}]")
    _check_same_dtype_device({"z": z, "params": params})
    return dim


def check_flexible_linear_args(x, weight, bias, params) -> None:
    """Checks for ``flexible_linear``: as ``laaf_linear``, with params (2, N)."""
    check_linear_args(x, weight, bias, None)
    _check_params(params, weight.shape[0], "N = weight.shape[0]")
    _check_same_dtype_device({"x": x, "params": params})
