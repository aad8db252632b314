"""Triton kernels of gz = g act'(h) s with act' from the saved y = act(h), and of
its first two vector-Jacobian products: the create_graph passes of a PINN
(:mod:`laaf_kernels.ops.grad_y` has the math and the autograd).

With phi = act'(h) = d1_y(y), phi' and phi'' its derivatives in y::

    grad_y_kernel      gz = g phi s
    grad_y_vjp_kernel  dg = u phi s      dy = u g s phi'      ds = sum u g phi
    grad_y_vjp2_kernel du = s mix + us g phi                  mix = ug phi + uy g phi'
                       dg = u (uy s phi' + us phi)
                       dy = u (ug s phi' + uy g s phi'' + us g phi')
                       ds = sum u mix

Each program owns one (BLOCK_R x BLOCK_C) tile of the (R, C) grid of
``triton_activation`` (slope on columns, or on rows with channel r % CH), reads
each input once and writes each output once; ds goes to one partial row per
program block, added on the host in a fixed order (deterministic, no atomics).

The tile comes from the shape (:func:`blocks`), not from autotuning: these are
memory-bound passes, and a PINN's create_graph passes call them with many
constexpr combinations (activation, slope kind, which outputs), each of which
autotuning would compile four times.
"""
import triton
import triton.language as tl

from .triton_activation import _INTERPRETER_CONFIG, MIN_BLOCK, _tile, channel_tile, tile_ids
from .triton_activations import act_d1_y, act_d1_y_dy, act_d1_y_dyy
from .triton_utils import interpreting, next_pow2_at_least


