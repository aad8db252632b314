"""Triton kernels for the standalone LAAF activation, ``y = act(s * z)``.

Any tensor is seen as a 2-D (R, C) grid with the slope running along one axis:

* slope on columns: z viewed as (rows, channels), channels last
  (``dim=-1``; also one 0-d slope, or none);
* slope on rows: z viewed as (outer * channels, inner), the channel of row r
  being ``r % CH`` (``dim`` in the middle, e.g. NCHW with ``dim=1``).

Backward, given g = dL/dy::

    gh = g * act'(h)      gz = gh * s      (written as dz when needed)
    ds = sum of gh * z    along the axis the slope does not run on
    db = sum_rows gz      (only for the linear layer's wide backward path)

The sums are written as one partial row per program block, which the host
adds in a fixed order: deterministic, no atomics.
"""
import triton
import triton.language as tl

from .triton_activations import act_d1, act_value
from .triton_utils import autotune

#: Partial-sum buffers are sized for the smallest block of any config.
MIN_BLOCK = 16

_CONFIGS = [
    triton.Config({"BLOCK_R": 64, "BLOCK_C": 64}, num_warps=4),
    triton.Config({"BLOCK_R": 128, "BLOCK_C": 64}, num_warps=4),
    triton.Config({"BLOCK_R": 32, "BLOCK_C": 128}, num_warps=4),
    triton.Config({"BLOCK_R": 16, "BLOCK_C": 256}, num_warps=8),
]
_INTERPRETER_CONFIG = {"BLOCK_R": 16, "BLOCK_C": 16}


@triton.jit
def offset_index(i, INT64_OFFSETS: tl.constexpr):
    """``i`` in the integer type of the launch's offsets: int64 where some tensor of the
    launch reaches 2^31 elements or more (the host decides: ``triton_launchers.sized_offsets``),
    int32 otherwise, whose multiplies and adds are cheaper. An index vector of that type
    makes every offset computed from it (``rr * stride``, ``rr * C + rc``) that type."""
    if INT64_OFFSETS:
        i = tl.cast(i, tl.int64)  # (tl.cast: the interpreter's loop counters are Python ints)
    return i


@triton.jit
def tile_ids(C, BLOCK_C: tl.constexpr, INT64_OFFSETS: tl.constexpr):
    """(pid_r, pid_c): the tile of the (R, C) grid this program owns. The launch is
    1-D, cdiv(R, BLOCK_R) * cdiv(C, BLOCK_C) programs in row-major tile order
    (``triton_launchers.tile_grid``): CUDA caps a grid's y and z at 65 535, x at 2^31 - 1.
    The ids, hence the tile's row and column indices, are of the offsets' type."""
    pid = offset_index(tl.program_id(0), INT64_OFFSETS)
    tiles_c = tl.cdiv(C, BLOCK_C)
    return pid // tiles_c, pid % tiles_c


@triton.jit
def load_slope(s_ptr, idx, ok, SLOPE: tl.constexpr, dtype: tl.constexpr):
    """The slopes s = n * a at positions ``idx`` as a vector: one per channel
    (SLOPE=2), one shared value (SLOPE=1), or ones (SLOPE=0, h = z)."""
    if SLOPE == 2:
        s = tl.load(s_ptr + idx, mask=ok, other=0.0).to(dtype)
    elif SLOPE == 1:
        s = tl.load(s_ptr + idx * 0).to(dtype)
    else:
        s = tl.full(idx.shape, 1.0, dtype)
    return s


@triton.jit
def grad_tile(g, z, s, ACT: tl.constexpr):
    """gh = g * act'(s z) and gz = gh * s, for a tile and its broadcast slopes."""
    gh = g * act_d1(z * s, ACT)
    return gh, gh * s


