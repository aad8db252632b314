"""Autograd functions, torch.library ops and backend dispatch."""
from .dispatch import available_backends, select_backend, use_backend

__all__ = ["available_backends", "select_backend", "use_backend"]
