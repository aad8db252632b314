"""Modules that import in place of ``torch.nn`` layers."""
from .convert import convert
from .flexible import (FlexibleActivation, FlexibleLinear, FlexibleLSTM, FlexibleLSTMCell,
                       flexible_regularization)
from .modules import LAAF, LAAFLinear, LAAFMLP
from .slopes import MODES

__all__ = ["LAAF", "LAAFLinear", "LAAFMLP", "convert", "MODES", "FlexibleActivation",
           "FlexibleLinear", "FlexibleLSTM", "FlexibleLSTMCell", "flexible_regularization"]
