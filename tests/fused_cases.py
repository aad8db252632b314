"""Shared set-up of the fused-backend tests: which (backend, device) targets run
here, and how a call of a backend is compared with the reference."""
import os

import pytest
import torch

import cuda_emulation
import laaf_kernels
from helpers import assert_close_to_truth, upcast
from laaf_kernels import reference
from laaf_kernels.activations import evaluate
from laaf_kernels.ops.autograd import sum_like_slope

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
TRITON_READY = "triton" in laaf_kernels.available_backends()


def _cpp_problem():
    """Why the C++ extension is unusable here, or None. With LAAF_REQUIRE_CPP=1 (CI)
    a failed build is an error, not a skip."""
    from laaf_kernels.ops import extension

    problem = extension.problem()
    if problem and os.environ.get("LAAF_REQUIRE_CPP") == "1":
        raise RuntimeError(f"LAAF_REQUIRE_CPP=1 but {problem}")
    return problem


CPP_PROBLEM = _cpp_problem()


def _cuda_problem():
    """Why the CUDA kernels cannot run here, or None. With LAAF_REQUIRE_CUDA=1 (the
    GPU script) a failed build on a machine with a GPU is an error, not a skip."""
    from laaf_kernels.ops import extension

    problem = extension.cuda_problem()
    if problem and torch.cuda.is_available() and os.environ.get("LAAF_REQUIRE_CUDA") == "1":
        raise RuntimeError(f"LAAF_REQUIRE_CUDA=1 but {problem}")
    return problem


CUDA_PROBLEM = _cuda_problem()
#: Why the CUDA kernels cannot run emulated on the CPU here (tests/cuda_emulation.py).
CUDA_EMULATION_PROBLEM = cuda_emulation.problem()

#: (backend, device): Triton on CPU tensors in its interpreter (CI) and on CUDA
#: tensors compiled (GPU box); the C++ kernels on CPU tensors; the CUDA kernels,
#: on a GPU, and emulated on the CPU where there is none.
TARGETS = [
    pytest.param(("triton", "cpu"), id="triton-cpu", marks=pytest.mark.skipif(
        not (TRITON_READY and INTERPRETING),
        reason="Triton on CPU tensors needs its interpreter (TRITON_INTERPRET=1); "
               "off here because the kernels run compiled on a GPU")),
    pytest.param(("triton", "cuda"), id="triton-cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not (TRITON_READY and torch.cuda.is_available() and not INTERPRETING),
        reason="no CUDA device: the compiled Triton kernels are not run here")]),
    pytest.param(("cpp", "cpu"), id="cpp-cpu", marks=pytest.mark.skipif(
        CPP_PROBLEM is not None, reason=f"cpp backend: {CPP_PROBLEM}")),
    pytest.param(("cuda", "cuda"), id="cuda-cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        CUDA_PROBLEM is not None, reason=f"cuda backend: {CUDA_PROBLEM}")]),
    # conftest lets the "cuda" backend take CPU tensors while a test of this target runs
    pytest.param(cuda_emulation.TARGET, id="cuda-emulated", marks=pytest.mark.skipif(
        CUDA_EMULATION_PROBLEM is not None, reason=f"cuda emulation: {CUDA_EMULATION_PROBLEM}")),
]
#: The Triton targets alone (tests of Triton-only behaviour).
TRITON_TARGETS = TARGETS[:2]


def compare_linear(backend, x, w, b, a, activation, scale, dtype_tol_name=""):
    """Run the triton backend and the reference (in x's dtype and in float64) on
    the same inputs, the same upstream gradient, and compare y and each gradient."""
    y = laaf_kernels.laaf_linear(x, w, b, a, activation=activation, scale=scale, backend=backend)
    base = reference.laaf_linear(x, w, b, a, activation=activation, scale=scale)
    x64, w64, b64, a64 = upcast((x, w, b, a))
    truth = reference.laaf_linear(x64, w64, b64, a64, activation=activation, scale=scale)
    m_rows, k_in, n_out = x.numel() // max(1, x.shape[-1]), x.shape[-1], w.shape[0]
    assert_close_to_truth("y", y, truth, base, k_in)

    gen = torch.Generator().manual_seed(99)
    g = torch.randn(truth.shape, generator=gen, dtype=torch.float64).to(x.device)
    names = ("dx", "dW", "db", "da")
    lengths = (n_out, m_rows, m_rows, m_rows * (n_out if (a is not None and a.dim() == 0) else 1))
    inputs = [(n, t, t64, L) for n, t, t64, L in zip(names, (x, w, b, a), (x64, w64, b64, a64), lengths)
              if t is not None and t.requires_grad]
    if not inputs:
        return
    grads = torch.autograd.grad(y, [t for _, t, _, _ in inputs], g.to(y.dtype))
    base_grads = torch.autograd.grad(base, [t for _, t, _, _ in inputs], g.to(base.dtype))
    true_grads = torch.autograd.grad(truth, [t for _, _, t, _ in inputs], g)
    for (name, _, _, length), got, bg, tg in zip(inputs, grads, base_grads, true_grads):
        size = (_da_term_size(got.dtype, torch.nn.functional.linear(x64, w64, b64), a64, g,
                              activation, scale, -1) if name == "da" else None)
        assert_close_to_truth(f"{name} ({activation}{dtype_tol_name})", got, tg, bg, length, size)


