"""Providers: the implementations measured side by side for a case.

* ``backend:<name>``   laaf_kernels with that backend
* ``eager``            ``act(scale * a * F.linear(x, W, b))`` in eager PyTorch
* ``compile``          torch.compile of that eager function (default mode)
* ``compile-max``      torch.compile(mode="max-autotune"), GPU, linear infer and fwd_bwd
* ``addmm_act``        torch._addmm_activation (cuBLASLt's relu epilogue): relu, no slope
* ``mm``               bare torch.mm(x, W^T): the GEMM floor, no bias, no activation
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

import laaf_kernels
from laaf_kernels import reference
from laaf_kernels.activations import get as get_activation
from laaf_kernels.flexible import get_kind

from .cases import Case

SCALE = 10.0
BASELINES = ("eager", "compile", "compile-max", "addmm_act", "mm")


def all_providers(device: str) -> List[str]:
    """Every provider name valid on ``device`` (backends that are available there)."""
    dev = torch.device(device)
    backends = [f"backend:{b}" for b in laaf_kernels.available_backends()
                if laaf_kernels.ops.dispatch._why_unavailable(b, dev) is None]
    if device == "cpu":  # the Triton interpreter is a correctness tool, not a contender
        backends = [b for b in backends if b != "backend:triton"]
    baselines = [b for b in BASELINES if device == "cuda" or b not in ("compile-max", "addmm_act")]
    return backends + baselines


def make_inputs(case: Case, device: str, requires_grad: bool, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Fresh random inputs for ``case`` (slope near 1/scale, never zero)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    dtype = getattr(torch, case.dtype)

    def rand(*shape, scale=1.0, shift=0.0):
        t = (torch.randn(*shape, generator=gen) * scale + shift).to(device=device, dtype=dtype)
        return t.requires_grad_(requires_grad)

    n_feat = case.N
    tensors = {}
    if case.op == "flexible":  # params near the kind's baseline, perturbed
        tensors["x"] = rand(case.M, n_feat)
        init = torch.tensor(get_kind(case.activation).init)[:, None].repeat(1, n_feat)
        params = init + 0.1 * torch.randn(2, n_feat, generator=gen)
        tensors["a"] = params.to(device=device, dtype=dtype).requires_grad_(requires_grad)
        return tensors
    if case.op == "conv_activation":
        x = rand(*case.nchw).detach().to(memory_format=torch.channels_last)
        tensors["x"] = x.requires_grad_(requires_grad)
    elif case.op == "linear":
        tensors["x"] = rand(case.M, case.K)
        tensors["w"] = rand(case.N, case.K, scale=case.K ** -0.5)
        tensors["b"] = rand(case.N)
    else:
        tensors["x"] = rand(case.M, n_feat)
    if case.slope != "none":
        shape = () if case.slope == "scalar" else (n_feat,)
        tensors["a"] = rand(*shape, scale=0.01, shift=1.0 / SCALE)
    return tensors


def _eager_fn(case: Case) -> Callable:
    if case.op == "flexible":  # the composition of torch ops (the reference)
        return lambda x, params: reference.flexible_activation_impl(x, params, case.activation, 1)
    act = get_activation(case.activation).torch_fn
    if case.op == "linear":
        if case.slope == "none":
            return lambda x, w, b: act(F.linear(x, w, b))
        return lambda x, w, b, a: act(SCALE * a * F.linear(x, w, b))
    if case.slope == "none":
        return lambda x: act(x)
    if case.op == "conv_activation":
        return lambda x, a: act(SCALE * a[:, None, None] * x)
    return lambda x, a: act(SCALE * a * x)


def _backend_fn(case: Case, backend: str) -> Callable:
    if case.op == "flexible":
        return lambda x, params: laaf_kernels.flexible_activation(
            x, params, kind=case.activation, backend=backend)
    kw = dict(activation=case.activation, scale=SCALE, backend=backend)
    if case.op == "conv_activation":
        return lambda x, a: laaf_kernels.laaf_activation(x, a, dim=1, **kw)
    if case.op == "linear":
        if case.slope == "none":
            return lambda x, w, b: laaf_kernels.laaf_linear(x, w, b, None, **kw)
        return lambda x, w, b, a: laaf_kernels.laaf_linear(x, w, b, a, **kw)
    if case.slope == "none":
        return lambda x: laaf_kernels.laaf_activation(x, None, **kw)
    return lambda x, a: laaf_kernels.laaf_activation(x, a, **kw)


def make_fn(provider: str, case: Case) -> Optional[Callable]:
    """The function a provider runs for ``case``, or None if it does not apply."""
    if provider.startswith("backend:"):
        return _backend_fn(case, provider.split(":", 1)[1])
    if provider == "eager":
        return _eager_fn(case)
    if provider in ("compile", "compile-max"):
        if provider == "compile-max" and not (case.op == "linear" and
                                              case.pass_ in ("infer", "fwd_bwd")):
            return None  # max-autotune takes minutes per shape: only where the targets are
        torch._dynamo.reset()
        mode = "max-autotune" if provider == "compile-max" else None
        return torch.compile(_eager_fn(case), mode=mode, dynamic=False)
    if provider == "addmm_act":
        if case.op != "linear" or case.activation != "relu" or case.slope != "none":
            return None
        return lambda x, w, b: torch._addmm_activation(b, x, w.t())
    if provider == "mm":
        if case.op != "linear" or case.pass_ not in ("infer", "train_fwd"):
            return None
        return lambda x, w, b, *rest: torch.mm(x, w.t())
    raise ValueError(f"unknown provider {provider!r}")
