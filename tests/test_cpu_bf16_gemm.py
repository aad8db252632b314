"""The bf16 narrow layer's GEMMs on AVX512-BF16's vdpbf16ps (csrc/laaf_cpu_gemm_bf16.h:
pair_gemm, taken by laaf_cpu.cpp's forward_widened_chunk; pair_gemm_words, by its
backward_pairs_chunk), against the float64 truth and against the widened-fp32 path
they replace (LAAF_CPU_BF16_DOT=0), at odd and prime widths and depths, with strided x.

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


def _forward(x, w, b, s, activation, training=True):
    """cpp_linear_fwd as the backend calls it: z kept where its policy says
    (cpp_backend.stores_z: in training, for sin but not tanh or identity here)."""
    from laaf_kernels.ops import cpp_backend
    store_z = cpp_backend.stores_z(w.shape[0], w.shape[1], training, x.dtype, activation)
    return ops.cpp_linear_fwd(x, w, b, s, activation, store_z)


def bf16_ulp(v):
    """The spacing of bf16 values at |v| (7 stored mantissa bits): 2^(e - 8) for
    |v| = m 2^e, m in [0.5, 1); the smallest normal's spacing below it."""
    _, exponent = torch.frexp(v.double().abs().clamp_min(2.0 ** -126))
    return torch.ldexp(torch.ones_like(v, dtype=torch.float64), exponent - 8)


def _cpu_has_avx512_bf16():
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    return cpuinfo.exists() and " avx512_bf16" in cpuinfo.read_text()


@pytest.fixture(autouse=True)
def _pairs_switch_on(monkeypatch):
    """Every test starts with the pair GEMMs on (LAAF_CPU_BF16_DOT unset), whatever the
    environment says: a test that compares the two paths must not compare one with
    itself."""
    monkeypatch.delenv("LAAF_CPU_BF16_DOT", raising=False)


#: Whether bf16 layers take the pair GEMM here: an AVX-512 build on an AVX512-BF16 CPU.
CAPABLE = str(torch.backends.cpu.get_cpu_capability()) == "AVX512" and _cpu_has_avx512_bf16()
needs_pairs = pytest.mark.skipif(
    CPP_PROBLEM is not None or not CAPABLE,
    reason="no AVX512-BF16 here (CPU or build): bf16 layers take the widened fp32 GEMM only")


@pytest.mark.parametrize("direction", ["fwd", "bwd"])
def test_pair_gemm_is_on_exactly_where_the_cpu_and_build_have_it(direction, monkeypatch):
    """cpp_linear_fwd_gemm / cpp_linear_bwd_gemm name the pair GEMMs for a bf16 layer
    whose GEMM output is 3 or more columns wide (z: N outputs forward; dx and dW: K
    inputs backward) on an AVX-512 build (ATen's capability AVX512) on a CPU with
    avx512_bf16, and the widened fp32 GEMM ("narrow") elsewhere: so a capable machine
    cannot silently lose the path, nor an incapable one take it. Narrower outputs (a
    PINN's output layer forward: kMinPairWidth), other dtypes and LAAF_CPU_BF16_DOT=0
    keep "narrow"; LAAF_CPU_NARROW=0 and K, N above 128 are ATen's."""
    monkeypatch.delenv("LAAF_CPU_NARROW", raising=False)
    op = getattr(ops, f"cpp_linear_{direction}_gemm")

    def gemm(width, other, dtype=torch.bfloat16):  # (n_out, k_in) with `width` the output's
        return op(width, other, dtype) if direction == "fwd" else op(other, width, dtype)

    pairs = "bf16_pairs" if CAPABLE else "narrow"
    assert [gemm(w, 50) for w in (1, 2, 3, 20, 128)] == ["narrow"] * 2 + [pairs] * 3
    assert gemm(20, 1) == pairs
    assert [gemm(20, 50, dtype) for dtype in (torch.float16, torch.float32, torch.float64)] == \
        ["narrow"] * 3
    assert gemm(129, 50) == gemm(50, 129) == "aten"
    monkeypatch.setenv("LAAF_CPU_BF16_DOT", "0")
    assert gemm(20, 50) == "narrow"
    monkeypatch.setenv("LAAF_CPU_NARROW", "0")
    assert gemm(20, 50) == "aten"


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
    x, w, b, s_vec = _layer(rows, k_in, n_out, seed=rows * 1000 + k_in * 10 + n_out)
    s = {"none": None, "scalar": s_vec[0].clone(), "vector": s_vec}[slope]
    s_full = torch.ones(n_out).bfloat16() if s is None else s.expand(n_out)
    y_truth, z_truth = _truth(x, w, b, s_full, activation)
    sums = x.double().abs() @ w.double().abs().t()
    noise = 8 * torch.finfo(torch.float32).eps * max(1, k_in) ** 0.5 * sums
    y, z = _forward(x, w, b, s, activation)
    assert (z.numel() > 0) == (activation == "sin")
    y_noise = noise * s_full.double()
    _assert_bf16_close("y", y, y_truth, y_noise)
    if z.numel():
        _assert_bf16_close("z", z, z_truth, noise)
    monkeypatch.setenv("LAAF_CPU_BF16_DOT", "0")
    y_wide, z_wide = _forward(x, w, b, s, activation)
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
    x = torch.zeros(3, 4, dtype=torch.bfloat16)
    x[0, 0], x[1, 1] = 2.0 ** -130, 1.0
    w = torch.zeros(5, 4, dtype=torch.bfloat16)
    w[:, 0], w[:, 1] = 2.0 ** 100, 0.5
    y, z = _forward(x, w, None, None, "sin")
    assert z[0].eq(0).all() and z[1].eq(0.5).all(), (z[0], z[1])
    monkeypatch.setenv("LAAF_CPU_BF16_DOT", "0")
    y_wide, z_wide = _forward(x, w, None, None, "sin")
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
    got = _forward(strided_x, w, b, s, "sin")
    want = _forward(x, w, b, s, "sin")
    assert all(torch.equal(p, q) for p, q in zip(got, want))
    assert torch.isfinite(got[0]).all() and torch.isfinite(got[1]).all()


