"""Roofline: the bytes and FLOPs a pass must move and do, and the ceilings
measured in the same run (a large device copy, a large torch.mm)."""
from __future__ import annotations

import torch

from .cases import Case
from .timing import measure


def model_bytes(case: Case) -> int:
    """Bytes that must move, each tensor once: x and y (inference); + z (training
    forward); g, x, z, dx (backward); x, y, z, g, dx (forward + backward).
    Weights, bias and slope are counted once per pass they appear in."""
    item = torch.finfo(getattr(torch, case.dtype)).bits // 8
    k = case.K if case.op == "linear" else case.N
    x, mn = case.M * k, case.M * case.N
    params = (case.N * case.K + case.N) if case.op == "linear" else 0
    per_pass = {
        "infer": x + mn + params,
        "train_fwd": x + 2 * mn + params,
        "bwd": 2 * mn + 2 * x + 2 * params,
        "fwd_bwd": 2 * x + 3 * mn + 2 * params,
    }
    return per_pass[case.pass_] * item


def model_flops(case: Case) -> int:
    """GEMM FLOPs: 2MNK forward, 4MNK backward (dx and dW); 0 for the activation op."""
    if case.op != "linear":
        return 0
    gemm = 2 * case.M * case.N * case.K
    return {"infer": gemm, "train_fwd": gemm, "bwd": 2 * gemm, "fwd_bwd": 3 * gemm}[case.pass_]


def _copy_gbps(device: str, quick: bool) -> float:
    """Read + write bandwidth of one large device-to-device copy."""
    n_bytes = (1 << 30) if device == "cuda" else (1 << 28)
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    t_copy, _, _ = measure(lambda: dst.copy_(src), device, quick)
    return 2 * n_bytes / (t_copy * 1e-3) / 1e9


def ceilings(device: str, quick: bool) -> dict:
    """Copy bandwidth (GB/s, read + write) and GEMM throughput (TFLOP/s, fp32 and bf16)."""
    out = {"copy_gbps": _copy_gbps(device, quick)}
    size = 8192 if device == "cuda" else 1024
    for dtype in ("float32", "bfloat16"):
        a = torch.randn(size, size, device=device).to(getattr(torch, dtype))
        b = torch.randn(size, size, device=device).to(getattr(torch, dtype))
        t_mm, _, _ = measure(lambda: torch.mm(a, b), device, quick)
        out[f"mm_tflops_{dtype}"] = 2 * size ** 3 / (t_mm * 1e-3) / 1e12
    return out