def _da_term_size(dtype, z64, a64, g, activation, scale, dim):
    """For a float64 da, the largest sum of |g act'(h) n z|, h = n a z, over what one da
    sums (all of z for a 0-d slope, all but ``dim`` otherwise); None in other dtypes.
    da's terms cancel, and in float64, where the truth is itself a float64 sum (the
    baseline's error is then zero), their size, not |da|, bounds the rounding of
    either order of summation (assert_close_to_truth's ``scale``). In a narrower
    dtype the baseline's own error already covers that."""
    if dtype != torch.float64:
        return None
    with torch.no_grad():
        dim = dim % max(1, z64.dim())  # (a 0-d z has a 0-d slope: every term is summed)
        h = scale * reference.along(a64, z64.dim(), dim) * z64
        terms = (g * evaluate(activation, "d1", h) * scale * z64).abs()
        return sum_like_slope(terms, a64, dim).max().item()


def compare_activation(backend, z, a, activation, scale, dim):
    """As ``compare_linear``, for laaf_activation."""
    y = laaf_kernels.laaf_activation(z, a, activation=activation, scale=scale, dim=dim,
                                     backend=backend)
    base = reference.laaf_activation(z, a, activation=activation, scale=scale, dim=dim)
    z64, a64 = upcast((z, a))
    truth = reference.laaf_activation(z64, a64, activation=activation, scale=scale, dim=dim)
    assert_close_to_truth("y", y, truth, base, 1)
    gen = torch.Generator().manual_seed(98)
    g = torch.randn(truth.shape, generator=gen, dtype=torch.float64).to(z.device)
    pairs = [(n, t, t64) for n, t, t64 in (("dz", z, z64), ("da", a, a64))
             if t is not None and t.requires_grad]
    grads = torch.autograd.grad(y, [t for _, t, _ in pairs], g.to(y.dtype))
    base_grads = torch.autograd.grad(base, [t for _, t, _ in pairs], g.to(base.dtype))
    true_grads = torch.autograd.grad(truth, [t for _, _, t in pairs], g)
    reduced = z.numel() // (a.numel() if a is not None else 1)
    for (name, _, _), got, bg, tg in zip(pairs, grads, base_grads, true_grads):
        size = (_da_term_size(got.dtype, z64, a64, g, activation, scale, dim) if name == "da"
                else None)
        assert_close_to_truth(f"{name} ({activation})", got, tg, bg,
                              reduced if name == "da" else 1, size)


#: The targets with kernels for the flexible activations (all of them).
FLEXIBLE_TARGETS = TARGETS


def compare_flexible(backend, z, params, kind, dim, label=""):
    """As ``compare_activation``, for flexible_activation: y, dz and dparams
    (a sum over z.numel() / C terms per channel)."""
    y = laaf_kernels.flexible_activation(z, params, kind=kind, dim=dim, backend=backend)
    base = reference.flexible_activation_impl(z, params, kind, dim)
    z64, p64 = upcast((z, params))
    truth = reference.flexible_activation_impl(z64, p64, kind, dim)
    assert_close_to_truth(f"y ({kind}{label})", y, truth, base, 1)
    gen = torch.Generator().manual_seed(97)
    g = torch.randn(truth.shape, generator=gen, dtype=torch.float64).to(z.device)
    grads = torch.autograd.grad(y, (z, params), g.to(y.dtype))
    base_grads = torch.autograd.grad(base, (z, params), g.to(base.dtype))
    true_grads = torch.autograd.grad(truth, (z64, p64), g)
    lengths = (1, z.numel() // max(1, params.shape[1]))
    for name, got, bg, tg, length in zip(("dz", "dparams"), grads, base_grads, true_grads, lengths):
        assert_close_to_truth(f"{name} ({kind}{label})", got, tg, bg, length)
