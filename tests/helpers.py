"""Shared test helpers: seeded random inputs for every slope kind and shape case.

Inputs are fresh random values (never zeros), drawn from a generator seeded
per case so that a failure can be replayed.
"""
from __future__ import annotations

import torch

SLOPE_KINDS = ("none", "scalar", "vector")

#: (leading shape of x, K, N, non-contiguous x): 2-D, odd/prime sizes, 3-D, N = 1, K = 1.
LINEAR_SHAPES = {
    "2d_prime": ((7,), 5, 3, False),
    "3d": ((2, 3), 5, 4, False),
    "noncontig": ((6,), 5, 3, True),
    "n1": ((5,), 4, 1, False),
    "k1": ((5,), 1, 4, False),
}


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(shape, gen, dtype=torch.float64, device="cpu", noncontig=False):
    """Normal random tensor; non-contiguous (a transposed view) when asked."""
    shape = tuple(shape)
    if noncontig and len(shape) >= 2:
        t = torch.randn(shape[::-1], generator=gen, dtype=dtype).transpose(0, -1)
        assert not t.is_contiguous()
        return t.to(device) if device != "cpu" else t
    return torch.randn(shape, generator=gen, dtype=dtype).to(device)


def make_slope(kind: str, features: int, scale: float, gen, dtype=torch.float64, device="cpu"):
    """A slope of ``kind`` with n * a spread around 1 (in [0.6, 1.4]), never zero."""
    if kind == "none":
        return None
    shape = () if kind == "scalar" else (features,)
    a = (0.6 + 0.8 * torch.rand(shape, generator=gen, dtype=dtype)) / scale
    return a.to(device)


def linear_inputs(case: str, kind: str, seed: int, scale: float = 3.0,
                  dtype=torch.float64, device="cpu", requires_grad=True):
    """(x, weight, bias, slope) for a LINEAR_SHAPES case and slope kind."""
    lead, k, n, noncontig = LINEAR_SHAPES[case]
    gen = generator(seed)
    x = randn((*lead, k), gen, dtype, device, noncontig)
    weight = randn((n, k), gen, dtype, device) / k ** 0.5
    bias = randn((n,), gen, dtype, device)
    slope = make_slope(kind, n, scale, gen, dtype, device)
    tensors = [t for t in (x, weight, bias, slope) if t is not None]
    for t in tensors:
        t.requires_grad_(requires_grad)
    return x, weight, bias, slope
