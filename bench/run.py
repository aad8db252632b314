"""``make bench``: time the library's ops on this machine, every available
backend side by side with eager PyTorch.

Timing: ``torch.utils.benchmark.Timer.blocked_autorange`` (warm-up included),
reporting the median. ``--full`` runs larger shapes.
"""
from __future__ import annotations

import argparse
import platform

import torch
import torch.nn.functional as F
import torch.utils.benchmark as tb

import laaf_kernels as L

QUICK_SHAPES = [(16384, 50, 50), (100_000, 50, 50)]
FULL_SHAPES = QUICK_SHAPES + [(2 ** 17, 128, 128), (8192, 1024, 1024)]


def eager(x, w, b, a, scale):
    return torch.tanh(scale * a * F.linear(x, w, b))


def median_ms(fn, min_run_time: float) -> float:
    return tb.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(
        min_run_time=min_run_time).median * 1e3


def forward_backward(op):
    def run():
        op().sum().backward()
    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="larger shapes, longer timing")
    args = parser.parse_args(argv)
    shapes = FULL_SHAPES if args.full else QUICK_SHAPES
    min_run = 1.0 if args.full else 0.3
    print(f"laaf_kernels {L.__version__} | torch {torch.__version__} | "
          f"{platform.processor() or platform.machine()} | {torch.get_num_threads()} threads")
    print(f"backends available: {', '.join(L.available_backends())}")
    print(f"{'M':>8} {'K':>5} {'N':>5} {'provider':>10} {'fwd ms':>9} {'fwd+bwd ms':>11}")
    torch.manual_seed(0)
    for m, k, n in shapes:
        x = torch.randn(m, k)
        w = (torch.randn(n, k) / k ** 0.5).requires_grad_()
        b = torch.randn(n).requires_grad_()
        a = torch.full((n,), 0.1).requires_grad_()
        providers = {"eager": lambda: eager(x, w, b, a, 10.0)}
        for name in L.available_backends():
            providers[name] = (lambda name=name: L.laaf_linear(x, w, b, a, scale=10.0, backend=name))
        for name, op in providers.items():
            with torch.no_grad():
                fwd = median_ms(op, min_run)
            fwd_bwd = median_ms(forward_backward(op), min_run)
            print(f"{m:>8} {k:>5} {n:>5} {name:>10} {fwd:>9.3f} {fwd_bwd:>11.3f}")


if __name__ == "__main__":
    main()
