"""The activation table and the reference against the hand-derived formulas of
shared/notes/math.md, in float64.

The oracle below is written independently of the library, in NumPy, straight
from the notes' table. Three things are checked against it for every
activation: the reference value (PyTorch built-in), the reference's autograd
first and second derivatives, and the table's d1/d2 formulas as rendered in
torch (which the fused backends' backward passes use).
"""
import math

import numpy as np
import pytest
import torch

import laaf_kernels
from laaf_kernels.activations import ACTIVATIONS, PRIMITIVES, TABLE, evaluate, get

_erf = np.vectorize(math.erf)


def _sig(h):
    return 1.0 / (1.0 + np.exp(-h))


def _phi(h):
    return np.exp(-0.5 * h * h) / math.sqrt(2 * math.pi)


def _cdf(h):
    return 0.5 * (1.0 + _erf(h / math.sqrt(2.0)))


# name -> (act, act', act''), from shared/notes/math.md
ORACLE = {
    "tanh": (np.tanh, lambda h: 1 - np.tanh(h) ** 2,
             lambda h: -2 * np.tanh(h) * (1 - np.tanh(h) ** 2)),
    "sigmoid": (_sig, lambda h: _sig(h) * (1 - _sig(h)),
                lambda h: _sig(h) * (1 - _sig(h)) * (1 - 2 * _sig(h))),
    "relu": (lambda h: np.maximum(h, 0), lambda h: (h > 0) * 1.0, lambda h: 0 * h),
    "leaky_relu": (lambda h: np.where(h > 0, h, 0.01 * h), lambda h: np.where(h > 0, 1.0, 0.01),
                   lambda h: 0 * h),
    "elu": (lambda h: np.where(h > 0, h, np.expm1(np.minimum(h, 0))),
            lambda h: np.where(h > 0, 1.0, np.exp(np.minimum(h, 0))),
            lambda h: np.where(h > 0, 0.0, np.exp(np.minimum(h, 0)))),
    "softplus": (lambda h: np.logaddexp(0.0, h), _sig, lambda h: _sig(h) * (1 - _sig(h))),
    "silu": (lambda h: h * _sig(h), lambda h: _sig(h) * (1 + h * (1 - _sig(h))),
             lambda h: _sig(h) * (1 - _sig(h)) * (2 + h * (1 - 2 * _sig(h)))),
    "gelu": (lambda h: h * _cdf(h), lambda h: _cdf(h) + h * _phi(h),
             lambda h: _phi(h) * (2 - h * h)),
    "sin": (np.sin, np.cos, lambda h: -np.sin(h)),
    "identity": (lambda h: h, lambda h: 0 * h + 1, lambda h: 0 * h),
}

# The notes' softplus is exact; torch's (and so the table's) is h itself above its
# threshold 20: the dropped term is log1p(exp(-20)) = 2.1e-9, and so are
# 1 - sigmoid(20) in act' and sigmoid(20)(1 - sigmoid(20)) in act''.
ATOL = {"softplus": 3e-9}


def _grid():
    """Dense points on [-12, 12] plus the awkward ones (tiny, large), no exact kinks."""
    dense = np.linspace(-12.0, 12.0, 2401) + 1e-3  # shifted off 0
    special = np.array([1e-12, -1e-12, 1e-6, -1e-6, 25.0, -25.0, 40.0, -40.0])
    return np.concatenate([dense, special])


def _autograd_derivatives(fn, h_np):
    h = torch.tensor(h_np, dtype=torch.float64, requires_grad=True)
    y = fn(h)
    (d1,) = torch.autograd.grad(y.sum(), h, create_graph=True)
    if d1.requires_grad:  # identity's act' is a constant with no graph
        (d2,) = torch.autograd.grad(d1.sum(), h, materialize_grads=True)
    else:
        d2 = torch.zeros_like(h)
    return y.detach().numpy(), d1.detach().numpy(), d2.detach().numpy()


def test_names_and_core():
    assert laaf_kernels.ACTIVATIONS == ACTIVATIONS
    assert ACTIVATIONS[:3] == ("tanh", "sigmoid", "relu")
    assert set(ACTIVATIONS) == {"tanh", "sigmoid", "relu", "leaky_relu", "elu", "softplus",
                                "silu", "gelu", "sin", "identity"}
    assert set(ORACLE) == set(ACTIVATIONS)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_reference_value_and_autograd_derivatives_match_notes(name):
    h = _grid()
    y, d1, d2 = _autograd_derivatives(get(name).torch_fn, h)
    want = [f(h) for f in ORACLE[name]]
    atol = ATOL.get(name, 1e-13)
    for label, got, exp in zip(("value", "d1", "d2"), (y, d1, d2), want):
        np.testing.assert_allclose(got, exp, rtol=1e-12, atol=atol, err_msg=f"{name} {label}")


