"""The fused standalone activation kernels (every fused backend) against the reference: a (C,) slope
along any dim (NCHW dim=1, first, last, middle of 3-D), 0-d slopes, no slope,
non-contiguous z, 0-d and empty z, fp64/fp32/bf16, and determinism."""
import pytest
import torch

import laaf_kernels
from helpers import SLOPE_KINDS, generator, make_slope, randn, with_nans, assert_nan_exactly_where_z_is
from laaf_kernels.activations import ACTIVATIONS
from fused_cases import TARGETS, compare_activation

SCALE = 3.0

CASES = {  # name -> (shape of z, dim, non-contiguous)
    "nchw_dim1": ((2, 3, 5, 7), 1, False),
    "last_dim": ((19, 7), -1, False),
    "first_dim": ((5, 3, 4), 0, False),
    "middle_noncontig": ((5, 3, 4), 1, True),
    "single_channel": ((4, 1, 3), 1, False),
    "trailing_singletons": ((4, 5, 1, 1), 1, False),
    "1d": ((13,), 0, False),
    # Rows wider than 512 (csrc kMaxUnsplitRow, Triton MAX_UNSPLIT_ROW) with no per-channel
    # slope are re-viewed as (numel / w, w), w = 1 (odd numel) or 8 here; with a (C,)
    # slope they stay wide rows.
    "long_1d_prime": ((1031,), 0, False),
    "long_rows_noncontig": ((3, 520), -1, True),
}

#: The C++ passes cut rows longer than kRowSegment (8192) into segments, each a task of
#: its own (csrc for_row_segments): a per-row slope (channels in the middle), and a (C,)
#: slope on rows wider than a flat walk, non-contiguous. C++ only: the Triton kernels
#: have no such cut, and 16 400 elements are slow in its interpreter.
SEGMENTED_CASES = {
    "segmented_rows_nchw": ((1, 2, 8200), 1, False),
    "segmented_wide_rows": ((3, 8200), -1, True),
}
CPP_TARGETS = [t for t in TARGETS if t.values[0] == ("cpp", "cpu")]


def _inputs(case, kind, seed, dtype, device):
    shape, dim, noncontig = {**CASES, **SEGMENTED_CASES}[case]
    gen = generator(seed)
    z = randn(shape, gen, noncontig=noncontig).to(device=device, dtype=dtype).requires_grad_()
    a = make_slope(kind, shape[dim], SCALE, gen)
    a = None if a is None else a.to(device=device, dtype=dtype).requires_grad_()
    return z, a, dim


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind", SLOPE_KINDS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation_nchw_fp64(target, activation, kind):
    backend, device = target
    z, a, dim = _inputs("nchw_dim1", kind, seed=21, dtype=torch.float64, device=device)
    compare_activation(backend, z, a, activation, SCALE, dim)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind", SLOPE_KINDS)
@pytest.mark.parametrize("case", CASES)
def test_dims_and_layouts_fp64(target, case, kind):
    backend, device = target
    z, a, dim = _inputs(case, kind, seed=22, dtype=torch.float64, device=device)
    compare_activation(backend, z, a, "gelu", SCALE, dim)


