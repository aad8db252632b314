"""Modules: initialisation, parameter counts, GAAF sharing, convert(), state_dict,
slope recovery on known values, extra_repr."""
import io
import math
import warnings

import pytest
import torch
from torch import nn

import laaf_kernels as L
from laaf_kernels.nn.slopes import initial_slope_value

ADAPTIVE = ("global", "layer", "neuron")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1.0, 2.0, 3.0, 7.0, 10.0, 49.0, 100.0, 1e3])
def test_initial_slope_makes_scale_times_a_exactly_one(dtype, scale):
    a = initial_slope_value(scale, dtype)
    assert a.dtype == dtype and (scale * a).item() == 1.0
    assert abs(a.item() - 1 / scale) <= 4 * torch.finfo(dtype).eps / scale


@pytest.mark.parametrize("mode", ADAPTIVE)
def test_modules_initialise_n_times_a_to_one(mode):
    mlp = L.LAAFMLP([2, 7, 5, 1], mode=mode, scale=10.0)
    for a in mlp.slopes():
        assert torch.all(10.0 * a == 1)
    layer = L.LAAFLinear(3, 4, mode=mode, scale=5.0)
    assert torch.all(5.0 * layer.slope == 1)
    act = L.LAAF("tanh", mode=mode, num_features=4, scale=7.0)
    assert torch.all(7.0 * act.slope == 1)


def _ulps(dtype=torch.float32):
    """rtol/atol of a few ulps: a fused backend's tanh/erf differ from PyTorch's own
    CPU kernels (MKL's vector math) in the last bit or two."""
    return dict(rtol=4 * torch.finfo(dtype).eps, atol=4 * torch.finfo(dtype).eps)


@pytest.mark.parametrize("mode", ["fixed", *ADAPTIVE])
def test_fresh_modules_equal_the_standard_activation(mode):
    torch.manual_seed(0)
    x = torch.randn(11, 3)
    layer = L.LAAFLinear(3, 5, "gelu", mode=mode, scale=10.0)
    act = L.LAAF("tanh", mode=mode, num_features=3)
    want_layer = nn.functional.gelu(nn.functional.linear(x, layer.weight, layer.bias))
    with L.use_backend("reference"):  # bit for bit: n * a = 1 exactly, the same ops
        assert torch.equal(layer(x), want_layer)
        assert torch.equal(act(x), torch.tanh(x))
    torch.testing.assert_close(layer(x), want_layer, **_ulps())  # whatever "auto" picks
    torch.testing.assert_close(act(x), torch.tanh(x), **_ulps())


def test_parameter_counts_match_the_paper():
    """1-20-20-20-1: omega = 840 weights, beta = 60 hidden biases, N-LAAF adds 60 slopes."""
    def count(model):
        return sum(p.numel() for p in model.parameters())

    base = count(L.LAAFMLP([1, 20, 20, 20, 1], mode="fixed"))
    neuron = L.LAAFMLP([1, 20, 20, 20, 1], mode="neuron")
    assert count(neuron) - base == 60
    assert count(L.LAAFMLP([1, 20, 20, 20, 1], mode="layer")) - base == 3
    assert count(L.LAAFMLP([1, 20, 20, 20, 1], mode="global")) - base == 1
    omega = sum(layer.weight.numel() for layer in [*neuron.hidden, neuron.output])
    beta = sum(layer.bias.numel() for layer in neuron.hidden)
    assert (omega, beta) == (840, 60)
    assert math.isclose((omega + 2 * beta) / (omega + beta), 1.0667, abs_tol=1e-4)
    # The discontinuous-function network (4 x 50): P = 1.0256.
    net = L.LAAFMLP([1, 50, 50, 50, 50, 1], mode="neuron")
    omega = sum(layer.weight.numel() for layer in [*net.hidden, net.output])
    beta = sum(layer.bias.numel() for layer in net.hidden)
    assert math.isclose((omega + 2 * beta) / (omega + beta), 1.0256, abs_tol=1e-4)


def test_gaaf_shares_one_parameter():
    mlp = L.LAAFMLP([2, 6, 6, 6, 1], mode="global")
    slopes = mlp.slopes()
    assert len(slopes) == 3 and all(s is mlp.global_slope for s in slopes)
    slope_params = [p for p in mlp.parameters() if p.dim() == 0]
    assert len(slope_params) == 1
    opt = torch.optim.SGD(mlp.parameters(), lr=0.1)
    mlp(torch.randn(8, 2)).square().mean().backward()
    grad = mlp.global_slope.grad.clone()
    assert grad.abs() > 0
    opt.step()
    assert all(layer.slope.item() == mlp.global_slope.item() != 0.1 for layer in mlp.hidden)


