"""The fused derivatives of gz = g act'(h) s (laaf_kernels.ops.grad_y): each op of a
backend that has them, against autograd of the table's formula (independent of
the hand-derived vjp formulas), in float64 and float32; gradcheck and
gradgradcheck through them; thread-count determinism; bad and empty inputs; and
that a PINN step really runs on them."""
import pytest
import torch

import laaf_kernels
from fused_cases import TARGETS
from helpers import generator, make_slope
from laaf_kernels.activations import ACTIVATIONS, TABLE, evaluate
from laaf_kernels.ops.grad_y import grad_y_torch, vjp2_torch, vjp_torch

#: Every backend has the grad_y ops.
GRAD_Y_TARGETS = TARGETS
FROM_Y = [name for name in ACTIVATIONS if TABLE[name].d1_y is not None]

#: (shape, dim): a PINN-like narrow layer (flat walk), 17 row chunks with a prime
#: width, channels in the middle (per-row slopes), a wide layer (> 512 columns:
#: column sums per vector), and a single element.
LAYOUTS = {
    "narrow": ((37, 20), 1),
    "chunks": ((1031, 13), -1),
    "middle": ((5, 7, 3, 2), 1),
    "wide": ((3, 601), 1),
    "long_rows": ((2, 776), 1),  # no per-channel s: re-viewed as (97, 16) (csrc act_layout)
    "one": ((1, 1), 0),
    "tiny": ((3, 4, 2), 1),  # for gradcheck (an interpreted launch per perturbation)
}

#: Rows longer than 8192 elements, cut into segments by the C++ passes (csrc
#: for_row_segments): per-row slopes, then a (C,) slope on rows wider than a flat walk.
#: C++ only (the Triton interpreter is slow at 16 400 elements and has no such cut).
SEGMENTED_LAYOUTS = {"segmented_rows": ((1, 2, 8200), 1), "segmented_wide": ((3, 8200), 1)}
CPP_TARGETS = [t for t in GRAD_Y_TARGETS if t.values[0] == ("cpp", "cpu")]


def _ops(backend):
    ops = torch.ops.laaf
    return (getattr(ops, f"{backend}_grad_y"), getattr(ops, f"{backend}_grad_y_vjp"),
            getattr(ops, f"{backend}_grad_y_vjp2"))


def _inputs(layout, kind, activation, seed, dtype=torch.float64, device="cpu"):
    """y = act(h) for random h (so that relu's y has its zeros), g, u, cotangents
    ug, uy, us, and s; all random, never zero (but y where the activation is)."""
    shape, dim = {**LAYOUTS, **SEGMENTED_LAYOUTS}[layout]
    gen = generator(seed)
    draw = lambda *sh: torch.randn(sh, generator=gen, dtype=torch.float64)  # noqa: E731
    y = TABLE[activation].torch_fn(2 * draw(*shape))
    g, u, ug, uy = (draw(*shape) for _ in range(4))
    s = make_slope(kind, shape[dim], 1.0, gen)
    us = None if s is None else draw(*s.shape)
    cast = lambda t: None if t is None else t.to(dtype).to(device)  # noqa: E731
    return [cast(t) for t in (y, g, u, ug, uy, us, s)], dim


def _truth(y, g, u, ug, uy, us, s, activation, dim):
    """gz and its first two vector-Jacobian products by torch autograd of
    g * d1_y(y) * s, in float64: gz, [dg, dy, ds], [du, dg', dy', ds'] (ds and
    ds' None without a slope)."""
    g64, y64, u64 = (t.detach().double().requires_grad_() for t in (g, y, u))
    s64 = None if s is None else s.detach().double().requires_grad_()
    wrt = [g64, y64] + ([s64] if s64 is not None else [])
    gz = grad_y_torch(g64, y64, s64, activation, dim % y.dim())
    first = torch.autograd.grad(gz, wrt, u64, create_graph=True, allow_unused=True)
    first = [torch.zeros_like(w) if f is None else f for f, w in zip(first, wrt)]
    cotangents = [ug.double(), uy.double()] + ([us.double()] if s64 is not None else [])
    linked = [(f, c) for f, c in zip(first, cotangents) if f.requires_grad]  # (relu's dy is 0)
    second = torch.autograd.grad([f for f, _ in linked], [u64] + wrt, [c for _, c in linked],
                                 allow_unused=True)
    second = [torch.zeros_like(w) if d is None else d for d, w in zip(second, [u64] + wrt)]
    missing = [None] * (s is None)
    return gz.detach(), [f.detach() for f in first] + missing, second + missing


