"""torch.func transforms through every op, on every target.

Functorch-style PINN code takes per-point derivatives with ``vmap(grad(u))`` or
``vmap(hessian(u))`` and parameter gradients with ``grad(loss)``. torch.func cannot
transform our ``torch.library`` custom ops (their autograd comes from
``register_autograd``: pytorch/pytorch#168393), so under a transform dispatch hands
the call to the reference (``ops.dispatch.select_backend``). Each result here is
compared with the same derivative taken by ``torch.autograd`` outside any transform,
which runs the backend's fused kernels (create_graph passes included): two
independent paths, in float64.
"""
import pytest
import torch
from torch.func import grad, hessian, jacrev, jvp, vmap

import laaf_kernels
from fused_cases import TARGETS
from helpers import generator

TOL = dict(rtol=1e-11, atol=1e-12)
#: torch's own forward-AD decompositions (jvp, hessian) call torch.jit.script.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def _network(device, gen):
    """A 2 -> 6 -> 1 PINN-like net: a LAAF linear layer (N-LAAF, n = 2), a flexible
    activation, and a plain output layer; its parameters as a dict."""
    draw = lambda *shape: torch.randn(shape, generator=gen, dtype=torch.float64).to(device)  # noqa
    return {"w1": draw(6, 2), "b1": draw(6), "a1": 0.3 + draw(6).abs() / 4,
            "p": torch.stack([0.4 + draw(6).abs() / 5, 0.1 + draw(6).abs() / 5]),
            "w2": draw(1, 6) / 3}


def _u(params, x, backend):
    """u(x) for a batch x (B, 2) -> (B,); a single point (2,) -> a 0-d tensor."""
    h = laaf_kernels.laaf_linear(x.reshape(-1, 2), params["w1"], params["b1"], params["a1"],
                                 activation="tanh", scale=2.0, backend=backend)
    h = laaf_kernels.flexible_activation(h, params["p"], kind="relu_tanh", backend=backend)
    u = (h @ params["w2"].t()).squeeze(-1)
    return u if x.dim() == 2 else u.squeeze(0)


def _autograd_derivatives(params, x, backend):
    """u_x (B, 2) and the Hessian (B, 2, 2) by torch.autograd on the fused kernels."""
    x = x.detach().requires_grad_()
    (u_x,) = torch.autograd.grad(_u(params, x, backend).sum(), x, create_graph=True)
    rows = [torch.autograd.grad(u_x[:, j].sum(), x, create_graph=True)[0] for j in range(2)]
    return u_x, torch.stack(rows, dim=1)


@pytest.mark.parametrize("target", TARGETS)
def test_per_point_derivatives_by_torch_func(target):
    """vmap(grad), vmap(jacrev), vmap(hessian) and jvp of u against autograd."""
    backend, device = target
    gen = generator(41)
    params = _network(device, gen)
    x = torch.randn(7, 2, generator=gen, dtype=torch.float64).to(device)
    v = torch.randn(7, 2, generator=gen, dtype=torch.float64).to(device)
    u_point = lambda p: _u(params, p, backend)  # noqa: E731
    u_x, u_xx = _autograd_derivatives(params, x, backend)

    torch.testing.assert_close(vmap(grad(u_point))(x), u_x.detach(), **TOL)
    torch.testing.assert_close(vmap(jacrev(u_point))(x), u_x.detach(), **TOL)
    torch.testing.assert_close(vmap(hessian(u_point))(x), u_xx.detach(), **TOL)
    _, tangent = jvp(lambda xs: _u(params, xs, backend), (x,), (v,))
    torch.testing.assert_close(tangent, (u_x * v).sum(1).detach(), **TOL)


@pytest.mark.parametrize("target", TARGETS)
def test_parameter_gradients_of_a_residual_by_torch_func(target):
    """grad over the parameters of sum(laplacian(u)^2), the laplacian by vmap(hessian):
    the nesting of a functorch PINN's training step, against autograd's create_graph
    passes through the fused kernels (and their fused grad_y derivatives)."""
    backend, device = target
    gen = generator(42)
    params = _network(device, gen)
    x = torch.randn(5, 2, generator=gen, dtype=torch.float64).to(device)

    def residual(p):
        u_xx = vmap(hessian(lambda q: _u(p, q, backend)))(x)
        return (u_xx.diagonal(dim1=1, dim2=2).sum(1) ** 2).sum()

    by_func = grad(residual)(params)
    leaves = {k: t.detach().requires_grad_() for k, t in params.items()}
    _, u_xx = _autograd_derivatives(leaves, x, backend)
    loss = (u_xx.diagonal(dim1=1, dim2=2).sum(1) ** 2).sum()
    by_autograd = torch.autograd.grad(loss, list(leaves.values()))
    for (name, got), want in zip(by_func.items(), by_autograd):
        torch.testing.assert_close(got, want, **TOL, msg=lambda m: f"d/d{name}: {m}")


def test_outside_transforms_the_fused_backend_runs(monkeypatch):
    """The hand-over is for transforms only: a plain call keeps its backend."""
    from laaf_kernels.ops import dispatch

    seen = []
    reference = dispatch._REGISTRY["reference"]
    spy = dispatch.Backend("cpp", lambda *a: seen.append("fused") or reference.linear(*a),
                           reference.activation, lambda device: None, reference.flexible)
    monkeypatch.setitem(dispatch._REGISTRY, "cpp", spy)
    x, w = torch.randn(3, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    laaf_kernels.laaf_linear(x, w, backend="cpp")
    assert seen == ["fused"]
    vmap(lambda row: laaf_kernels.laaf_linear(row[None], w, backend="cpp"))(x)
    assert seen == ["fused"], "under vmap the call must go to the reference"
