"""The fused LAAF linear kernels (every fused backend) against the reference: every activation and
slope kind, odd/prime shapes, 3-D and non-contiguous x, N = 1, K = 1, the
narrow and wide backward paths of the Triton kernels, fp64,
fp32 and bf16, partial needs_input_grad, empty batches, determinism.

Tolerances: see ``helpers.assert_close_to_truth`` (error against a float64
truth, bounded by eager PyTorch's own error in the same dtype plus summation
noise that grows with the reduction length: K for y, N for dx, M for dW and
db, M*N for a 0-d slope's da, the longest sum)."""
import importlib
import os
import re
import subprocess
import sys

import pytest
import torch

import laaf_kernels
from helpers import LINEAR_SHAPES, SLOPE_KINDS, assert_z_is_the_affine_map, linear_inputs
from laaf_kernels import FLEXIBLE_KINDS
from laaf_kernels.activations import ACTIVATIONS
from torch.utils._python_dispatch import TorchDispatchMode
from fused_cases import TARGETS, TRITON_TARGETS, compare_linear
from laaf_kernels.kernels import triton_launchers as launch

SCALE = 3.0

#: Beyond helpers.LINEAR_SHAPES: rows not a multiple of any block, and the wide
#: backward path of the Triton kernels (N or K above NARROW_MAX = 128, or in fp64 a W
#: tile above NARROW_MAX_W_BYTES).
TRITON_SHAPES = {
    **LINEAR_SHAPES,
    "m37_k13_n11": ((37,), 13, 11, False),
    "3d_noncontig": ((3, 5), 7, 6, True),
    "wide_n": ((9,), 6, 131, False),
    "wide_k": ((10,), 133, 5, False),
    # several 64-row tiles of the narrow CUDA kernel, 1 and 4 column groups of 32
    "tiles_k50_n29": ((203,), 50, 29, False),
    "tiles_k37_n100": ((131,), 37, 100, True),
    # more 64-row tiles than the narrow CUDA kernel's blocks (at most 8 per SM; the CUDA
    # emulation has 3 SMs): blocks walk several tiles, reusing their shared x tile
    "wrapping_tiles_k50_n29": ((1601,), 50, 29, False),
    # fp64: a 128 x 128 W tile of 128 KiB, too big for the narrow kernel's shared memory
    "fp64_wide_k100_n70": ((23,), 100, 70, False),
}


def _inputs(case, kind, seed, dtype, device):
    shape = TRITON_SHAPES[case] if isinstance(case, str) else case
    x, w, b, a = linear_inputs(shape, kind, seed, SCALE, dtype, device)
    assert x.is_contiguous() != shape[3]
    return x, w, b, a


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind", SLOPE_KINDS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation_and_slope_kind_fp64(target, activation, kind):
    backend, device = target
    x, w, b, a = _inputs("m37_k13_n11", kind, seed=11, dtype=torch.float64, device=device)
    compare_linear(backend, x, w, b, a, activation, SCALE)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind", SLOPE_KINDS)
@pytest.mark.parametrize("case", TRITON_SHAPES)
def test_shapes_fp64(target, case, kind):
    backend, device = target
    x, w, b, a = _inputs(case, kind, seed=12, dtype=torch.float64, device=device)
    compare_linear(backend, x, w, b, a, "tanh", SCALE)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", SLOPE_KINDS)
@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu", "gelu", "sin"])
def test_low_precision(target, dtype, activation, kind):
    backend, device = target
    for case in ("m37_k13_n11", "wide_n"):
        x, w, b, a = _inputs(case, kind, seed=13, dtype=dtype, device=device)
        compare_linear(backend, x, w, b, a, activation, SCALE, f", {dtype}, {case}")


@pytest.mark.parametrize("target", TARGETS)
def test_without_bias_and_1d_x(target):
    backend, device = target
    x, w, _, a = _inputs("m37_k13_n11", "vector", seed=14, dtype=torch.float64, device=device)
    compare_linear(backend, x, w, None, a, "silu", SCALE)
    compare_linear(backend, x[0].detach().requires_grad_(), w, None, a, "silu", SCALE)


@pytest.mark.parametrize("target", TARGETS)
def test_a_2d_x_adds_no_view_node_to_the_graph(target):
    """A 2-D x reaches the fused op as it is: y's grad_fn is the op's own node. A
    reshape before and after would add two view nodes, a few microseconds each way,
    which a PINN's small layers feel (make_linear). Other ranks still go through
    reshapes, and give the reference's values."""
    backend, device = target
    x, w, b, a = _inputs("m37_k13_n11", "vector", seed=18, dtype=torch.float64, device=device)
    y = laaf_kernels.laaf_linear(x, w, b, a, scale=SCALE, backend=backend)
    node = type(y.grad_fn).__name__
    assert "View" not in node and "Reshape" not in node, node
    x3 = x.detach().reshape(1, *x.shape).requires_grad_()
    compare_linear(backend, x3, w, b, a, "tanh", SCALE)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", ["m37_k13_n11", "wide_n"])
@pytest.mark.parametrize("grads", ["x", "w", "b", "a", "w,a", "none"])
def test_only_needed_gradients_are_computed(target, case, grads):
    backend, device = target
    x, w, b, a = _inputs(case, "vector", seed=15, dtype=torch.float64, device=device)
    for name, t in zip("xwba", (x, w, b, a)):
        t.requires_grad_(name in grads.split(","))
    with BackwardCalls() as calls:
        y = laaf_kernels.laaf_linear(x, w, b, a, scale=SCALE, backend=backend)
        if y.requires_grad:
            y.sum().backward()
    expected = tuple(name in grads.split(",") for name in "xwba")
    assert calls.asked == ([] if grads == "none" else [expected])
    compare_linear(backend, x, w, b, a, "tanh", SCALE)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("wrt", ["x", "w", "a"])
