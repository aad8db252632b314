"""Element-wise ops in a tensor's memory order.

A dense tensor whose dims lie in memory in another order than its shape's, such as
a channels_last NCHW tensor (memory order N, H, W, C) or a transposed one, is
handed to the kernels as the permuted view that *is* contiguous: no copy is made,
the channel ``dim`` is renumbered to its place in that view (for channels_last,
the last: the slope runs along the columns), and the output, permuted back, has
the input's strides, as PyTorch's own element-wise ops give. A contiguous
tensor, or one with gaps (a strided slice), goes to the kernels as it is.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

__all__ = ["memory_order", "in_memory_order"]


def memory_order(t: torch.Tensor) -> Optional[Tuple[int, ...]]:
    """The permutation ``p`` of t's dims with ``t.permute(p)`` contiguous: dims by
    decreasing stride (ties in shape order). None where t is contiguous already,
    or where no permutation is (t has gaps or overlaps)."""
    if t.dim() < 2 or t.is_contiguous():
        return None
    order = []  # an insertion sort, not sorted(): torch.compile cannot sort on SymInt keys
    for d in range(t.dim()):
        at = len(order)
        while at > 0 and t.stride(order[at - 1]) < t.stride(d):
            at -= 1
        order.insert(at, d)
    order = tuple(order)
    return order if t.permute(order).is_contiguous() else None


def in_memory_order(op: Callable[[torch.Tensor, int], torch.Tensor], z: torch.Tensor,
                    dim: int) -> torch.Tensor:
    """``op(z, dim)``, run on z's memory order (see the module docstring) and
    returned in z's shape. ``op`` maps a tensor and its channel dim to an output of
    the same shape; autograd sees two permutes, free views, around it."""
    order = memory_order(z)
    if order is None:
        return op(z, dim)
    y = op(z.permute(order), order.index(dim % z.dim()))
    return y.permute(tuple(order.index(d) for d in range(z.dim())))