@pytest.mark.parametrize("target", CPP_TARGETS)
@pytest.mark.parametrize("case", SEGMENTED_CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpp_segmented_rows(target, case, dtype):
    """dz and the per-channel da of rows cut into segments (fp32: the segments' double
    partials fold in a fixed order, so the bits do not depend on the thread count)."""
    backend, device = target
    z, a, dim = _inputs(case, "vector", seed=25, dtype=dtype, device=device)
    compare_activation(backend, z, a, "tanh", SCALE, dim)
    g = torch.randn(z.shape, generator=generator(26), dtype=dtype)
    results, before = [], torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            y = laaf_kernels.laaf_activation(z, a, scale=SCALE, dim=dim, backend=backend)
            results.append([y, *torch.autograd.grad(y, (z, a), g)])
        finally:
            torch.set_num_threads(before)
    assert all(torch.equal(p, q) for p, q in zip(*results))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", ["nchw_dim1", "last_dim"])
@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
def test_low_precision(target, dtype, case, activation):
    backend, device = target
    z, a, dim = _inputs(case, "vector", seed=23, dtype=dtype, device=device)
    compare_activation(backend, z, a, activation, SCALE, dim)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_rounds_once_as_torch_rounds(target, dtype):
    """bf16 / fp16 are widened to float32 lanes and rounded back once, at the store,
    to nearest even as torch's ``.to`` rounds: with the identity activation, y =
    round(float(z) float(s)) bit for bit. z and s are 16-bit values, so the product is
    exact in float32; every other s has a 4-bit significand, which makes many products
    ties. 53 columns put whole vectors and tails in every row; fp16's range is crossed
    (inf), and inf and NaN pass through."""
    backend, device = target
    gen = generator(31)
    z = (randn((41, 53), gen) * 4).to(dtype)
    z[0, :6] = torch.tensor([6.0e4, -6.0e4, float("inf"), -float("inf"), 1e-7, 0.0])
    z[1, 50] = float("nan")
    s = 1 + torch.rand(53, generator=gen, dtype=torch.float64)
    s[::2] = 1 + torch.randint(0, 8, (27,), generator=gen) / 8
    z, s = z.to(device), s.to(dtype).to(device)
    with torch.no_grad():
        y = laaf_kernels.laaf_activation(z, s, activation="identity", backend=backend)
    product = z.float() * s.float()
    dropped = 16 if dtype == torch.bfloat16 else 13  # float32's significand bits not kept
    half_ulp = 1 << (dropped - 1)
    normal = (product.abs() >= torch.finfo(dtype).tiny) & (product.abs() <= torch.finfo(dtype).max)
    ties = normal & ((product.view(torch.int32) & (2 * half_ulp - 1)) == half_ulp)
    assert int(ties.sum()) > 50  # the rounding's hard case is exercised
    expected = product.to(dtype)
    assert torch.equal(y.isnan(), expected.isnan())
    finite = ~expected.isnan()
    same = y.view(torch.int16) == expected.view(torch.int16)
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        # Triton's interpreter casts float32 to bfloat16 toward zero (interpreter.py's
        # cast_impl passes no rounding mode); compiled Triton rounds to nearest even.
        toward_zero = (product.view(torch.int32) & ~(2 * half_ulp - 1)).view(torch.float32)
        same |= y.view(torch.int16) == toward_zero.to(dtype).view(torch.int16)
    assert bool(same[finite].all()), f"{int((~same[finite]).sum())} elements rounded otherwise"


@pytest.mark.parametrize("target", TARGETS)
def test_0d_and_empty_z(target):
    backend, device = target
    z = torch.tensor(0.7, dtype=torch.float64, device=device, requires_grad=True)
    a = torch.tensor(0.4, dtype=torch.float64, device=device, requires_grad=True)
    compare_activation(backend, z, a, "tanh", SCALE, -1)
    empty = torch.randn(0, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    slope = torch.rand(3, dtype=torch.float64, device=device, requires_grad=True)
    y = laaf_kernels.laaf_activation(empty, slope, scale=SCALE, dim=1, backend=backend)
    assert y.shape == empty.shape
    dz, da = torch.autograd.grad(y.sum(), (empty, slope), materialize_grads=True)
    assert dz.shape == empty.shape and torch.count_nonzero(da) == 0


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", ["nchw_dim1", "last_dim"])
def test_backward_is_deterministic(target, case):
    backend, device = target
    z, a, dim = _inputs(case, "vector", seed=24, dtype=torch.float32, device=device)
    g = torch.randn(z.shape, device=device)

    def grads():
        y = laaf_kernels.laaf_activation(z, a, scale=SCALE, dim=dim, backend=backend)
        return torch.autograd.grad(y, (z, a), g)

    for p, q in zip(grads(), grads()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("target", TARGETS)
def test_double_backward_of_1d_z_with_a_vector_slope(target):
    """create_graph=True with a 1-D z: ds keeps its (C,) shape (t.sum([]) would
    reduce everything)."""
    backend, device = target
    z = torch.randn(13, dtype=torch.float64, device=device, requires_grad=True)
    a = torch.rand(13, dtype=torch.float64, device=device, requires_grad=True)

    def fn(z_, a_):
        return laaf_kernels.laaf_activation(z_, a_, scale=SCALE, dim=0, backend=backend)

    assert torch.autograd.gradgradcheck(fn, (z, a))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, interpreter
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_nan_reaches_the_output_like_the_reference(target, activation, dtype):
    """A NaN z gives a NaN y in every activation, and only there: the bounds inside
    the formulas (relu's max(h, 0), exp's lower clamp) must keep it (csrc: max(c, h),
    which returns h when either is NaN; Triton: where((a > b) | (a != a), a, b)). (+-inf are left
    out: there the formulas' IEEE arithmetic and torch's own kernels part ways, e.g.
    F.gelu(inf) is NaN in fp32, ours inf.)"""
    backend, device = target
    gen = generator(27)
    z = with_nans(randn((7, 37), gen)).to(device=device, dtype=dtype)
    a = (0.5 + torch.rand(37, generator=gen)).to(device=device, dtype=dtype)
    got = laaf_kernels.laaf_activation(z, a, activation=activation, scale=SCALE, backend=backend)
    want = laaf_kernels.laaf_activation(z, a, activation=activation, scale=SCALE, backend="reference")
    assert_nan_exactly_where_z_is(got, want, z)
