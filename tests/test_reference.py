"""The pure-PyTorch reference: values against an independent float64 composition,
gradcheck / gradgradcheck for every activation x slope kind x shape case,
empty batches, and the standalone activation along any dim."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import laaf_kernels
from helpers import LINEAR_SHAPES, SLOPE_KINDS, generator, linear_inputs, make_slope, randn
from laaf_kernels import reference
from laaf_kernels.activations import ACTIVATIONS, evaluate

SCALE = 3.0


def expected_linear(x, weight, bias, slope, activation, scale):
    """Independent composition: einsum for z, explicit broadcast of s, the table's formula."""
    z = torch.einsum("...k,nk->...n", x, weight) + bias
    s = torch.ones(weight.shape[0], dtype=x.dtype)
    if slope is not None:
        s = scale * slope * s
    return evaluate(activation, "value", z * s)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("kind", SLOPE_KINDS)
@pytest.mark.parametrize("case", LINEAR_SHAPES)
def test_linear_value(activation, kind, case):
    x, w, b, a = linear_inputs(case, kind, seed=1, scale=SCALE, requires_grad=False)
    got = reference.laaf_linear(x, w, b, a, activation=activation, scale=SCALE)
    assert got.shape == (*x.shape[:-1], w.shape[0])
    torch.testing.assert_close(got, expected_linear(x, w, b, a, activation, SCALE),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("kind", SLOPE_KINDS)
@pytest.mark.parametrize("case", LINEAR_SHAPES)
def test_linear_gradcheck_and_gradgradcheck(activation, kind, case):
    inputs = linear_inputs(case, kind, seed=2, scale=SCALE)
    args = [t for t in inputs if t is not None]
    has_slope = inputs[3] is not None

    def fn(*ts):
        x, w, b = ts[:3]
        return reference.laaf_linear(x, w, b, ts[3] if has_slope else None,
                                     activation=activation, scale=SCALE)

    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


def test_linear_without_bias_and_1d_x():
    x, w, b, a = linear_inputs("2d_prime", "vector", seed=3, requires_grad=False)
    got = reference.laaf_linear(x[0], w, None, a, scale=SCALE)
    torch.testing.assert_close(got, torch.tanh(SCALE * a * (w @ x[0])))


@pytest.mark.parametrize("kind", SLOPE_KINDS)
def test_empty_batch_gives_empty_output_and_zero_grads(kind):
    x, w, b, a = linear_inputs("2d_prime", kind, seed=4)
    x_empty = x[:0].detach().requires_grad_()
    y = reference.laaf_linear(x_empty, w, b, a, scale=SCALE)
    assert y.shape == (0, w.shape[0])
    params = [t for t in (x_empty, w, b, a) if t is not None]
    grads = torch.autograd.grad(y.sum(), params, materialize_grads=True)
    for p, g in zip(params, grads):
        assert g.shape == p.shape and torch.count_nonzero(g) == 0


# ---------------------------------------------------------------------------
# laaf_activation: a (C,) slope along any dim
# ---------------------------------------------------------------------------

ACT_CASES = {  # name -> (shape of z, dim)
    "nchw_dim1": ((2, 3, 4, 5), 1),
    "last_dim": ((4, 7), -1),
    "first_dim": ((3, 2, 2), 0),
    "noncontig_dim1": ((5, 3, 4), 1),
}


def activation_inputs(case, kind, seed, requires_grad=True):
    shape, dim = ACT_CASES[case]
    gen = generator(seed)
    z = randn(shape, gen, noncontig=case.startswith("noncontig"))
    slope = make_slope(kind, shape[dim], SCALE, gen)
    for t in (z, slope):
        if t is not None:
            t.requires_grad_(requires_grad)
    return z, slope, dim


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("kind", SLOPE_KINDS)
@pytest.mark.parametrize("case", ACT_CASES)
def test_activation_value_and_gradcheck(activation, kind, case):
    z, a, dim = activation_inputs(case, kind, seed=5)
    y = reference.laaf_activation(z, a, activation=activation, scale=SCALE, dim=dim)
    s = torch.ones(()) if a is None else SCALE * a
    if s.dim() == 1:
        s = s.reshape([-1 if d == dim % z.dim() else 1 for d in range(z.dim())])
    torch.testing.assert_close(y, evaluate(activation, "value", z * s), rtol=1e-12, atol=1e-12)

    args = [t for t in (z, a) if t is not None]

    def fn(*ts):
        return reference.laaf_activation(ts[0], ts[1] if a is not None else None,
                                         activation=activation, scale=SCALE, dim=dim)

    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


def test_activation_on_0d_and_empty_tensors():
    z = torch.tensor(0.3, dtype=torch.float64)
    a = torch.tensor(0.5, dtype=torch.float64)
    torch.testing.assert_close(reference.laaf_activation(z, a, scale=2.0), torch.tanh(z))
    empty = torch.randn(0, 4, dtype=torch.float64)
    slope = torch.rand(4, dtype=torch.float64)
    assert reference.laaf_activation(empty, slope, dim=1).shape == (0, 4)


# ---------------------------------------------------------------------------
# Property-based: any shape and mode, public API == independent composition
# ---------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(lead=st.lists(st.integers(0, 5), min_size=0, max_size=3),
       k=st.integers(1, 6), n=st.integers(1, 6),
       kind=st.sampled_from(SLOPE_KINDS), activation=st.sampled_from(ACTIVATIONS),
       scale=st.floats(0.5, 20.0), with_bias=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_property_public_api_matches_composition(lead, k, n, kind, activation, scale,
                                                 with_bias, seed):
    gen = generator(seed)
    x = randn((*lead, k), gen)
    w = randn((n, k), gen)
    b = randn((n,), gen) if with_bias else None
    a = make_slope(kind, n, scale, gen)
    got = laaf_kernels.laaf_linear(x, w, b, a, activation=activation, scale=scale)
    want = expected_linear(x, w, torch.zeros(n, dtype=x.dtype) if b is None else b, a,
                           activation, scale)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
