"""The "cpp" backend: the C++ CPU kernels of ``csrc/laaf_cpu.cpp`` (torch.ops.laaf.cpp_*),
with fake implementations and the shared autograd of :mod:`laaf_kernels.ops.autograd`.

Import this module only once :func:`laaf_kernels.ops.extension.load` has succeeded.
The kernels take float32, float64, bfloat16 and float16; the two 16-bit types are
widened to float32 lanes for the epilogues (one rounding at each store). A narrow
layer's GEMMs (K, N <= 128) are the extension's own, in float32 for the 16-bit types
(chunks of x widened, z never rounded to 16 bits); a wider layer's are ATen's in the
input dtype, as ``nn.Linear``'s are.
"""
from __future__ import annotations

import torch

from .. import reference
from ..activations import get as get_activation
from .autograd import (make_activation, make_flexible, make_linear, register_backend_ops,
                       register_flexible_ops)
from .grad_y import make_grad_y, register_grad_y_ops
from .matmul import make_matmul, register_matmul_op

__all__ = ["linear", "activation", "flexible", "DTYPES"]

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


#: A layer takes the extension's own narrow GEMMs with K and N at most this
#: (csrc/laaf_cpu_gemm.h: kMaxNarrow) ...
NARROW_MAX = 128
#: ... and, for an fp32 forward, K N at most this (kMaxNarrowForwardArea; above it
#: MKL's sgemm measured faster).
NARROW_FP32_FORWARD_AREA = 120 * 120


def stores_z(n_out: int, k_in: int, training: bool, dtype: torch.dtype, activation: str) -> bool:
    """Whether a layer keeps z for its backward: in training, except for a narrow layer
    whose act' is a function of y: its backward needs only x and y (csrc/laaf_cpu.cpp:
    linear_bwd_narrow forms ds from W and gh^T x). Elsewhere recomputing z would be a
    second GEMM. Plain Python on the shape (torch.compile writes the answer into the
    graph, see ops.autograd); the extension's ``cpp_linear_stores_z`` is the same
    policy in C++, and a test holds the two equal."""
    narrow = n_out <= NARROW_MAX and k_in <= NARROW_MAX and not (
        dtype == torch.float32 and n_out * k_in > NARROW_FP32_FORWARD_AREA)
    return training and not (narrow and get_activation(activation).d1_y is not None)


# Saving y (where act' is a function of y) spares the backward a second tanh /
# sigmoid per element, which on a CPU costs more than the memory passes; the
# create_graph passes (a PINN's) then run on the fused grad_y ops, and their GEMMs
# on the narrow GEMM (cpp_matmul). On the narrow path such a layer keeps y and no z
# (stores_z).
register_grad_y_ops("cpp")
register_matmul_op("cpp")
register_backend_ops("cpp", saves_y=True, grad_y=make_grad_y("cpp"), matmul=make_matmul("cpp"))

linear = make_linear("cpp", stores_z, DTYPES, reference.linear_impl)
activation = make_activation("cpp", DTYPES, reference.activation_impl)

register_flexible_ops("cpp")
flexible = make_flexible("cpp", DTYPES, reference.flexible_activation_impl)
