"""The fused flexible-activation kernels (Triton, C++) against the reference: every
kind, params along any dim (last, NCHW dim=1, first, trailing singleton dims),
non-contiguous z, fp64 / fp32 / bf16, float64 gradcheck and gradgradcheck,
empty z, torch.library.opcheck, and determinism."""
import math

import mpmath  # installed with torch (through sympy): a missing one is an error, not a skip
import pytest
import torch

import laaf_kernels
from fused_cases import FLEXIBLE_TARGETS, compare_flexible
from helpers import generator, randn, with_nans, assert_nan_exactly_where_z_is
from laaf_kernels import FLEXIBLE_KINDS

CASES = {  # name -> (shape of z, dim, non-contiguous)
    "last_dim": ((37, 11), -1, False),
    # 131 rows: three chunks of 64 (csrc kRowsPerChunk), the last partial, and a flat
    # walk whose last vector is partial
    "many_rows": ((131, 13), -1, False),
    "nchw_dim1": ((2, 3, 5, 7), 1, False),
    "first_dim": ((5, 3, 4), 0, False),
    "middle_noncontig": ((5, 3, 4), 1, True),
    "trailing_singletons": ((4, 5, 1, 1), 1, False),
}

#: Rows longer than 8192 elements, cut into segments by the C++ passes (csrc
#: for_row_segments); C++ only (see tests/test_fused_activation.py).
SEGMENTED_CASES = {
    "segmented_rows_nchw": ((1, 2, 8200), 1, False),
    "segmented_wide_rows": ((3, 8200), -1, True),
}


def _inputs(case, seed, dtype, device):
    """z with some exact zeros (cbrt's kink, relu's) and params around the
    baseline, some α outside [0, 1] (allowed)."""
    shape, dim, noncontig = {**CASES, **SEGMENTED_CASES}[case]
    gen = generator(seed)
    z = randn(shape, gen, noncontig=noncontig) * 1.5
    every_7th = (torch.arange(z.numel()) % 7 == 0).reshape(shape)
    z = torch.where(every_7th, torch.zeros((), dtype=z.dtype), z)
    if noncontig:  # where() gives a contiguous tensor: make it a transposed view again
        z = z.transpose(0, -1).contiguous().transpose(0, -1)
    channels = shape[dim]
    params = torch.rand(2, channels, generator=gen, dtype=torch.float64) * 1.6 - 0.3
    z = z.to(device=device, dtype=dtype).requires_grad_()
    return z, params.to(device=device, dtype=dtype).requires_grad_(), dim


def _compare_fp64(target, kind, case, seed):
    backend, device = target
    z, params, dim = _inputs(case, seed, torch.float64, device)
    compare_flexible(backend, z, params, kind, dim)


