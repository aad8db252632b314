"""Offsets of 2^31 elements and more.

The Triton kernels index in int32 unless a tensor of the launch reaches 2^31 elements
(``triton_launchers.needs_int64``); then the launch takes their INT64_OFFSETS variant.
The C++ and CUDA kernels index in int64 always. Three kinds of test:

* **Views that reach past 2^31 elements**, on every target: rows (or columns)
  ``GAP = 2^26 + 3`` elements apart, carved out of one lazily allocated storage of
  2^31 + 2^12 fp32 elements (8 GiB of address space, of which only the pages the
  views touch become memory). Row 32 starts 2^31 + 96 elements in: an int32 offset
  there wraps negative. Every kernel that reads through strides (linear forward,
  narrow and wide backward, activation and flexible forward and backward) is
  compared with the reference on such views.
* **Every Triton kernel's int64 variant** on small tensors, the launch forced to
  int64 (the create_graph kernels read contiguous copies, so only a tensor of 2^31
  elements takes them there; the GPU test below has one).
* **On a GPU**, contiguous tensors of more than 2^31 elements (the rows past 2^31
  compared with the reference).
"""
import pytest
import torch

import laaf_kernels
from fused_cases import TARGETS, TRITON_TARGETS, compare_activation, compare_flexible, compare_linear
from helpers import generator, make_slope
from laaf_kernels import reference
from laaf_kernels.kernels import triton_launchers as launch

GAP = 2**26 + 3
STORAGE = 2**31 + 2**12
ROWS = 33  # rows 0..32: the last starts 32 * GAP = 2^31 + 96 elements in
META = dict(device="meta")


# ---------------------------------------------------------------------------
# When a launch takes int64 offsets (meta tensors: nothing is allocated)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("t, wide", [
    (torch.empty(2**31 - 1, **META), False),
    (torch.empty(2**31, **META), True),
    (torch.empty(2**16, 2**15, **META), True),                        # numel 2^31
    (torch.empty(6, **META).as_strided((2, 3), (2**31 - 4, 1)), False),  # last at 2^31 - 2
    (torch.empty(6, **META).as_strided((2, 3), (2**31 - 3, 1)), True),   # last at 2^31 - 1
    (torch.empty(6, **META).as_strided((2, 3), (1, 2**30)), True),       # by a column stride
])
def test_a_launch_indexes_in_int64_when_a_tensor_reaches_2_31_elements(t, wide):
    assert launch.needs_int64(None, torch.empty(3, **META), t) is wide


def test_the_decision_reaches_every_launcher(monkeypatch):
    """Each launcher is wrapped (``sized_offsets``) and receives the decision."""
    seen = {}

    def spy(name):
        def launcher(*args, int64_offsets, **kwargs):
            seen[name] = int64_offsets
        return launch.sized_offsets(launcher)

    spy("small")(torch.empty(5, **META), None)
    spy("large")(torch.empty(5, **META), z=torch.empty(2**31, **META))
    assert seen == {"small": False, "large": True}
    wrapper_code = spy("any").__code__
    for name in ("linear_forward", "linear_backward", "activation_forward",
                 "activation_backward", "grad_y", "grad_y_vjp", "grad_y_vjp2",
                 "flexible_forward", "flexible_backward"):
        assert getattr(launch, name).__code__ is wrapper_code, f"{name}: not sized_offsets"


# ---------------------------------------------------------------------------
# Views that reach past 2^31 elements, on every target
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def far_storage():
    """One 8 GiB fp32 storage per device, allocated lazily (the kernel maps its pages
    as they are touched: a view of 33 rows touches 33 pages)."""
    storages = {}

    def get(device):
        if device not in storages:
            storages[device] = torch.empty(STORAGE, dtype=torch.float32, device=device)
        return storages[device]

    yield get
    storages.clear()


