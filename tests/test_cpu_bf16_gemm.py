"""The bf16 narrow layer's forward GEMM on AVX512-BF16's vdpbf16ps
(csrc/laaf_cpu_gemm_bf16.h: pair_gemm, taken by laaf_cpu.cpp's forward_widened_chunk),
against the float64 truth and against the widened-fp32 path it replaces
(LAAF_CPU_BF16_DOT=0), at odd and prime widths and depths, with strided x.

Tolerance, y and z (bf16): one bf16 ulp at the compared value (bf16_ulp), plus the
float sums' noise, 8 eps32 sqrt(K) sum_k |x w| (times s for y: act' <= 1 for tanh
and sin). Rounding to bf16 costs half an ulp against the truth; against the widened
path two roundings of nearly equal floats can land one ulp apart, where a boundary
falls between them. A wrong pair or a lost column is an O(1) error.
"""
import pathlib

import pytest
import torch

from fused_cases import CPP_PROBLEM

pytestmark = pytest.mark.skipif(CPP_PROBLEM is not None, reason=f"cpp backend: {CPP_PROBLEM}")

ops = torch.ops.laaf


def bf16_ulp(v):
    """The spacing of bf16 values at |v| (7 stored mantissa bits): 2^(e - 8) for
    |v| = m 2^e, m in [0.5, 1); the smallest normal's spacing below it."""
    _, exponent = torch.frexp(v.double().abs().clamp_min(2.0 ** -126))
    return torch.ldexp(torch.ones_like(v, dtype=torch.float64), exponent - 8)


def _cpu_has_avx512_bf16():
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    return cpuinfo.exists() and " avx512_bf16" in cpuinfo.read_text()


#: Whether bf16 layers take the pair GEMM here: an AVX-512 build on an AVX512-BF16 CPU.
CAPABLE = str(torch.backends.cpu.get_cpu_capability()) == "AVX512" and _cpu_has_avx512_bf16()
needs_pairs = pytest.mark.skipif(
    CPP_PROBLEM is not None or not CAPABLE,
    reason="no AVX512-BF16 here (CPU or build): bf16 layers take the widened fp32 GEMM only")


def test_pair_gemm_is_on_exactly_where_the_cpu_and_build_have_it(monkeypatch):
    """cpp_linear_fwd_gemm names the pair GEMM for a bf16 layer of 3 or more outputs
    on an AVX-512 build (ATen's capability AVX512) on a CPU with avx512_bf16, and the
    widened fp32 GEMM ("narrow") elsewhere: so a capable machine cannot silently lose
    the path, nor an incapable one take it. Narrower layers (a PINN's output layer:
    kMinPairWidth), other dtypes and LAAF_CPU_BF16_DOT=0 keep "narrow";
    LAAF_CPU_NARROW=0 and K, N above 128 are ATen's."""
    monkeypatch.delenv("LAAF_CPU_BF16_DOT", raising=False)
    monkeypatch.delenv("LAAF_CPU_NARROW", raising=False)
    gemm = ops.cpp_linear_fwd_gemm
    pairs = "bf16_pairs" if CAPABLE else "narrow"
    assert [gemm(n, 50, torch.bfloat16) for n in (1, 2, 3, 20, 128)] == ["narrow"] * 2 + [pairs] * 3
    assert gemm(20, 1, torch.bfloat16) == pairs
    assert [gemm(20, 50, dtype) for dtype in (torch.float16, torch.float32, torch.float64)] == \
        ["narrow"] * 3
    assert gemm(129, 50, torch.bfloat16) == gemm(50, 129, torch.bfloat16) == "aten"
    monkeypatch.setenv("LAAF_CPU_BF16_DOT", "0")
    assert gemm(20, 50, torch.bfloat16) == "narrow"
    monkeypatch.setenv("LAAF_CPU_NARROW", "0")
    assert gemm(20, 50, torch.bfloat16) == "aten"


