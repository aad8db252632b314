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


def with_nans(z: torch.Tensor) -> torch.Tensor:
    """A copy of a (7, >= 37) z with NaN inside full vectors (16 fp32 lanes on
    AVX-512) and in a row's tail vector."""
    z = z.detach().clone()
    z[1, 3], z[4, 20], z[6, 36] = float("nan"), float("nan"), float("nan")
    return z


def assert_nan_exactly_where_z_is(got, want, z):
    """got is NaN exactly where z is (with_nans), and close to the reference want
    elsewhere: 1e-12 in fp64, 2e-6 in fp32 (both a few ulp of these O(1) values)."""
    assert torch.equal(got.isnan(), z.isnan()), got.isnan().nonzero()
    tol = 1e-12 if z.dtype == torch.float64 else 2e-6
    torch.testing.assert_close(got, want, equal_nan=True, rtol=tol, atol=tol)


def make_slope(kind: str, features: int, scale: float, gen, dtype=torch.float64, device="cpu"):
    """A slope of ``kind`` with n * a spread around 1 (in [0.6, 1.4]), never zero."""
    if kind == "none":
        return None
    shape = () if kind == "scalar" else (features,)
    a = (0.6 + 0.8 * torch.rand(shape, generator=gen, dtype=dtype)) / scale
    return a.to(device)


def linear_inputs(case, kind: str, seed: int, scale: float = 3.0,
                  dtype=torch.float64, device="cpu", requires_grad=True):
    """(x, weight, bias, slope) for a slope kind and a shape: a LINEAR_SHAPES
    name, or a (leading shape, K, N, non-contiguous x) tuple."""
    lead, k, n, noncontig = LINEAR_SHAPES[case] if isinstance(case, str) else case
    gen = generator(seed)
    x = randn((*lead, k), gen, dtype, device, noncontig)
    weight = randn((n, k), gen, dtype, device) / k ** 0.5
    bias = randn((n,), gen, dtype, device)
    slope = make_slope(kind, n, scale, gen, dtype, device)
    tensors = [t for t in (x, weight, bias, slope) if t is not None]
    for t in tensors:
        t.requires_grad_(requires_grad)
    return x, weight, bias, slope


# ---------------------------------------------------------------------------
# Comparing a fused backend with the reference
# ---------------------------------------------------------------------------

def _eps(dtype):
    return torch.finfo(dtype).eps


def assert_close_to_truth(name, got, truth, baseline, length, scale=None):
    """``got`` (a backend, working dtype) against ``truth`` (the reference in float64).

    Allowed absolute error, elementwise:
      4 x the worst error of ``baseline`` (the reference run in the working
      dtype, i.e. eager PyTorch's own rounding), plus
      4 * eps * sqrt(length) * max|truth|: the rounding noise of a sum of
      ``length`` terms (K for y, N for dx, M for dW/db, M or M*N for da) in
      another order. In float64 the second term alone applies (~1e-13 relative).
    A real bug is an O(1) relative error and fails either way.
    ``scale`` replaces max|truth| in the second term where a sum's terms cancel: the
    size of its terms (sum of |term|) then bounds its rounding, not the sum itself.
    """
    assert got.shape == truth.shape, (name, got.shape, truth.shape)
    assert got.dtype == baseline.dtype, (name, got.dtype, baseline.dtype)
    got64, base64 = got.double(), baseline.double()
    if scale is None:
        scale = truth.abs().max().item() if truth.numel() else 0.0
    floor = 4 * _eps(got.dtype) * max(1, length) ** 0.5 * scale
    allowed = 4 * (base64 - truth).abs().max().item() + floor + 1e-30
    err = (got64 - truth).abs().max().item() if truth.numel() else 0.0
    assert err <= allowed, f"{name}: max error {err:.3e} > allowed {allowed:.3e} (scale {scale:.3e})"


def upcast(tensors):
    """float64 copies (leaf tensors, same requires_grad) of a tuple of optional tensors."""
    return tuple(None if t is None else t.detach().double().requires_grad_(t.requires_grad)
                 for t in tensors)


def assert_z_is_the_affine_map(z, x, w, b, where):
    """z = x W^T + b: within an ulp of the dtype (the one rounding, doubled) plus K
    accumulator epsilons of sum |x| |W| + |b| (the sum in fp32, or fp64 for fp64, in
    any order) of the float64 truth; a lost row, column or bias is O(1)."""
    truth = torch.addmm(b.double(), x.double(), w.double().t())
    accumulator = torch.float64 if z.dtype == torch.float64 else torch.float32
    sums = torch.addmm(b.double().abs(), x.double().abs(), w.double().abs().t())
    bound = (torch.finfo(z.dtype).eps * truth.abs()
             + x.shape[1] * torch.finfo(accumulator).eps * sums)
    assert z.shape == truth.shape, where
    excess = ((z.double() - truth).abs() - bound).max().item()
    assert excess <= 0, f"z off by {excess:.3g} beyond the bound, {where}"
