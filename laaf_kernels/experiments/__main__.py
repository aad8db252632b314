"""``python -m laaf_kernels.experiments``: see :mod:`laaf_kernels.experiments.cli`."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
