"""The exact solution of the viscous Burgers equation by the Hopf–Cole transformation.

    u_t + u u_x = nu u_xx,   x in [-1, 1],   u(x, 0) = -sin(pi x),   u(+-1, t) = 0

    u(x, t) = - int sin(pi (x - eta)) f(x - eta) exp(-eta^2 / (4 nu t)) d eta
              / int f(x - eta) exp(-eta^2 / (4 nu t)) d eta,
    f(y) = exp(-cos(pi y) / (2 pi nu))

With eta = sqrt(4 nu t) xi both integrals take the Gauss–Hermite weight
exp(-xi^2). At nu = 0.01/pi the factor f spans e^-50..e^50, so the largest
exponent at each (x, t) is subtracted before exponentiating (it cancels in the
ratio). 200 nodes agree with a fine trapezoid rule to ~1e-15 at every tested
point, the shock at x = 0 included; numpy's node computation overflows past
~360 nodes.
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["burgers_exact", "NU"]

NU = 0.01 / math.pi
NODES = 200
_CHUNK = 1 << 15  # points per vectorised block (each block holds CHUNK x NODES doubles)


def _as_float64(name: str, value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite")
    return array


def burgers_exact(x, t, nu: float = NU, nodes: int = NODES):
    """u(x, t) of the Burgers problem above, in float64.

    ``x`` and ``t`` are array-likes or tensors of the same shape (t >= 0). The
    result has that shape: a float64 tensor (on x's device) if ``x`` is a
    tensor, else a NumPy array.
    """
    x_np, t_np = _as_float64("x", x), _as_float64("t", t)
    if x_np.shape != t_np.shape:
        raise ValueError(f"x and t must have the same shape, got {x_np.shape} and {t_np.shape}")
    if np.any(t_np < 0):
        raise ValueError("t must be >= 0")
    if not (isinstance(nu, (int, float)) and nu > 0):
        raise ValueError(f"nu must be a number > 0, got {nu!r}")
    xi, weights = np.polynomial.hermite.hermgauss(nodes)
    flat_x, flat_t = x_np.reshape(-1), t_np.reshape(-1)
    out = np.empty_like(flat_x)
    for start in range(0, flat_x.size, _CHUNK):
        block = slice(start, start + _CHUNK)
        y = flat_x[block, None] - np.sqrt(4.0 * nu * flat_t[block, None]) * xi[None, :]
        exponent = -np.cos(np.pi * y) / (2.0 * np.pi * nu)
        exponent -= exponent.max(axis=1, keepdims=True)
        f = weights[None, :] * np.exp(exponent)
        out[block] = -(np.sin(np.pi * y) * f).sum(axis=1) / f.sum(axis=1)
    out = out.reshape(x_np.shape)
    if isinstance(x, torch.Tensor):
        return torch.from_numpy(out).to(x.device)
    return out
