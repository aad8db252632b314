"""Timers. GPU: CUDA events via triton.testing.do_bench (warm-up, L2 flushed
between runs) cycling through copies of the inputs when they fit in L2.
CPU: torch.utils.benchmark's blocked_autorange, the providers of a case taken
in turn over several rounds, so that a burst of load from elsewhere on a
shared machine hits all of them rather than one. Both report the median and
the 20th/80th percentiles, in milliseconds."""
from __future__ import annotations

from typing import Callable, Dict, Sequence, Tuple

import numpy as np
import torch
import torch.utils.benchmark as tb

Quantiles = Tuple[float, float, float]


def time_gpu(fn: Callable[[], object], rep_ms: int = 100) -> Quantiles:
    from triton.testing import do_bench

    median, p20, p80 = do_bench(fn, warmup=25, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
    return float(median), float(p20), float(p80)


def _cpu_times_ms(fn: Callable[[], object], min_run_time: float) -> list:
    # torch.utils.benchmark.Timer runs on ONE thread unless told otherwise.
    timer = tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return [t / m.number_per_run * 1e3 for t in m.raw_times]


def _quantiles(times) -> Quantiles:
    times = np.asarray(times)
    return float(np.median(times)), float(np.quantile(times, 0.2)), float(np.quantile(times, 0.8))


def time_cpu(fn: Callable[[], object], min_run_time: float = 0.5) -> Quantiles:
    fn()  # warm-up (first-call allocations, lazy init)
    return _quantiles(_cpu_times_ms(fn, min_run_time))


def time_interleaved(fns: Dict[str, Callable[[], object]], device: str,
                     quick: bool) -> Dict[str, Quantiles]:
    """Quantiles per provider; on CPU the providers take turns over several rounds."""
    if device == "cuda":
        return {name: time_gpu(fn, rep_ms=40) for name, fn in fns.items()}
    rounds = 5
    per_round = 0.15 if quick else 0.4
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name] += _cpu_times_ms(fn, per_round)
    return {name: _quantiles(t) for name, t in times.items()}


def rotating(fns: Sequence[Callable[[], object]]) -> Callable[[], object]:
    """Call ``fns`` in turn: each call sees inputs not touched by the previous one."""
    state = {"i": 0}

    def call():
        i = state["i"]
        state["i"] = (i + 1) % len(fns)
        return fns[i]()

    return call


def copies_for_cold_l2(bytes_per_set: int, device: str) -> int:
    """How many input sets to rotate through so that their total exceeds 2x L2."""
    if device != "cuda":
        return 1
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 * 2 ** 20)
    return int(min(8, max(1, -(-2 * l2 // max(1, bytes_per_set)))))


def measure(fn: Callable[[], object], device: str, quick: bool) -> Quantiles:
    if device == "cuda":
        return time_gpu(fn, rep_ms=50 if quick else 100)
    return time_cpu(fn, min_run_time=0.3 if quick else 1.0)
