"""Launch-side helpers shared by the Triton kernels: interpreter detection,
autotuning that steps aside in the interpreter, dot precision, device guard."""
from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton

#: Slope kinds inside kernels (a tl.constexpr): none (h = z), one 0-d slope, one per column/channel.
SLOPE_NONE, SLOPE_SCALAR, SLOPE_VECTOR = 0, 1, 2


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def slope_kind(s) -> int:
    if s is None:
        return SLOPE_NONE
    return SLOPE_SCALAR if s.dim() == 0 else SLOPE_VECTOR


def autotune(configs, key, interpreter_config, **kwargs):
    """``triton.autotune`` on a GPU; in the interpreter, one fixed small config
    (autotuning there would only multiply the run time of the tests)."""

    def wrap(kernel):
        if interpreting():
            return _FixedConfig(kernel, interpreter_config)
        return triton.autotune(configs=configs, key=key, **kwargs)(kernel)

    return wrap


class _FixedConfig:
    """A launcher that adds one config's meta-parameters to every launch."""

    def __init__(self, kernel, config: dict):
        self.kernel, self.config = kernel, config

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            meta = {**self.config, **kwargs}
            g = grid(meta) if callable(grid) else grid
            return self.kernel[g](*args, **meta)
        return launch


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 GEMMs follow torch's TF32 switch, as cuBLAS does for eager PyTorch."""
    if dtype == torch.float32 and not interpreting() and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def device_guard(t: torch.Tensor):
    """Launch on ``t``'s GPU (Triton launches on the *current* device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


@functools.lru_cache(maxsize=None)
def persistent_programs(device_index: int) -> int:
    """How many programs a persistent kernel launches: two per SM (4 in the interpreter)."""
    if interpreting() or device_index < 0:
        return 4
    return 2 * torch.cuda.get_device_properties(device_index).multi_processor_count


def next_pow2_at_least(n: int, low: int) -> int:
    """The least power of two >= max(n, low), ``low`` a power of two. A loop of
    comparisons: torch.compile traces it on symbolic ints too (a guard each), and it
    takes ~0.1 us where Triton 3.8's triton.next_power_of_2 (a ConstexprFunction)
    takes ~2 us, which every layer call paid for twice (stores_z asks it at each
    forward)."""
    power = low
    while power < n:
        power *= 2
    return power


def next_pow2_at_least_16(n: int) -> int:
    """Block size covering ``n`` (tl.dot needs >= 16)."""
    return next_pow2_at_least(n, 16)
