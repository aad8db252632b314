"""Triton kernels for the combined flexible activations, ``y = f_KIND(z; p0, p1)``.

The layout is that of the LAAF activation kernels (``triton_activation.py``): z
is a 2-D (R, C) grid, and the per-channel parameters ``p0 = params[0]``,
``p1 = params[1]`` run along its columns (channels last) or its rows (row r
is channel ``r % CH``, channels in the middle).

Backward, given g = dL/dy::

    dz   = g * f_z(z; p0, p1)                      one value per element
    dp_k = sum of g * f_{p_k}(z; p0, p1)           along the axis the params do not run on

The sums are one partial row per program block (dp0 and dp1 side by side),
added by the host in a fixed order: deterministic, no atomics.
"""
import triton
import triton.language as tl

from .triton_activation import (_CONFIGS, _INTERPRETER_CONFIG, channel_tile, tile_ids,
                                tile_span)
from .triton_flexible_formulas import flex_dp0, flex_dp1, flex_dz, flex_value
from .triton_utils import autotune


@triton.jit
def _params_tile(pid_r, pid_c, R, C, CH, p_ptr, ON_ROWS: tl.constexpr, dtype: tl.constexpr,
                 BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Row and column indices of a tile, which lie inside, and the two parameter rows
    p0 = params[0], p1 = params[1] (each per channel) in 2-D."""
    rr, rc, row_ok, col_ok = tile_span(pid_r, pid_c, R, C, BLOCK_R, BLOCK_C)
    # Kind 2 of channel_tile: one value per channel.
    p0 = channel_tile(p_ptr, rr, rc, row_ok, col_ok, CH, 2, ON_ROWS, dtype)
    p1 = channel_tile(p_ptr + CH, rr, rc, row_ok, col_ok, CH, 2, ON_ROWS, dtype)
    return rr, rc, row_ok, col_ok, p0, p1


@autotune(configs=_CONFIGS, key=["R", "C"], interpreter_config=_INTERPRETER_CONFIG)
@triton.jit
def flex_fwd_kernel(
    z_ptr, p_ptr, y_ptr, R, C, CH, stride_zr, stride_zc,
    ON_ROWS: tl.constexpr, KIND: tl.constexpr, ACC_FP64: tl.constexpr,
    INT64_OFFSETS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # One (BLOCK_R x BLOCK_C) tile: y = f(z; p0, p1) in fp32 (fp64 for fp64).
    dtype = tl.float64 if ACC_FP64 else tl.float32
    pid_r, pid_c = tile_ids(C, BLOCK_C, INT64_OFFSETS)
    rr, rc, row_ok, col_ok, p0, p1 = _params_tile(pid_r, pid_c, R, C, CH,
                                                  p_ptr, ON_ROWS, dtype, BLOCK_R, BLOCK_C)
    mask = row_ok[:, None] & col_ok[None, :]
    z = tl.load(z_ptr + rr[:, None] * stride_zr + rc[None, :] * stride_zc, mask=mask, other=0.0)
    y = flex_value(z.to(dtype), p0, p1, KIND)
    tl.store(y_ptr + rr[:, None] * C + rc[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


@autotune(configs=_CONFIGS, key=["R", "C"], interpreter_config=_INTERPRETER_CONFIG,
          reset_to_zero=["dp_part_ptr"])
@triton.jit
def flex_bwd_kernel(
    g_ptr, z_ptr, p_ptr, dz_ptr, dp_part_ptr,
    R, C, CH, PART_STRIDE, stride_gr, stride_gc, stride_zr, stride_zc,
    ON_ROWS: tl.constexpr, KIND: tl.constexpr, NEED_DZ: tl.constexpr, NEED_DP: tl.constexpr,
    ACC_FP64: tl.constexpr, INT64_OFFSETS: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_r, pid_c = tile_ids(C, BLOCK_C, INT64_OFFSETS)
    dtype = tl.float64 if ACC_FP64 else tl.float32
    rr, rc, row_ok, col_ok, p0, p1 = _params_tile(pid_r, pid_c, R, C, CH, p_ptr, ON_ROWS, dtype,
                                                  BLOCK_R, BLOCK_C)
    mask = row_ok[:, None] & col_ok[None, :]
    # Padding loads g = 0: it adds nothing to the sums (and f's formulas are finite at z = 0).
    g = tl.load(g_ptr + rr[:, None] * stride_gr + rc[None, :] * stride_gc, mask=mask, other=0.0)
    z = tl.load(z_ptr + rr[:, None] * stride_zr + rc[None, :] * stride_zc, mask=mask, other=0.0)
    g = g.to(dtype)
    z = z.to(dtype)

    # -- dz = g f_z, once per element. -----------------------------------------
    if NEED_DZ:
        dz = g * flex_dz(z, p0, p1, KIND)
        tl.store(dz_ptr + rr[:, None] * C + rc[None, :], dz.to(dz_ptr.dtype.element_ty), mask=mask)

    # -- Partial sums of g f_{p0} and g f_{p1}: one row per program block. --------
    # Columns: partials (2, row blocks, C); rows: partials (2, column blocks, R);
    # PART_STRIDE is the size of one of the two halves (blocks left over stay 0).
    if NEED_DP:
        gp0 = g * flex_dp0(z, p0, p1, KIND)
        gp1 = g * flex_dp1(z, p0, p1, KIND)
        if ON_ROWS:
            at = pid_c * R + rr
            tl.store(dp_part_ptr + at, tl.sum(gp0, axis=1), mask=row_ok)
            tl.store(dp_part_ptr + PART_STRIDE + at, tl.sum(gp1, axis=1), mask=row_ok)
        else:
            at = pid_r * C + rc
            tl.store(dp_part_ptr + at, tl.sum(gp0, axis=0), mask=col_ok)
            tl.store(dp_part_ptr + PART_STRIDE + at, tl.sum(gp1, axis=0), mask=col_ok)
