"""The "cpp" backend: the C++ CPU kernels of ``csrc/laaf_cpu.cpp`` (torch.ops.laaf.cpp_*),
with fake implementations and the shared autograd of :mod:`laaf_kernels.ops.autograd`.

Import this module only once :func:`laaf_kernels.ops.extension.load` has succeeded.
The kernels take float32 and float64; other dtypes (bf16 under autocast, say)
run on the reference backend.
"""
from __future__ import annotations

import torch

from .. import reference
from .autograd import make_activation, make_linear, register_backend_ops

__all__ = ["linear", "activation", "DTYPES"]

DTYPES = (torch.float32, torch.float64)


def stores_z(n_out: int, k_in: int, training: bool) -> bool:
    """The CPU forward keeps z whenever it trains (recomputing it would be a second GEMM)."""
    return training


# Saving y (where act' is a function of y) spares the backward a second tanh /
# sigmoid per element, which on a CPU costs more than the memory passes.
register_backend_ops("cpp", stores_z, saves_y=True)

linear = make_linear(torch.ops.laaf.cpp_linear_fwd, DTYPES, reference.linear_impl)
activation = make_activation(torch.ops.laaf.cpp_act_fwd, DTYPES, reference.activation_impl)
