"""Runnable experiments: python -m laaf_kernels.experiments --help."""
