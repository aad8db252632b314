"""Host side of the Triton kernels: allocate outputs, pick the grid, launch on
the tensors' device, and add the per-program partial sums in a fixed order.

These functions take validated, already-flattened arguments; the custom ops in
``laaf_kernels/ops/triton_backend.py`` call them.
"""
from __future__ import annotations

import functools
import itertools
import logging
from typing import NamedTuple, Optional, Tuple

import torch
import triton
from triton.runtime.errors import OutOfResources

from .triton_activation import MIN_BLOCK, act_bwd_kernel, act_fwd_kernel
from .triton_activations import ACT_IDS
from .triton_flexible import flex_bwd_kernel, flex_fwd_kernel
from .triton_grad_y import blocks as grad_y_blocks
from .triton_grad_y import grad_y_kernel, grad_y_vjp2_kernel, grad_y_vjp_kernel
from .triton_flexible_formulas import KIND_IDS
from .triton_linear import linear_bwd_narrow_kernel, linear_fwd_kernel
from .triton_utils import (device_guard, dot_precision, next_pow2_at_least_16,
                           persistent_programs, slope_kind)

#: Layers with N and K up to this width take the fused persistent backward,
#: which recomputes z; wider layers store z in the forward.
NARROW_MAX = 128
#: ... if W's tile (N and K rounded up to powers of two, in the input dtype) takes at
#: most this many bytes. The kernel stages W and the tiles of its three dots in shared
#: memory: an fp64 128 x 128 W (128 KiB) fits no config even on an H100 (227 KiB), and
#: 64 KiB tiles fit an A100 (163 KiB) with BLOCK_M <= 32 (tools/triton_dry_run.py).
NARROW_MAX_W_BYTES = 64 * 1024


def is_narrow(n_out: int, k_in: int, dtype: torch.dtype) -> bool:
    """Whether a layer takes the fused persistent backward (and its forward keeps no z)."""
    if n_out > NARROW_MAX or k_in > NARROW_MAX:
        return False
    if NARROW_MAX * NARROW_MAX * dtype.itemsize <= NARROW_MAX_W_BYTES:
        return True  # the largest tile fits (NARROW_MAX is a power of two): fp32, 16-bit
    tile_bytes = next_pow2_at_least_16(n_out) * next_pow2_at_least_16(k_in) * dtype.itemsize
    return tile_bytes <= NARROW_MAX_W_BYTES


def stores_z(n_out: int, k_in: int, training: bool, dtype: torch.dtype,
             activation: Optional[str] = None) -> bool:
    """Whether a training forward writes z: only for wide layers (any activation)."""
    return training and not is_narrow(n_out, k_in, dtype)


#: Narrow layers, as (device, N, K, dtype), whose fused backward fits no config in the
#: GPU's shared memory (Triton's OutOfResources: e.g. fp32 128 x 128 needs 88 KiB with
#: its smallest tile, a T4 has 64 KiB). Their backward takes the wide path, on z recomputed
#: with cuBLAS. The forward is left as it is (no z: the policy, stores_z, is a function of
#: the shape alone, and a traced graph holds its answer).
_NARROW_MISFITS: set = set()
_log = logging.getLogger("laaf_kernels")


def narrow_misfits() -> frozenset:
    """The narrow layers found not to fit this process's GPUs (see ``_NARROW_MISFITS``)."""
    return frozenset(_NARROW_MISFITS)


#: Offsets below this many elements fit int32, the kernels' fast index type; a launch
#: with a tensor that reaches this far indexes in int64 (``INT64_OFFSETS``).
INT32_SPAN = 2**31


def _reach(t: torch.Tensor) -> int:
    """How far the kernels index into ``t``: its numel, or, where its strides reach
    further (a strided view), the distance between its first and last element plus one."""
    n = t.numel()
    if n == 0 or t.is_contiguous():  # the common case: no walk over the strides
        return n
    return max(n, 1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride())))


