"""Drop-in modules: ``LAAF`` (for nn.Tanh & co.), ``LAAFLinear`` (nn.Linear + activation)
and ``LAAFMLP`` (a PINN-style MLP).

Each computes ``y = act(n * a * z)`` with the slope ``a`` of its mode
(:mod:`laaf_kernels.nn.slopes`) through the dispatched functional API, so a
``use_backend`` context or ``LAAF_BACKEND`` picks the kernels.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn

from ..activations import get as get_activation
from ..checks import check_scale
from ..functional import laaf_activation, laaf_linear, slope_recovery
from .slopes import check_mode, make_slope, slope_or_new

__all__ = ["LAAF", "LAAFLinear", "LAAFMLP"]


def _slope_repr(activation: str, mode: str, scale: float, slope) -> str:
    text = f"activation={activation}, mode={mode}"
    if slope is not None:
        text += f", scale={scale}"
    return text


class LAAF(nn.Module):
    """Adaptive activation ``y = act(n * a * z)``, in place of ``nn.Tanh()`` and the like.

    Args:
        activation: a name in ``laaf_kernels.ACTIVATIONS``.
        mode: "fixed", "global", "layer" or "neuron" (needs ``num_features``).
        num_features: C, the size of ``z`` along ``dim``, for mode="neuron".
        scale: the fixed factor n; the slope starts at a = 1/n.
        slope: an existing ``nn.Parameter`` to share (GAAF shares one 0-d slope).
        dim: the dim of ``z`` that a neuron-wise slope runs along (1 for NCHW).
    """

    def __init__(self, activation: str = "tanh", mode: str = "neuron",
                 num_features: Optional[int] = None, scale: float = 10.0,
                 slope: Optional[nn.Parameter] = None, *, dim: int = -1,
                 device=None, dtype=None):
        super().__init__()
        get_activation(activation)
        self.activation = activation
        self.mode = check_mode(mode)
        self.scale = check_scale(scale)
        self.dim = dim
        if mode == "neuron" and num_features is None and slope is not None:
            num_features = slope.shape[0] if slope.dim() == 1 else None
        self.num_features = num_features
        self.slope = slope_or_new(mode, num_features, self.scale, slope, device, dtype)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return laaf_activation(z, self.slope, activation=self.activation,
                               scale=self.scale, dim=self.dim)

    def extra_repr(self) -> str:
        text = _slope_repr(self.activation, self.mode, self.scale, self.slope)
        if self.mode == "neuron":
            text += f", num_features={self.num_features}, dim={self.dim}"
        return text


class LAAFLinear(nn.Linear):
    """``y = act(n * a * (x W^T + b))``: ``nn.Linear`` and its activation, fused.

    It is an ``nn.Linear`` (``weight``, ``bias``, ``in_features``, init), so
    code that initialises every Linear also initialises it. ``mode="neuron"``
    gives an (out_features,) slope; ``slope=`` shares an existing parameter.
    """

    def __init__(self, in_features: int, out_features: int, activation: str = "tanh",
                 mode: str = "neuron", scale: float = 10.0, bias: bool = True,
                 slope: Optional[nn.Parameter] = None, *, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        get_activation(activation)
        self.activation = activation
        self.mode = check_mode(mode)
        self.scale = check_scale(scale)
        self.slope = slope_or_new(mode, out_features, self.scale, slope,
                                  device=self.weight.device, dtype=self.weight.dtype)

    @classmethod
    def from_linear(cls, linear: nn.Linear, activation: str, mode: str = "neuron",
                    scale: float = 10.0, slope: Optional[nn.Parameter] = None) -> "LAAFLinear":
        """A LAAFLinear that reuses ``linear``'s weight and bias parameters (no copy,
        no random init, so the global RNG state is untouched)."""
        new = cls(linear.in_features, linear.out_features, activation, "fixed", scale,
                  bias=linear.bias is not None, device="meta")
        new.weight = linear.weight
        new.bias = linear.bias
        new.mode = check_mode(mode)
        new.slope = slope_or_new(mode, linear.out_features, new.scale, slope,
                                 device=linear.weight.device, dtype=linear.weight.dtype)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return laaf_linear(x, self.weight, self.bias, self.slope,
                           activation=self.activation, scale=self.scale)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, "
                f"{_slope_repr(self.activation, self.mode, self.scale, self.slope)}")


class LAAFMLP(nn.Module):
    """A PINN-style MLP: ``LAAFLinear`` hidden layers and a plain linear output layer.

    ``sizes = [d_in, h_1, ..., h_L, d_out]`` gives L adaptive hidden layers.
    Weights are Xavier-normal and biases zero, as in the LAAF authors' code.
    With mode="global" all hidden layers share one slope (``global_slope``).
    """

    def __init__(self, sizes: Sequence[int], activation: str = "tanh", mode: str = "neuron",
                 scale: float = 10.0, *, device=None, dtype=None):
        super().__init__()
        sizes = list(sizes)
        if len(sizes) < 2 or not all(isinstance(s, int) and s >= 1 for s in sizes):
            raise ValueError(f"sizes must list >= 2 positive ints [d_in, ..., d_out], got {sizes!r}")
        self.sizes, self.mode = sizes, check_mode(mode)
        shared = (make_slope("global", None, scale, device=device, dtype=dtype)
                  if mode == "global" else None)
        self.global_slope = shared
        self.hidden = nn.ModuleList(
            LAAFLinear(d_in, d_out, activation, mode, scale, slope=shared, device=device, dtype=dtype)
            for d_in, d_out in zip(sizes[:-2], sizes[1:-1]))
        self.output = nn.Linear(sizes[-2], sizes[-1], device=device, dtype=dtype)
        for layer in [*self.hidden, self.output]:
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = layer(x)
        return self.output(x)

    def slopes(self) -> List[nn.Parameter]:
        """One slope per hidden layer (the same object L times for "global"); [] if "fixed"."""
        return [layer.slope for layer in self.hidden if layer.slope is not None]

    def slope_recovery(self) -> torch.Tensor:
        """``S = 1 / mean_k exp(mean(a^k))`` over the hidden layers' slopes."""
        if self.mode == "fixed":
            raise ValueError("slope_recovery() needs slopes, but this LAAFMLP has mode='fixed'")
        return slope_recovery(self.slopes())

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, mode={self.mode}"