@triton.jit
def tile_span(pid_r, pid_c, R, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """The row indices rr and column indices rc of tile (pid_r, pid_c), and which of
    them lie inside the (R, C) grid (row_ok, col_ok)."""
    rr = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    rc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    return rr, rc, rr < R, rc < C


@triton.jit
def channel_tile(ptr, rr, rc, row_ok, col_ok, CH, SLOPE: tl.constexpr, ON_ROWS: tl.constexpr,
                 dtype: tl.constexpr):
    """A per-channel value (load_slope's kinds) at every cell of the tile, broadcast to
    2-D: channel rr % CH of a row (ON_ROWS, the (outer, C) rows of a channel dim that
    is not last), else channel rc of a column."""
    if ON_ROWS:
        v = load_slope(ptr, rr % CH, row_ok, SLOPE, dtype)[:, None]
    else:
        v = load_slope(ptr, rc, col_ok, SLOPE, dtype)[None, :]
    return v


@triton.jit
def _tile(pid_r, pid_c, R, C, CH, s_ptr,
          SLOPE: tl.constexpr, SLOPE_ON_ROWS: tl.constexpr, dtype: tl.constexpr,
          BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Row and column indices of a tile, which lie inside, and its slopes s in 2-D."""
    rr, rc, row_ok, col_ok = tile_span(pid_r, pid_c, R, C, BLOCK_R, BLOCK_C)
    s = channel_tile(s_ptr, rr, rc, row_ok, col_ok, CH, SLOPE, SLOPE_ON_ROWS, dtype)
    return rr, rc, row_ok, col_ok, s


@autotune(configs=_CONFIGS, key=["R", "C"], interpreter_config=_INTERPRETER_CONFIG)
@triton.jit
def act_fwd_kernel(
    z_ptr, s_ptr, y_ptr, R, C, CH, stride_zr, stride_zc,
    SLOPE: tl.constexpr, SLOPE_ON_ROWS: tl.constexpr, ACT: tl.constexpr, ACC_FP64: tl.constexpr,
    INT64_OFFSETS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # One (BLOCK_R x BLOCK_C) tile: y = act(s * z), computed in fp32 (fp64 for fp64).
    dtype = tl.float64 if ACC_FP64 else tl.float32
    pid_r, pid_c = tile_ids(C, BLOCK_C, INT64_OFFSETS)
    rr, rc, row_ok, col_ok, s = _tile(pid_r, pid_c, R, C, CH, s_ptr,
                                      SLOPE, SLOPE_ON_ROWS, dtype, BLOCK_R, BLOCK_C)
    mask = row_ok[:, None] & col_ok[None, :]
    z = tl.load(z_ptr + rr[:, None] * stride_zr + rc[None, :] * stride_zc, mask=mask, other=0.0)
    y = act_value(z.to(dtype) * s, ACT)
    tl.store(y_ptr + rr[:, None] * C + rc[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


@autotune(configs=_CONFIGS, key=["R", "C"], interpreter_config=_INTERPRETER_CONFIG,
          reset_to_zero=["db_part_ptr", "ds_part_ptr"])
@triton.jit
def act_bwd_kernel(
    g_ptr, z_ptr, s_ptr, dz_ptr, db_part_ptr, ds_part_ptr,
    R, C, CH, stride_gr, stride_gc, stride_zr, stride_zc,
    SLOPE: tl.constexpr, SLOPE_ON_ROWS: tl.constexpr, ACT: tl.constexpr,
    NEED_DZ: tl.constexpr, NEED_DB: tl.constexpr, NEED_DS: tl.constexpr, ACC_FP64: tl.constexpr,
    INT64_OFFSETS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_r, pid_c = tile_ids(C, BLOCK_C, INT64_OFFSETS)
    dtype = tl.float64 if ACC_FP64 else tl.float32
    rr, rc, row_ok, col_ok, s = _tile(pid_r, pid_c, R, C, CH, s_ptr,
                                      SLOPE, SLOPE_ON_ROWS, dtype, BLOCK_R, BLOCK_C)
    mask = row_ok[:, None] & col_ok[None, :]

    # -- gh and gz once per element; padding loads g = 0 and adds nothing. ------
    g = tl.load(g_ptr + rr[:, None] * stride_gr + rc[None, :] * stride_gc, mask=mask, other=0.0)
    z = tl.load(z_ptr + rr[:, None] * stride_zr + rc[None, :] * stride_zc, mask=mask, other=0.0)
    z = z.to(dtype)
    gh, gz = grad_tile(g.to(dtype), z, s, ACT)
    if NEED_DZ:
        tl.store(dz_ptr + rr[:, None] * C + rc[None, :], gz.to(dz_ptr.dtype.element_ty), mask=mask)

    # -- Partial sums of this tile, one row of the partials per program block. --
    if NEED_DB:  # column sums of gz (slope on columns only)
        tl.store(db_part_ptr + pid_r * C + rc, tl.sum(gz, axis=0), mask=col_ok)
    if NEED_DS:
        if SLOPE_ON_ROWS:  # row sums: partials (column blocks, R)
            tl.store(ds_part_ptr + pid_c * R + rr, tl.sum(gh * z, axis=1), mask=row_ok)
        else:  # column sums: partials (row blocks, C)
            tl.store(ds_part_ptr + pid_r * C + rc, tl.sum(gh * z, axis=0), mask=col_ok)
