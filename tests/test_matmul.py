"""torch.ops.laaf.cpp_matmul (csrc/laaf_cpu_matmul.cpp, laaf_kernels.ops.matmul): the
narrow GEMM under the products of a PINN's create_graph passes. Against the
float64 product on tall, gram and other shapes, strided operands, both float
dtypes; which kernel each shape runs on; gradcheck and gradgradcheck through its
autograd; thread-count determinism; the 16-bit fallback; empty and bad input; and
that a PINN step's GEMMs run on it."""
import pytest
import torch

import laaf_kernels
from fused_cases import CPP_PROBLEM
from helpers import assert_close_to_truth, generator

pytestmark = pytest.mark.skipif(CPP_PROBLEM is not None, reason=f"cpp backend: {CPP_PROBLEM}")

#: name: ((m, k, n), the kernel cpp_matmul_path names for it in both float dtypes).
#: tall: k, n narrow (dx = gz W, dA = dC B^T); gram: m, n narrow, k long (dW = gz^T x,
#: dB = A^T dC), in several DwGroups (70001 rows: 1094 chunks, 219 groups).
SHAPES = {
    "tall_pinn": ((10007, 20, 20), "tall"),
    "tall_to_input_layer": ((1031, 20, 2), "tall"),  # dx of a layer with K = 2
    "tall_outer": ((997, 1, 20), "tall"),            # dx of the N = 1 output layer
    "tall_dot_tail": ((523, 50, 50), "tall"),        # fp32 on AVX-512: 3 vectors + 2 dots
    "tall_prime": ((211, 37, 53), "tall"),
    "tiny": ((3, 4, 5), "tall"),
    "gram_pinn": ((20, 10007, 20), "gram"),
    "gram_to_input_layer": ((20, 1031, 2), "gram"),
    "gram_one": ((1, 4099, 1), "gram"),
    "gram_prime": ((37, 2053, 53), "gram"),
    "gram_many_groups": ((5, 70001, 3), "gram"),
    "wide": ((300, 200, 150), "aten"),
}
#: How the operands are laid out: as made, or as views with other strides.
LAYOUTS = ("contiguous", "a_transposed", "b_transposed", "strided")


def _operands(shape, layout, dtype, seed):
    m, k, n = shape
    gen = generator(seed)
    a = torch.randn(m, 2 * k, generator=gen, dtype=torch.float64)
    b = torch.randn(k, 2 * n, generator=gen, dtype=torch.float64)
    a, b = a.to(dtype), b.to(dtype)
    if layout == "strided":  # every other column: row stride 2k, column stride 2
        return a[:, ::2], b[:, ::2]
    a, b = a[:, :k], b[:, :n]
    if layout == "a_transposed":  # column-major A (as gz.t() is)
        a = a.t().contiguous().t()
    if layout == "b_transposed":  # column-major B (as W.t() is)
        b = b.t().contiguous().t()
    return a, b


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", list(SHAPES))
def test_matches_the_float64_product(name, layout, dtype):
    shape, path = SHAPES[name]
    assert torch.ops.laaf.cpp_matmul_path(*shape, dtype) == path
    a, b = _operands(shape, layout, dtype, seed=len(name))
    got = torch.ops.laaf.cpp_matmul(a, b)
    assert got.is_contiguous()
    assert_close_to_truth(name, got, a.double() @ b.double(), a @ b, length=shape[1])


def test_paths_by_width_and_dtype():
    """fp32 keeps MKL where it won (K N > 120^2 tall, m n > 80^2 gram); fp64 does not."""
    path = torch.ops.laaf.cpp_matmul_path
    assert path(50_000, 128, 128, torch.float32) == "aten"
    assert path(50_000, 120, 120, torch.float32) == "tall"
    assert path(50_000, 128, 128, torch.float64) == "tall"
    assert path(100, 50_000, 100, torch.float32) == "aten"
    assert path(80, 50_000, 80, torch.float32) == "gram"
    assert path(128, 50_000, 128, torch.float64) == "gram"
    assert path(200, 50_000, 20, torch.float64) == "aten"
    assert path(10, 10, 10, torch.bfloat16) == "aten"