@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("which", ["value", "d1", "d2"])
def test_table_formulas_match_notes(name, which):
    h_np = _grid()
    got = evaluate(name, which, torch.tensor(h_np, dtype=torch.float64)).numpy()
    want = ORACLE[name][("value", "d1", "d2").index(which)](h_np)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=ATOL.get(name, 1e-13),
                               err_msg=f"{name} {which}")


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_kinks_follow_pytorch_convention(name):
    """At h = 0 exactly, the table's act' equals autograd of the PyTorch built-in."""
    h = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    (d1,) = torch.autograd.grad(get(name).torch_fn(h).sum(), h)
    torch.testing.assert_close(evaluate(name, "d1", h.detach()), d1, rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_formulas_keep_dtype_and_shape(name):
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        h = torch.randn(3, 4, dtype=torch.float64).to(dtype)
        for which in ("value", "d1", "d2"):
            out = evaluate(name, which, h)
            assert out.dtype == dtype and out.shape == h.shape, (name, which, dtype)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_no_nan_in_gradients_of_formulas_at_extremes(name):
    """Differentiating the rendered d1 (a fused backward's double backward does)
    never produces NaN from an overflowing unselected branch of ``where``."""
    h = torch.tensor([-1e4, -100.0, 100.0, 1e4], dtype=torch.float32, requires_grad=True)
    d1 = evaluate(name, "d1", h)
    assert not torch.isnan(d1).any(), (name, d1)
    if d1.requires_grad:  # piecewise-constant act' (relu, identity) has no graph
        (g,) = torch.autograd.grad(d1.sum(), h)
        assert not torch.isnan(g).any(), (name, g)


@pytest.mark.parametrize("name", [n for n in ACTIVATIONS if TABLE[n].d1_y is not None])
def test_d1_from_y_matches_d1(name):
    """act' written in y = act(h) (what a backend that saves y uses) equals act'(h),
    the kinks at h = 0 included."""
    h = torch.tensor(np.concatenate([_grid(), [0.0]]), dtype=torch.float64)
    y = get(name).torch_fn(h)
    torch.testing.assert_close(evaluate(name, "d1_y", y), evaluate(name, "d1", h),
                               rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name", [n for n in ACTIVATIONS if TABLE[n].d1_y is not None])
def test_grad_from_y_matches_formula_and_its_derivative(name):
    """PyTorch's fused g * act'(h) op (where the table names one) equals g * d1_y(y),
    and so does its derivative in y (what a double backward takes)."""
    from laaf_kernels.activations import grad_from_y

    y = get(name).torch_fn(torch.tensor(_grid(), dtype=torch.float64)).requires_grad_()
    g = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    fused, formula = grad_from_y(name, g, y), g * evaluate(name, "d1_y", y)
    torch.testing.assert_close(fused, formula, rtol=1e-12, atol=1e-13)
    if formula.requires_grad:
        (d_fused,) = torch.autograd.grad(fused.sum(), y)
        (d_formula,) = torch.autograd.grad(formula.sum(), y)
        torch.testing.assert_close(d_fused, d_formula, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name", [n for n in ACTIVATIONS if TABLE[n].d1_y is not None])
def test_d1_y_derivatives_are_those_of_d1_y(name):
    """d1_y_dy and d1_y_dyy (the fused double and triple backward's phi', phi'')
    equal autograd's first and second derivatives of d1_y in y, kinks excluded."""
    y = get(name).torch_fn(torch.tensor(_grid(), dtype=torch.float64)).requires_grad_()
    def derivative(f):  # df/dy; zero where f has no graph (piecewise-constant: relu)
        if not f.requires_grad:
            return torch.zeros_like(y)
        (d,) = torch.autograd.grad(f.sum(), y, create_graph=True, allow_unused=True)
        return torch.zeros_like(y) if d is None else d

    d1 = derivative(evaluate(name, "d1_y", y))
    d2 = derivative(d1).detach()
    torch.testing.assert_close(evaluate(name, "d1_y_dy", y.detach()), d1.detach(),
                               rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(evaluate(name, "d1_y_dyy", y.detach()), d2, rtol=1e-12, atol=1e-13)


def test_y_formulas_come_together():
    """d1_y, d1_y_dy and d1_y_dyy are all given or all absent, and each renders as
    a tensor of y's shape (constants are broadcast)."""
    y = torch.rand(5, dtype=torch.float64)
    for act in TABLE.values():
        given = [getattr(act, which) is not None for which in ("d1_y", "d1_y_dy", "d1_y_dyy")]
        assert len(set(given)) == 1, act.name
        if act.d1_y:
            for which in ("d1_y", "d1_y_dy", "d1_y_dyy"):
                assert evaluate(act.name, which, y).shape == y.shape, (act.name, which)


def test_d1_y_only_where_defined():
    assert {n for n in ACTIVATIONS if TABLE[n].d1_y} == {
        "tanh", "sigmoid", "relu", "leaky_relu", "identity"}
    with pytest.raises(ValueError, match="not a function of y"):
        TABLE["gelu"].formula("d1_y")


def test_formulas_use_only_the_vocabulary():
    """Every name a formula calls is a documented primitive, a constant or a let-binding."""
    import ast

    allowed = set(PRIMITIVES) | {"h", "SQRT1_2", "INV_SQRT_2PI"}
    for act in TABLE.values():
        names = allowed | {v for v, _ in act.let}
        for source in [s for _, s in act.let] + [act.value, act.d1, act.d2]:
            used = {n.id for n in ast.walk(ast.parse(source, mode="eval")) if isinstance(n, ast.Name)}
            assert used <= names, (act.name, source, used - names)
        for source in filter(None, (act.d1_y, act.d1_y_dy, act.d1_y_dyy)):  # in y alone
            used = {n.id for n in ast.walk(ast.parse(source, mode="eval"))
                    if isinstance(n, ast.Name)}
            assert used <= set(PRIMITIVES) | {"y"}, (act.name, source)


def test_unknown_activation_lists_valid_names():
    with pytest.raises(ValueError, match="activation must be one of tanh, sigmoid, relu"):
        get("swish")