def _far_view(storage, rows, cols, gen, across_columns=False):
    """A random (rows, cols) view whose rows (or, across_columns, columns) lie GAP
    elements apart; a leaf that requires grad."""
    strides = (1, GAP) if across_columns else (GAP, 1)
    view = storage.as_strided((rows, cols), strides)
    with torch.no_grad():
        view.copy_(torch.randn(rows, cols, generator=gen, dtype=torch.float64))
    assert launch._reach(view) > launch.INT32_SPAN
    return view.requires_grad_()


def _params(n, k, kind, device, gen):
    w = (torch.randn(n, k, generator=gen, dtype=torch.float64) / k**0.5).float()
    b = torch.randn(n, generator=gen, dtype=torch.float64).float()
    a = make_slope(kind, n, 1.0, gen, torch.float32)
    return [None if t is None else t.to(device).requires_grad_() for t in (w, b, a)]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("n_out, across_columns", [(7, False), (130, False), (7, True)],
                         ids=["narrow", "wide", "narrow-column-gap"])
@pytest.mark.parametrize("kind", ["scalar", "vector"])
def test_linear_on_a_view_that_reaches_past_2_31(target, far_storage, n_out, across_columns,
                                                 kind):
    """x of 33 rows 2^26 + 3 apart (or, column-gap, 33 columns so far apart): the
    narrow layer's forward and fused backward, the wide layer's forward (its backward
    reads only contiguous z and g, and cuBLAS reads x)."""
    backend, device = target
    gen = generator(31)
    shape = (5, ROWS) if across_columns else (ROWS, 5)
    x = _far_view(far_storage(device), *shape, gen, across_columns)
    w, b, a = _params(n_out, shape[1], kind, device, gen)
    compare_linear(backend, x, w, b, a, "tanh", 1.0)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("op", ["activation", "flexible"])
@pytest.mark.parametrize("dim", [1, 0], ids=["channels-on-columns", "channels-on-rows"])
def test_elementwise_ops_on_a_view_that_reaches_past_2_31(target, far_storage, op, dim):
    """laaf_activation (a per-channel slope) and flexible_activation (per-channel
    parameters) on 33 rows 2^26 + 3 apart, the channels along either axis."""
    backend, device = target
    gen = generator(32)
    z = _far_view(far_storage(device), ROWS, 6, gen)
    channels = z.shape[dim]
    if op == "activation":
        a = make_slope("vector", channels, 1.0, gen, torch.float32).to(device).requires_grad_()
        compare_activation(backend, z, a, "sigmoid", 1.0, dim)
        return
    params = torch.stack([0.3 + 0.4 * torch.rand(channels, generator=gen, dtype=torch.float64),
                          0.2 + 0.5 * torch.rand(channels, generator=gen, dtype=torch.float64)])
    compare_flexible(backend, z, params.float().to(device).requires_grad_(), "sigmoid_ramp",
                     dim, " (far view)")


# ---------------------------------------------------------------------------
# Every Triton kernel's int64 variant, forced, on small tensors
# ---------------------------------------------------------------------------

@pytest.fixture
def forced_int64(monkeypatch):
    monkeypatch.setattr(launch, "needs_int64", lambda *tensors: True)


@pytest.mark.parametrize("target", TRITON_TARGETS)
def test_every_triton_kernel_in_its_int64_variant(target, forced_int64):
    """Linear (narrow and wide), activation, flexible, and, through a PINN-like
    second derivative, the three create_graph kernels, all launched with int64
    offsets, against the reference in float64."""
    backend, device = target
    gen = generator(34)
    draw = lambda *shape: torch.randn(shape, generator=gen, dtype=torch.float64).to(device)  # noqa
    for n_out in (6, 130):
        x, w, b = draw(11, 5), draw(n_out, 5) / 5**0.5, draw(n_out)
        a = 0.6 + 0.8 * draw(n_out).abs()
        compare_linear(backend, *(t.requires_grad_() for t in (x, w, b, a)), "tanh", 1.0)
    z = draw(3, 4, 5).requires_grad_()
    compare_activation(backend, z, draw(4).abs().requires_grad_(), "tanh", 1.0, 1)
    params = torch.stack([0.3 + 0.4 * draw(5).abs(), 0.2 + 0.5 * draw(5).abs()]).requires_grad_()
    compare_flexible(backend, z, params, "relu_tanh", -1, " (int64)")
    _compare_second_derivative(backend, draw)


