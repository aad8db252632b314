"""The fused ops inside PyTorch: torch.library.opcheck, torch.compile(fullgraph=True)
with no graph breaks, autocast, gradcheck / gradgradcheck through the backend,
the memory saved for backward, and launching on the tensors' own GPU."""
import pytest
import torch

import laaf_kernels
from helpers import linear_inputs
from fused_cases import INTERPRETING, TARGETS, TRITON_TARGETS

SCALE = 3.0


def _small(device, kind="vector", dtype=torch.float64, seed=31, shape=((6,), 4, 3, False)):
    return [None if t is None else t.to(device) for t in
            linear_inputs(shape, kind, seed, SCALE, dtype=dtype)]


# ---------------------------------------------------------------------------
# torch.library
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind", ["none", "scalar", "vector"])
def test_opcheck_linear_ops(target, kind):
    backend, device = target
    x, w, b, a = _small(device, kind, dtype=torch.float32)
    s = None if a is None else (SCALE * a).detach().requires_grad_()
    ops = torch.ops.laaf
    torch.library.opcheck(getattr(ops, f"{backend}_linear_fwd"), (x, w, b, s, "tanh", True))
    torch.library.opcheck(getattr(ops, f"{backend}_linear_fwd"),
                          (x.detach(), w.detach(), b.detach(), None if s is None else s.detach(),
                           "relu", False))
    z = torch.nn.functional.linear(x, w, b).detach()
    g = torch.randn_like(z)
    torch.library.opcheck(getattr(ops, f"{backend}_linear_bwd"),
                          (g, x.detach(), w.detach(), b.detach(), z,
                           None if s is None else s.detach(), None, "gelu", True, True, True,
                           s is not None))


@pytest.mark.parametrize("target", TARGETS)
def test_opcheck_activation_ops(target):
    backend, device = target
    z = torch.randn(2, 3, 4, device=device, requires_grad=True)
    s = torch.rand(3, device=device, requires_grad=True)
    torch.library.opcheck(getattr(torch.ops.laaf, f"{backend}_act_fwd"), (z, s, "silu", 1))
    g = torch.randn(2, 3, 4, device=device)
    torch.library.opcheck(getattr(torch.ops.laaf, f"{backend}_act_bwd"),
                          (g, z.detach(), s.detach(), None, "silu", 1, True, True))


@pytest.mark.parametrize("target", TARGETS)
def test_torch_compile_fullgraph_matches_eager(target):
    """fullgraph=True fails on any graph break. On CPU the 'aot_eager' backend
    traces forward and backward (fake tensors included) without compiling
    C++ for the graph; on a GPU, inductor compiles around the kernels."""
    backend, device = target
    x, w, b, a = _small(device, dtype=torch.float32)
    act = torch.rand(3, device=device, requires_grad=True)

    def step(x, w, b, a, act):
        y = laaf_kernels.laaf_linear(x, w, b, a, scale=SCALE, backend=backend)
        y = laaf_kernels.laaf_activation(y, act, activation="sigmoid", scale=2.0, backend=backend)
        return y.square().sum()

    compiled = torch.compile(step, fullgraph=True,
                             backend="aot_eager" if device == "cpu" else "inductor")
    inputs = (x, w, b, a, act)
    eager_loss = step(*inputs)
    eager_grads = torch.autograd.grad(eager_loss, inputs)
    loss = compiled(*inputs)
    grads = torch.autograd.grad(loss, inputs)
    torch.testing.assert_close(loss, eager_loss)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e)


