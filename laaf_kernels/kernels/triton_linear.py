"""Triton kernels for the LAAF linear layer.

Forward (one kernel)::

    z = x W^T + b          fp32 accumulate (fp64 for fp64 inputs)
    h = s * z              s = n * a: none, one 0-d slope, or one per column
    y = act(h)             written always; z written only when training

Backward, given g = dL/dy::

    gh = g * act'(h)       computed once per element
    gz = gh * s
    dx = gz W   dW = gz^T x   db = sum_rows gz   ds = sum_rows gh * z

Two backward paths:

* **narrow** (N, K <= 128, the PINN widths; fp64 W tiles up to 64 KiB, see
  ``triton_launchers.is_narrow``): one persistent kernel. Each
  program keeps W (N x K) on chip, walks its share of row blocks, recomputes
  z = x W^T + b from the x tile it loads for dW anyway (so the forward never
  writes z and autograd saves only x), writes dx, and accumulates dW, db and
  ds in registers; it ends by writing one partial sum per program. g and x
  are read once; z and gz never touch memory.
* **wide**: the standalone activation's backward kernel
  (``triton_activation.act_bwd_kernel``) writes gz and per-row-block partial
  sums of db and ds; cuBLAS (torch.mm) then computes dx and dW.

Every reduction is deterministic: each program writes its own partial sum
(no atomics) and the host adds the partials in a fixed order.
"""
import triton
import triton.language as tl

from .triton_activation import grad_tile, load_slope, offset_index
from .triton_activations import act_value
from .triton_prims import dot
from .triton_utils import autotune

# ---------------------------------------------------------------------------
# Forward: GEMM with the slope + activation epilogue
# ---------------------------------------------------------------------------

_FWD_CONFIGS = [
    # narrow layers: the whole W row block (BLOCK_N x BLOCK_K >= N x K) stays on chip
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 256, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=8, num_stages=1),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=3),
    # wide layers: classic GEMM tiles
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
]


