"""``convert``: turn ``nn.Linear`` + activation pairs of an existing model into ``LAAFLinear``."""
from __future__ import annotations

import warnings
from typing import Optional

from torch import nn

from ..checks import check_scale
from .modules import LAAFLinear
from .slopes import check_mode, make_slope

__all__ = ["convert", "activation_name_of"]


def activation_name_of(module: nn.Module) -> Optional[str]:
    """The table name of an activation module that LAAF reproduces exactly, else None.

    Only the default settings match a table row (LeakyReLU(0.01), ELU(1.0),
    Softplus(1, 20), exact GELU); other settings are left unconverted.
    """
    exact = {nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.ReLU: "relu", nn.SiLU: "silu"}
    kind = type(module)
    if kind in exact:
        return exact[kind]
    if kind is nn.LeakyReLU and module.negative_slope == 0.01:
        return "leaky_relu"
    if kind is nn.ELU and module.alpha == 1.0:
        return "elu"
    if kind is nn.Softplus and module.beta == 1.0 and module.threshold == 20.0:
        return "softplus"
    if kind is nn.GELU and module.approximate == "none":
        return "gelu"
    return None


def convert(model: nn.Module, mode: str = "neuron", scale: float = 10.0) -> nn.Module:
    """Replace each ``nn.Linear`` followed by a supported activation module, inside
    ``nn.Sequential`` containers at any depth, by one ``LAAFLinear``.

    The Linear's slot gets the ``LAAFLinear`` (reusing its weight and bias
    parameters) and the activation's slot an ``nn.Identity``, so indices and
    state_dict keys of the existing parameters stay as they were. Slopes start
    at ``n * a = 1`` exactly, so right after conversion the model computes the
    original function: bit for bit on the reference backend; on a fused backend
    to within the last bit or two of its tanh/erf (PyTorch's CPU kernels use
    MKL's vector math for these). With mode="global" every converted layer shares one slope. The
    model is changed in place and returned; if nothing matched, it is returned
    unchanged with a warning.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    check_mode(mode)
    scale = check_scale(scale)
    shared = None
    converted = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            linear, act = seq[i], seq[i + 1]
            name = activation_name_of(act)
            if type(linear) is not nn.Linear or name is None:
                continue
            if mode == "global" and shared is None:
                shared = make_slope("global", None, scale,
                                    device=linear.weight.device, dtype=linear.weight.dtype)
            seq[i] = LAAFLinear.from_linear(linear, name, mode, scale, slope=shared)
            seq[i + 1] = nn.Identity()
            converted += 1
    if converted == 0:
        warnings.warn("convert(): no nn.Linear followed by a supported activation was found "
                      "inside nn.Sequential containers; the model is returned unchanged",
                      stacklevel=2)
    return model
