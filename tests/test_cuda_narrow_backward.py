"""The CUDA backend's fused narrow backward (csrc/laaf_cuda_narrow_bwd.cu): one kernel
forms z = x W^T + b again and every gradient, so that a narrow layer's training
forward keeps no z. Checked against the backend's other path, cuBLAS on a z formed
again (LAAF_CUDA_NARROW=0), output by output; the reference comparisons of every
shape, activation and slope kind are in test_fused_linear.py (which runs this kernel
for every narrow case). On the GPU, and on the CPU through the CUDA emulation."""
import pytest
import torch

import laaf_kernels
from fused_cases import TARGETS
from helpers import assert_z_is_the_affine_map, linear_inputs

CUDA_TARGETS = [t for t in TARGETS if t.values[0][0] == "cuda"]
SCALE = 2.0

#: (M, K, N): tiles that wrap the emulation's blocks (3 SMs), one column group and
#: four, N = 1 and K = 1 (a PINN's last and first layers), the widest fp64 layers,
#: a partial last tile.
SHAPES = [(203, 50, 29), (131, 37, 100), (1601, 50, 29), (67, 2, 1), (45, 1, 128),
          (70, 64, 128), (70, 128, 64), (64, 33, 65)]


def _layer(M, K, N, dtype, device, slope, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=gen, dtype=torch.float64)
    w = torch.randn(N, K, generator=gen, dtype=torch.float64) / K ** 0.5
    b = torch.randn(N, generator=gen, dtype=torch.float64)
    g = torch.randn(M, N, generator=gen, dtype=torch.float64)
    s = {"none": None, "scalar": torch.tensor(1.3, dtype=torch.float64),
         "vector": torch.rand(N, generator=gen, dtype=torch.float64) + 0.5}[slope]
    cast = lambda t: None if t is None else t.to(dtype=dtype, device=device)  # noqa: E731
    return cast(x), cast(w), cast(b), cast(g), cast(s)


def _both_paths(x, w, b, g, s, activation, need, monkeypatch):
    """(fused, cuBLAS) outputs of cuda_linear_bwd on a forward that kept no z."""
    y, z = torch.ops.laaf.cuda_linear_fwd(x, w, b, s, activation, False)
    assert z.numel() == 0
    fused = torch.ops.laaf.cuda_linear_bwd(g, x, w, b, z, s, None, activation, *need)
    monkeypatch.setenv("LAAF_CUDA_NARROW", "0")
    wide = torch.ops.laaf.cuda_linear_bwd(g, x, w, b, z, s, None, activation, *need)
    monkeypatch.delenv("LAAF_CUDA_NARROW")
    return fused, wide


@pytest.mark.parametrize("target", CUDA_TARGETS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "m{}_k{}_n{}".format(*s))
@pytest.mark.parametrize("slope", ["vector", "scalar", "none"])
def test_fused_backward_is_the_cublas_path_fp64(target, shape, slope, monkeypatch):
    """Every gradient, in fp64: the two paths sum in other orders (dW over blocks of
    tiles, then over blocks; cuBLAS its own way), so they agree to rounding. M = 1601
    and K = N = 50 sums 1601 products per dW entry: 1e-12 relative is ~50 ulp."""
    x, w, b, g, s = _layer(*shape, torch.float64, target[1], slope, seed=sum(shape))
    fused, wide = _both_paths(x, w, b, g, s, "tanh", (True,) * 4, monkeypatch)
    for name, p, q in zip(("dx", "dW", "db", "ds"), fused, wide):
        if name == "ds" and s is None:
            assert p.numel() == 0 and q.numel() == 0
            continue
        assert p.shape == q.shape, name
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("target", CUDA_TARGETS)
@pytest.mark.parametrize("need", [(True, False, False, False), (False, True, False, False),
                                  (False, False, True, True), (False, True, False, True)],
                         ids=["dx", "dW", "db_ds", "dW_ds"])
def test_fused_backward_forms_only_what_is_needed(target, need, monkeypatch):
    """An output not asked for is an empty tensor; the others are unchanged."""
    x, w, b, g, s = _layer(131, 37, 100, torch.float64, target[1], "vector", seed=3)
    fused, wide = _both_paths(x, w, b, g, s, "sin", need, monkeypatch)
    for wanted, p, q in zip(need, fused, wide):
        if wanted:
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
        else:
            assert p.numel() == 0 and q.numel() == 0


@pytest.mark.parametrize("target", CUDA_TARGETS)
@pytest.mark.parametrize("need", [(True,) * 4, (False, True, False, False),
                                  (False, False, True, False), (False, False, False, True),
                                  (True, False, True, True)],
                         ids=["all", "dW", "db", "ds", "dx_db_ds"])