@autotune(configs=_FWD_CONFIGS, key=["M", "N", "K"],
          interpreter_config={"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2})
@triton.jit
def linear_fwd_kernel(
    x_ptr, w_ptr, b_ptr, s_ptr, y_ptr, z_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_wn, stride_wk,
    HAS_BIAS: tl.constexpr, SLOPE: tl.constexpr, ACT: tl.constexpr, STORE_Z: tl.constexpr,
    ACC_FP64: tl.constexpr, DOT_PRECISION: tl.constexpr, INT64_OFFSETS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # -- Which output tile (BLOCK_M x BLOCK_N) this program owns. ---------------
    # Grouped ordering: GROUP_M consecutive row blocks sweep the column blocks
    # together, so the W tiles they share are still in L2 when reused. The ids,
    # hence rm, rn and every offset, are int64 where a tensor reaches 2^31 elements.
    pid = offset_index(tl.program_id(0), INT64_OFFSETS)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pids_per_group = GROUP_M * num_pid_n
    first_pid_m = (pid // pids_per_group) * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % pids_per_group) % group_size_m
    pid_n = (pid % pids_per_group) // group_size_m

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = offset_index(tl.arange(0, BLOCK_K), INT64_OFFSETS)  # (k0 + rk) * stride_xk too
    row_ok = rm < M
    col_ok = rn < N

    # -- z = x W^T: accumulate over K in fp32 (fp64 for fp64 inputs). ----------
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64 if ACC_FP64 else tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + rk) < K
        x = tl.load(x_ptr + rm[:, None] * stride_xm + (k0 + rk)[None, :] * stride_xk,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        # W^T tile (BLOCK_K x BLOCK_N), read straight from W's (N, K) layout.
        wt = tl.load(w_ptr + rn[None, :] * stride_wn + (k0 + rk)[:, None] * stride_wk,
                     mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = dot(x, wt, acc, DOT_PRECISION)

    # -- Epilogue: z = acc + b, h = s * z, y = act(h), all on chip. -------------
    # z is written only when the backward will read it (wide layers, training).
    z = acc
    if HAS_BIAS:
        z += tl.load(b_ptr + rn, mask=col_ok, other=0.0).to(acc.dtype)[None, :]
    offs = rm[:, None] * N + rn[None, :]
    mask = row_ok[:, None] & col_ok[None, :]
    if STORE_Z:
        tl.store(z_ptr + offs, z.to(z_ptr.dtype.element_ty), mask=mask)
    h = z * load_slope(s_ptr, rn, col_ok, SLOPE, acc.dtype)[None, :]
    y = act_value(h, ACT)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------
# Backward, narrow layers: one persistent kernel
# ---------------------------------------------------------------------------

_NARROW_BWD_CONFIGS = [
    # the small tiles fit the widest narrow layers (a 64 KiB W) in an A100's shared memory
    triton.Config({"BLOCK_M": 16}, num_warps=4, num_stages=1),
    triton.Config({"BLOCK_M": 32}, num_warps=4, num_stages=1),
    triton.Config({"BLOCK_M": 64}, num_warps=4, num_stages=1),
    triton.Config({"BLOCK_M": 64}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 128}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 128}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 256}, num_warps=8, num_stages=2),
]


@autotune(configs=_NARROW_BWD_CONFIGS, key=["M", "N", "K"], interpreter_config={"BLOCK_M": 16})
@triton.jit
def linear_bwd_narrow_kernel(
    g_ptr, x_ptr, w_ptr, b_ptr, s_ptr,
    dx_ptr, dw_part_ptr, db_part_ptr, ds_part_ptr,
    M, N, K,
    stride_gm, stride_gn, stride_xm, stride_xk, stride_wn, stride_wk,
    HAS_BIAS: tl.constexpr, SLOPE: tl.constexpr, ACT: tl.constexpr,
    NEED_DX: tl.constexpr, NEED_DW: tl.constexpr, NEED_DB: tl.constexpr, NEED_DS: tl.constexpr,
    ACC_FP64: tl.constexpr, DOT_PRECISION: tl.constexpr, INT64_OFFSETS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # BLOCK_N >= N and BLOCK_K >= K: one tile spans every column of z and of x.
    # rm, rn, rk are in the offsets' type (int64 where a tensor reaches 2^31 elements).
    pid = tl.program_id(0)
    num_programs = tl.num_programs(0)
    acc_dtype = tl.float64 if ACC_FP64 else tl.float32
    rn = offset_index(tl.arange(0, BLOCK_N), INT64_OFFSETS)
    rk = offset_index(tl.arange(0, BLOCK_K), INT64_OFFSETS)
    col_ok = rn < N
    k_ok = rk < K

    s = load_slope(s_ptr, rn, col_ok, SLOPE, acc_dtype)[None, :]
    if HAS_BIAS:
        bias = tl.load(b_ptr + rn, mask=col_ok, other=0.0).to(acc_dtype)[None, :]
    else:
        bias = tl.zeros((1, BLOCK_N), dtype=acc_dtype)

    # -- W stays on chip for the whole program (it is at most 128 x 128). -------
    w = tl.load(w_ptr + rn[:, None] * stride_wn + rk[None, :] * stride_wk,
                mask=col_ok[:, None] & k_ok[None, :], other=0.0)

    # -- Per-program accumulators of the three column reductions. ----------------
    dw_acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=acc_dtype)
    db_acc = tl.zeros((BLOCK_N,), dtype=acc_dtype)
    ds_acc = tl.zeros((BLOCK_N,), dtype=acc_dtype)

    # -- Walk row blocks pid, pid + P, pid + 2P, ... (a fixed order: deterministic).
    for tile in range(pid, tl.cdiv(M, BLOCK_M), num_programs):
        rm = offset_index(tile, INT64_OFFSETS) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rm < M
        mask = row_ok[:, None] & col_ok[None, :]
        # Padding rows/columns load g = 0, hence gh = gz = 0: they add nothing.
        g = tl.load(g_ptr + rm[:, None] * stride_gm + rn[None, :] * stride_gn,
                    mask=mask, other=0.0).to(acc_dtype)
        x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :] * stride_xk,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        # z = x W^T + b, recomputed on chip (a BLOCK_M x K x N product: cheap here).
        z = dot(x, tl.trans(w), tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dtype), DOT_PRECISION) + bias
        gh, gz = grad_tile(g, z, s, ACT)
        if NEED_DX:  # dx = gz W, a (BLOCK_M x BLOCK_K) tile, written once
            dx = dot(gz.to(w.dtype), w, tl.zeros((BLOCK_M, BLOCK_K), dtype=acc_dtype), DOT_PRECISION)
            tl.store(dx_ptr + rm[:, None] * K + rk[None, :], dx.to(dx_ptr.dtype.element_ty),
                     mask=row_ok[:, None] & k_ok[None, :])
        if NEED_DW:  # dW += gz^T x
            dw_acc = dot(tl.trans(gz.to(x.dtype)), x, dw_acc, DOT_PRECISION)
        if NEED_DB:
            db_acc += tl.sum(gz, axis=0)
        if NEED_DS:
            ds_acc += tl.sum(gh * z, axis=0)

    # -- One partial sum per program; the host adds them in program order. -------
    if NEED_DW:
        tl.store(dw_part_ptr + pid * N * K + rn[:, None] * K + rk[None, :], dw_acc,
                 mask=col_ok[:, None] & k_ok[None, :])
    if NEED_DB:
        tl.store(db_part_ptr + pid * N + rn, db_acc, mask=col_ok)
    if NEED_DS:
        tl.store(ds_part_ptr + pid * N + rn, ds_acc, mask=col_ok)