def test_autograd_grad_computes_only_what_it_asks_for(target, wrt, monkeypatch):
    """Every input requires grad, but autograd.grad(y, <one of them>) runs only
    what leads there: the leaves W, b, a (AccumulateGrad nodes) are skipped too,
    in the fused backward and in the differentiable one (create_graph=True, a
    PINN's u_x pass)."""
    backend, device = target
    x, w, b, a = _inputs("m37_k13_n11", "vector", seed=16, dtype=torch.float64, device=device)
    target_tensor = {"x": x, "w": w, "a": a}[wrt]
    expected = tuple(name == wrt for name in "xwba")
    with BackwardCalls() as calls:
        y = laaf_kernels.laaf_linear(x, w, b, a, scale=SCALE, backend=backend)
        torch.autograd.grad(y.sum(), target_tensor)
    assert calls.asked == [expected]

    from laaf_kernels.ops import autograd as fused_autograd
    asked = []
    real = fused_autograd.differentiable_linear_grads

    def spy(g, x, weight, bias, s, activation, need, *rest):
        asked.append(tuple(need))
        return real(g, x, weight, bias, s, activation, need, *rest)

    monkeypatch.setattr(fused_autograd, "differentiable_linear_grads", spy)
    y = laaf_kernels.laaf_linear(x, w, b, a, scale=SCALE, backend=backend)
    (g,) = torch.autograd.grad(y.sum(), target_tensor, create_graph=True)
    assert g.requires_grad
    # a's gradient reaches a through s = n a: the op is asked for ds
    assert asked == [expected]


