"""Physics-informed networks with LAAF: the exact Burgers solution and the LAAF
paper's experiments (run them with ``python -m laaf_kernels.experiments``)."""
from .burgers_exact import NU, burgers_exact
from .problems import PROBLEMS, VARIANTS, Burgers, Discontinuous, train

__all__ = ["burgers_exact", "NU", "VARIANTS", "PROBLEMS", "Burgers", "Discontinuous", "train"]
