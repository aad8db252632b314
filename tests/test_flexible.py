"""The flexible activations' table, reference, API checks, modules, the
layer-wise regulariser and the flexible-gate LSTM (reference backend unless
stated; the fused kernels are in test_fused_flexible.py)."""
import pytest
import torch
import torch.nn.functional as F

import laaf_kernels as L
from helpers import generator
from laaf_kernels.flexible import FLEXIBLE, evaluate_flexible, get_kind

BASELINES = {"relu": F.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}


@pytest.mark.parametrize("kind", L.FLEXIBLE_KINDS)
def test_formulas_are_the_derivatives_of_the_value(kind):
    """dz, dp0, dp1 of the table against autograd of torch_value (float64)."""
    gen = generator(51)
    z = (torch.randn(40, 6, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    params = (torch.rand(2, 6, generator=gen, dtype=torch.float64) * 2 - 0.5).requires_grad_()
    row = get_kind(kind)
    y = row.torch_value(z, params[0], params[1])
    torch.testing.assert_close(y, evaluate_flexible(kind, "value", z, params[0], params[1]),
                               rtol=1e-14, atol=1e-14)
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    dz, dp = torch.autograd.grad(y, (z, params), g)
    torch.testing.assert_close(dz, g * evaluate_flexible(kind, "dz", z, params[0], params[1]))
    for k in range(2):
        want = (g * evaluate_flexible(kind, f"dp{k}", z, params[0], params[1])).sum(0)
        torch.testing.assert_close(dp[k], want)


@pytest.mark.parametrize("backend", ["reference"] + (["cpp"] if "cpp" in L.available_backends()
                                                      else []))
@pytest.mark.parametrize("kind", L.FLEXIBLE_KINDS)
def test_initialised_module_equals_its_baseline(kind, backend):
    """Bit for bit, except where the fused kernels' own tanh / exp round differently."""
    z = torch.randn(17, 9, generator=generator(52))
    module = L.FlexibleActivation(kind, 9)
    assert module.params.shape == (2, 9)
    with L.use_backend(backend):
        y = module(z)
    want = BASELINES[get_kind(kind).baseline](z)
    if backend == "reference" or get_kind(kind).baseline == "relu":
        assert torch.equal(y, want), (y - want).abs().max()
    else:  # the cpp kernels' tanh / exp are Sleef's, PyTorch's CPU ones MKL's: last bits
        torch.testing.assert_close(y, want, rtol=4 * 2 ** -23, atol=0)


#: Per dtype, |z| where z^3 (in float16 also z^2) overflows, with ordinary values.
#: (Not past 1.8e19 in float32: there z^2 overflows inside autograd of the reference.)
_PAST_THE_CUBE = {torch.float32: [1e13, -1e13, 3e15, 1e18, -1e18, 0.5, -0.25, 3.0],
                  torch.bfloat16: [1e13, -1e13, 1e18, 0.5, -0.25, 3.0],
                  torch.float16: [50.0, -50.0, 300.0, -300.0, 6e4, 0.5, -0.25, 3.0]}


@pytest.mark.parametrize("backend", ["reference"] + [b for b in ("cpp", "triton")
                                                     if b in L.available_backends()])
@pytest.mark.parametrize("dtype", list(_PAST_THE_CUBE), ids=str)
@pytest.mark.parametrize("kind", ["relu_poly", "relu_tanh"])
def test_cubic_kinds_at_init_are_relu_past_the_cube_overflow(kind, dtype, backend):
    """At init (alpha2 = 0) the cubic kinds are relu for every finite z, value and
    dz, also where z^3 overflows the dtype: the term is p1 z z z (p1 first), and
    float16 / bfloat16 compute in float32 on every path. Before, 0 * inf gave NaN
    (float16 from |z| = 40). dz is checked through the backend's backward and
    through the create_graph path; dalpha2 = sum g z^3 may overflow (it is that big)."""
    z = torch.tensor([_PAST_THE_CUBE[dtype]], dtype=dtype, requires_grad=True)
    params = L.FlexibleActivation(kind, z.shape[1]).params.detach().to(dtype).requires_grad_()
    with L.use_backend(backend):
        y = L.flexible_activation(z, params, kind=kind)
    want = F.relu(z.detach())
    assert torch.equal(y.detach(), want), y
    step = (z.detach() > 0).to(dtype)
    for create_graph in (False, True):
        dz, dp = torch.autograd.grad(y.sum(), (z, params), create_graph=create_graph,
                                     retain_graph=True)
        assert torch.equal(dz.detach(), step), (create_graph, dz)
        assert torch.isfinite(dp[0]).all(), (create_graph, dp)


def test_kind_names_and_parameter_order():
    assert L.FLEXIBLE_KINDS == ("relu_poly", "relu_tanh", "sigmoid_ramp", "tanh_ramp")
    assert FLEXIBLE["relu_poly"].param_names == ("alpha1", "alpha2")
    assert FLEXIBLE["sigmoid_ramp"].param_names == ("alpha", "beta")
    z = torch.tensor([0.8, -2.0], dtype=torch.float64)
    params = torch.tensor([[0.25, 0.25], [0.5, 0.5]], dtype=torch.float64)
    y = L.flexible_activation(z, params, kind="sigmoid_ramp", backend="reference")
    want = 0.25 * torch.sigmoid(z) + 0.75 * torch.clamp(0.5 * z + 0.5, 0, 1)
    torch.testing.assert_close(y, want, rtol=0, atol=1e-15)


@pytest.mark.parametrize("call, error, match", [
    (lambda z, p: L.flexible_activation(z, p, kind="swish_poly"), ValueError,
     "kind must be one of relu_poly, relu_tanh, sigmoid_ramp, tanh_ramp"),
    (lambda z, p: L.flexible_activation(z, p[0], kind="relu_poly"), ValueError,
     r"params must have shape \(2, 5\)"),
    (lambda z, p: L.flexible_activation(z, p[:, :4], kind="relu_poly"), ValueError,
     r"params must have shape \(2, 5\) \(one row per free parameter, C = z.shape\[1\]\)"),
    (lambda z, p: L.flexible_activation(z, torch.cat([p, p]), kind="relu_poly"), ValueError,
     r"got \(4, 5\)"),
    (lambda z, p: L.flexible_activation(z, p.double(), kind="relu_poly"), TypeError,
     "params has dtype torch.float64 but z has torch.float32"),
    (lambda z, p: L.flexible_activation(z, p, kind="relu_poly", dim=2), ValueError,
     r"dim must be in \[-2, 1\]"),
    (lambda z, p: L.flexible_activation(z[0, 0], p, kind="relu_poly"), ValueError,
     "z must have at least one dim"),
    (lambda z, p: L.flexible_activation(z, p.long(), kind="relu_poly"), TypeError,
     "params must have a floating-point dtype"),
    (lambda z, p: L.flexible_linear(z, torch.ones(3, 5), None, p, kind="relu_poly"), ValueError,
     r"params must have shape \(2, 3\) \(one row per free parameter, N = weight.shape\[0\]\)"),
])
def test_bad_input_names_the_argument(call, error, match):
    z, params = torch.randn(4, 5), torch.rand(2, 5)
    with pytest.raises(error, match=match):
        call(z, params)


def test_cuda_backend_refuses_cpu_tensors():
    with pytest.raises(RuntimeError, match="backend 'cuda'"):
        L.flexible_activation(torch.randn(2, 3), torch.rand(2, 3), kind="relu_poly",
                              backend="cuda")


def test_flexible_linear_module_is_an_nn_linear():
    layer = L.FlexibleLinear(6, 4, "relu_tanh")
    assert isinstance(layer, torch.nn.Linear) and layer.params.shape == (2, 4)
    x = torch.randn(3, 2, 6, generator=generator(53))
    want = L.flexible_activation(F.linear(x, layer.weight, layer.bias), layer.params,
                                 kind="relu_tanh", backend="reference")
    with L.use_backend("reference"):
        assert torch.equal(layer(x), want)
    assert "kind=relu_tanh" in repr(layer)


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = L.FlexibleLinear(4, 3, "relu_poly")
        self.act = L.FlexibleActivation("sigmoid_ramp", 3)
        self.plain = torch.nn.Linear(3, 2)


def test_regularizer_matches_its_formula():
    net = _Net()
    with torch.no_grad():
        net.enc.params.copy_(torch.tensor([[1.2, 0.8, 1.0], [0.1, -0.2, 0.4]]))
        net.act.params.copy_(torch.tensor([[0.5, 1.0, 0.9], [0.1, 0.3, 0.2]]))
    lam, delta = 0.1, 0.01

    def layer_terms(p, baseline):
        spread = ((p - p.mean(1, keepdim=True)) ** 2).sum()
        return spread, ((p - torch.tensor(baseline)[:, None]) ** 2).sum()

    s1, d1 = layer_terms(net.enc.params.detach(), (1.0, 0.0))
    s2, d2 = layer_terms(net.act.params.detach(), (1.0, 0.1))
    got = L.flexible_regularization(net, lam, delta)
    torch.testing.assert_close(got, lam * (s1 + s2) + delta * (d1 + d2))
    per_layer = L.flexible_regularization(net, {"enc": 0.5}, 0.0)
    torch.testing.assert_close(per_layer, 0.5 * s1)
    got.backward()
    assert net.enc.params.grad is not None and net.act.params.grad is not None


def test_regularizer_is_zero_at_init_and_checks_its_arguments():
    net = _Net()
    assert L.flexible_regularization(net, 0.1, 0.3).item() == 0.0
    assert L.flexible_regularization(torch.nn.Linear(2, 2), 0.1).item() == 0.0
    with pytest.raises(ValueError, match=r"lam names modules that model does not have: \['nope'\]"):
        L.flexible_regularization(net, {"nope": 0.1})
    with pytest.raises(TypeError, match="lam must be a float or a dict"):
        L.flexible_regularization(net, "0.1")


def _lstm_pair(layers=2, batch_first=False):
    torch.manual_seed(54)
    lstm = torch.nn.LSTM(5, 7, num_layers=layers, batch_first=batch_first)
    flex = L.FlexibleLSTM(5, 7, num_layers=layers, batch_first=batch_first)
    missing, unexpected = flex.load_state_dict(lstm.state_dict(), strict=False)
    assert not unexpected and all(".params" in name for name in missing)
    return lstm, flex


@pytest.mark.parametrize("batch_first", [False, True])
def test_flexible_lstm_equals_nn_lstm_at_init(batch_first):
    """Bit for bit against ATen's LSTM (oneDNN's fused CPU LSTM, PyTorch's
    default on x86, rounds differently: ~1 ulp, also checked)."""
    lstm, flex = _lstm_pair(batch_first=batch_first)
    x = torch.randn(11, 3, 5, generator=generator(55))
    batch = x.shape[0] if batch_first else x.shape[1]
    state = (torch.randn(2, batch, 7, generator=generator(56)), torch.randn(2, batch, 7))
    with L.use_backend("reference"):
        out, (h, c) = flex(x, state)
    with torch.backends.mkldnn.flags(enabled=False):
        want, (h_want, c_want) = lstm(x, state)
    assert torch.equal(out, want) and torch.equal(h, h_want) and torch.equal(c, c_want)
    onednn, _ = lstm(x, state)
    torch.testing.assert_close(out, onednn, rtol=1e-6, atol=1e-6)


def test_flexible_lstm_cell_equals_nn_lstm_cell_and_trains():
    cell = torch.nn.LSTMCell(5, 7)
    flex = L.FlexibleLSTMCell(5, 7)
    flex.load_state_dict(cell.state_dict(), strict=False)
    x = torch.randn(3, 5, generator=generator(57))
    with L.use_backend("reference"):
        h, c = flex(x)
    h_want, c_want = cell(x)
    assert torch.equal(h, h_want) and torch.equal(c, c_want)
    state = (torch.randn(3, 7, generator=generator(58)), torch.randn(3, 7))
    with L.use_backend("reference"):  # (with c = 0 the forget gate would get no gradient)
        (flex(x, state)[0] ** 2).sum().backward()
    assert all(getattr(flex, gate).params.grad.abs().sum() > 0 for gate in flex.GATES)


def test_flexible_lstm_rejects_bad_input():
    _, flex = _lstm_pair(layers=1)
    with pytest.raises(ValueError, match="x must be 3-D"):
        flex(torch.randn(3, 5))
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        L.FlexibleLSTM(5, 0)