def test_every_sum_is_written_where_new_memory_is_nan(target, need, new_tensors_hold_nan,
                                                      monkeypatch):
    """dW, db and ds are folded from one array of per-block partials in one launch
    (fold_parts_into), and the cuBLAS path's db and ds in another: with new memory
    NaN, every wanted output must still be the float64 reference's. M = 1601 over
    K = 37, N = 100 gives a partial row per block and 4 column groups. The bound: a dW
    entry sums 1601 products of size ~1 (|x| ~ 1, |g s act'| <= ~1.5), so the
    orders of summation can differ by ~1601 * 2.2e-16 * 40 ~ 1.4e-11 at worst."""
    x, w, b, g, s = _layer(1601, 37, 100, torch.float64, target[1], "vector", seed=17)
    fused, wide = _both_paths(x, w, b, g, s, "tanh", need, monkeypatch)
    xr, wr, br, sr = (t.detach().cpu().requires_grad_() for t in (x, w, b, s))
    yr = torch.tanh(sr * torch.addmm(br, xr, wr.t()))
    expected = torch.autograd.grad(yr, (xr, wr, br, sr), g.cpu())
    for path, outputs in (("fused", fused), ("cuBLAS", wide)):
        for name, wanted, p, q in zip(("dx", "dW", "db", "ds"), need, outputs, expected):
            if not wanted:
                assert p.numel() == 0, f"{path} {name}"
                continue
            torch.testing.assert_close(p.cpu(), q, rtol=1e-10, atol=1e-10,
                                       msg=lambda m: f"{path} {name}: {m}")


@pytest.mark.parametrize("target", CUDA_TARGETS)
def test_both_paths_take_non_contiguous_x_weight_and_bias(target, monkeypatch):
    """x, W and b as strided views (every other column of a wider tensor, and a
    transposed W) give the bits of their contiguous copies, on the fused kernel and
    on the cuBLAS path (which a device without room for the kernel takes)."""
    x, w, b, g, s = _layer(203, 37, 29, torch.float64, target[1], "vector", seed=11)
    x_view = torch.stack((x, -x), dim=-1).flatten(-2)[:, ::2]
    w_view = w.t().contiguous().t()
    b_view = torch.stack((b, -b), dim=-1).flatten()[::2]
    assert not (x_view.is_contiguous() or w_view.is_contiguous() or b_view.is_contiguous())
    strided = _both_paths(x_view, w_view, b_view, g, s, "tanh", (True,) * 4, monkeypatch)
    dense = _both_paths(x, w, b, g, s, "tanh", (True,) * 4, monkeypatch)
    for path, outputs, expected in zip(("fused", "cuBLAS"), strided, dense):
        for name, p, q in zip(("dx", "dW", "db", "ds"), outputs, expected):
            assert torch.equal(p, q), f"{path} {name}"