@pytest.mark.parametrize("target", FLEXIBLE_TARGETS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", FLEXIBLE_KINDS)
def test_every_kind_and_layout_fp64(target, kind, case):
    _compare_fp64(target, kind, case, seed=41)


@pytest.mark.parametrize("target", FLEXIBLE_TARGETS)
@pytest.mark.parametrize("case", ["many_rows", "nchw_dim1"])
def test_every_output_is_written_where_new_memory_is_nan(target, case, new_tensors_hold_nan):
    """With every new tensor NaN (the fixture), y, dz and both rows of dp (folded from
    per-chunk or per-row partials) must still be the reference's."""
    _compare_fp64(target, "relu_tanh", case, seed=43)


@pytest.mark.parametrize("target", FLEXIBLE_TARGETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", FLEXIBLE_KINDS)
def test_low_precision(target, kind, dtype):
    backend, device = target
    for case in ("last_dim", "nchw_dim1"):
        z, params, dim = _inputs(case, 42, dtype, device)
        compare_flexible(backend, z, params, kind, dim, f", {dtype}, {case}")


@pytest.mark.parametrize("target", FLEXIBLE_TARGETS)
@pytest.mark.parametrize("kind", FLEXIBLE_KINDS)
def test_gradcheck_and_gradgradcheck(target, kind):
    """float64 through the backend's op; the double backward goes through the
    table's differentiable formulas. z avoids the kinks (relu at 0, the ramp's
    band edges), where finite differences are not derivatives."""
    backend, device = target
    gen = generator(43)
    z = (torch.rand(6, 4, generator=gen, dtype=torch.float64) * 1.6 + 0.2)
    z = (z * torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)).to(device).requires_grad_()
    params = torch.tensor([[0.7, 0.3, 1.2, 0.5], [0.2, -0.1, 0.1, 0.05]],
                          dtype=torch.float64, device=device, requires_grad=True)

    def fn(z_, p_):
        return laaf_kernels.flexible_activation(z_, p_, kind=kind, backend=backend)

    assert torch.autograd.gradcheck(fn, (z, params))
    assert torch.autograd.gradgradcheck(fn, (z, params))


@pytest.mark.parametrize("target", FLEXIBLE_TARGETS)
def test_cbrt_kink_gives_finite_gradients(target):
    """relu_poly at z = 0 and tiny z: first and second derivatives finite."""
    backend, device = target
    z = torch.tensor([0.0, 1e-30, -1e-30, 1e-8, -3.0], dtype=torch.float64, device=device,
                     requires_grad=True)
    params = torch.tensor([[0.2] * 5, [0.3] * 5], dtype=torch.float64, device=device,
                          requires_grad=True)
    y = laaf_kernels.flexible_activation(z, params, kind="relu_poly", backend=backend)
    dz, dp = torch.autograd.grad(y.sum(), (z, params), create_graph=True)
    d2 = torch.autograd.grad(dz.sum(), z)[0]
    for t in (y, dz, dp, d2):
        assert torch.isfinite(t).all(), t
    # cbrt'(0) is floored at |z| = CBRT_EPS = 1e-6: 1 / (3e-4) for the (1 - α1 - α2) share.
    torch.testing.assert_close(dz[0], torch.tensor(0.5 / 3e-4, dtype=torch.float64,
                                                   device=device), rtol=1e-9, atol=0)


@pytest.mark.parametrize("target", FLEXIBLE_TARGETS)
def test_empty_z(target):
    backend, device = target
    z = torch.randn(0, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    params = torch.rand(2, 3, dtype=torch.float64, device=device, requires_grad=True)
    y = laaf_kernels.flexible_activation(z, params, kind="tanh_ramp", dim=1, backend=backend)
    assert y.shape == z.shape
    dz, dp = torch.autograd.grad(y.sum(), (z, params), materialize_grads=True)
    assert dz.shape == z.shape and dp.shape == params.shape and torch.count_nonzero(dp) == 0


@pytest.mark.parametrize("target", FLEXIBLE_TARGETS)
@pytest.mark.parametrize("case", ["last_dim", "nchw_dim1"])
def test_backward_is_deterministic(target, case):
    backend, device = target
    z, params, dim = _inputs(case, 44, torch.float32, device)
    g = torch.randn(z.shape, device=device)

    def grads():
        y = laaf_kernels.flexible_activation(z, params, kind="relu_tanh", dim=dim, backend=backend)
        return torch.autograd.grad(y, (z, params), g)

    first, second = grads(), grads()
    assert all(torch.equal(p, q) for p, q in zip(first, second))


@pytest.mark.parametrize("target", FLEXIBLE_TARGETS)
def test_opcheck_flexible_ops(target):
    backend, device = target
    laaf_kernels.flexible_activation(torch.ones(2, 2, device=device), torch.ones(2, 2, device=device),
                                     kind="relu_tanh", backend=backend)  # load the ops
    z, params, dim = _inputs("nchw_dim1", 45, torch.float64, device)
    op = getattr(torch.ops.laaf, f"{backend}_flex_fwd")
    torch.library.opcheck(op, (z, params, "sigmoid_ramp", dim))
    bwd = getattr(torch.ops.laaf, f"{backend}_flex_bwd")
    g = torch.randn_like(z)
    torch.library.opcheck(bwd, (g.detach(), z.detach(), params.detach(), "sigmoid_ramp", dim,
                                True, True))


@pytest.mark.parametrize("target", FLEXIBLE_TARGETS)
def test_flexible_linear_matches_the_reference(target):
    backend, device = target
    gen = generator(46)
    x = randn((9, 6), gen).to(device).requires_grad_()
    w = (randn((5, 6), gen) / 6 ** 0.5).to(device).requires_grad_()
    b = randn((5,), gen).to(device).requires_grad_()
    params = (torch.rand(2, 5, generator=gen, dtype=torch.float64)).to(device).requires_grad_()
    y = laaf_kernels.flexible_linear(x, w, b, params, kind="relu_poly", backend=backend)
    want = laaf_kernels.flexible_linear(x, w, b, params, kind="relu_poly", backend="reference")
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    for p, q in zip(torch.autograd.grad(y, (x, w, b, params), g),
                    torch.autograd.grad(want, (x, w, b, params), g)):
        torch.testing.assert_close(p, q, rtol=1e-11, atol=1e-11)


CPP_TARGETS = [t for t in FLEXIBLE_TARGETS if t.values[0] == ("cpp", "cpu")]


def _cpp_cbrt(z):
    """cbrt(z) through the C++ kernel: relu_poly with params (0, 0) is 1 * cbrt(z)."""
    z = z.reshape(1, -1)
    params = torch.zeros(2, z.shape[1], dtype=z.dtype)
    return torch.ops.laaf.cpp_flex_fwd(z, params, "relu_poly", -1)[0]


@pytest.mark.parametrize("target", CPP_TARGETS)
def test_cpp_cbrt_is_within_one_ulp(target):
    """The C++ cube root (laaf_vec_math.h: cbrt; on AVX2 / AVX-512 fp32 from a's bits and two
    Halley steps, fp64 by cbrt_double_normalised's exponent split; otherwise exp(log a / 3)
    and a Halley step) against exact roots: within 1 ulp of the rounded result (0.73
    measured in fp32, 0.50 in fp64, over normal and subnormal inputs alike), signed, 0
    at 0 and NaN at NaN. fp64 against mpmath at 160 bits (numpy's float64 cbrt is itself
    off by up to ~2.4 ulp)."""
    gen = generator(41)
    # (|z| stays below where z^3, the formula's other term, overflows: 0 * inf is NaN)
    z = torch.cat([torch.linspace(-1000, 1000, 200_003), torch.rand(100_000, generator=gen) * 8,
                   torch.logspace(-45, 12, 50_000), -torch.logspace(-45, 12, 50_000)])
    truth = torch.sign(z.double()) * z.double().abs() ** (1.0 / 3.0)  # a first cut in float64
    got = _cpp_cbrt(z)
    ulp = (torch.nextafter(truth.float().abs(), torch.tensor(float("inf"))) - truth.float().abs())
    # float64's pow(1/3) is within ~1e-15 relative: far below a float32 ulp (6e-8).
    assert ((got.double() - truth).abs() / ulp.double()).max() <= 1.0
    special = _cpp_cbrt(torch.tensor([0.0, -0.0, float("nan"), 1e-45, -8.0, 27.0]))
    assert special[0] == 0 and special[1] == 0 and special[2].isnan()
    assert special[4] == -2.0 and special[5] == 3.0 and special[3] > 0

    # fp64: every exponent from the subnormals (scaled inside) to 1e102 (z^3's overflow),
    # so each residue of E mod 3 and each branch of the exponent split is hit, random
    # mantissas, exact cubes and powers of two.
    mantissas = 1 + torch.rand(1_500, generator=gen, dtype=torch.float64)
    exponents = torch.randint(-1074, 339, (1_500,), generator=gen).double()
    cubes = torch.arange(-40, 41, dtype=torch.float64) ** 3
    z64 = torch.cat([torch.linspace(-50, 50, 1_001, dtype=torch.float64), cubes,
                     torch.ldexp(torch.ones(1, dtype=torch.float64), torch.arange(-1074, 340)),
                     torch.ldexp(mantissas, exponents) * torch.where(mantissas < 1.5, -1.0, 1.0),
                     torch.tensor([5e-324, 2.2250738585072014e-308, 2.225073858507201e-308,
                                   5e102], dtype=torch.float64)])
    got64 = _cpp_cbrt(z64)
    with mpmath.workprec(160):  # (mpmath's default is 53 bits: the "exact" root rounded)
        errors = [abs(float((mpmath.mpf(abs(root)) - mpmath.cbrt(mpmath.mpf(abs(value))))
                            / math.ulp(root))) if math.copysign(1, root) == math.copysign(1, value)
                  else math.inf for value, root in zip(z64.tolist(), got64.tolist())]
    worst = max(range(len(errors)), key=errors.__getitem__)
    assert errors[worst] <= 1.0, (z64[worst].item(), errors[worst])


@pytest.mark.parametrize("target", CPP_TARGETS)
@pytest.mark.parametrize("case", SEGMENTED_CASES)
@pytest.mark.parametrize("kind", FLEXIBLE_KINDS)
def test_cpp_segmented_rows_fp64(target, kind, case):
    _compare_fp64(target, kind, case, seed=45)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, interpreter
@pytest.mark.parametrize("target", FLEXIBLE_TARGETS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", FLEXIBLE_KINDS)
def test_nan_reaches_the_output_like_the_reference(target, kind, dtype):
    """A NaN z gives a NaN value in every kind, and only there: the ramps' clamps and
    relu's max(z, 0) keep it (see the LAAF activations' test in
    test_fused_activation.py)."""
    backend, device = target
    gen = generator(47)
    z = with_nans(randn((7, 37), gen)).to(device=device, dtype=dtype)
    params = (torch.rand(2, 37, generator=gen, dtype=torch.float64) * 0.8 + 0.1).to(device=device, dtype=dtype)
    got = laaf_kernels.flexible_activation(z, params, kind=kind, backend=backend)
    want = laaf_kernels.flexible_activation(z, params, kind=kind, backend="reference")
    assert_nan_exactly_where_z_is(got, want, z)