def test_gaaf_gradient_sums_over_layers():
    """The shared slope's gradient is the sum of each layer's contribution."""
    torch.manual_seed(1)
    mlp = L.LAAFMLP([2, 4, 4, 1], mode="global")
    x = torch.randn(5, 2)
    mlp(x).sum().backward()
    shared = mlp.global_slope.grad.clone()
    per_layer = []
    for layer in mlp.hidden:
        layer.slope = nn.Parameter(mlp.global_slope.detach().clone())
        per_layer.append(layer.slope)
    mlp(x).sum().backward()
    torch.testing.assert_close(shared, sum(p.grad for p in per_layer))


def test_shared_slope_through_laaf_and_laaflinear():
    shared = nn.Parameter(torch.tensor(0.1))
    net = nn.Sequential(L.LAAFLinear(3, 4, mode="global", slope=shared), L.LAAF("tanh", "global", slope=shared))
    assert net[0].slope is shared and net[1].slope is shared
    assert len(list(net.parameters())) == 3  # weight, bias, one slope


def _nested_model():
    inner = nn.Sequential(nn.Linear(5, 5), nn.GELU(), nn.Linear(5, 5), nn.SiLU())

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(5, 5), nn.Softplus(), inner)

        def forward(self, x):
            return self.body(x)

    return nn.Sequential(
        nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.ReLU(), Block(),
        nn.Linear(5, 5), nn.LeakyReLU(), nn.Linear(5, 5), nn.ELU(), nn.Linear(5, 5), nn.Sigmoid(),
        nn.Linear(5, 5), nn.LeakyReLU(0.2),            # unsupported setting: kept as is
        nn.Linear(5, 5), nn.GELU(approximate="tanh"),  # unsupported setting: kept as is
        nn.Linear(5, 3))


@pytest.mark.parametrize("mode", ["fixed", *ADAPTIVE])
def test_convert_gives_identical_outputs(mode):
    torch.manual_seed(0)
    model = _nested_model()
    x = torch.randn(9, 4)
    before = model(x)
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    rng = torch.get_rng_state()
    assert L.convert(model, mode=mode, scale=10.0) is model
    assert torch.equal(torch.get_rng_state(), rng), "convert() must not consume random numbers"
    with L.use_backend("reference"):
        assert torch.equal(model(x), before)
    torch.testing.assert_close(model(x), before, **_ulps())
    converted = [m for m in model.modules() if isinstance(m, L.LAAFLinear)]
    assert len(converted) == 8
    assert [m.activation for m in converted[:2]] == ["tanh", "relu"]
    assert all(any(m.weight is w for w in weights) for m in converted), "parameters are reused"
    assert type(model[11]) is nn.Linear and isinstance(model[12], nn.LeakyReLU)
    assert type(model[13]) is nn.Linear and isinstance(model[14], nn.GELU)
    slopes = {id(m.slope) for m in converted}
    assert len(slopes) == {"fixed": 1, "global": 1, "layer": 8, "neuron": 8}[mode]


def test_convert_with_nothing_to_convert_warns_and_returns_unchanged():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2), nn.Tanh(), nn.Identity())
    model[1] = nn.Conv1d(1, 1, 1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match="returned unchanged"):
        assert L.convert(model) is model
    assert [type(m) for m in model] == [nn.Linear, nn.Conv1d, nn.Tanh, nn.Identity]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_convert_then_train_changes_slopes():
    model = L.convert(nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1)), mode="neuron")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(torch.randn(16, 2)).square().mean().backward()
    opt.step()
    assert not torch.all(10 * model[0].slope == 1)


def _roundtrip(module_factory, perturb=True):
    torch.manual_seed(3)
    src = module_factory()
    if perturb:
        with torch.no_grad():
            for p in src.parameters():
                p.add_(0.1 * torch.randn_like(p))
    buffer = io.BytesIO()
    torch.save(src.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(4)
    dst = module_factory()
    dst.load_state_dict(torch.load(buffer))
    return src, dst


@pytest.mark.parametrize("mode", ["fixed", *ADAPTIVE])
def test_state_dict_roundtrip(mode):  # same backend on both sides: bit for bit
    x = torch.randn(7, 3)
    src, dst = _roundtrip(lambda: L.LAAFMLP([3, 5, 4, 2], mode=mode))
    assert torch.equal(src(x), dst(x))
    if mode == "global":
        assert all(layer.slope is dst.global_slope for layer in dst.hidden)
    src, dst = _roundtrip(lambda: L.LAAFLinear(3, 4, "silu", mode=mode))
    assert torch.equal(src(x), dst(x))
    src, dst = _roundtrip(lambda: L.LAAF("tanh", mode=mode, num_features=3))
    assert torch.equal(src(x), dst(x))


def test_laaf_neuron_mode_along_channels_of_nchw():
    act = L.LAAF("relu", "neuron", num_features=3, dim=1)
    with torch.no_grad():
        act.slope.copy_(torch.tensor([0.1, 0.2, 0.3]))
    z = torch.randn(2, 3, 4, 4)
    want = torch.relu(z * 10 * torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1))
    torch.testing.assert_close(act(z), want)