@needs_pairs
def test_pair_gemm_outputs_do_not_depend_on_x_strides():
    """A transposed x (a strided depth) is gathered into a contiguous chunk before the
    pair GEMM, so its outputs are the contiguous x's, bit for bit, as are those of x
    with padded rows; in training (sin keeps z) and inference."""
    x, w, b, s = _layer(131, 37, 50, seed=5)
    for training in (True, False):
        want = _forward(x, w, b, s, "sin", training)
        for strided in (x.t().contiguous().t(),
                        torch.zeros(131, 40, dtype=torch.bfloat16)[:, 2:39].copy_(x)):
            got = _forward(strided, w, b, s, "sin", training)
            assert all(torch.equal(p, q) for p, q in zip(got, want)), strided.stride()


@needs_pairs
def test_pair_gemm_thread_count_determinism():
    """Each chunk's sums run in a fixed order: 1 and 2 threads give the same bits."""
    x, w, b, s = _layer(10_000, 50, 50, seed=9)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _forward(x, w, b, s, "sin")
        torch.set_num_threads(2)
        two = _forward(x, w, b, s, "sin")
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(p, q) for p, q in zip(one, two))


def test_pair_gemm_empty_and_zero_depth(monkeypatch):
    """No rows: empty outputs; K = 0: z = b (an empty sum), on either path."""
    w0, b = torch.zeros(6, 0, dtype=torch.bfloat16), torch.randn(6).bfloat16()
    for env in ("1", "0"):
        monkeypatch.setenv("LAAF_CPU_BF16_DOT", env)
        y, z = _forward(torch.zeros(0, 5, dtype=torch.bfloat16),
                                  torch.randn(6, 5).bfloat16(), b, None, "sin")
        assert y.shape == (0, 6) and z.shape == (0, 6)
        y, z = _forward(torch.zeros(3, 0, dtype=torch.bfloat16), w0, b, None, "sin")
        assert torch.equal(z, b.expand(3, 6)) and torch.equal(y, torch.sin(b.float()).bfloat16().expand(3, 6))


# ---------------------------------------------------------------------------
# The backward: dx = gz W and dW = gz^T x on pairs, gz rounded to bf16 once
# ---------------------------------------------------------------------------

def _backward_truth(x, w, b, s_full, g, activation):
    """(dx, dW, db, ds) in float64 of y = act(s (x W^T + b)) for the cotangent g (ds
    per output column)."""
    xd, wd, bd, sd = (t.double().requires_grad_() for t in (x, w, b, s_full))
    y = getattr(torch, activation)(sd * torch.nn.functional.linear(xd, wd, bd))
    return torch.autograd.grad(y, (xd, wd, bd, sd), g.double())


def _gz_error_bound(x, w, b, s_full, g, activation):
    """A bound on the kernel's error in each gz = g act'(h) s, float64: |g| |s| times
      act' from a bf16 operand: tanh's from the saved y (|d act'/dy| = 2|y| <= 2 times
      y's rounding 2^-9 |y|: 2^-8, taken as 2^-7), sin's as cos(s z) from the kept bf16
      z (|s| times z's rounding 2^-9 |z|, plus 2^-9 for the float math), plus
      gz's own rounding to bf16 for the GEMMs, 2^-8."""
    z = torch.nn.functional.linear(x.double(), w.double(), b.double())
    s = s_full.double()
    act_err = torch.full_like(z, 2.0 ** -7) if activation == "tanh" else \
        2.0 ** -9 * ((s * z).abs() + 1)
    return g.double().abs() * s.abs() * (act_err + 2.0 ** -8)


