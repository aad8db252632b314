"""Slope parameters for the four LAAF modes.

=========  ==================  =======================================
mode       slope               paper name
=========  ==================  =======================================
"fixed"    none                standard activation
"global"   one 0-d, shared     GAAF (share it by passing ``slope=``)
"layer"    0-d per layer       L-LAAF
"neuron"   (N,) per layer      N-LAAF
=========  ==================  =======================================

Every slope starts at ``a = 1/n`` so that ``s = n * a = 1`` and a freshly
built or converted model computes exactly the standard activation.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..checks import check_scale

__all__ = ["MODES", "check_mode", "initial_slope_value", "make_slope", "adopt_slope"]

MODES = ("fixed", "global", "layer", "neuron")


def check_mode(mode) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    return mode


def initial_slope_value(scale: float, dtype: torch.dtype) -> torch.Tensor:
    """The 0-d ``a`` of ``dtype`` closest to 1/scale with ``scale * a == 1`` exactly.

    1/n rounded to ``dtype`` does not always give ``fl(n * a) == 1`` (n = 49 in
    float64 gives 0.9999999999999999); a step or two of ``nextafter`` does, so
    that ``h = (n * a) * z`` equals ``z`` bit for bit at initialisation.
    """
    a = torch.tensor(1.0 / scale, dtype=dtype)
    for _ in range(8):
        error = scale * a - 1
        if error == 0:
            break
        a = torch.nextafter(a, a - error)
    return a


def make_slope(mode: str, num_features: Optional[int], scale: float,
               device=None, dtype=None) -> Optional[nn.Parameter]:
    """A new slope parameter for ``mode`` (None for "fixed"), initialised to n * a = 1."""
    check_mode(mode)
    if mode == "fixed":
        return None
    dtype = dtype or torch.get_default_dtype()
    value = initial_slope_value(check_scale(scale), dtype)
    if mode == "neuron":
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"mode='neuron' needs num_features >= 1, got {num_features!r}")
        return nn.Parameter(value.expand(num_features).to(device).clone())
    return nn.Parameter(value.to(device).clone())


def adopt_slope(mode: str, num_features: Optional[int], slope) -> nn.Parameter:
    """Check that a given (usually shared) ``slope`` parameter fits ``mode``."""
    check_mode(mode)
    if not isinstance(slope, nn.Parameter):
        raise TypeError(f"slope must be an nn.Parameter (to share it) or None, "
                        f"got {type(slope).__name__}")
    if mode == "fixed":
        raise ValueError("slope= was given but mode='fixed' has no slope")
    if mode == "neuron":
        if slope.dim() != 1 or (num_features is not None and slope.shape[0] != num_features):
            raise ValueError(f"mode='neuron' needs a slope of shape ({num_features},), "
                             f"got {tuple(slope.shape)}")
    elif slope.dim() != 0:
        raise ValueError(f"mode={mode!r} needs a 0-d slope, got shape {tuple(slope.shape)}")
    return slope


def slope_or_new(mode, num_features, scale, slope, device=None, dtype=None):
    """``slope`` checked against ``mode`` if given, else a new one."""
    if slope is not None:
        return adopt_slope(mode, num_features, slope)
    return make_slope(mode, num_features, scale, device=device, dtype=dtype)
