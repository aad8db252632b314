"""The standalone activations (LAAF and flexible) on tensors laid out in another
order than their shape: channels_last and channels_last_3d convolution outputs,
a transposed tensor, and a strided slice (gaps: no memory order). Every fused
backend must give the reference's values, gradients and strides (PyTorch's
element-wise ops keep a dense input's layout), and must hand a dense input to its
kernels without a copy (laaf_kernels.ops.memory_order)."""
import pytest
import torch

import laaf_kernels
from fused_cases import TARGETS, compare_activation, compare_flexible
from helpers import generator
from laaf_kernels.ops import autograd as autograd_module
from laaf_kernels.ops.memory_order import memory_order

SCALE = 2.0


def _channels_last(gen):
    return torch.randn(3, 5, 4, 6, generator=gen).to(memory_format=torch.channels_last), 1


def _channels_last_3d(gen):
    return torch.randn(2, 5, 3, 2, 4, generator=gen).to(memory_format=torch.channels_last_3d), 1


def _transposed(gen):  # memory order (4, 3, 7) read as (7, 3, 4); channels on dim 1
    return torch.randn(4, 3, 7, generator=gen).transpose(0, 2), 1


def _strided_slice(gen):  # every other column: not dense, so no memory order
    return torch.randn(6, 22, generator=gen)[:, ::2], -1


LAYOUTS = {"channels_last": _channels_last, "channels_last_3d": _channels_last_3d,
           "transposed": _transposed, "strided_slice": _strided_slice}
DENSE = ("channels_last", "channels_last_3d", "transposed")


def _z(layout, seed):
    z, dim = LAYOUTS[layout](generator(seed))
    return z.double(), dim


@pytest.fixture
def kernel_inputs(monkeypatch):
    """The z that each fused op call receives."""
    seen = []
    real = autograd_module.call_op

    def spy(name, z, *args):
        seen.append(z)
        return real(name, z, *args)

    monkeypatch.setattr(autograd_module, "call_op", spy)
    return seen


def _laaf(z, dim, backend):
    """(run on a backend, compare the backend with the reference) for laaf_activation."""
    a = (0.6 + 0.8 * torch.rand(z.shape[dim], generator=generator(62), dtype=z.dtype)) / SCALE
    a = a.to(z.device).requires_grad_()
    return (lambda on: laaf_kernels.laaf_activation(z, a, activation="gelu", scale=SCALE,
                                                    dim=dim, backend=on),
            lambda: compare_activation(backend, z, a, "gelu", SCALE, dim))


def _flexible(z, dim, backend):
    """As _laaf, for flexible_activation (relu_tanh)."""
    params = torch.rand(2, z.shape[dim], generator=generator(64), dtype=z.dtype) * 1.6 - 0.3
    params = params.to(z.device).requires_grad_()
    return (lambda on: laaf_kernels.flexible_activation(z, params, kind="relu_tanh", dim=dim,
                                                        backend=on),
            lambda: compare_flexible(backend, z, params, "relu_tanh", dim))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op", [_laaf, _flexible], ids=["laaf", "flexible"])
def test_the_activations_keep_the_layout(target, layout, op, kernel_inputs):
    backend, device = target
    z, dim = _z(layout, seed=61)
    z = z.to(device).requires_grad_()
    run, compare = op(z, dim, backend)
    y = run(backend)
    dz, = torch.autograd.grad(y, z, torch.ones_like(y))
    assert y.stride() == run("reference").stride(), "the output keeps the reference's layout"
    if layout in DENSE:
        assert y.stride() == z.stride() and dz.stride() == z.stride()
        assert [t.data_ptr() for t in kernel_inputs] == [z.data_ptr()], "no copy of z"
        assert all(t.is_contiguous() for t in kernel_inputs)
    compare()


@pytest.mark.parametrize("layout, expected", [
    ("channels_last", (0, 2, 3, 1)), ("channels_last_3d", (0, 2, 3, 4, 1)),
    ("transposed", (2, 1, 0)), ("strided_slice", None)])
def test_memory_order(layout, expected):
    z, _ = _z(layout, seed=65)
    assert memory_order(z) == expected
    assert memory_order(z.contiguous()) is None
    assert memory_order(torch.randn(5)[::2]) is None  # 1-D: nothing to permute
