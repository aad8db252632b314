"""laaf_kernels: fused kernels for locally adaptive activation functions (LAAF).

    y = act(n * a * (x W^T + b))

See README.md for the math, the modules and the backends.
"""
from . import reference
from .activations import ACTIVATIONS
from .flexible import FLEXIBLE_KINDS
from .functional import (flexible_activation, flexible_linear, laaf_activation, laaf_linear,
                         slope_recovery)
from .nn import (LAAF, MODES, FlexibleActivation, FlexibleLinear, FlexibleLSTM, FlexibleLSTMCell,
                 LAAFLinear, LAAFMLP, convert, flexible_regularization)
from .ops.dispatch import available_backends, load_ops, use_backend

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS", "MODES", "laaf_linear", "laaf_activation", "slope_recovery",
    "FLEXIBLE_KINDS", "flexible_activation", "flexible_linear", "FlexibleActivation",
    "FlexibleLinear", "FlexibleLSTM", "FlexibleLSTMCell", "flexible_regularization",
    "LAAF", "LAAFLinear", "LAAFMLP", "convert", "reference",
    "available_backends", "load_ops", "use_backend",
]
