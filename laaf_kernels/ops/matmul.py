"""A backend's differentiable C = A B for the create_graph passes of a PINN.

Under ``create_graph=True`` the linear layer's backward is built from
differentiable ops (:func:`laaf_kernels.ops.autograd.differentiable_linear_grads`)::

    dx = gz W        dW = gz^T x

and the loss's backward differentiates those products again::

    C = A B    ->    dA = dC B^T,    dB = A^T dC

With a batch of M points and layers of width <= 128, each is a tall product
(A: M x k, B: k x n, k and n narrow) or a gram product (A: m x M, B: M x n, a long
sum), which ATen hands to a BLAS tuned for large matrices. A backend with its own
narrow GEMM provides ``torch.ops.laaf.<prefix>_matmul(a, b)`` (2-D, one dtype;
other shapes go to ``torch.mm`` inside it); :func:`register_matmul_op` gives it a
fake and an autograd whose backward is the same op on the transposes, so that
derivatives of any order run on it.
"""
from __future__ import annotations

from typing import Callable

import torch

from .autograd import call_op, needed_inputs, register_autograd_rule

__all__ = ["register_matmul_op", "make_matmul"]


def register_matmul_op(prefix: str) -> None:
    """Fake and autograd of torch.ops.laaf.<prefix>_matmul (see the module docstring)."""
    name = f"laaf::{prefix}_matmul"

    @torch.library.register_fake(name)
    def _(a, b):
        return a.new_empty((a.shape[0], b.shape[1]))

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, dc):
        a, b = ctx.saved_tensors
        need_a, need_b = needed_inputs(ctx, 2)
        return (call_op(name, dc, b.t()) if need_a else None,
                call_op(name, a.t(), dc) if need_b else None)

    register_autograd_rule(name, backward, setup_context)


def make_matmul(prefix: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The backend's ``matmul(a, b)`` = a @ b (2-D), with autograd to any order."""

    def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return call_op(f"laaf::{prefix}_matmul", a, b)

    return matmul