def blocks(R: int, C: int) -> dict:
    """The launch meta-parameters for an (R, C) grid: the row covered up to 128
    columns, 2048 elements per program on 8 warps, i.e. 8 per thread (vjp2 keeps ~12
    tiles live: ~100 registers in fp32), at least MIN_BLOCK each way (which the
    host's partial-sum buffers assume); the interpreter's small fixed tile there."""
    if interpreting():
        return dict(_INTERPRETER_CONFIG)
    block_c = next_pow2_at_least(min(C, 128), MIN_BLOCK)
    block_r = max(MIN_BLOCK, 2048 // block_c)
    return dict(BLOCK_R=block_r, BLOCK_C=block_c, num_warps=8)


@triton.jit
def _offsets_and_mask(rr, rc, row_ok, col_ok, C):
    return rr[:, None] * C + rc[None, :], row_ok[:, None] & col_ok[None, :]


@triton.jit
def _load(ptr, offs, mask, dtype: tl.constexpr):
    return tl.load(ptr + offs, mask=mask, other=0.0).to(dtype)


@triton.jit
def _store(ptr, offs, mask, value):
    tl.store(ptr + offs, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _store_sum(part_ptr, terms, rr, rc, row_ok, col_ok, R, C, ON_ROWS: tl.constexpr,
               INT64_OFFSETS: tl.constexpr, BLOCK_C: tl.constexpr):
    """This tile's sums of ``terms`` along the axis the slope does not run on, as
    row pid_c (on rows) or pid_r (on columns) of the partials."""
    pid_r, pid_c = tile_ids(C, BLOCK_C, INT64_OFFSETS)
    if ON_ROWS:  # row sums: partials (column blocks, R)
        tl.store(part_ptr + pid_c * R + rr, tl.sum(terms, axis=1), mask=row_ok)
    else:  # column sums: partials (row blocks, C)
        tl.store(part_ptr + pid_r * C + rc, tl.sum(terms, axis=0), mask=col_ok)


@triton.jit
def _tile_of_u_g_y(u_ptr, g_ptr, y_ptr, s_ptr, R, C, CH, SLOPE: tl.constexpr,
                   ON_ROWS: tl.constexpr, dtype: tl.constexpr, INT64_OFFSETS: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's tile (indices, masks and slopes of ``_tile``, offsets) and u, g,
    y loaded once in the arithmetic dtype; padding reads zeros and adds nothing to ds."""
    pid_r, pid_c = tile_ids(C, BLOCK_C, INT64_OFFSETS)
    rr, rc, row_ok, col_ok, s = _tile(pid_r, pid_c, R, C, CH, s_ptr,
                                      SLOPE, ON_ROWS, dtype, BLOCK_R, BLOCK_C)
    offs, mask = _offsets_and_mask(rr, rc, row_ok, col_ok, C)
    u = _load(u_ptr, offs, mask, dtype)
    g = _load(g_ptr, offs, mask, dtype)
    y = _load(y_ptr, offs, mask, dtype)
    return rr, rc, row_ok, col_ok, s, offs, mask, u, g, y


@triton.jit
def grad_y_kernel(
    g_ptr, y_ptr, s_ptr, gz_ptr, R, C, CH,
    SLOPE: tl.constexpr, ON_ROWS: tl.constexpr, ACT: tl.constexpr, ACC_FP64: tl.constexpr,
    INT64_OFFSETS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # gz = g phi(y) s on one tile, in fp32 (fp64 for fp64).
    dtype = tl.float64 if ACC_FP64 else tl.float32
    pid_r, pid_c = tile_ids(C, BLOCK_C, INT64_OFFSETS)
    rr, rc, row_ok, col_ok, s = _tile(pid_r, pid_c, R, C, CH, s_ptr,
                                      SLOPE, ON_ROWS, dtype, BLOCK_R, BLOCK_C)
    offs, mask = _offsets_and_mask(rr, rc, row_ok, col_ok, C)
    phi = act_d1_y(_load(y_ptr, offs, mask, dtype), ACT)
    _store(gz_ptr, offs, mask, _load(g_ptr, offs, mask, dtype) * phi * s)


@triton.jit
def grad_y_vjp_kernel(
    u_ptr, g_ptr, y_ptr, s_ptr, dg_ptr, dy_ptr, ds_part_ptr, R, C, CH,
    SLOPE: tl.constexpr, ON_ROWS: tl.constexpr, ACT: tl.constexpr,
    NEED_G: tl.constexpr, NEED_Y: tl.constexpr, NEED_S: tl.constexpr, ACC_FP64: tl.constexpr,
    INT64_OFFSETS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # dg, dy and the ds partials of one tile.
    dtype = tl.float64 if ACC_FP64 else tl.float32
    rr, rc, row_ok, col_ok, s, offs, mask, u, g, y = _tile_of_u_g_y(
        u_ptr, g_ptr, y_ptr, s_ptr, R, C, CH, SLOPE, ON_ROWS, dtype, INT64_OFFSETS,
        BLOCK_R, BLOCK_C)
    us = u * s
    if NEED_G:
        _store(dg_ptr, offs, mask, us * act_d1_y(y, ACT))
    if NEED_Y:
        _store(dy_ptr, offs, mask, us * g * act_d1_y_dy(y, ACT))
    if NEED_S:
        _store_sum(ds_part_ptr, u * g * act_d1_y(y, ACT), rr, rc, row_ok, col_ok, R, C,
                   ON_ROWS, INT64_OFFSETS, BLOCK_C)


@triton.jit
def grad_y_vjp2_kernel(
    ug_ptr, uy_ptr, us_ptr, u_ptr, g_ptr, y_ptr, s_ptr, du_ptr, dg_ptr, dy_ptr, ds_part_ptr,
    R, C, CH,
    SLOPE: tl.constexpr, ON_ROWS: tl.constexpr, ACT: tl.constexpr,
    HAS_UG: tl.constexpr, HAS_UY: tl.constexpr, HAS_US: tl.constexpr,
    NEED_U: tl.constexpr, NEED_G: tl.constexpr, NEED_Y: tl.constexpr, NEED_S: tl.constexpr,
    ACC_FP64: tl.constexpr, INT64_OFFSETS: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # du, dg, dy and the ds partials of one tile.
    dtype = tl.float64 if ACC_FP64 else tl.float32
    rr, rc, row_ok, col_ok, s, offs, mask, u, g, y = _tile_of_u_g_y(
        u_ptr, g_ptr, y_ptr, s_ptr, R, C, CH, SLOPE, ON_ROWS, dtype, INT64_OFFSETS,
        BLOCK_R, BLOCK_C)
    # -- The cotangents of (dg, dy, ds); an absent one is zero. -----------------
    zero = tl.zeros((BLOCK_R, BLOCK_C), dtype)
    ug = zero
    if HAS_UG:
        ug = _load(ug_ptr, offs, mask, dtype)
    uy = zero
    if HAS_UY:
        uy = _load(uy_ptr, offs, mask, dtype)
    if HAS_US:  # per channel, laid out as the slope
        us = channel_tile(us_ptr, rr, rc, row_ok, col_ok, CH, SLOPE, ON_ROWS, dtype) + zero
    else:
        us = zero
    phi = act_d1_y(y, ACT)
    phi1 = act_d1_y_dy(y, ACT)
    # -- mix = ug phi + uy g phi' is shared by du and ds. -----------------------
    mix = ug * phi + uy * g * phi1
    if NEED_U:
        _store(du_ptr, offs, mask, s * mix + us * g * phi)
    if NEED_G:
        _store(dg_ptr, offs, mask, u * (uy * s * phi1 + us * phi))
    if NEED_Y:
        inner = ug * s * phi1 + uy * g * s * act_d1_y_dyy(y, ACT) + us * g * phi1
        _store(dy_ptr, offs, mask, u * inner)
    if NEED_S:
        _store_sum(ds_part_ptr, u * mix, rr, rc, row_ok, col_ok, R, C, ON_ROWS, INT64_OFFSETS,
                   BLOCK_C)