# ---------------------------------------------------------------------------
# Autocast
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
def test_autocast_behaves_like_nn_linear(target):
    """Under autocast the op computes in the autocast dtype and returns it,
    as nn.Linear does; the slope stays fp32 and gradients come back in the
    parameters' dtype."""
    backend, device = target
    x, w, b, a = _small(device, dtype=torch.float32, shape=((17,), 24, 20, False))
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        y = laaf_kernels.laaf_linear(x, w, b, a, scale=SCALE, backend=backend)
        like = torch.nn.functional.linear(x, w, b)
        ref = laaf_kernels.laaf_linear(x, w, b, a, scale=SCALE, backend="reference")
    assert y.dtype == like.dtype == torch.bfloat16
    want = torch.tanh(SCALE * a.float() * like.float())
    torch.testing.assert_close(y.float(), want, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(y.float(), ref.float(), atol=2e-2, rtol=2e-2)
    grads = torch.autograd.grad(y.float().sum(), (x, w, b, a))
    assert [g.dtype for g in grads] == [torch.float32] * 4


# ---------------------------------------------------------------------------
# gradcheck / gradgradcheck in float64 through the backend
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind", ["none", "scalar", "vector"])
@pytest.mark.parametrize("activation", ["tanh", "relu", "gelu", "sin"])
def test_gradcheck_and_gradgradcheck_linear(target, activation, kind):
    backend, device = target
    x, w, b, a = _small(device, kind)
    inputs = [t for t in (x, w, b, a) if t is not None]

    def fn(*ts):
        slope = ts[3] if a is not None else None
        return laaf_kernels.laaf_linear(*ts[:3], slope, activation=activation, scale=SCALE,
                                        backend=backend)

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dim", [1, -1])
def test_gradcheck_and_gradgradcheck_activation(target, dim):
    backend, device = target
    z = torch.randn(2, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    a = (0.2 + torch.rand(z.shape[dim], dtype=torch.float64, device=device)).requires_grad_()

    def fn(z, a):
        return laaf_kernels.laaf_activation(z, a, activation="elu", scale=SCALE, dim=dim,
                                            backend=backend)

    assert torch.autograd.gradcheck(fn, (z, a))
    assert torch.autograd.gradgradcheck(fn, (z, a))


# ---------------------------------------------------------------------------
# Memory saved for backward
# ---------------------------------------------------------------------------

def _saved_bytes(fn, parameters):
    """Bytes of distinct storages that autograd saves for backward while ``fn``
    runs, parameters excluded (both versions keep them alive anyway)."""
    storages = {}
    skip = {p.untyped_storage().data_ptr() for p in parameters}

    def pack(t):
        if t.untyped_storage().data_ptr() not in skip:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


@pytest.mark.parametrize("target", TRITON_TARGETS)
def test_saves_at_most_two_thirds_of_eager(target):
    backend, device = target
    m, k, n = 512, 16, 16
    x = torch.randn(m, k, device=device, requires_grad=True)
    w = torch.randn(n, k, device=device, requires_grad=True)
    b = torch.randn(n, device=device, requires_grad=True)
    a = torch.full((n,), 0.1, device=device, requires_grad=True)
    params = (w, b, a)
    eager = _saved_bytes(lambda: torch.tanh(10.0 * a * torch.nn.functional.linear(x, w, b)), params)
    fused = _saved_bytes(lambda: laaf_kernels.laaf_linear(x, w, b, a, scale=10.0, backend=backend),
                         params)
    # eager keeps x, z = xW^T + b, s = n a and y = tanh(s z); the fused op keeps
    # x and s (a narrow layer: its backward recomputes z from x on chip).
    assert eager == 4 * (m * k + 2 * m * n + n)
    assert fused == 4 * (m * k + n)
    assert fused <= 2 / 3 * eager


# ---------------------------------------------------------------------------
# Device guard
# ---------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETING or torch.cuda.device_count() < 2,
                    reason="needs two CUDA devices")
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_launches_on_the_tensors_device(backend):
    x, w, b, a = _small("cuda:1", dtype=torch.float32)
    with torch.cuda.device(0):
        y = laaf_kernels.laaf_linear(x, w, b, a, scale=SCALE, backend=backend)
    want = laaf_kernels.laaf_linear(x, w, b, a, scale=SCALE, backend="reference")
    assert y.device == x.device
    torch.testing.assert_close(y, want)