def _layer(rows, k_in, n_out, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k_in, generator=gen).bfloat16()
    w = (torch.randn(n_out, k_in, generator=gen) / max(1, k_in) ** 0.5).bfloat16()
    b = torch.randn(n_out, generator=gen).bfloat16()
    s = (0.5 + torch.rand(n_out, generator=gen)).bfloat16()
    return x, w, b, s


def _truth(x, w, b, s, activation):
    z = torch.nn.functional.linear(x.double(), w.double(), b.double())
    return getattr(torch, activation)(s.double() * z), z


def _assert_bf16_close(name, got, truth, noise):
    allowed = bf16_ulp(truth) + noise
    err = (got.double() - truth).abs()
    worst = (err - allowed).argmax()
    assert bool((err <= allowed).all()), (
        f"{name}: {err.flatten()[worst]:.3e} off at {worst.item()} "
        f"(allowed {allowed.flatten()[worst]:.3e})")


#: (rows, K, N): odd and even depths (K = 1 is one lone value, 2 one pair, 127 63
#: pairs and a lone value), N of 1 to 8 zmm vectors with partial last ones, rows
#: that leave 2- and 1-row tiles and a partial 64-row chunk. N = 1 (5 x 2 x 1) is
#: below kMinPairWidth and stays on the widened path: there only the truth is a check.
SHAPES = [(67, 1, 17), (5, 2, 1), (131, 3, 20), (67, 7, 50), (64, 13, 16), (71, 50, 50),
          (67, 49, 64), (33, 64, 15), (130, 127, 100), (67, 128, 128), (1, 33, 33)]


@needs_pairs
@pytest.mark.parametrize("rows, k_in, n_out", SHAPES, ids=[f"{m}x{k}x{n}" for m, k, n in SHAPES])
@pytest.mark.parametrize("activation", ["tanh", "sin"])
@pytest.mark.parametrize("slope", ["none", "scalar", "vector"])
def test_pair_gemm_forward_against_float64_truth(rows, k_in, n_out, activation, slope,
                                                 monkeypatch):
    """y (and z where it is kept: sin in training) within one bf16 ulp plus the float
    sums' noise of the float64 truth; and within the same of the widened path's
    outputs, elementwise. tanh keeps no z, so its y comes from the epilogue on the
    pair tiles; sin's from the flat pass after them."""
    monkeypatch.delenv("LAAF_CPU_BF16_DOT", raising=False)
    x, w, b, s_vec = _layer(rows, k_in, n_out, seed=rows * 1000 + k_in * 10 + n_out)
    s = {"none": None, "scalar": s_vec[0].clone(), "vector": s_vec}[slope]
    s_full = torch.ones(n_out).bfloat16() if s is None else s.expand(n_out)
    y_truth, z_truth = _truth(x, w, b, s_full, activation)
    sums = x.double().abs() @ w.double().abs().t()
    noise = 8 * torch.finfo(torch.float32).eps * max(1, k_in) ** 0.5 * sums
    y, z = ops.cpp_linear_fwd(x, w, b, s, activation, True)
    assert (z.numel() > 0) == (activation == "sin")
    y_noise = noise * s_full.double()
    _assert_bf16_close("y", y, y_truth, y_noise)
    if z.numel():
        _assert_bf16_close("z", z, z_truth, noise)
    monkeypatch.setenv("LAAF_CPU_BF16_DOT", "0")
    y_wide, z_wide = ops.cpp_linear_fwd(x, w, b, s, activation, True)
    _assert_bf16_close("y against the widened path", y, y_wide.double(), 2 * y_noise)
    if z.numel():
        _assert_bf16_close("z against the widened path", z, z_wide.double(), 2 * noise)


