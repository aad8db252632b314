"""Modules that import in place of ``torch.nn`` layers."""
from .convert import convert
from .modules import LAAF, LAAFLinear, LAAFMLP
from .slopes import MODES

__all__ = ["LAAF", "LAAFLinear", "LAAFMLP", "convert", "MODES"]