def _compare_second_derivative(backend, draw):
    """d/dtheta of sum(u_xx^2) for u = W2 act(s (x W1^T + b1)): the create_graph
    passes run grad_y, grad_y_vjp and grad_y_vjp2."""
    x = draw(9, 1).requires_grad_()
    w1, b1, a1, w2 = draw(5, 1), draw(5), (0.5 + draw(5).abs()), draw(1, 5)
    theta = [t.requires_grad_() for t in (w1, b1, a1)]

    def loss(layer):
        u = layer(x, w1, b1, a1, activation="tanh", scale=1.0) @ w2.t()
        (u_x,) = torch.autograd.grad(u.sum(), x, create_graph=True)
        (u_xx,) = torch.autograd.grad(u_x.sum(), x, create_graph=True)
        return torch.autograd.grad((u_xx**2).sum(), theta)

    fused = loss(lambda *args, **kw: laaf_kernels.laaf_linear(*args, backend=backend, **kw))
    truth = loss(reference.laaf_linear)
    for name, got, want in zip(("dW1", "db1", "da1"), fused, truth):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10,
                                   msg=lambda m: f"{name} (int64 offsets): {m}")


# ---------------------------------------------------------------------------
# On a GPU: contiguous tensors of more than 2^31 elements
# ---------------------------------------------------------------------------

BIG = 2**31 + 2**20


def _big_memory_problem():
    if not torch.cuda.is_available():
        return "no CUDA device: tensors of 2^31 elements are tested on a GPU only"
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        return f"the GPU has {free / 2**30:.0f} GiB free; these tests need 24 GiB"
    return None


GPU_TARGETS = [t for t in TARGETS if t.values[0][1] == "cuda"]


@pytest.mark.gpu
@pytest.mark.parametrize("target", GPU_TARGETS)
def test_tensors_of_more_than_2_31_elements_on_a_gpu(target):
    problem = _big_memory_problem()
    if problem:
        pytest.skip(problem)
    check_past_the_split(*target, numel=BIG, split=2**31)


def check_past_the_split(backend, device, numel, split):
    """bf16 z of ``numel`` elements with a per-channel slope: y, the create_graph
    kernel gz, and a linear layer whose y has ``numel`` elements, checked from just
    before ``split`` on against the reference run on those rows alone. (Tolerances:
    a few bf16 ulps, the outputs being rounded to bf16 once, the reference's twice.)"""
    gen = torch.Generator(device).manual_seed(35)
    C = 2**10
    z = torch.randn(numel // C, C, generator=gen, device=device, dtype=torch.bfloat16)
    s = (0.5 + torch.rand(C, generator=gen, device=device)).to(z.dtype)
    y = laaf_kernels.laaf_activation(z, s, activation="tanh", backend=backend)
    tail = slice(split // C - 3, None)
    torch.testing.assert_close(y[tail], reference.laaf_activation(z[tail], s, activation="tanh"),
                               rtol=2**-7, atol=2**-7)
    g = torch.randn(z.shape, generator=gen, device=device).to(z.dtype)
    gz = getattr(torch.ops.laaf, f"{backend}_grad_y")(g, y, s, "tanh", 1)  # g act'(h) s
    want = g[tail].float() * (1 - y[tail].float() ** 2) * s.float()
    torch.testing.assert_close(gz[tail].float(), want, rtol=2**-6, atol=2**-6)
    del z, g, y, gz
    x = torch.randn(numel // 64, 16, generator=gen, device=device, dtype=torch.bfloat16)
    w = torch.randn(64, 16, generator=gen, device=device, dtype=torch.bfloat16) / 4
    y = laaf_kernels.laaf_linear(x, w, None, None, activation="tanh", backend=backend)
    rows = slice(split // 64 - 3, None)
    want = reference.laaf_linear(x[rows], w, None, None, activation="tanh")
    torch.testing.assert_close(y[rows], want, rtol=2**-6, atol=2**-6)
