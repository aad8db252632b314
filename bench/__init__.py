"""Benchmarks of laaf_kernels (run with `make bench`)."""
