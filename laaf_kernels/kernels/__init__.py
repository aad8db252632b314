"""Fused kernels (Triton), one module per op. Imported lazily by the backends."""
