"""The "cuda" backend: the CUDA kernels of ``csrc/laaf_cuda.cu`` (torch.ops.laaf.cuda_*),
with fake implementations and the shared autograd of :mod:`laaf_kernels.ops.autograd`.

Import this module only once :func:`laaf_kernels.ops.extension.cuda_problem` has
returned None. The kernels take float32, float64, float16 and bfloat16 (computing
in float32, or float64 for float64 inputs).

What the forward keeps for the backward: nothing but x for a narrow layer (N, K <=
128; in fp64 not both above 64), whose backward is one kernel that forms z again on
chip (csrc/laaf_cuda_narrow_bwd.cu), as the Triton backend's does; z for any other
layer in training (its backward's epilogue reads g and z once). y is not saved: on a
GPU, recomputing act'(h) from z is cheaper than reading one more tensor.
"""
from __future__ import annotations

from typing import Optional

import torch

from .autograd import (make_activation, make_flexible, make_linear, register_backend_ops,
                       register_flexible_ops)
from .grad_y import make_grad_y, register_grad_y_ops

__all__ = ["linear", "activation", "flexible", "DTYPES"]

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


#: N and K at most this: a narrow layer (csrc/laaf_cuda_narrow.cuh: kNarrowMax).
NARROW_MAX = 128


def column_groups(width: int) -> int:
    """Groups of 32 lanes that cover ``width`` <= NARROW_MAX columns (column_groups)."""
    return 1 if width <= 32 else (2 if width <= 64 else 4)


def narrow_backward_layer(n_out: int, k_in: int, dtype: torch.dtype) -> bool:
    """Whether a layer's backward is the fused narrow kernel, which forms z again:
    N, K <= NARROW_MAX, and in fp64 at most 8 column groups NJ(N) KJ(K) (its dW
    accumulators stay in registers)."""
    if not (1 <= n_out <= NARROW_MAX and 1 <= k_in <= NARROW_MAX):
        return False
    return dtype != torch.float64 or column_groups(n_out) * column_groups(k_in) <= 8


def stores_z(n_out: int, k_in: int, training: bool, dtype: torch.dtype,
             activation: Optional[str] = None) -> bool:
    """Whether a layer keeps z for its backward: in training, all but a narrow
    backward layer (any activation). Plain Python on the shape (torch.compile writes
    the answer into the graph, see ops.autograd); the extension's
    ``cuda_linear_stores_z`` is the same policy in C++, and a test holds the two equal."""
    return training and not narrow_backward_layer(n_out, k_in, dtype)


# The create_graph passes (a PINN's) recompute y = act(s z) with torch and run
# on the fused grad_y ops (csrc/laaf_cuda_grad_y.cu).
register_grad_y_ops("cuda")
register_backend_ops("cuda", saves_y=False, grad_y=make_grad_y("cuda"))

linear = make_linear("cuda", stores_z)
activation = make_activation("cuda")

register_flexible_ops("cuda")
flexible = make_flexible("cuda")