def needs_int64(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether an offset into one of ``tensors`` (None skipped) can reach 2^31 elements."""
    return any(t is not None and _reach(t) >= INT32_SPAN for t in tensors)


def sized_offsets(launcher):
    """Pass the launcher ``int64_offsets``: whether any tensor argument reaches 2^31
    elements (outputs as large as an input are covered by it; a linear layer's y,
    which can be larger, is checked by its launcher). Runs on every launch, so it
    stays cheap: under a microsecond per contiguous tensor."""

    @functools.wraps(launcher)
    def sized(*args, **kwargs):
        tensors = [v for v in itertools.chain(args, kwargs.values()) if isinstance(v, torch.Tensor)]
        return launcher(*args, int64_offsets=needs_int64(*tensors), **kwargs)

    return sized


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _reduce_ds(partials: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """ds from per-program partials (programs, channels): (C,) or, for a 0-d s, the total."""
    ds = partials.sum(0)
    return (ds if s.dim() == 1 else ds.sum()).to(s.dtype)


# ---------------------------------------------------------------------------
# Linear layer
# ---------------------------------------------------------------------------

@sized_offsets
def linear_forward(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor],
                   s: Optional[torch.Tensor], activation: str, store_z: bool, *,
                   int64_offsets: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """y = act(s * (x W^T + b)) for 2-D x (M, K), and z (M, N) if ``store_z`` (the
    caller asks ``stores_z``: when the backward will need it), else an empty tensor."""
    M, K = x.shape
    N = w.shape[0]
    int64_offsets = int64_offsets or M * N >= INT32_SPAN  # y and z may outgrow x
    y = x.new_empty((M, N))
    z = x.new_empty((M, N) if store_z else (0,))
    if M == 0 or N == 0:
        return y, z
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)
    with device_guard(x):
        linear_fwd_kernel[grid](
            x, w, y if b is None else b, y if s is None else s, y, z if store_z else y,
            M, N, K, x.stride(0), x.stride(1), w.stride(0), w.stride(1),
            HAS_BIAS=b is not None, SLOPE=slope_kind(s), ACT=ACT_IDS[activation],
            STORE_Z=store_z, ACC_FP64=x.dtype == torch.float64,
            DOT_PRECISION=dot_precision(x.dtype), INT64_OFFSETS=int64_offsets)
    return y, z


@sized_offsets
def linear_backward(g: torch.Tensor, x: torch.Tensor, w: torch.Tensor,
                    b: Optional[torch.Tensor], z: torch.Tensor,
                    s: Optional[torch.Tensor], activation: str,
                    need_dx: bool, need_dw: bool, need_db: bool, need_ds: bool, *,
                    int64_offsets: bool):
    """(dx, dW, db, ds), None where not needed. Narrow layers take the fused
    persistent kernel; wide ones the activation-backward kernel plus cuBLAS."""
    need_ds = need_ds and s is not None
    M, K = x.shape
    N = w.shape[0]
    if M == 0 or N == 0:
        return _zero_grads(x, w, s, need_dx, need_dw, need_db, need_ds)
    if is_narrow(N, K, x.dtype):
        key = (x.device, N, K, x.dtype)
        if key not in _NARROW_MISFITS:
            try:
                return _linear_backward_narrow(g, x, w, b, s, activation, need_dx, need_dw,
                                               need_db, need_ds, int64_offsets)
            except OutOfResources as error:
                _NARROW_MISFITS.add(key)
                _log.info("laaf_kernels: the fused narrow backward of a %d x %d %s layer does "
                          "not fit %s (%s); it recomputes z and takes the wide path",
                          N, K, x.dtype, x.device, error)
        if z.numel() == 0:  # the forward kept none
            z = torch.mm(x, w.t()) if b is None else torch.addmm(b, x, w.t())
    return _linear_backward_wide(g, x, w, z, s, activation, need_dx, need_dw, need_db, need_ds,
                                 int64_offsets)


def _zero_grads(x, w, s, need_dx, need_dw, need_db, need_ds):
    return (torch.zeros_like(x) if need_dx else None,
            torch.zeros_like(w) if need_dw else None,
            w.new_zeros(w.shape[0]) if need_db else None,
            torch.zeros_like(s) if need_ds else None)


def _linear_backward_narrow(g, x, w, b, s, activation, need_dx, need_dw, need_db, need_ds,
                            int64_offsets):
    M, K = x.shape
    N = w.shape[0]
    programs = min(persistent_programs(x.device.index if x.is_cuda else -1),
                   triton.cdiv(M, MIN_BLOCK))
    acc = _acc_dtype(x)
    dx = x.new_empty((M, K)) if need_dx else None
    dw_part = torch.empty((programs, N, K), dtype=acc, device=x.device) if need_dw else None
    db_part = torch.empty((programs, N), dtype=acc, device=x.device) if need_db else None
    ds_part = torch.empty((programs, N), dtype=acc, device=x.device) if need_ds else None
    dummy = g
    with device_guard(x):
        linear_bwd_narrow_kernel[(programs,)](
            g, x, w, dummy if b is None else b, dummy if s is None else s,
            dummy if dx is None else dx, dummy if dw_part is None else dw_part,
            dummy if db_part is None else db_part, dummy if ds_part is None else ds_part,
            M, N, K, g.stride(0), g.stride(1), x.stride(0), x.stride(1), w.stride(0), w.stride(1),
            HAS_BIAS=b is not None, SLOPE=slope_kind(s), ACT=ACT_IDS[activation],
            NEED_DX=need_dx, NEED_DW=need_dw, NEED_DB=need_db, NEED_DS=need_ds,
            ACC_FP64=acc == torch.float64, DOT_PRECISION=dot_precision(x.dtype),
            INT64_OFFSETS=int64_offsets,
            BLOCK_N=next_pow2_at_least_16(N), BLOCK_K=next_pow2_at_least_16(K))
    return (dx,
            dw_part.sum(0).to(w.dtype) if need_dw else None,
            db_part.sum(0).to(w.dtype) if need_db else None,
            _reduce_ds(ds_part, s) if need_ds else None)


def _linear_backward_wide(g, x, w, z, s, activation, need_dx, need_dw, need_db, need_ds,
                          int64_offsets):
    gz, db_part, ds_part = _act_backward_2d(
        g, z, s, activation, slope_on_rows=False, channels=w.shape[0],
        need_dz=need_dx or need_dw, need_db=need_db, need_ds=need_ds,
        int64_offsets=int64_offsets)
    return (torch.mm(gz, w) if need_dx else None,
            torch.mm(gz.t(), x) if need_dw else None,
            db_part.sum(0).to(w.dtype) if need_db else None,
            _reduce_ds(ds_part, s) if need_ds else None)


# ---------------------------------------------------------------------------
# Standalone activation
# ---------------------------------------------------------------------------

#: Rows up to this wide stay rows when nothing is per channel (see ``_as_grid``);
#: the C++ kernels' kMaxUnsplitRow (csrc/laaf_layout.h).
MAX_UNSPLIT_ROW = 512


def _as_grid(t: torch.Tensor, s: Optional[torch.Tensor], dim: int):
    """View ``t`` as the (R, C) grid of the kernels; returns (t2d, slope_on_rows, channels).

    * nothing per channel (s None or 0-d): any view will do, so (numel / last, last),
      unless rows are wider than MAX_UNSPLIT_ROW: then (numel / w, w), w the largest
      power of two up to 64 that divides numel. A 1-D z would otherwise be one row,
      and every tile but its first row masked off;
    * channels last: (numel / C, C), the slope running along the columns;
    * channels in the middle (NCHW, dim=1): (outer * C, inner), row r's channel r % C.
    """
    if t.dim() == 0:
        return t.reshape(1, 1), False, 1
    channels = t.shape[dim]
    if s is None or s.dim() == 0:
        last = t.shape[-1]
        if last > MAX_UNSPLIT_ROW:
            width = 64
            while t.numel() % width:
                width //= 2
            return t.reshape(-1, width), False, channels
        return t.reshape(-1, last), False, channels
    if dim == t.dim() - 1:
        return t.reshape(-1, t.shape[-1]), False, channels
    inner = 1
    for size in t.shape[dim + 1:]:
        inner *= size
    return t.reshape(-1, inner), True, channels


def tile_grid(R: int, C: int):
    """The launch grid of the element-wise kernels: one program per (BLOCK_R x
    BLOCK_C) tile of the (R, C) grid, all on axis 0 (the kernels' ``tile_ids``
    recover the tile), since CUDA caps axes 1 and 2 at 65 535 programs."""
    return lambda meta: (triton.cdiv(R, meta["BLOCK_R"]) * triton.cdiv(C, meta["BLOCK_C"]),)


@sized_offsets
def activation_forward(z: torch.Tensor, s: Optional[torch.Tensor], activation: str,
                       dim: int, *, int64_offsets: bool) -> torch.Tensor:
    """y = act(s * z), a (C,) s broadcast along ``dim``."""
    y = torch.empty(z.shape, dtype=z.dtype, device=z.device)
    if z.numel() == 0:
        return y
    z2, on_rows, channels = _as_grid(z, s, dim)
    R, C = z2.shape
    grid = tile_grid(R, C)
    with device_guard(z):
        act_fwd_kernel[grid](
            z2, y if s is None else s, y, R, C, channels, z2.stride(0), z2.stride(1),
            SLOPE=slope_kind(s), SLOPE_ON_ROWS=on_rows, ACT=ACT_IDS[activation],
            ACC_FP64=z.dtype == torch.float64, INT64_OFFSETS=int64_offsets)
    return y


@sized_offsets
def activation_backward(g: torch.Tensor, z: torch.Tensor, s: Optional[torch.Tensor],
                        activation: str, dim: int, need_dz: bool, need_ds: bool, *,
                        int64_offsets: bool):
    """(dz, ds), None where not needed: dz = g act'(h) s, ds = sum of g act'(h) z."""
    need_ds = need_ds and s is not None
    if z.numel() == 0:
        return (torch.zeros_like(z) if need_dz else None,
                torch.zeros_like(s) if need_ds else None)
    z2, on_rows, channels = _as_grid(z, s, dim)
    g2 = g.reshape(z2.shape)
    dz, _, ds_part = _act_backward_2d(g2, z2, s, activation, on_rows, channels,
                                      need_dz=need_dz, need_db=False, need_ds=need_ds,
                                      int64_offsets=int64_offsets)
    if need_ds and on_rows:  # partials (blocks, outer * C): fold rows onto channels
        ds_part = ds_part.reshape(-1, channels)
    return (dz.reshape(z.shape) if need_dz else None,
            _reduce_ds(ds_part, s) if need_ds else None)


def _act_backward_2d(g, z, s, activation, slope_on_rows, channels, need_dz, need_db, need_ds,
                     int64_offsets):
    """Launch ``act_bwd_kernel`` on an (R, C) grid; returns (gz, db partials, ds partials)."""
    R, C = z.shape
    acc = _acc_dtype(z)
    dz = z.new_empty((R, C)) if need_dz else None
    db_part = z.new_zeros((triton.cdiv(R, MIN_BLOCK), C), dtype=acc) if need_db else None
    ds_shape = (triton.cdiv(C, MIN_BLOCK), R) if slope_on_rows else (triton.cdiv(R, MIN_BLOCK), C)
    ds_part = z.new_zeros(ds_shape, dtype=acc) if need_ds else None
    grid = tile_grid(R, C)
    dummy = z
    with device_guard(z):
        act_bwd_kernel[grid](
            g, z, dummy if s is None else s, dummy if dz is None else dz,
            dummy if db_part is None else db_part, dummy if ds_part is None else ds_part,
            R, C, channels, g.stride(0), g.stride(1), z.stride(0), z.stride(1),
            SLOPE=slope_kind(s), SLOPE_ON_ROWS=slope_on_rows, ACT=ACT_IDS[activation],
            NEED_DZ=need_dz, NEED_DB=need_db, NEED_DS=need_ds, ACC_FP64=acc == torch.float64,
            INT64_OFFSETS=int64_offsets)
    return dz, db_part, ds_part


# ---------------------------------------------------------------------------
# gz = g act'(h) s from y, and its vector-Jacobian products (ops.grad_y)
# ---------------------------------------------------------------------------

class _GradYFrame(NamedTuple):
    y2: torch.Tensor      # y (contiguous) as the (R, C) grid
    on_rows: bool         # the slope is on rows (channel r % channels)
    channels: int
    grid: Tuple[int]      # the launch grid (tile_grid)
    flags: dict           # the constexprs every grad_y kernel takes, block sizes included


def _grad_y_frame(y: torch.Tensor, s: Optional[torch.Tensor], dim: int,
                  activation: str, int64_offsets: bool) -> _GradYFrame:
    """The launch frame of a grad_y kernel (``dim`` may be negative, as in the C++ ops);
    the tile comes from the shape once (triton_grad_y.blocks)."""
    y2, on_rows, channels = _as_grid(y.contiguous(), s, dim % max(1, y.dim()))
    R, C = y2.shape
    meta = grad_y_blocks(R, C)
    flags = dict(SLOPE=slope_kind(s), ON_ROWS=on_rows, ACT=ACT_IDS[activation],
                 ACC_FP64=y2.dtype == torch.float64, INT64_OFFSETS=int64_offsets, **meta)
    grid = tile_grid(R, C)(meta)
    return _GradYFrame(y2, on_rows, channels, grid, flags)


def _ds_partials(need: bool, y2: torch.Tensor, on_rows: bool) -> Optional[torch.Tensor]:
    """Zeroed per-program-block partials of ds: (column blocks, R) or (row blocks, C)."""
    if not need:
        return None
    R, C = y2.shape
    shape = (triton.cdiv(C, MIN_BLOCK), R) if on_rows else (triton.cdiv(R, MIN_BLOCK), C)
    return y2.new_zeros(shape, dtype=_acc_dtype(y2))


def _finish_ds(part: Optional[torch.Tensor], s, on_rows: bool, channels: int):
    if part is None:
        return None
    return _reduce_ds(part.reshape(-1, channels) if on_rows else part, s)


def _as(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(like.shape)


def _or(t: Optional[torch.Tensor], stand_in: torch.Tensor) -> torch.Tensor:
    """``t``, or a stand-in pointer for an argument the kernel's constexprs leave unread."""
    return stand_in if t is None else t


@sized_offsets
def grad_y(g, y, s, activation: str, dim: int, *, int64_offsets: bool) -> torch.Tensor:
    """gz = g act'(h) s, act' from y = act(h)."""
    gz = torch.empty(y.shape, dtype=y.dtype, device=y.device)
    if y.numel() == 0:
        return gz
    f = _grad_y_frame(y, s, dim, activation, int64_offsets)
    with device_guard(y):
        grad_y_kernel[f.grid](_as(g, f.y2), f.y2, _or(s, f.y2), gz, *f.y2.shape, f.channels,
                              **f.flags)
    return gz


@sized_offsets
def grad_y_vjp(u, g, y, s, activation: str, dim: int, need_g: bool, need_y: bool,
               need_s: bool, *, int64_offsets: bool):
    """(dg, dy, ds) of gz = g act'(h) s given u = dL/dgz; None where not needed."""
    need_s = need_s and s is not None
    if y.numel() == 0:
        return (torch.zeros_like(y) if need_g else None, torch.zeros_like(y) if need_y else None,
                torch.zeros_like(s) if need_s else None)
    f = _grad_y_frame(y, s, dim, activation, int64_offsets)
    y2 = f.y2
    dg = torch.empty_like(y2) if need_g else None
    dy = torch.empty_like(y2) if need_y else None
    ds_part = _ds_partials(need_s, y2, f.on_rows)
    with device_guard(y):
        grad_y_vjp_kernel[f.grid](
            _as(u, y2), _as(g, y2), y2, _or(s, y2), _or(dg, y2), _or(dy, y2), _or(ds_part, y2),
            *y2.shape, f.channels, NEED_G=need_g, NEED_Y=need_y, NEED_S=need_s, **f.flags)
    return (None if dg is None else dg.reshape(y.shape), None if dy is None else dy.reshape(y.shape),
            _finish_ds(ds_part, s, f.on_rows, f.channels))


@sized_offsets
def grad_y_vjp2(ug, uy, us, u, g, y, s, activation: str, dim: int, need_u: bool, need_g: bool,
                need_y: bool, need_s: bool, *, int64_offsets: bool):
    """(du, dg, dy, ds) of grad_y_vjp's outputs given their cotangents ug, uy, us
    (None: zero); None where not needed."""
    need_s = need_s and s is not None
    if y.numel() == 0:
        return (*(torch.zeros_like(y) if n else None for n in (need_u, need_g, need_y)),
                torch.zeros_like(s) if need_s else None)
    f = _grad_y_frame(y, s, dim, activation, int64_offsets)
    y2 = f.y2
    du, dg, dy = (torch.empty_like(y2) if n else None for n in (need_u, need_g, need_y))
    ds_part = _ds_partials(need_s, y2, f.on_rows)
    with device_guard(y):
        grad_y_vjp2_kernel[f.grid](
            y2 if ug is None else _as(ug, y2), y2 if uy is None else _as(uy, y2),
            y2 if us is None else us.contiguous(), _as(u, y2), _as(g, y2), y2, _or(s, y2),
            _or(du, y2), _or(dg, y2), _or(dy, y2), _or(ds_part, y2),
            *y2.shape, f.channels, HAS_UG=ug is not None, HAS_UY=uy is not None,
            HAS_US=us is not None, NEED_U=need_u, NEED_G=need_g, NEED_Y=need_y, NEED_S=need_s,
            **f.flags)
    return (*(None if t is None else t.reshape(y.shape) for t in (du, dg, dy)),
            _finish_ds(ds_part, s, f.on_rows, f.channels))


# ---------------------------------------------------------------------------
# Flexible activations
# ---------------------------------------------------------------------------

@sized_offsets
def flexible_forward(z: torch.Tensor, params: torch.Tensor, kind: str, dim: int, *,
                     int64_offsets: bool) -> torch.Tensor:
    """y = f_kind(z; params[0], params[1]), the (2, C) params along ``dim``."""
    y = torch.empty(z.shape, dtype=z.dtype, device=z.device)
    if z.numel() == 0:
        return y
    z2, on_rows, channels = _as_grid(z, params[0], dim)
    R, C = z2.shape
    grid = tile_grid(R, C)
    with device_guard(z):
        flex_fwd_kernel[grid](
            z2, params.contiguous(), y, R, C, channels, z2.stride(0), z2.stride(1),
            ON_ROWS=on_rows, KIND=KIND_IDS[kind], ACC_FP64=z.dtype == torch.float64,
            INT64_OFFSETS=int64_offsets)
    return y


@sized_offsets
def flexible_backward(g: torch.Tensor, z: torch.Tensor, params: torch.Tensor, kind: str,
                      dim: int, need_dz: bool, need_dp: bool, *, int64_offsets: bool):
    """(dz, dparams), None where not needed: dz = g f_z, dparams[k] = sum of g f_{p_k}."""
    if z.numel() == 0:
        return (torch.zeros_like(z) if need_dz else None,
                torch.zeros_like(params) if need_dp else None)
    z2, on_rows, channels = _as_grid(z, params[0], dim)
    g2 = g.reshape(z2.shape)
    R, C = z2.shape
    dz = z.new_empty((R, C)) if need_dz else None
    blocks, width = (triton.cdiv(C, MIN_BLOCK), R) if on_rows else (triton.cdiv(R, MIN_BLOCK), C)
    dp_part = z.new_zeros((2, blocks, width), dtype=_acc_dtype(z)) if need_dp else None
    grid = tile_grid(R, C)
    with device_guard(z):
        flex_bwd_kernel[grid](
            g2, z2, params.contiguous(), z if dz is None else dz, z if dp_part is None else dp_part,
            R, C, channels, blocks * width, g2.stride(0), g2.stride(1), z2.stride(0),
            z2.stride(1), ON_ROWS=on_rows, KIND=KIND_IDS[kind], NEED_DZ=need_dz,
            NEED_DP=need_dp, ACC_FP64=z.dtype == torch.float64, INT64_OFFSETS=int64_offsets)
    dp = None
    if need_dp:  # rows of the on_rows layout are (outer, C): fold them onto channels
        dp = dp_part.sum(1).reshape(2, -1, channels).sum(1) if on_rows else dp_part.sum(1)
        dp = dp.to(params.dtype)
    return (dz.reshape(z.shape) if need_dz else None), dp
