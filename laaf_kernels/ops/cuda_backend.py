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


def stores_z(n_out: int, k_in: int, training: bool, dtype: torch.dtype,
             activation: Optional[str] = None) -> bool:
    """Whether the CUDA forward returns z: in training, except for a narrow layer (any
    activation). The C++ op answers (a function of the shape and dtype, not of the
    device or LAAF_CUDA_NARROW), so that the fake and the kernel cannot disagree."""
    return torch.ops.laaf.cuda_linear_stores_z(int(n_out), int(k_in), training, dtype)


# The create_graph passes (a PINN's) recompute y = act(s z) with torch and run
# on the fused grad_y ops (csrc/laaf_cuda_grad_y.cu).
register_grad_y_ops("cuda")
register_backend_ops("cuda", stores_z, saves_y=False, grad_y=make_grad_y("cuda"))

linear = make_linear("cuda")
activation = make_activation("cuda")

register_flexible_ops("cuda")
flexible = make_flexible("cuda")