#: (rows, K, N): K >= 3 (the pair backward's width), odd and prime K and N (an odd N
#: is an odd depth for dx), rows that leave an odd last chunk (dW's depth) and a
#: single row.
BACKWARD_SHAPES = [(67, 3, 5), (131, 7, 1), (66, 9, 2), (65, 13, 17), (130, 50, 50),
                   (67, 49, 64), (129, 127, 101), (1, 33, 33), (300, 128, 128)]


@needs_pairs
@pytest.mark.parametrize("rows, k_in, n_out", BACKWARD_SHAPES,
                         ids=[f"{m}x{k}x{n}" for m, k, n in BACKWARD_SHAPES])
@pytest.mark.parametrize("activation", ["tanh", "sin"])
@pytest.mark.parametrize("slope", ["none", "scalar", "vector"])
def test_pair_backward_against_float64_truth(rows, k_in, n_out, activation, slope, monkeypatch):
    """dx, dW, db, ds of the pair backward within tolerance of the float64 gradients of
    y = act(s z) at the same bf16 inputs (and g), and of the widened path's.

    Tolerance: one bf16 ulp of the output (its own rounding; against the widened path,
    two roundings up to an ulp apart) plus the gz errors E (_gz_error_bound) carried
    through each sum: dx = gz W by E |W|, dW = gz^T x by E^T |x|, db by the column sums
    of E, and ds = sum gh z by those of E / |s| (|x| |W|^T + |b|), which also bounds the
    from-y path's W . (gh^T x) + b sum gh. A wrong pair, a lost row or column, or a
    missing s is O(1) of the output."""
    x, w, b, s_vec = _layer(rows, k_in, n_out, seed=rows * 1000 + k_in * 10 + n_out + 7)
    s = {"none": None, "scalar": s_vec[0].clone(), "vector": s_vec}[slope]
    s_full = torch.ones(n_out).bfloat16() if s is None else s.expand(n_out)
    g = torch.randn(rows, n_out, generator=torch.Generator().manual_seed(rows)).bfloat16()
    need_ds = s is not None
    y, z = _forward(x, w, b, s, activation)
    got = ops.cpp_linear_bwd(g, x, w, b, z, s, y, activation, True, True, True, need_ds)
    truth = list(_backward_truth(x, w, b, s_full, g, activation))
    err = _gz_error_bound(x, w, b, s_full, g, activation)
    z_abs = x.double().abs() @ w.double().abs().t() + b.double().abs()
    bounds = [err @ w.double().abs(), err.t() @ x.double().abs(), err.sum(0),
              (err / s_full.double().abs() * z_abs).sum(0)]
    if need_ds and s.dim() == 0:  # (one slope: its ds is the total over the columns)
        truth[3], bounds[3] = truth[3].sum(), bounds[3].sum()
    names = ["dx", "dW", "db", "ds"][:4 if need_ds else 3]
    for name, value, want, bound in zip(names, got, truth, bounds):
        _assert_bf16_close(name, value, want, bound)
    monkeypatch.setenv("LAAF_CPU_BF16_DOT", "0")
    wide = ops.cpp_linear_bwd(g, x, w, b, z, s, y, activation, True, True, True, need_ds)
    for name, value, other, bound in zip(names, got, wide, bounds):
        _assert_bf16_close(f"{name} against the widened path", value, other.double(), 2 * bound)


@needs_pairs
def test_pair_backward_runs_and_rounds_gz_to_bf16(monkeypatch):
    """The pair backward rounds gz to bf16 for dx = gz W; the widened path keeps it in
    float. With the identity activation, g = 1 and s = (1 + 3 2^-10, 1) (float), gz =
    s; with W's columns (1, -1), dx = gz(:, 0) - gz(:, 1) is 3 2^-10 (a bf16 value)
    on the widened path and 0 on pairs, where 1 + 3 2^-10 rounds to 1 (its excess is
    below half of bf16's ulp 2^-7 at 1). So the test shows that the path runs, and
    pins down the rounding it adds (documented in laaf_cpu_gemm_bf16.h and the README)."""
    x = torch.randn(5, 3).bfloat16()
    w = torch.tensor([[1.0] * 3, [-1.0] * 3]).bfloat16()
    s = torch.tensor([1 + 3 * 2.0 ** -10, 1.0])
    g = torch.ones(5, 2, dtype=torch.bfloat16)
    def dx():
        y, z = _forward(x, w, None, s, "identity")
        return ops.cpp_linear_bwd(g, x, w, None, z, s, y, "identity", True, False, False, False)[0]
    assert dx().eq(0).all(), dx()
    monkeypatch.setenv("LAAF_CPU_BF16_DOT", "0")
    assert dx().eq(3 * 2.0 ** -10).all(), dx()


