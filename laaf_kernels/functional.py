"""The public functional API: validate once, then dispatch to a backend.

    z = x W^T + b        s = scale * slope        h = s * z        y = act(h)
"""
from __future__ import annotations

import math
from typing import Optional

import torch

import torch.nn.functional as F

from .checks import (check_activation, check_activation_args, check_flexible_args,
                     check_flexible_kind, check_flexible_linear_args, check_linear_args,
                     check_scale)
from .ops.dispatch import select_backend, small_training_call
from .reference import slope_recovery

__all__ = ["laaf_linear", "laaf_activation", "slope_recovery", "flexible_activation",
           "flexible_linear"]


def laaf_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                slope: Optional[torch.Tensor] = None, *, activation: str = "tanh",
                scale: float = 1.0, backend: Optional[str] = None) -> torch.Tensor:
    """``act(scale * slope * (x @ weight.T + bias))``, fused where a backend allows.

    Args:
        x: (..., K) input, any number of leading dims.
        weight: (N, K). bias: (N,) or None.
        slope: None for the standard activation (h = z, ``scale`` unused); a 0-d
            tensor for one slope (GAAF, L-LAAF); an (N,) tensor for N-LAAF.
        activation: a name in ``laaf_kernels.ACTIVATIONS``.
        scale: the fixed factor n > 0 (the paper uses n >= 1).
        backend: "reference", "triton", "cpp", "cuda", "auto" or None
            (see :func:`laaf_kernels.use_backend`).

    Returns:
        (..., N) tensor ``y``.
    """
    check_linear_args(x, weight, bias, slope)
    check_activation(activation)
    scale = check_scale(scale)
    impl = select_backend(backend, x.device, lambda: small_training_call(
        "linear", math.prod(x.shape[:-1]) * weight.shape[0], x, weight, bias, slope))
    return impl.linear(x, weight, bias, slope, activation, scale)


def laaf_activation(z: torch.Tensor, slope: Optional[torch.Tensor] = None, *,
                    activation: str = "tanh", scale: float = 1.0, dim: int = -1,
                    backend: Optional[str] = None) -> torch.Tensor:
    """``act(scale * slope * z)``: the adaptive activation alone, after any layer.

    A (C,) ``slope`` is broadcast along ``dim`` (``dim=1`` for NCHW convolution
    outputs); a 0-d slope applies everywhere; None is the standard activation.
    """
    dim = check_activation_args(z, slope, dim)
    check_activation(activation)
    scale = check_scale(scale)
    impl = select_backend(backend, z.device, lambda: small_training_call(
        "activation", z.numel(), z, slope))
    return impl.activation(z, slope, activation, scale, dim)


def flexible_activation(z: torch.Tensor, params: torch.Tensor, *, kind: str, dim: int = -1,
                        backend: Optional[str] = None) -> torch.Tensor:
    """The combined flexible activation ``kind`` of z (``laaf_kernels.FLEXIBLE_KINDS``).

    ``params`` is (2, C), C = z.shape[dim]: row p holds the p-th free parameter
    of every channel, in the formula's order ((α1, α2) for relu_poly and
    relu_tanh, (α, β) for sigmoid_ramp and tanh_ramp; see
    :mod:`laaf_kernels.flexible`). α outside [0, 1] is allowed.
    """
    dim = check_flexible_args(z, params, dim)
    check_flexible_kind(kind)
    return select_backend(backend, z.device).flexible(z, params, kind, dim)


def flexible_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    params: torch.Tensor, *, kind: str,
                    backend: Optional[str] = None) -> torch.Tensor:
    """``flexible_activation(x @ weight.T + bias, params, kind=kind)``, params (2, N).

    The GEMM is ATen's (MKL / cuBLAS); the activation and its backward (dz and
    the per-channel parameter gradients) run in the backend's fused kernels.
    """
    check_flexible_linear_args(x, weight, bias, params)
    check_flexible_kind(kind)
    impl = select_backend(backend, x.device)
    z = F.linear(x, weight, bias)
    return impl.flexible(z, params, kind, z.dim() - 1)
