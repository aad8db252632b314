"""PINN-readiness: the exact Burgers solution, and derivatives of any order
through the fused backends (a Burgers residual and its parameter gradients,
third derivatives) against the reference."""
import math

import numpy as np
import pytest
import torch

import laaf_kernels
from laaf_kernels.pinn import NU, burgers_exact
from fused_cases import TARGETS

# ---------------------------------------------------------------------------
# burgers_exact
# ---------------------------------------------------------------------------


def _trapezoid_reference(x: float, t: float, points: int = 400_001) -> float:
    """An independent quadrature: the trapezoid rule in eta on +-12 sqrt(4 nu t),
    spectrally accurate for this smooth, Gaussian-decaying integrand."""
    c = math.sqrt(4 * NU * t)
    eta = np.linspace(-12 * c, 12 * c, points)
    y = x - eta
    exponent = -np.cos(np.pi * y) / (2 * np.pi * NU) - eta ** 2 / (4 * NU * t)
    f = np.exp(exponent - exponent.max())
    return float(-(np.sin(np.pi * y) * f).sum() / f.sum())


SHOCK_AND_SMOOTH_POINTS = [
    (0.0, 0.5), (0.001, 0.3), (-0.004, 0.99), (0.01, 0.5), (-0.02, 0.75), (0.05, 1.0),
    (0.3, 0.25), (-0.7, 0.9), (0.5, 0.01), (0.9, 0.6),
]


@pytest.mark.parametrize("x, t", SHOCK_AND_SMOOTH_POINTS)
def test_burgers_exact_against_independent_quadrature(x, t):
    got = burgers_exact(np.array([x]), np.array([t]))[0]
    assert abs(got - _trapezoid_reference(x, t)) <= 1e-8


def test_burgers_exact_initial_boundary_and_symmetry():
    x = np.linspace(-1, 1, 41)
    np.testing.assert_allclose(burgers_exact(x, np.zeros_like(x)), -np.sin(np.pi * x), atol=1e-14)
    t = np.linspace(0.05, 1, 20)
    assert np.abs(burgers_exact(np.ones_like(t), t)).max() < 1e-10
    xs, ts = np.meshgrid(np.linspace(0.01, 1, 30), np.linspace(0.1, 1, 7))
    np.testing.assert_allclose(burgers_exact(-xs, ts), -burgers_exact(xs, ts), atol=1e-12)


def test_burgers_exact_shapes_tensors_and_errors():
    x = torch.linspace(-1, 1, 12).reshape(3, 4)
    u = burgers_exact(x, torch.full_like(x, 0.4))
    assert isinstance(u, torch.Tensor) and u.dtype == torch.float64 and u.shape == (3, 4)
    assert burgers_exact([0.2, 0.3], [0.5, 0.5]).dtype == np.float64
    with pytest.raises(ValueError, match="same shape"):
        burgers_exact(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="t must be >= 0"):
        burgers_exact([0.1], [-0.1])
    with pytest.raises(ValueError, match="finite"):
        burgers_exact([float("nan")], [0.1])


# ---------------------------------------------------------------------------
# Derivatives of any order through the fused backends
# ---------------------------------------------------------------------------


def _network(mode: str, seed: int, device: str) -> laaf_kernels.LAAFMLP:
    torch.manual_seed(seed)
    net = laaf_kernels.LAAFMLP([2, 9, 7, 1], "tanh", mode, 10.0, dtype=torch.float64).to(device)
    with torch.no_grad():  # move slopes off their initial value: n * a in [0.7, 1.3]
        for a in net.slopes():
            a.mul_(0.7 + 0.6 * torch.rand_like(a))
    return net


def _burgers_loss(net, xt):
    u = net(xt)
    du = torch.autograd.grad(u.sum(), xt, create_graph=True)[0]
    u_x, u_t = du[:, :1], du[:, 1:]
    u_xx = torch.autograd.grad(u_x.sum(), xt, create_graph=True)[0][:, :1]
    residual = u_t + u * u_x - NU * u_xx
    return residual, residual.square().mean()


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("mode", ["fixed", "global", "layer", "neuron"])
def test_burgers_residual_and_parameter_gradients_match_reference(target, mode):
    backend, device = target
    net = _network(mode, seed=3, device=device)
    xt = torch.rand(23, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    xt = (xt * torch.tensor([2.0, 1.0], dtype=torch.float64) - torch.tensor([1.0, 0.0],
          dtype=torch.float64)).to(device).requires_grad_()
    params = list(net.parameters())
    results = {}
    for name in ("reference", backend):
        with laaf_kernels.use_backend(name):
            residual, loss = _burgers_loss(net, xt)
            results[name] = (residual.detach(), torch.autograd.grad(loss, params))
    ref_res, ref_grads = results["reference"]
    res, grads = results[backend]
    torch.testing.assert_close(res, ref_res, rtol=1e-10, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind", ["none", "scalar", "vector"])
def test_third_derivative_of_tanh_layer(target, kind):
    """d3y/dx3 through laaf_linear (create_graph three times), against the reference."""
    backend, device = target
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(13, 3, dtype=torch.float64, generator=gen).to(device).requires_grad_()
    w = torch.randn(4, 3, dtype=torch.float64, generator=gen).to(device)
    b = torch.randn(4, dtype=torch.float64, generator=gen).to(device)
    a = {"none": None, "scalar": torch.tensor(0.13, dtype=torch.float64),
         "vector": torch.rand(4, dtype=torch.float64, generator=gen) * 0.2}[kind]
    a = None if a is None else a.to(device)

    def third(backend):
        y = laaf_kernels.laaf_linear(x, w, b, a, scale=7.0, backend=backend).sum()
        d1 = torch.autograd.grad(y, x, create_graph=True)[0]
        d2 = torch.autograd.grad(d1[:, 0].sum(), x, create_graph=True)[0]
        return torch.autograd.grad(d2[:, 0].sum(), x)[0]

    torch.testing.assert_close(third(backend), third("reference"), rtol=1e-10, atol=1e-12)
