"""Memory: bytes autograd saves for backward (any device) and GPU peak memory."""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch


def saved_bytes(fn: Callable[[], object], parameters: Iterable[torch.Tensor]) -> int:
    """Bytes of distinct storages saved for backward while ``fn`` runs, excluding
    the storages of ``parameters`` (weights, bias, slope: kept alive anyway)."""
    skip = {p.untyped_storage().data_ptr() for p in parameters}
    storages = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def peak_bytes(fn: Callable[[], object], device: str) -> Optional[int]:
    """Peak GPU memory allocated while ``fn`` runs, above what was allocated before."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base