def _backward(x, w, b, s, g, activation="sin"):
    y, z = _forward(x, w, b, s, activation)
    return ops.cpp_linear_bwd(g, x, w, b, z, s, y, activation, True, True, True, True)


@needs_pairs
@pytest.mark.parametrize("rows", [1, 65, 127])
def test_pair_backward_odd_chunk_reads_no_row_past_x(rows):
    """dW's depth is a chunk's rows: an odd last chunk's last pair holds one row of x
    and of gz, the high halves zero; the row after x (a NaN here, in the same storage)
    is never read, so dW stays finite and equal to the unpadded x's, bit for bit."""
    x, w, b, s = _layer(rows, 37, 20, seed=rows)
    storage = torch.full((rows + 1, 37), float("nan"), dtype=torch.bfloat16)
    storage[:rows] = x
    g = torch.randn(rows, 20).bfloat16()
    got, want = _backward(storage[:rows], w, b, s, g), _backward(x, w, b, s, g)
    assert all(torch.equal(p, q) for p, q in zip(got, want))
    assert all(torch.isfinite(t).all() for t in got)


@needs_pairs
def test_pair_backward_outputs_do_not_depend_on_x_or_w_strides():
    """A strided x's rows are paired value by value (fill_pairs' strided branch), a
    contiguous one's a vector at a time: the same words, so the same bits; and W's
    pair panel is packed through its strides (a transposed W: the same bits)."""
    x, w, b, s = _layer(131, 37, 50, seed=11)
    g = torch.randn(131, 50).bfloat16()
    want = _backward(x, w, b, s, g)
    padded_rows = torch.zeros(131, 40, dtype=torch.bfloat16)[:, 2:39].copy_(x)
    for strided in (x.t().contiguous().t(), padded_rows):
        got = _backward(strided, w, b, s, g)
        assert all(torch.equal(p, q) for p, q in zip(got, want)), strided.stride()
    got = _backward(x, w.t().contiguous().t(), b, s, g)
    assert all(torch.equal(p, q) for p, q in zip(got, want))


@needs_pairs
@pytest.mark.parametrize("activation", ["tanh", "sin"])
def test_pair_backward_thread_count_determinism(activation):
    """dW's groups and their fold depend on the row count alone: 1 and 2 threads give
    the same bits for dx, dW, db and ds."""
    x, w, b, s = _layer(10_000, 50, 50, seed=13)
    g = torch.randn(10_000, 50).bfloat16()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _backward(x, w, b, s, g, activation)
        torch.set_num_threads(2)
        two = _backward(x, w, b, s, g, activation)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(p, q) for p, q in zip(one, two))


def test_pair_backward_empty_batch(monkeypatch):
    """No rows: an empty dx, zero dW, db and ds, on either path."""
    x, w, b, s = _layer(0, 7, 5, seed=1)
    for env in ("1", "0"):
        monkeypatch.setenv("LAAF_CPU_BF16_DOT", env)
        dx, dw, db, ds = _backward(x, w, b, s, torch.zeros(0, 5, dtype=torch.bfloat16))
        assert dx.shape == (0, 7) and dw.eq(0).all() and db.eq(0).all() and ds.eq(0).all()


@needs_pairs
@pytest.mark.parametrize("activation", ["tanh", "sin"])
def test_pair_backward_parts_match_the_full_call(activation):
    """Without dx, W's pairs are not packed (an empty panel of K columns); dW, db and ds
    asked alone, or dx alone, are the full call's, bit for bit."""
    x, w, b, s = _layer(131, 23, 17, seed=17)
    g = torch.randn(131, 17).bfloat16()
    y, z = _forward(x, w, b, s, activation)
    full = ops.cpp_linear_bwd(g, x, w, b, z, s, y, activation, True, True, True, True)
    params = ops.cpp_linear_bwd(g, x, w, b, z, s, y, activation, False, True, True, True)
    dx_only = ops.cpp_linear_bwd(g, x, w, b, z, s, y, activation, True, False, False, False)
    assert params[0].numel() == 0 and all(torch.equal(p, q) for p, q in zip(params[1:], full[1:]))
    assert torch.equal(dx_only[0], full[0])