@needs_pairs
def test_pair_gemm_runs_and_flushes_denormal_inputs(monkeypatch):
    """vdpbf16ps treats denormal inputs as zero (and flushes denormal sums): x = 2^-130
    times W = 2^100 gives z = 0 on the pair path, where the widened path's exact
    product is 2^-30. This both shows that bf16 layers really take the pair path here
    and pins down the one way its results differ beyond rounding (documented in
    laaf_cpu_gemm_bf16.h and the README)."""
    monkeypatch.delenv("LAAF_CPU_BF16_DOT", raising=False)
    x = torch.zeros(3, 4, dtype=torch.bfloat16)
    x[0, 0], x[1, 1] = 2.0 ** -130, 1.0
    w = torch.zeros(5, 4, dtype=torch.bfloat16)
    w[:, 0], w[:, 1] = 2.0 ** 100, 0.5
    y, z = ops.cpp_linear_fwd(x, w, None, None, "sin", True)
    assert z[0].eq(0).all() and z[1].eq(0.5).all(), (z[0], z[1])
    monkeypatch.setenv("LAAF_CPU_BF16_DOT", "0")
    y_wide, z_wide = ops.cpp_linear_fwd(x, w, None, None, "sin", True)
    assert z_wide[0].eq(2.0 ** -30).all() and z_wide[1].eq(0.5).all(), (z_wide[0], z_wide[1])


@needs_pairs
@pytest.mark.parametrize("k_in", [1, 7, 49, 127])
def test_pair_gemm_odd_depth_reads_nothing_past_a_row(k_in):
    """An odd depth's last pair is its lone value, zero-extended: the bf16 past a row's
    end (here a NaN in padded rows; for the last row, past x's storage) is never
    read, so B's zero padding cannot meet it as 0 * NaN = NaN."""
    x, w, b, s = _layer(67, k_in, 20, seed=k_in)
    padded = torch.full((67, k_in + 1), float("nan"), dtype=torch.bfloat16)
    padded[:, :k_in] = x
    strided_x = padded[:, :k_in]
    assert strided_x.stride() == (k_in + 1, 1)
    got = ops.cpp_linear_fwd(strided_x, w, b, s, "sin", True)
    want = ops.cpp_linear_fwd(x, w, b, s, "sin", True)
    assert all(torch.equal(p, q) for p, q in zip(got, want))
    assert torch.isfinite(got[0]).all() and torch.isfinite(got[1]).all()


@needs_pairs
def test_pair_gemm_outputs_do_not_depend_on_x_strides():
    """A transposed x (a strided depth) is gathered into a contiguous chunk before the
    pair GEMM, so its outputs are the contiguous x's, bit for bit, as are those of x
    with padded rows; in training (sin keeps z) and inference."""
    x, w, b, s = _layer(131, 37, 50, seed=5)
    for training in (True, False):
        want = ops.cpp_linear_fwd(x, w, b, s, "sin", training)
        for strided in (x.t().contiguous().t(),
                        torch.zeros(131, 40, dtype=torch.bfloat16)[:, 2:39].copy_(x)):
            got = ops.cpp_linear_fwd(strided, w, b, s, "sin", training)
            assert all(torch.equal(p, q) for p, q in zip(got, want)), strided.stride()


@needs_pairs
def test_pair_gemm_thread_count_determinism():
    """Each chunk's sums run in a fixed order: 1 and 2 threads give the same bits."""
    x, w, b, s = _layer(10_000, 50, 50, seed=9)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.cpp_linear_fwd(x, w, b, s, "sin", True)
        torch.set_num_threads(2)
        two = ops.cpp_linear_fwd(x, w, b, s, "sin", True)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(p, q) for p, q in zip(one, two))


def test_pair_gemm_empty_and_zero_depth(monkeypatch):
    """No rows: empty outputs; K = 0: z = b (an empty sum), on either path."""
    w0, b = torch.zeros(6, 0, dtype=torch.bfloat16), torch.randn(6).bfloat16()
    for env in ("1", "0"):
        monkeypatch.setenv("LAAF_CPU_BF16_DOT", env)
        y, z = ops.cpp_linear_fwd(torch.zeros(0, 5, dtype=torch.bfloat16),
                                  torch.randn(6, 5).bfloat16(), b, None, "sin", True)
        assert y.shape == (0, 6) and z.shape == (0, 6)
        y, z = ops.cpp_linear_fwd(torch.zeros(3, 0, dtype=torch.bfloat16), w0, b, None, "sin", True)
        assert torch.equal(z, b.expand(3, 6)) and torch.equal(y, torch.sin(b.float()).bfloat16().expand(3, 6))