@pytest.mark.parametrize("slopes, expected", [
    ([torch.tensor(0.0), torch.tensor(0.0)], 1.0),
    ([torch.tensor(1.0), torch.tensor(0.0)], 2.0 / (math.e + 1.0)),
    ([torch.tensor([0.0, 2.0]), torch.tensor(0.0)], 2.0 / (math.e + 1.0)),  # mean over neurons
    ([torch.tensor([0.1, 0.1, 0.1])], math.exp(-0.1)),
    ([torch.tensor(0.1)] * 6, math.exp(-0.1)),  # GAAF: L copies of one slope
    ([torch.tensor(math.log(2.0)), torch.tensor(math.log(4.0)), torch.tensor(math.log(6.0))], 0.25),
])
def test_slope_recovery_known_values(slopes, expected):
    got = L.slope_recovery(slopes)
    assert got.dim() == 0 and math.isclose(got.item(), expected, rel_tol=1e-6)


def test_slope_recovery_is_differentiable_and_pushes_slopes_up():
    mlp = L.LAAFMLP([1, 4, 4, 1], mode="neuron")
    s = mlp.slope_recovery()
    s.backward()
    assert all(torch.all(a.grad < 0) for a in mlp.slopes())  # descending S raises a


def test_slope_recovery_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        L.slope_recovery([])
    with pytest.raises(TypeError, match="iterable"):
        L.slope_recovery(torch.tensor([1.0]))
    with pytest.raises(TypeError, match=r"slopes\[1\]"):
        L.slope_recovery([torch.tensor(1.0), 3])
    with pytest.raises(ValueError, match="mode='fixed'"):
        L.LAAFMLP([1, 3, 1], mode="fixed").slope_recovery()


def test_extra_repr():
    assert "activation=tanh, mode=neuron, scale=10.0, num_features=4, dim=-1" in repr(
        L.LAAF("tanh", num_features=4))
    assert repr(L.LAAF("relu", "fixed")) == "LAAF(activation=relu, mode=fixed)"
    text = repr(L.LAAFLinear(3, 4, "gelu", mode="layer", scale=2.0))
    assert text == ("LAAFLinear(in_features=3, out_features=4, bias=True, "
                    "activation=gelu, mode=layer, scale=2.0)")
    assert "sizes=[1, 3, 1], mode=global" in repr(L.LAAFMLP([1, 3, 1], mode="global"))


def test_laaflinear_is_an_nn_linear_and_matches_it():
    layer = L.LAAFLinear(4, 3, "identity", mode="fixed")
    assert isinstance(layer, nn.Linear)
    x = torch.randn(5, 4)
    with L.use_backend("reference"):
        assert torch.equal(layer(x), nn.functional.linear(x, layer.weight, layer.bias))


def test_module_constructor_errors():
    with pytest.raises(ValueError, match="mode must be one of fixed, global, layer, neuron"):
        L.LAAF("tanh", mode="channel")
    with pytest.raises(ValueError, match="num_features"):
        L.LAAF("tanh", mode="neuron")
    with pytest.raises(ValueError, match="activation must be one of"):
        L.LAAFLinear(3, 4, "swish")
    with pytest.raises(TypeError, match="nn.Parameter"):
        L.LAAFLinear(3, 4, mode="layer", slope=torch.tensor(0.1))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        L.LAAFLinear(3, 4, mode="neuron", slope=nn.Parameter(torch.ones(3)))
    with pytest.raises(ValueError, match="0-d slope"):
        L.LAAFLinear(3, 4, mode="global", slope=nn.Parameter(torch.ones(4)))
    with pytest.raises(ValueError, match="mode='fixed' has no slope"):
        L.LAAF("tanh", mode="fixed", slope=nn.Parameter(torch.tensor(1.0)))
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        L.LAAFMLP([1, 3, 1], scale=0.0)
    with pytest.raises(ValueError, match="sizes"):
        L.LAAFMLP([3])
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        L.convert("not a model")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        L.LAAF("tanh", "neuron", slope=nn.Parameter(torch.ones(5)))  # num_features from slope