@pytest.mark.parametrize("target", CUDA_TARGETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("activation", ["tanh", "gelu", "leaky_relu"])
@pytest.mark.parametrize("shape", [(1601, 50, 29), (70, 128, 128)], ids=["m1601", "k128_n128"])
def test_fused_backward_low_precision(target, dtype, activation, shape, monkeypatch):
    """fp32 and bf16, up to the widest narrow layer. Both paths sum in float, in other
    orders, over L terms (L = N for dx, M for dW, db and ds), and round once to the
    output's type: they may differ by ~sqrt(L) float ulp of the gradient's scale (a
    random walk of roundings) plus one ulp of the output's type. Measured at most
    2.9 fp32 and 0.92 bf16 ulp of the scale; one lost row would move dW by ~1/sqrt(M)
    of it."""
    M, _, N = shape
    x, w, b, g, s = _layer(*shape, dtype, target[1], "vector", seed=5)
    fused, wide = _both_paths(x, w, b, g, s, activation, (True,) * 4, monkeypatch)
    eps, eps_float = torch.finfo(dtype).eps, torch.finfo(torch.float32).eps
    for name, length, p, q in zip(("dx", "dW", "db", "ds"), (N, M, M, M), fused, wide):
        scale = q.double().abs().max().item()
        tol = (eps + length ** 0.5 * eps_float) * scale
        torch.testing.assert_close(p.double(), q.double(), rtol=0, atol=tol,
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("target", CUDA_TARGETS)
def test_training_forward_keeps_z_only_off_the_fused_backward(target, monkeypatch):
    """A narrow layer (N, K <= 128; in fp64 not both above 64) keeps no z: autograd
    saves x and s, half of eager's x and z at K = N (tanh also saves y there). Any
    other layer keeps z in training; no layer keeps one in inference. The policy
    (cuda_backend.stores_z, which the traced graph holds) says so, and so does the
    extension's own (cuda_linear_stores_z). The forward writes z exactly as asked,
    on the narrow kernel and on the cuBLAS path that LAAF_CUDA_NARROW=0 selects."""
    from bench.memory import saved_bytes
    from laaf_kernels.ops import cuda_backend
    device = target[1]
    for N, K, dtype, keeps in ((50, 50, torch.float32, False), (50, 50, torch.float64, False),
                               (128, 128, torch.float32, False), (70, 64, torch.float64, False),
                               (70, 100, torch.float64, True), (131, 50, torch.float32, True),
                               (50, 129, torch.bfloat16, True)):
        assert cuda_backend.stores_z(N, K, True, dtype) == keeps, (N, K, dtype)
        assert torch.ops.laaf.cuda_linear_stores_z(N, K, True, dtype) == keeps, (N, K, dtype)
        assert not cuda_backend.stores_z(N, K, False, dtype)
        x, w, b, _, s = _layer(37, K, N, dtype, device, "vector", seed=N + K)
        for narrow in ("1", "0"):
            monkeypatch.setenv("LAAF_CUDA_NARROW", narrow)
            y, z = torch.ops.laaf.cuda_linear_fwd(x, w, b, s, "tanh", True)
            y_alone, no_z = torch.ops.laaf.cuda_linear_fwd(x, w, b, s, "tanh", False)
            assert no_z.numel() == 0 and torch.equal(y, y_alone), (N, K, dtype, narrow)
            assert_z_is_the_affine_map(z, x, w, b, (N, K, dtype, narrow))
        monkeypatch.delenv("LAAF_CUDA_NARROW")
    x, w, b, _, _ = _layer(257, 50, 50, torch.float32, device, "vector", seed=9)
    w, b = w.requires_grad_(), b.requires_grad_()
    a = (torch.rand(50, dtype=torch.float32, device=device) + 0.5).requires_grad_()
    ours = saved_bytes(lambda: laaf_kernels.laaf_linear(x, w, b, a, activation="tanh",
                                                        scale=SCALE, backend="cuda"), (w, b, a))
    assert ours == 257 * 50 * 4 + 50 * 4  # x and s = scale * a


@pytest.mark.parametrize("target", CUDA_TARGETS)
def test_fused_backward_through_autograd_and_an_empty_batch(target):
    """Through laaf_linear: the reference's gradients (fp64), and an empty batch gives
    zero gradients of the right shapes."""
    device = target[1]
    x, w, b, a = linear_inputs(((131,), 37, 29, False), "vector", 21, SCALE, torch.float64,
                               device)
    y = laaf_kernels.laaf_linear(x, w, b, a, scale=SCALE, backend="cuda")
    ref = laaf_kernels.reference.laaf_linear(x, w, b, a, scale=SCALE)
    g = torch.randn_like(y)
    for p, q in zip(torch.autograd.grad(y, (x, w, b, a), g),
                    torch.autograd.grad(ref, (x, w, b, a), g)):
        torch.testing.assert_close(p, q, rtol=1e-11, atol=1e-11)
    empty = x[:0].detach().requires_grad_()
    y0 = laaf_kernels.laaf_linear(empty, w, b, a, scale=SCALE, backend="cuda")
    grads = torch.autograd.grad(y0.sum(), (empty, w, b, a))
    assert [t.shape for t in grads] == [empty.shape, w.shape, b.shape, a.shape]
    assert all((t == 0).all() for t in grads)


@pytest.mark.parametrize("target", CUDA_TARGETS)
def test_a_kernel_launches_at_every_shared_memory_size_it_meets(target, monkeypatch):
    """The narrow forward's shared memory grows with K, and its grid (opt-in limit,
    occupancy) is asked of the driver once per (kernel, device, size) and kept
    (persistent_grid). One kernel (fp64, N = 50, softplus, which no other test here
    runs) meets K = 128, then smaller K, then 128 again: the kept opt-in must still
    admit the larger launch (the emulation rejects a launch over the kernel's limit)
    and every size must give the reference's y; the backward runs alongside."""
    device = target[1]
    for K in (128, 3, 11, 128, 97, 3):
        x, w, b, g, s = _layer(203, K, 50, torch.float64, device, "vector", seed=K)
        y, _ = torch.ops.laaf.cuda_linear_fwd(x, w, b, s, "softplus", False)
        expected = torch.nn.functional.softplus(s * torch.addmm(b, x, w.t()))
        torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12, msg=lambda m: f"K={K}: {m}")
        fused, wide = _both_paths(x, w, b, g, s, "softplus", (True,) * 4, monkeypatch)
        for p, q in zip(fused, wide):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12, msg=lambda m: f"K={K}: {m}")