def _check(name, got, want, dtype):
    if want is None:
        assert got.numel() == 0, f"{name}: asked for nothing, got {tuple(got.shape)}"
        return
    # float64: ~1e-15 relative noise. float32: inputs and each product rounded
    # once (<= 6 roundings per term, 3 terms), a long ds sum (up to 1031 * 13
    # terms, summed in float per chunk, double across): 1e-5 relative of the
    # largest magnitude covers it with a 10x margin; a wrong formula is O(1).
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
    torch.testing.assert_close(got.double(), want.reshape(got.shape), rtol=tol["rtol"],
                               atol=tol["atol"] * scale, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("target", GRAD_Y_TARGETS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("kind", ["none", "scalar", "vector"])
@pytest.mark.parametrize("activation", FROM_Y)
def test_ops_match_autograd_of_the_formula(target, dtype, layout, kind, activation):
    backend, device = target
    (y, g, u, ug, uy, us, s), dim = _inputs(layout, kind, activation, seed=7, dtype=dtype,
                                            device=device)
    gz_want, first_want, second_want = _truth(y, g, u, ug, uy, us, s, activation, dim)
    grad_y, vjp, vjp2 = _ops(backend)
    _check("gz", grad_y(g, y, s, activation, dim), gz_want, dtype)
    for name, got, want in zip(("dg", "dy", "ds"), vjp(u, g, y, s, activation, dim, True,
                                                       True, True), first_want):
        _check(name, got, want, dtype)
    got2 = vjp2(ug, uy, us, u, g, y, s, activation, dim, True, True, True, True)
    for name, got, want in zip(("du", "dg'", "dy'", "ds'"), got2, second_want):
        _check(name, got, want, dtype)


@pytest.mark.parametrize("target", GRAD_Y_TARGETS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_half_precision_inputs_with_a_float32_slope(target, dtype):
    """As under autocast: y, g, u and the cotangents in 16 bits, s (and us) in fp32.
    The ops compute in fp32 and round each output once; the truth is float64 of the
    same (rounded) inputs. Tolerance: 2 units in the last place of the 16-bit format
    at the output's magnitude (8 bits of mantissa for bf16, 11 for fp16)."""
    backend, device = target
    (y, g, u, ug, uy, us, s), dim = _inputs("narrow", "vector", "tanh", seed=15, device=device)
    low = [t.to(dtype) for t in (y, g, u, ug, uy)]
    s32, us32 = s.float(), us.float()
    gz_want, first_want, second_want = _truth(*low, us32, s32, "tanh", dim)
    grad_y, vjp, vjp2 = _ops(backend)
    got = [grad_y(low[1], low[0], s32, "tanh", dim),
           *vjp(low[2], low[1], low[0], s32, "tanh", dim, True, True, True),
           *vjp2(low[3], low[4], us32, low[2], low[1], low[0], s32, "tanh", dim,
                 True, True, True, True)]
    want = [gz_want, *first_want, *second_want]
    eps = torch.finfo(dtype).eps
    for name, a, b in zip(["gz", "dg", "dy", "ds", "du", "dg'", "dy'", "ds'"], got, want):
        tol = 2 * eps * max(1.0, b.abs().max().item())
        if name.startswith("ds"):  # fp32 sums of 37 terms, rounded once to s's fp32
            assert a.dtype == torch.float32, name
            tol = 1e-5 * max(1.0, b.abs().max().item())
        else:
            assert a.dtype == dtype, name
        torch.testing.assert_close(a.double(), b, rtol=0, atol=tol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("kind", ["none", "scalar", "vector"])
@pytest.mark.parametrize("activation", FROM_Y)
def test_torch_formulas_match_autograd(kind, activation):
    """vjp_torch / vjp2_torch (the fourth-order fallback) against autograd too."""
    (y, g, u, ug, uy, us, s), dim = _inputs("middle", kind, activation, seed=8)
    _, first_want, second_want = _truth(y, g, u, ug, uy, us, s, activation, dim)
    for name, got, want in zip("gys", vjp_torch(u, g, y, s, activation, dim), first_want):
        assert (got is None) == (want is None), name
        if got is not None:
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for name, got, want in zip("ugys", vjp2_torch(ug, uy, us, u, g, y, s, activation, dim),
                               second_want):
        assert (got is None) == (want is None), name
        if got is not None:
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("target", GRAD_Y_TARGETS)
def test_only_the_asked_outputs_and_absent_cotangents(target):
    """need_* = False gives an empty tensor; an absent ug / uy / us counts as zero."""
    backend, device = target
    (y, g, u, ug, uy, us, s), dim = _inputs("narrow", "vector", "tanh", seed=9, device=device)
    _, vjp, vjp2 = _ops(backend)
    dg, dy, ds = vjp(u, g, y, s, "tanh", dim, False, True, False)
    assert dg.numel() == 0 and ds.numel() == 0 and dy.shape == y.shape
    full = vjp2(ug, None, None, u, g, y, s, "tanh", dim, True, True, True, True)
    zero = torch.zeros_like(y)
    explicit = vjp2(ug, zero, torch.zeros_like(s), u, g, y, s, "tanh", dim, True, True, True, True)
    for got, want in zip(full, explicit):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    du, *rest = vjp2(ug, uy, us, u, g, y, s, "tanh", dim, True, False, False, False)
    assert du.shape == y.shape and all(t.numel() == 0 for t in rest)


@pytest.mark.parametrize("target", GRAD_Y_TARGETS)
def test_non_contiguous_inputs(target):
    """Transposed and expanded views (autograd hands the grad of u.sum() over as an
    expanded tensor) give the bits of their contiguous copies."""
    backend, device = target
    (y, g, u, ug, uy, us, s), dim = _inputs("narrow", "vector", "tanh", seed=16, device=device)
    grad_y, vjp, vjp2 = _ops(backend)
    g_t = g.t().contiguous().t()  # same values, column-major
    ones = torch.ones((), dtype=y.dtype, device=device).expand(y.shape)
    for strided in (g_t, ones):
        dense = strided.contiguous()
        assert not strided.is_contiguous()
        assert torch.equal(grad_y(strided, y, s, "tanh", dim), grad_y(dense, y, s, "tanh", dim))
        for a, b in zip(vjp(strided, strided, y, s, "tanh", dim, True, True, True),
                        vjp(dense, dense, y, s, "tanh", dim, True, True, True)):
            assert torch.equal(a, b)
        for a, b in zip(vjp2(strided, strided, us, u, strided, y, s, "tanh", dim, True, True, True,
                             True),
                        vjp2(dense, dense, us, u, dense, y, s, "tanh", dim, True, True, True, True)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("target", GRAD_Y_TARGETS)
@pytest.mark.parametrize("kind", ["none", "scalar", "vector"])
def test_gradcheck_and_gradgradcheck_through_the_ops(target, kind):
    """float64 gradcheck / gradgradcheck of gz = grad_y(g, y, s) with the ops'
    autograd (vjp, then vjp2 and, differentiated again, the torch formulas),
    and of the vjp op itself (third and fourth order)."""
    from laaf_kernels.ops.grad_y import make_grad_y
    from laaf_kernels.ops.autograd import call_op

    backend, device = target
    (y, g, u, *_, s), dim = _inputs("tiny", kind, "tanh", seed=10, device=device)
    grad_y = make_grad_y(backend)
    leaves = [t.detach().requires_grad_() for t in (g, y)]
    s_leaf = None if s is None else s.detach().requires_grad_()
    inputs = tuple(leaves) + ((s_leaf,) if s_leaf is not None else ())

    def gz(g_, y_, *s_):
        return grad_y(g_, y_, s_[0] if s_ else None, "tanh", dim)

    assert torch.autograd.gradcheck(gz, inputs)
    assert torch.autograd.gradgradcheck(gz, inputs)
    u_leaf = u.detach().requires_grad_()

    def first(u_, g_, y_, *s_):
        out = call_op(f"laaf::{backend}_grad_y_vjp", u_, g_, y_, s_[0] if s_ else None,
                      "tanh", dim, True, True, s_leaf is not None)
        return tuple(t for t in out if t.numel())

    assert torch.autograd.gradcheck(first, (u_leaf, *inputs))
    assert torch.autograd.gradgradcheck(first, (u_leaf, *inputs))


@pytest.mark.parametrize("target", GRAD_Y_TARGETS)
def test_same_bits_with_one_or_two_threads(target):
    backend, device = target
    (y, g, u, ug, uy, us, s), dim = _inputs("chunks", "vector", "sigmoid", seed=11,
                                            dtype=torch.float32, device=device)
    _, vjp, vjp2 = _ops(backend)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append((*vjp(u, g, y, s, "sigmoid", dim, True, True, True),
                            *vjp2(ug, uy, us, u, g, y, s, "sigmoid", dim, True, True, True, True)))
    finally:
        torch.set_num_threads(before)
    for one, two in zip(*results):
        assert torch.equal(one, two)


@pytest.mark.parametrize("target", GRAD_Y_TARGETS)
@pytest.mark.parametrize("kind", ["scalar", "vector"])
def test_empty_rows(target, kind):
    backend, device = target
    y = torch.empty(0, 5, device=device)
    s = make_slope(kind, 5, 1.0, generator(12), dtype=torch.float32)
    grad_y, vjp, vjp2 = _ops(backend)
    assert grad_y(y, y, s, "tanh", 1).shape == (0, 5)
    dg, dy, ds = vjp(y, y, y, s, "tanh", 1, True, True, True)
    assert dg.shape == dy.shape == (0, 5) and torch.equal(ds, torch.zeros_like(s))
    *_, ds2 = vjp2(y, y, s, y, y, y, s, "tanh", 1, True, True, True, True)
    assert torch.equal(ds2, torch.zeros_like(s))


@pytest.mark.parametrize("target", GRAD_Y_TARGETS)
def test_bad_input_is_a_clear_error(target):
    """(The C++ ops raise RuntimeError, the Triton ones ValueError: one message.)"""
    backend, device = target
    y = torch.rand(4, 3, device=device)
    grad_y, vjp, vjp2 = _ops(backend)
    error = (RuntimeError, ValueError)
    with pytest.raises(error, match="not a function of y"):
        grad_y(y, y, None, "gelu", 1)
    with pytest.raises(error, match="y's shape"):
        grad_y(torch.rand(4, 2, device=device), y, None, "tanh", 1)
    with pytest.raises(error, match="dtype"):
        vjp(y.double(), y, y, None, "tanh", 1, True, True, False)
    with pytest.raises(error, match="us must have the slope's shape"):
        vjp2(None, None, torch.rand(2, device=device), y, y, y, torch.rand(3, device=device),
             "tanh", 1, True, True, True, True)
    with pytest.raises(error, match="activation"):
        grad_y(y, y, None, "tanhh", 1)


@pytest.mark.parametrize("target", GRAD_Y_TARGETS)
def test_opcheck(target):
    backend, device = target
    (y, g, u, ug, uy, us, s), dim = _inputs("narrow", "vector", "tanh", seed=13,
                                            dtype=torch.float32, device=device)
    grad_y, vjp, vjp2 = _ops(backend)
    leaf = lambda t: t.detach().requires_grad_()  # noqa: E731
    torch.library.opcheck(grad_y, (leaf(g), leaf(y), leaf(s), "tanh", dim))
    torch.library.opcheck(vjp, (leaf(u), leaf(g), leaf(y), leaf(s), "tanh", dim, True, True, True))
    # vjp2 runs only where no graph is recorded: checked without requires_grad.
    torch.library.opcheck(vjp2, (ug, uy, us, u, g, y, s, "tanh", dim, True, True, True, True))


@pytest.mark.parametrize("target", GRAD_Y_TARGETS)
def test_a_pinn_step_runs_on_the_fused_ops(target):
    """u_x, u_xx and the loss's backward through a tanh LAAF MLP: the create_graph
    passes use grad_y / vjp / vjp2; with the saved y (cpp), no ATen tanh_backward
    chain at all (Triton recomputes y = tanh(s z) with torch, whose backward is one)."""
    backend, device = target
    torch.manual_seed(0)
    net = laaf_kernels.LAAFMLP([2, 8, 8, 1], "tanh", "neuron", 10.0).to(device)
    xt = torch.rand(33, 2, device=device, requires_grad=True)
    with laaf_kernels.use_backend(backend), torch.profiler.profile() as prof:
        u = net(xt)
        du = torch.autograd.grad(u.sum(), xt, create_graph=True)[0]
        u_xx = torch.autograd.grad(du[:, 0].sum(), xt, create_graph=True)[0][:, 0]
        (u_xx.square().mean() + du[:, 1].square().mean()).backward()
    names = {event.key for event in prof.key_averages()}
    for op in ("grad_y", "grad_y_vjp", "grad_y_vjp2"):
        assert f"laaf::{backend}_{op}" in names, op
    if backend == "cpp":
        assert "aten::tanh_backward" not in names


@pytest.mark.parametrize("target", GRAD_Y_TARGETS)
@pytest.mark.parametrize("kind", ["none", "vector"])
def test_fourth_derivative_of_tanh_layer(target, kind):
    """d4y/dx4 through laaf_linear: the fourth order leaves the fused ops for
    the torch formulas, and must still match the reference."""
    backend, device = target
    gen = generator(14)
    x = torch.randn(11, 2, dtype=torch.float64, generator=gen).to(device).requires_grad_()
    w = torch.randn(3, 2, dtype=torch.float64, generator=gen).to(device)
    b = torch.randn(3, dtype=torch.float64, generator=gen).to(device)
    a = None if kind == "none" else (0.1 + 0.1 * torch.rand(3, dtype=torch.float64,
                                                             generator=gen)).to(device)

    def fourth(name):
        d = laaf_kernels.laaf_linear(x, w, b, a, scale=5.0, backend=name).sum()
        for _ in range(3):
            d = torch.autograd.grad(d, x, create_graph=True)[0][:, 0].sum()
        return torch.autograd.grad(d, x)[0]

    torch.testing.assert_close(fourth(backend), fourth("reference"), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("rows, cols", [(10_000, 20), (1 << 20, 50), (3, 601), (1, 1), (7, 3)])
def test_compiled_tile_heuristic(rows, cols, monkeypatch):
    """The Triton grad_y kernels' tile on a GPU (the interpreter uses a fixed 16 x 16):
    powers of two, at least MIN_BLOCK each way (the partial-sum buffers hold one row
    per MIN_BLOCK rows or columns), the row covered up to 128 columns, 2048 elements."""
    pytest.importorskip("triton")
    from laaf_kernels.kernels import triton_grad_y

    monkeypatch.setattr(triton_grad_y, "interpreting", lambda: False)
    meta = triton_grad_y.blocks(rows, cols)
    for block in (meta["BLOCK_R"], meta["BLOCK_C"]):
        assert block >= triton_grad_y.MIN_BLOCK and block & (block - 1) == 0
    assert meta["BLOCK_C"] >= min(cols, 128)
    assert meta["BLOCK_R"] * meta["BLOCK_C"] == 2048 or meta["BLOCK_R"] == triton_grad_y.MIN_BLOCK


@pytest.mark.parametrize("target", CPP_TARGETS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("layout", list(SEGMENTED_LAYOUTS))
def test_cpp_segmented_rows(target, dtype, layout):
    backend, device = target
    (y, g, u, ug, uy, us, s), dim = _inputs(layout, "vector", "tanh", seed=8, dtype=dtype,
                                            device=device)
    gz_want, first_want, second_want = _truth(y, g, u, ug, uy, us, s, "tanh", dim)
    grad_y, vjp, vjp2 = _ops(backend)
    _check("gz", grad_y(g, y, s, "tanh", dim), gz_want, dtype)
    for name, got, want in zip(("dg", "dy", "ds"), vjp(u, g, y, s, "tanh", dim, True, True, True),
                               first_want):
        _check(name, got, want, dtype)
    got2 = vjp2(ug, uy, us, u, g, y, s, "tanh", dim, True, True, True, True)
    for name, got, want in zip(("du", "dg'", "dy'", "ds'"), got2, second_want):
        _check(name, got, want, dtype)