class BackwardCalls(TorchDispatchMode):
    """Records the need_* flags of every laaf::*_linear_bwd call (any backend)."""

    def __init__(self):
        super().__init__()
        self.asked = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0].endswith("_linear_bwd"):
            self.asked.append(tuple(args[-4:]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind", SLOPE_KINDS)
def test_empty_batch(target, kind):
    backend, device = target
    x, w, b, a = _inputs("m37_k13_n11", kind, seed=16, dtype=torch.float32, device=device)
    x0 = x[:0].detach().requires_grad_()
    y = laaf_kernels.laaf_linear(x0, w, b, a, scale=SCALE, backend=backend)
    assert y.shape == (0, w.shape[0])
    params = [t for t in (x0, w, b, a) if t is not None]
    for p, g in zip(params, torch.autograd.grad(y.sum(), params, materialize_grads=True)):
        assert g.shape == p.shape and torch.count_nonzero(g) == 0


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind", SLOPE_KINDS)
def test_zero_output_features(target, kind):
    """N = 0 (an empty layer): y is (M, 0) and every gradient is zero, no crash
    (the C++ flat walk takes columns modulo N)."""
    backend, device = target
    x, w, b, a = _inputs(((9,), 5, 0, False), kind, seed=19, dtype=torch.float32, device=device)
    y = laaf_kernels.laaf_linear(x, w, b, a, scale=SCALE, backend=backend)
    assert y.shape == (9, 0)
    params = [t for t in (x, w, b, a) if t is not None]
    for p, g in zip(params, torch.autograd.grad(y.sum(), params, materialize_grads=True)):
        assert g.shape == p.shape and torch.count_nonzero(g) == 0


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", ["m37_k13_n11", "wide_n"])
@pytest.mark.parametrize("kind", ["scalar", "vector"])
def test_backward_is_deterministic(target, case, kind):
    backend, device = target
    x, w, b, a = _inputs(case, kind, seed=17, dtype=torch.float32, device=device)
    g = torch.randn(*x.shape[:-1], w.shape[0], device=device)

    def grads():
        y = laaf_kernels.laaf_linear(x, w, b, a, scale=SCALE, backend=backend)
        return torch.autograd.grad(y, (x, w, b, a), g)

    first, second = grads(), grads()
    for p, q in zip(first, second):
        assert torch.equal(p, q), "two runs on the same inputs must give identical bits"


@pytest.mark.parametrize("target", TRITON_TARGETS)
def test_a_narrow_backward_that_fits_no_config_takes_the_wide_path(target, monkeypatch):
    """On a GPU with little shared memory the fused narrow backward of the widest narrow
    layers fits no config (a T4, 64 KiB: fp32 128 x 128 needs 88 KiB; Triton raises
    OutOfResources, the dry run on sm_75 shows it). The backward then recomputes z
    (the forward kept none) and takes the wide path; later backwards of that layer
    go there at once."""
    from triton.runtime.errors import OutOfResources

    tries = []

    def fits_no_config(*args):
        tries.append(args)
        raise OutOfResources(90112, 65536, "shared memory")

    monkeypatch.setattr(launch, "_NARROW_MISFITS", set())
    monkeypatch.setattr(launch, "_linear_backward_narrow", fits_no_config)
    backend, device = target
    for seed in (18, 19):
        x, w, b, a = _inputs("m37_k13_n11", "vector", seed=seed, dtype=torch.float64,
                             device=device)
        compare_linear(backend, x, w, b, a, "tanh", SCALE)
    assert len(tries) == 1
    assert launch.narrow_misfits() == {(x.device, 11, 13, torch.float64)}


@pytest.mark.parametrize("target", [t for t in TARGETS if t.values[0] == ("cpp", "cpu")])
def test_reductions_give_the_same_bits_with_one_or_two_threads(target):
    """The C++ kernels' own work (the activation epilogue, gz, and the db / da
    reductions over fixed row chunks) gives the same bits whatever the thread
    count. The GEMMs (z, dx, dW) are ATen's: MKL / oneDNN may change the last
    bit with the thread count for some shapes (seen: 9 x 6 x 131), so they are
    held fixed here by feeding the ops the same z."""
    backend, _ = target
    gen = torch.Generator().manual_seed(21)
    x, g = torch.randn(1000, 7, generator=gen), torch.randn(1000, 131, generator=gen)
    w, z = torch.randn(131, 7, generator=gen), torch.randn(1000, 131, generator=gen)
    s = torch.rand(131, generator=gen)
    zc, gc, sc = torch.randn(6, 5, 40, generator=gen), torch.randn(6, 5, 40, generator=gen), s[:5]
    params = torch.rand(2, 131, generator=gen)
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            assert torch.ops.laaf.cpp_parallel_threads() == threads
            _, _, db, ds = torch.ops.laaf.cpp_linear_bwd(g, x, w, None, z, s, None, "gelu",
                                                         False, False, True, True)
            yc = torch.ops.laaf.cpp_act_fwd(zc, sc, "tanh", 1)
            flex = torch.ops.laaf.cpp_flex_bwd(g, z, params, "relu_tanh", 1, True, True)
            results.append([db, ds, yc, *flex,
                            *torch.ops.laaf.cpp_act_bwd(gc, zc, sc, yc, "tanh", 1, True, True)])
        finally:
            torch.set_num_threads(2)
    assert all(torch.equal(p, q) for p, q in zip(*results))


@pytest.mark.parametrize("target", [t for t in TARGETS if t.values[0] == ("cpp", "cpu")])
@pytest.mark.parametrize("kind", SLOPE_KINDS)
@pytest.mark.parametrize("n_out", [5, 20, 521])
def test_cpp_flat_and_row_walks(target, kind, n_out):
    """The C++ epilogues walk narrow grids flat (the lanes' columns repeat every
    lcm(N, 8) / 8 vectors) and wide ones (N > 512) row by row; both over several
    64-row chunks, the last one partial."""
    backend, device = target
    x, w, b, a = _inputs(((139,), 6, n_out, False), kind, seed=17, dtype=torch.float64,
                         device=device)
    compare_linear(backend, x, w, b, a, "tanh", SCALE)
    x, w, b, a = _inputs(((139,), 6, n_out, False), kind, seed=18, dtype=torch.float32,
                         device=device)
    compare_linear(backend, x, w, b, a, "sigmoid", SCALE, ", float32")


@pytest.mark.parametrize("target", [t for t in TARGETS if t.values[0] == ("cpp", "cpu")])
def test_the_cpp_kernels_really_run_on_every_thread(target):
    """ATen's parallel_for is a header template: the extension must itself be
    compiled with OpenMP (extension._openmp_flags), or every loop of ours runs on
    one thread while torch's own ops use all of them. The probe op counts the
    threads a parallel_for of the extension actually ran on."""
    assert torch.ops.laaf.cpp_parallel_threads() == torch.get_num_threads()


@pytest.mark.parametrize("target", [t for t in TARGETS if t.values[0] == ("cpp", "cpu")])
def test_raw_cpp_ops_take_a_negative_dim(target):
    gen = torch.Generator().manual_seed(23)
    z, s = torch.randn(9, 5, generator=gen), torch.rand(5, generator=gen)
    torch.testing.assert_close(torch.ops.laaf.cpp_act_fwd(z, s, "tanh", -1),
                               torch.ops.laaf.cpp_act_fwd(z, s, "tanh", 1), rtol=0, atol=0)
    torch.testing.assert_close(torch.ops.laaf.cpp_act_fwd(z, s, "tanh", -1), torch.tanh(s * z))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, interpreter
@pytest.mark.parametrize("target", TARGETS)
def test_nan_and_inf_propagate_like_the_reference(target):
    backend, device = target
    x, w, b, a = _inputs("m37_k13_n11", "vector", seed=18, dtype=torch.float64, device=device)
    x = x.detach().clone()
    x[2, 0], x[5, 3] = float("nan"), float("inf")
    got = laaf_kernels.laaf_linear(x, w, b, a, scale=SCALE, backend=backend)
    want = laaf_kernels.laaf_linear(x, w, b, a, scale=SCALE, backend="reference")
    torch.testing.assert_close(got, want, equal_nan=True, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("target", TARGETS)
def test_bad_input_is_checked_before_the_kernels(target):
    backend, device = target
    x, w, b, a = _inputs("m37_k13_n11", "vector", seed=19, dtype=torch.float32, device=device)
    with pytest.raises(ValueError, match=r"bias must have shape \(11,\)"):
        laaf_kernels.laaf_linear(x, w, b[:3], a, backend=backend)
    with pytest.raises(ValueError, match="activation must be one of"):
        laaf_kernels.laaf_linear(x, w, b, a, activation="mish", backend=backend)


CPP_TARGETS = [t for t in TARGETS if t.values[0] == ("cpp", "cpu")]


@pytest.mark.parametrize("target", CPP_TARGETS)
@pytest.mark.parametrize("kind", SLOPE_KINDS)
@pytest.mark.parametrize("shape", [((1031,), 50, 50, True), ((263,), 1, 1, False),
                                   ((70,), 128, 128, False), ((67,), 3, 20, True)],
                         ids=["many_groups_noncontig", "k1_n1", "k128_n128", "pinn_input"])
def test_cpp_narrow_fused_gemms(target, kind, shape, monkeypatch):
    """Layers with K, N <= 128 run the C++ extension's own GEMMs fused
    with the epilogues (csrc/laaf_cpu_gemm.h): row tiles of 4, 2 and 1, column panels
    of 1 to 4 vectors, dW summed per group of 64-row chunks (1031 rows: 17 chunks,
    5 groups, the last chunk partial). Against the reference, and against the
    ATen-GEMM path of the same op (LAAF_CPU_NARROW=0), also with W transposed in
    memory."""
    backend, device = target
    x, w, b, a = _inputs(shape, kind, seed=31, dtype=torch.float64, device=device)
    compare_linear(backend, x, w, b, a, "tanh", SCALE)
    w_t = w.detach().t().contiguous().t().requires_grad_()  # same values, strides (1, N)
    compare_linear(backend, x, w_t, b, a, "gelu", SCALE)

    def run():
        y = laaf_kernels.laaf_linear(x, w_t, b, a, scale=SCALE, backend=backend)
        params = [t for t in (x, w_t, b, a) if t is not None]
        return (y, *torch.autograd.grad(y, params, torch.ones_like(y)))

    fused = run()
    monkeypatch.setenv("LAAF_CPU_NARROW", "0")
    for p, q in zip(fused, run()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


#: Widths that reach every column-panel layout of the narrow GEMM (csrc/laaf_cpu_gemm.h)
#: in AVX2's vectors (L = 8 fp32, 4 fp64; panels of at most 2 vectors, or 3 at the end)
#: and AVX-512's (L = 16 fp32, 8 fp64; panels of at most 4): under one vector (masked
#: lanes), whole vectors, C one panel, short of it (its last vector moved left onto
#: the one before), and several panels (the last one moved left onto its neighbour:
#: AVX-512 fp32 5 vectors = 3 + 2 at 65..80, 6 = 4 + 2, 7 = 4 + 3, 8 = 4 + 4 at 113..128).
#: Each is N for z and dW, and K for dx. (An AVX-512 machine also runs this test in
#: an AVX2 process: CAPABILITY_TESTS.)
PANEL_WIDTHS = [1, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 20, 23, 24, 25, 31, 33, 41, 48, 50, 63,
                64, 65, 79, 81, 96, 100, 113, 128]


@pytest.mark.parametrize("target", CPP_TARGETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_cpp_narrow_gemm_every_panel_layout(target, dtype):
    """z, dx and dW of the narrow path at every width of PANEL_WIDTHS, as N and as K
    (paired with another width), against the reference: a panel moved onto the
    wrong columns, or a masked lane stored, shows at once. 67 rows: a 64-row chunk
    and a partial one, row tiles of 4, 2 and 1."""
    backend, _ = target
    for i, n_out in enumerate(PANEL_WIDTHS):
        k_in = PANEL_WIDTHS[(i + 7) % len(PANEL_WIDTHS)]
        x, w, b, a = _inputs(((67,), k_in, n_out, False), "vector", seed=40 + i, dtype=dtype,
                             device="cpu")
        compare_linear(backend, x, w, b, a, "tanh", SCALE, f", K={k_in}, N={n_out}")


@pytest.mark.parametrize("target", CPP_TARGETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_cpp_narrow_forward_epilogue_is_the_flat_pass_bit_for_bit(target, dtype, activation):
    """Where the narrow forward keeps no z (inference; training where act' is a function
    of y) it applies y = act(s z) to each GEMM tile in registers (csrc/laaf_cpu_gemm.h:
    ActEpilogue), else it writes z and runs the activation as a flat pass over it. The
    two must agree bit for bit: y from the inference forward against the standalone
    activation op on the z that the forward keeps in training for "sin", at every panel
    width and slope kind (none, a scalar, per column). The epilogue runs where the
    tiles' columns are whole vectors (N a multiple of the vector, or a few columns
    past one that the dot tail takes, x contiguous); the other widths (masked lanes,
    moved vectors; x transposed: no tail) check that the rule sends them to the flat
    pass, and fp32 layers above 120^2 that the ATen path agrees too."""
    ops = torch.ops.laaf
    gen = torch.Generator().manual_seed(71)
    for i, n_out in enumerate(PANEL_WIDTHS):
        k_in = PANEL_WIDTHS[(i + 11) % len(PANEL_WIDTHS)]
        x = torch.randn(67, k_in, generator=gen, dtype=dtype)
        if i % 3 == 0:
            x = torch.randn(k_in, 67, generator=gen, dtype=dtype).t()
        w = torch.randn(n_out, k_in, generator=gen, dtype=dtype) / k_in ** 0.5
        b = torch.randn(n_out, generator=gen, dtype=dtype)
        s_vec = 1 + torch.rand(n_out, generator=gen, dtype=dtype)
        for s in (None, s_vec[0].clone(), s_vec):
            z = ops.cpp_linear_fwd(x, w, b, s, "sin", True)[1]
            assert z.shape == (67, n_out)
            y = ops.cpp_linear_fwd(x, w, b, s, activation, False)[0]
            want = ops.cpp_act_fwd(z, s, activation, 1)
            assert torch.equal(y, want), (
                f"{activation}, K={k_in}, N={n_out}, slope {None if s is None else s.dim()}: "
                f"{(y - want).abs().max().item():.3g} off")


@pytest.mark.parametrize("target", CPP_TARGETS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_cpp_16bit_narrow_path_is_the_fp32_path_rounded_once(target, dtype, monkeypatch):
    """A bfloat16 / float16 narrow layer runs the fp32 path's own GEMMs and epilogues
    on its values widened to float, and rounds y, z, dx, dW, db and ds once, at the end
    (csrc/laaf_cpu.cpp: ChunkStage). So each output is bit for bit the fp32 op's on the
    widened inputs (widening is exact), rounded to the 16-bit type: at every panel
    width as N and as K, for tanh (no z kept: act' from y, ds from the dW GEMM) and sin
    (z kept), every slope kind, 67 rows (a chunk and a partial one). The fp32 forward
    above K N = 120^2 is ATen's sgemm, so there only the backward is compared. x is
    widened into a contiguous chunk whatever its strides (widen_rows), so a transposed
    x and one with padded rows give the contiguous x's outputs, bit for bit. (On
    AVX512-BF16 a bf16 layer's GEMMs run on pairs instead: the forward in another sum
    order, the backward on gz rounded to bf16; tests/test_cpu_bf16_gemm.py tests them.
    Here LAAF_CPU_BF16_DOT=0 keeps the widened path.)"""
    from laaf_kernels.ops import cpp_backend
    monkeypatch.setenv("LAAF_CPU_BF16_DOT", "0")
    ops = torch.ops.laaf
    gen = torch.Generator().manual_seed(83)
    for i, n_out in enumerate(PANEL_WIDTHS):
        k_in = PANEL_WIDTHS[(i + 5) % len(PANEL_WIDTHS)]
        x, g = (torch.randn(67, width, generator=gen).to(dtype) for width in (k_in, n_out))
        w = (torch.randn(n_out, k_in, generator=gen) / k_in ** 0.5).to(dtype)
        b = torch.randn(n_out, generator=gen).to(dtype)
        s_vec = (1 + torch.rand(n_out, generator=gen)).to(dtype)
        for s, activation in ((None, "tanh"), (s_vec[0].clone(), "sin"), (s_vec, "tanh"),
                              (s_vec, "sin")):
            where = f"{activation}, K={k_in}, N={n_out}, slope {None if s is None else s.dim()}"
            wide = [None if t is None else t.float() for t in (x, w, b, s)]
            keep = cpp_backend.stores_z(n_out, k_in, True, dtype, activation)
            assert keep == (activation == "sin"), where
            y, z = ops.cpp_linear_fwd(x, w, b, s, activation, keep)
            if k_in * n_out <= 120 * 120:
                y32, z32 = ops.cpp_linear_fwd(*wide, activation, keep)
                assert torch.equal(y, y32.to(dtype)), f"y, {where}"
                assert torch.equal(z, z32.to(dtype)), f"z, {where}"
            for need in ((True,) * 4, (False, True, False, True), (True, False, True, False)):
                grads = ops.cpp_linear_bwd(g, x, w, b, z, s, y, activation, *need)
                grads32 = ops.cpp_linear_bwd(g.float(), *wide[:3], z.float(), wide[3], y.float(),
                                             activation, *need)
                for name, got, want in zip(("dx", "dW", "db", "ds"), grads, grads32):
                    assert got.dtype == dtype, f"{name}, {where}"
                    assert torch.equal(got, want.to(dtype)), f"{name}, {where}, need {need}"
            padded_rows = torch.zeros(67, k_in + 3, dtype=dtype)[:, 1:k_in + 1].copy_(x)
            for strided in (x.t().contiguous().t(), padded_rows):
                out = ops.cpp_linear_fwd(strided, w, b, s, activation, keep)
                out += ops.cpp_linear_bwd(g, strided, w, b, out[1], s, out[0], activation,
                                          *(True,) * 4)
                want = (y, z, *ops.cpp_linear_bwd(g, x, w, b, z, s, y, activation, *(True,) * 4))
                assert all(torch.equal(p, q) for p, q in zip(out, want)), (
                    f"x of strides {strided.stride()}, {where}")


@pytest.mark.parametrize("target", CPP_TARGETS)
@pytest.mark.parametrize("k_in, n_out", [(121, 119), (120, 120), (128, 128), (128, 20)],
                         ids=["narrow_fwd_121x119", "narrow_fwd_120x120", "sgemm_fwd_128x128",
                              "narrow_fwd_128x20"])
def test_cpp_fp32_forward_crossover(target, k_in, n_out, monkeypatch):
    """fp32 layers above K * N = 120^2 take ATen's sgemm forward and the narrow
    backward (csrc/laaf_cpu.cpp: kMaxNarrowForwardArea); just below, the narrow path
    both ways. Either way the op agrees with the float64 reference, and its forward
    is the ATen path's exactly where the rule sends it there. (z is compared for sin,
    which keeps z in training on both paths; tanh keeps none on the narrow one.)"""
    backend, device = target
    x, w, b, a = _inputs(((71,), k_in, n_out, True), "vector", seed=23, dtype=torch.float32,
                         device=device)
    compare_linear(backend, x, w, b, a, "tanh", SCALE, ", float32")
    s = (SCALE * a).detach()
    fwd = torch.ops.laaf.cpp_linear_fwd(x.detach(), w.detach(), b.detach(), s, "sin", True)
    monkeypatch.setenv("LAAF_CPU_NARROW", "0")
    aten = torch.ops.laaf.cpp_linear_fwd(x.detach(), w.detach(), b.detach(), s, "sin", True)
    takes_sgemm = k_in * n_out > 120 * 120
    assert torch.equal(fwd[1], aten[1]) == takes_sgemm, "z from the other GEMM than the rule says"


#: The C++ and CUDA extensions' raw ops (the CUDA ones emulated on the CPU here).
RAW_OP_TARGETS = [t for t in TARGETS if t.values[0] in (("cpp", "cpu"), ("cuda", "cpu"))]


@pytest.mark.parametrize("target", RAW_OP_TARGETS)
def test_raw_ops_refuse_mis_shaped_arguments(target):
    """torch.ops.laaf.<cpp|cuda>_* read their tensors at flat offsets, trusting the
    public API's checks (laaf_kernels.checks). Called directly with a mis-shaped
    argument they raise a clear error naming it (csrc/laaf_layout.h: check_*),
    never read out of bounds."""
    prefix = target[0]
    ops = torch.ops.laaf
    gen = torch.Generator().manual_seed(53)
    x, w, b = torch.randn(9, 4, generator=gen), torch.randn(5, 4, generator=gen), torch.randn(5)
    s, g, z = torch.rand(5) + 0.5, torch.randn(9, 5, generator=gen), torch.randn(9, 5)
    params = torch.rand(2, 5)
    fwd, bwd = getattr(ops, f"{prefix}_linear_fwd"), getattr(ops, f"{prefix}_linear_bwd")
    cases = [
        (lambda: fwd(x, w[:, :3], b, s, "tanh", True), "x must be \\(rows, K\\) and weight"),
        (lambda: fwd(x, w, b[:4], s, "tanh", True), "bias must be \\(N,\\)"),
        (lambda: fwd(x, w, b, s[:3], "tanh", True), "s must be 0-d or \\(N,\\)"),
        (lambda: bwd(g[:, :4], x, w, b, z, s, None, "tanh", *(True,) * 4),
         "g must have (shape|z's shape)"),
        (lambda: bwd(g[0], x, w, b, z, s, None, "tanh", *(True,) * 4),  # 1-d g
         "g must have (shape|z's shape)"),
        (lambda: getattr(ops, f"{prefix}_act_fwd")(z, s[:4], "tanh", -1), "s must be 0-d or"),
        (lambda: getattr(ops, f"{prefix}_act_bwd")(g[:8], z, s, None, "tanh", -1, True, True),
         "g must have z's shape"),
        (lambda: getattr(ops, f"{prefix}_flex_fwd")(z, params[:1], "relu_poly", -1),
         "params must be \\(2, C\\)"),
        (lambda: getattr(ops, f"{prefix}_flex_fwd")(z, params[:, :4], "relu_poly", -1),
         "params\\[0\\] must be"),
        (lambda: getattr(ops, f"{prefix}_flex_bwd")(g[:8], z, params, "relu_poly", -1, True, True),
         "g must have z's shape"),
    ]
    for call, message in cases:
        with pytest.raises(RuntimeError, match=message):
            call()


#: Widths on both sides of every edge of the narrow rules (test below).
POLICY_WIDTHS = (1, 2, 16, 17, 31, 32, 33, 50, 63, 64, 65, 96, 97, 112, 113, 119, 120, 121,
                 127, 128, 129, 140)


@pytest.mark.parametrize("target", RAW_OP_TARGETS)
def test_the_python_policy_of_keeping_z_is_the_extensions_at_every_shape(target):
    """Which layers keep z is decided in Python (<backend>.stores_z), so that
    torch.compile writes the answer into the traced graph; the extension's kernels
    judge the same from their own narrow rules (<backend>_linear_stores_z). The two
    agree on both sides of every edge of those rules (N or K at 32, 64, 128; K N at
    120^2: 112 x 128 is below, 113 x 128 above), in every dtype, for every
    activation, in training and not."""
    prefix = target[0]
    backend = importlib.import_module(f"laaf_kernels.ops.{prefix}_backend")
    extension = getattr(torch.ops.laaf, f"{prefix}_linear_stores_z")
    asks_activation = prefix == "cpp"  # the CUDA rule is the same for every activation
    activations = list(ACTIVATIONS) if asks_activation else [None]
    mismatches = []
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        for activation in activations:
            for n_out in POLICY_WIDTHS:
                for k_in in POLICY_WIDTHS:
                    for training in (True, False):
                        ours = backend.stores_z(n_out, k_in, training, dtype, activation)
                        args = (n_out, k_in, training, dtype) + ((activation,) if asks_activation
                                                                 else ())
                        if ours != extension(*args):
                            mismatches.append(args)
    assert not mismatches, f"{len(mismatches)} disagree, e.g. {mismatches[:5]}"


@pytest.mark.parametrize("target", CPP_TARGETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=["fp32", "fp64", "bf16", "fp16"])
def test_cpp_training_forward_keeps_z_only_where_the_backward_needs_it(target, dtype,
                                                                       monkeypatch):
    """The narrow path (K, N <= 128) with an act' given by y keeps no z: its backward
    takes gh = g act'(y) and ds = sum_n W(n, :) . (gh^T x)(n, :) + b(n) sum gh(:, n)
    (csrc/laaf_cpu.cpp: linear_bwd_narrow). So autograd saves x and y only, 2/3 of what
    eager saves at K = N (x, z and y). A layer whose act' needs h (sin), or a wide one
    (K = 130, ATen's GEMMs), keeps z. The policy (cpp_backend.stores_z, which the
    traced graph holds) says so, and so does the extension's own
    (cpp_linear_stores_z); the forward writes z exactly as asked, on the narrow path
    and on the ATen one (LAAF_CPU_NARROW=0). In every dtype: bf16 and fp16 layers
    take the narrow path too (their chunks widened to fp32)."""
    from bench.memory import saved_bytes
    from laaf_kernels.ops import cpp_backend
    gen = torch.Generator().manual_seed(43)
    for activation, k_in, keeps in (("tanh", 50, False), ("relu", 50, False), ("sin", 50, True),
                                     ("tanh", 130, True)):
        assert cpp_backend.stores_z(50, k_in, True, dtype, activation) == keeps
        assert torch.ops.laaf.cpp_linear_stores_z(50, k_in, True, dtype, activation) == keeps
        assert not cpp_backend.stores_z(50, k_in, False, dtype, activation)
        x = torch.randn(257, k_in, generator=gen, dtype=dtype)
        w = (torch.randn(50, k_in, generator=gen, dtype=dtype) / k_in ** 0.5).requires_grad_()
        b = torch.randn(50, generator=gen, dtype=dtype).requires_grad_()
        a = (torch.rand(50, generator=gen, dtype=dtype) + 0.5).requires_grad_()
        s = (SCALE * a).detach()
        for narrow in ("1", "0"):
            monkeypatch.setenv("LAAF_CPU_NARROW", narrow)
            y, z = torch.ops.laaf.cpp_linear_fwd(x, w.detach(), b.detach(), s, activation, True)
            y_alone, no_z = torch.ops.laaf.cpp_linear_fwd(x, w.detach(), b.detach(), s,
                                                          activation, False)
            where = (activation, k_in, narrow)
            assert no_z.numel() == 0 and torch.equal(y, y_alone), where
            assert_z_is_the_affine_map(z, x, w.detach(), b.detach(), where)
        monkeypatch.delenv("LAAF_CPU_NARROW")
        if activation == "tanh" and k_in == 50:
            ours = saved_bytes(lambda: laaf_kernels.laaf_linear(
                x, w, b, a, activation="tanh", scale=SCALE, backend=target[0]), (w, b, a))
            eager = saved_bytes(lambda: torch.tanh(SCALE * a * torch.nn.functional.linear(x, w, b)),
                                (w, b, a))
            element = x.element_size()
            assert ours == 2 * 257 * 50 * element + 50 * element  # x, y and s = scale * a
            assert ours <= 2 / 3 * eager + 50 * element


@pytest.mark.parametrize("target", CPP_TARGETS)
def test_cpp_backward_without_z_forms_it_again_off_the_narrow_path(target, monkeypatch):
    """A forward that kept no z, then a backward that cannot take the narrow path
    (LAAF_CPU_NARROW=0 set between the two; or no y given to the raw op) forms z again
    with ATen's GEMM and runs the wide backward: the same gradients, to rounding.
    Whether z is kept depends on the shape, dtype and activation alone (the policy,
    which torch.compile writes into the graph), and the ATen forward under
    LAAF_CPU_NARROW=0 keeps none either when told so."""
    backend, _ = target
    x, w, b, a = _inputs(((131,), 37, 23, True), "vector", seed=47, dtype=torch.float64,
                         device="cpu")
    g = torch.randn(131, 23, dtype=torch.float64)
    params = (x, w, b, a)
    y = laaf_kernels.laaf_linear(x, w, b, a, scale=SCALE, backend=backend)
    narrow = torch.autograd.grad(y, params, g, retain_graph=True)
    monkeypatch.setenv("LAAF_CPU_NARROW", "0")
    wide = torch.autograd.grad(y, params, g)
    for p, q in zip(narrow, wide):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    s = (SCALE * a).detach()
    aten_y, aten_z = torch.ops.laaf.cpp_linear_fwd(x.detach(), w.detach(), b.detach(), s,
                                                   "tanh", False)
    assert aten_z.numel() == 0
    torch.testing.assert_close(aten_y, y.detach(), rtol=1e-12, atol=1e-12)
    monkeypatch.delenv("LAAF_CPU_NARROW")
    xd, wd, bd = x.detach(), w.detach(), b.detach()
    y_raw, z = torch.ops.laaf.cpp_linear_fwd(xd, wd, bd, s, "tanh", False)
    assert z.numel() == 0
    dx, dw, db, ds = torch.ops.laaf.cpp_linear_bwd(g, xd, wd, bd, z, s, None, "tanh",
                                                   *(True,) * 4)
    for p, q in zip((dx, dw, db, SCALE * ds), narrow):  # (da = n ds)
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match="z must have g's shape"):
        torch.ops.laaf.cpp_linear_bwd(g, xd, wd, bd, z[:0].new_zeros(5, 3), s, y_raw, "tanh",
                                      *(True,) * 4)
    with pytest.raises(RuntimeError, match="y must have g's shape"):
        torch.ops.laaf.cpp_linear_bwd(g, xd, wd, bd, z, s, y_raw[:7], "tanh", *(True,) * 4)
    with pytest.raises(RuntimeError, match=r"g must have shape \(x.size\(0\), weight.size\(0\)\)"):
        torch.ops.laaf.cpp_linear_bwd(g[:, :5], xd, wd, bd, z, s, y_raw, "tanh", *(True,) * 4)


@pytest.mark.parametrize("target", CPP_TARGETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("activation", ["tanh", "sin"])
def test_cpp_narrow_path_gives_the_same_bits_with_one_or_two_threads(target, activation, dtype):
    """The narrow path's GEMMs are ours, so here even z, dx and dW are bit-identical
    whatever the thread count: every sum runs in a fixed order over fixed chunks
    and groups (cf. the test above it, where ATen's GEMMs must be held fixed). tanh
    keeps no z (its backward takes act' from y and ds from the dW GEMM), sin keeps z.
    bf16: the same float sums on widened chunks (ChunkStage)."""
    gen = torch.Generator().manual_seed(37)
    x, w = torch.randn(1031, 50, generator=gen), torch.randn(29, 50, generator=gen)
    b, s = torch.randn(29, generator=gen), torch.rand(29, generator=gen)
    g = torch.randn(1031, 29, generator=gen)
    x, w, b, s, g = (t.to(dtype) for t in (x, w, b, s, g))
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            y, z = torch.ops.laaf.cpp_linear_fwd(x, w, b, s, activation, activation == "sin")
            grads = torch.ops.laaf.cpp_linear_bwd(g, x, w, b, z, s, y, activation, *(True,) * 4)
            results.append([y, z, *grads])
        finally:
            torch.set_num_threads(2)
    assert all(torch.equal(p, q) for p, q in zip(*results))


#: The fp32 tanh's bound in ulp, by the build's capability: AVX-512 lanes take
#: laaf_vec_math.h's tanh_by_slots (1.40 measured), AVX2 the doubling formula (2.4).
FP32_TANH_ULP = {"AVX512": 1.5, "AVX2": 3.0}


def _tanh_slot_edges():
    """Both sides of every edge of tanh_by_slots' slots (a quarter of an octave from
    2^-4 to the 9.5 clamp), where a wrong slot or table entry would show first."""
    edges = torch.tensor([2.0 ** e * (1 + q / 4) for e in range(-4, 4) for q in range(4)] + [9.5])
    below = torch.nextafter(edges, torch.zeros(()))
    above = torch.nextafter(edges, torch.tensor(float("inf")))
    return torch.cat([edges, below, above])


@pytest.mark.parametrize("target", CPP_TARGETS)
def test_cpp_fp32_tanh_is_within_three_ulp(target):
    """The C++ fp32 tanh (laaf_vec_math.h: on AVX-512 lanes tanh_by_slots, a degree-5
    polynomial in each of 32 slots; on AVX2 a rational correction and the doubling
    formula; coefficients from tools/fit_minimax.py; no Sleef) on a dense grid over
    [-12, 12], near 0 and at both sides of every slot edge, against float64: at most
    FP32_TANH_ULP of the fp32 result (3 at most). Below 2^-4 it is x plus a correction,
    so that tiny x give x exactly; it saturates to exactly +-1; NaN propagates; -0 stays
    -0."""
    edges = _tanh_slot_edges()
    z = torch.cat([torch.linspace(-12, 12, 400_003), torch.linspace(-0.3, 0.3, 100_003),
                   torch.logspace(-30, 1, 10_007), -torch.logspace(-30, 1, 10_007), edges, -edges])
    y = torch.ops.laaf.cpp_act_fwd(z, None, "tanh", -1)
    truth = torch.tanh(z.double())
    ulp = (torch.nextafter(truth.float().abs(), torch.tensor(float("inf"))) - truth.float().abs())
    bound = FP32_TANH_ULP.get(str(torch.backends.cpu.get_cpu_capability()), 3.0)
    err = (y.double() - truth).abs() / ulp.double()
    assert err.max() <= bound, f"{err.max():.3f} ulp at z = {z[err.argmax()]:.9g}"
    assert y.abs().max() == 1.0
    tiny = torch.logspace(-30, -8, 1001)
    assert torch.equal(torch.ops.laaf.cpp_act_fwd(tiny, None, "tanh", -1), tiny)
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 30.0, -30.0,
                            9.5, -9.5, 1e30, -1e30])
    got = torch.ops.laaf.cpp_act_fwd(special, None, "tanh", -1)
    torch.testing.assert_close(got, torch.tanh(special), equal_nan=True, rtol=0, atol=0)
    assert torch.equal(got.signbit()[3:], special.signbit()[3:])


def _true_tanh(z: torch.Tensor):
    """tanh of float64 z as (the nearest float64, the remainder in float64): exact far
    below a float64 ulp. numpy's long double where it has a 64-bit mantissa (x86),
    otherwise mpmath."""
    import numpy as np
    if np.finfo(np.longdouble).nmant >= 63:
        # Only the difference from the float64 value is kept, in float64.
        exact = np.tanh(z.numpy().astype(np.longdouble))
        return torch.from_numpy(exact.astype(np.float64)), torch.from_numpy(
            (exact - exact.astype(np.float64)).astype(np.float64))
    import mpmath
    mpmath.mp.prec = 120
    exact = [mpmath.tanh(mpmath.mpf(v)) for v in z.tolist()]
    rounded = [float(t) for t in exact]
    return (torch.tensor(rounded, dtype=torch.float64),
            torch.tensor([float(t - r) for t, r in zip(exact, rounded)], dtype=torch.float64))


@pytest.mark.parametrize("target", CPP_TARGETS)
def test_cpp_fp64_tanh_is_within_one_ulp(target):
    """The C++ fp64 tanh (AVX2 and AVX-512 builds: laaf_vec_math.h's fast_tanh_double;
    |x| < 0.55 a degree-10 correction polynomial, otherwise (1 - e) / (1 + e) with
    e = exp(-2|x|) inline and the roundings of 1 +- e and the quotient compensated;
    other builds: Sleef's tanh_u10; test_the_avx2_fast_paths_on_an_avx512_machine runs
    the AVX2 build where this machine runs AVX-512) on a dense grid
    over [-25, 25], near the 0.55 switch and near 0, against a tanh exact far below an
    ulp: within 1 ulp of the true value (0.92 measured, here and on 3.6e8 random
    points; Sleef's tanh_u10, which torch uses, promises 1). Exactly +-1 from 19.06
    on, and -0, +-inf, NaN and subnormals keep their IEEE results."""
    gen = torch.Generator().manual_seed(59)
    f64 = dict(dtype=torch.float64)
    z = torch.cat([torch.linspace(-25, 25, 1_000_003, **f64),
                   0.55 + 0.05 * (torch.rand(200_000, generator=gen, **f64) - 0.5),
                   -torch.rand(200_000, generator=gen, **f64),
                   torch.logspace(-300, 1.3, 20_011, **f64), -torch.logspace(-300, 1.3, 20_011, **f64)])
    y = torch.ops.laaf.cpp_act_fwd(z, None, "tanh", -1)
    rounded, remainder = _true_tanh(z)
    ulp = torch.nextafter(rounded.abs(), torch.tensor(float("inf"), **f64)) - rounded.abs()
    err = ((y - rounded) - remainder).abs() / ulp  # y - rounded is exact (Sterbenz)
    assert err.max() <= 1.0, f"{err.max():.3f} ulp at z = {z[err.argmax()]:.17g}"
    assert torch.equal(y[z.abs() >= 19.07], z[z.abs() >= 19.07].sign())
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 5e-324, -1e-310], **f64)
    got = torch.ops.laaf.cpp_act_fwd(special, None, "tanh", -1)
    torch.testing.assert_close(got, torch.tanh(special), equal_nan=True, rtol=0, atol=0)
    signed = ~special.isnan()  # (a NaN's sign bit means nothing; Sleef's may be set)
    assert torch.equal(got.signbit()[signed], torch.tanh(special).signbit()[signed])


#: The tests whose code paths depend on the build's vector capability (lane width, and
#: on AVX-512 mask registers for comparisons: laaf_vec_math.h), by file, and how many
#: cpp-cpu tests they are: the panel-layout test runs for fp32 and fp64, the NaN tests
#: for every activation or flexible kind in fp32 and fp64, the rounding test for bf16
#: and fp16 (the widened lanes' conversions: laaf_cpu_common.h WidenedIo).
CAPABILITY_TESTS = {
    "test_fused_linear.py": ("test_cpp_fp32_tanh_is_within_three_ulp",
                             "test_cpp_fp64_tanh_is_within_one_ulp",
                             "test_cpp_sigmoid_is_within_three_ulp",
                             "test_cpp_narrow_gemm_every_panel_layout",
                             "test_cpp_16bit_narrow_path_is_the_fp32_path_rounded_once"),
    "test_fused_flexible.py": ("test_cpp_cbrt_is_within_one_ulp",
                               "test_nan_reaches_the_output_like_the_reference"),
    "test_fused_activation.py": ("test_nan_reaches_the_output_like_the_reference",
                                 "test_half_precision_rounds_once_as_torch_rounds"),
}
CAPABILITY_TEST_COUNT = 7 + (1 + 2 * len(FLEXIBLE_KINDS)) + 2 * len(ACTIVATIONS) + 2


@pytest.mark.skipif(str(torch.backends.cpu.get_cpu_capability()) != "AVX512",
                    reason="the AVX2 build is the one this machine runs (or it has no AVX-512)")
@pytest.mark.parametrize("target", CPP_TARGETS)
def test_the_avx2_fast_paths_on_an_avx512_machine(target):
    """The extension is built for the running capability, so on an AVX-512 machine the
    fast paths on AVX2 lanes (laaf_vec_math.h: 8 fp32 / 4 fp64 lanes, ymm registers) and
    AVX2's GEMM panel layouts (laaf_cpu_gemm.h: kMaxPanel) would go untested: those tests run again in a
    process whose ATen capability is AVX2, which builds and loads the AVX2 extension (a
    minute or two, once per extension directory)."""
    here = os.path.dirname(__file__)
    names = sorted({name for tests in CAPABILITY_TESTS.values() for name in tests})
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
         *(os.path.join(here, f) for f in CAPABILITY_TESTS),
         "-k", f"({' or '.join(names)}) and cpp-cpu"],
        env={**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}, capture_output=True, text=True,
        cwd=os.path.dirname(here), timeout=1800)
    assert (run.returncode == 0
            and re.search(rf"(?<!\d){CAPABILITY_TEST_COUNT} passed", run.stdout)), (
        run.stdout[-3000:] + run.stderr[-2000:])


@pytest.mark.parametrize("target", CPP_TARGETS)
def test_cpp_sigmoid_is_within_three_ulp(target):
    """The C++ sigmoid (laaf_activations.h: e = exp(-|z|), then 1 / (1 + e) or e / (1 + e);
    fp32 on AVX2 / AVX-512 with the inline exp_nonpositive, no Sleef) against float64,
    wherever the result is a normal float: at most 3 ulp of the fp32 result (2.9
    measured; torch.sigmoid itself is 2.4 off). Below e^-87.33 it flushes to 0; NaN
    propagates; +-inf give 1 and 0. fp64 stays within 1e-15 relative of torch."""
    gen = torch.Generator().manual_seed(43)
    z = torch.cat([torch.linspace(-87, 100, 400_003), torch.randn(200_000, generator=gen) * 5,
                   torch.logspace(-45, 1.9, 20_011), -torch.logspace(-45, 1.9, 20_011)])
    y = torch.ops.laaf.cpp_act_fwd(z, None, "sigmoid", -1)
    truth = torch.sigmoid(z.double())
    ulp = (torch.nextafter(truth.float().abs(), torch.tensor(float("inf"))) - truth.float().abs())
    assert ((y.double() - truth).abs() / ulp.double()).max() <= 3.0
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 90.0, -88.0])
    got = torch.ops.laaf.cpp_act_fwd(special, None, "sigmoid", -1)
    expected = torch.tensor([float("nan"), 1.0, 0.0, 0.5, 0.5, 1.0, 0.0])
    torch.testing.assert_close(got, expected, equal_nan=True, rtol=0, atol=0)
    z64 = torch.linspace(-700, 700, 100_003, dtype=torch.float64)
    y64 = torch.ops.laaf.cpp_act_fwd(z64, None, "sigmoid", -1)
    torch.testing.assert_close(y64, torch.sigmoid(z64), rtol=1e-15, atol=0)