def test_gram_runs_on_the_narrow_gemm(monkeypatch):
    """The gram path folds its partials in double: its fp32 bits differ from MKL's
    fp32 sums (LAAF_CPU_NARROW=0 sends the op to at::mm), so this fails if the op
    quietly fell back to ATen; both stay close to the float64 product."""
    a, b = _operands((20, 10007, 20), "a_transposed", torch.float32, seed=3)
    ours = torch.ops.laaf.cpp_matmul(a, b)
    monkeypatch.setenv("LAAF_CPU_NARROW", "0")
    assert torch.ops.laaf.cpp_matmul_path(20, 10007, 20, torch.float32) == "aten"
    aten = torch.ops.laaf.cpp_matmul(a, b)
    assert torch.equal(aten, a @ b)
    assert not torch.equal(ours, aten)
    assert_close_to_truth("gram", ours, a.double() @ b.double(), aten, length=10007)


@pytest.mark.parametrize("name", ["tall_pinn", "tall_dot_tail", "gram_pinn", "gram_many_groups"])
def test_same_bits_with_one_or_two_threads(name):
    a, b = _operands(SHAPES[name][0], "a_transposed", torch.float32, seed=5)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(torch.ops.laaf.cpp_matmul(a, b))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(*results)


@pytest.mark.parametrize("shape", [(67, 5, 3), (4, 131, 3)], ids=["tall", "gram"])
def test_gradcheck_and_gradgradcheck(shape):
    """Its backward is the op again on the transposes (dA = dC B^T is tall, dB = A^T dC
    gram), so the second order runs on the op's own autograd too."""
    from laaf_kernels.ops.matmul import make_matmul

    matmul = make_matmul("cpp")
    a, b = (t.detach().requires_grad_() for t in _operands(shape, "contiguous", torch.float64, 7))
    assert torch.autograd.gradcheck(matmul, (a, b))
    assert torch.autograd.gradgradcheck(matmul, (a, b))


def test_opcheck():
    a, b = (t.detach().requires_grad_() for t in _operands((67, 5, 3), "strided", torch.float32, 9))
    torch.library.opcheck(torch.ops.laaf.cpp_matmul, (a, b))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_16_bit_operands_are_atens_product(dtype):
    a, b = _operands((101, 20, 20), "contiguous", dtype, seed=11)
    assert torch.ops.laaf.cpp_matmul_path(101, 20, 20, dtype) == "aten"
    assert torch.equal(torch.ops.laaf.cpp_matmul(a, b), a @ b)


@pytest.mark.parametrize("shape", [(0, 5, 3), (4, 0, 3), (4, 5, 0), (0, 200, 0)])
def test_empty_operands(shape):
    m, k, n = shape
    got = torch.ops.laaf.cpp_matmul(torch.randn(m, k), torch.randn(k, n))
    assert got.shape == (m, n) and torch.equal(got, torch.zeros(m, n))


def test_bad_input_is_a_clear_error():
    mm = torch.ops.laaf.cpp_matmul
    with pytest.raises(RuntimeError, match="must be 2-D"):
        mm(torch.randn(3), torch.randn(3, 2))
    with pytest.raises(RuntimeError, match=r"a's columns \(4\) must equal b's rows \(3\)"):
        mm(torch.randn(2, 4), torch.randn(3, 2))
    with pytest.raises(RuntimeError, match="one dtype"):
        mm(torch.randn(2, 3), torch.randn(3, 2, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="float32, float64, bfloat16 or float16"):
        mm(torch.ones(2, 3, dtype=torch.int64), torch.ones(3, 2, dtype=torch.int64))


def test_a_pinn_step_runs_its_hidden_gemms_on_it():
    """u_x, u_xx and the loss's backward through a tanh LAAF MLP on the cpp backend:
    dx = gz W and the products of their backwards are cpp_matmul calls; the only
    aten::mm left are the plain output layer's (nn.Linear: N = 1)."""
    torch.manual_seed(0)
    net = laaf_kernels.LAAFMLP([2, 8, 8, 1], "tanh", "neuron", 10.0)
    xt = torch.rand(33, 2, requires_grad=True)
    with laaf_kernels.use_backend("cpp"), torch.profiler.profile(record_shapes=True) as prof:
        u = net(xt)
        du = torch.autograd.grad(u.sum(), xt, create_graph=True)[0]
        u_xx = torch.autograd.grad(du[:, 0].sum(), xt, create_graph=True)[0][:, 0]
        (u_xx.square().mean() + du[:, 1].square().mean()).backward()
    events = prof.key_averages(group_by_input_shape=True)
    assert any(e.key == "laaf::cpp_matmul" for e in events)
    for e in events:
        if e.key == "aten::mm":
            assert 1 in [d for dims in e.input_shapes for d in dims], e.input_shapes
