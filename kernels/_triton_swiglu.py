"""Triton kernels of the grouped SwiGLU (imported only by `kernels.swiglu.grouped_swiglu_triton`; needs Triton).

Both GEMMs run over the aligned index arrays of `kernels.align`: program (pid_m, pid_n) takes block pid_m of
`sorted_token_ids` (BLOCK_SIZE_M slots, one expert) and one BLOCK_SIZE_N tile of that expert's output columns.
Experts have different widths f_e, so the grids are sized for the widest expert and programs past an expert's
width return at once. Programs whose block starts past `num_tokens_post_padded` return too, so the grid (sized
from the worst case) needs no device-to-host sync. Products accumulate in fp32.

Sizes that change with the batch (`numel`, `num_pid_m`, the combine's `num_tokens`) are not specialised on
(`do_not_specialize`): Triton would otherwise compile a variant for each pattern of int arguments equal to 1 or
divisible by 16, so a new batch size could stall a measured step for seconds of compiling.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tile_ids(pid, num_pid_m, num_pid_n, GROUP_SIZE_M: tl.constexpr):
    """Grouped program order (consecutive programs share B tiles in L2): pid -> (pid_m, pid_n)."""
    num_pid_in_group = GROUP_SIZE_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_SIZE_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_SIZE_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit(do_not_specialize=["numel", "num_pid_m"])
def up_kernel(
    x_ptr,  # [T, d] token activations
    w_up_ptr,  # [d, sum 2 f_e] gate|up columns per expert
    h_ptr,  # out [T * k, f_max] silu(gate) * up per flat slot; columns >= f_e of a slot are not written
    sorted_ids_ptr,  # int32 [max_padded] flat slot per position (numel = padding)
    expert_ids_ptr,  # int32 [num_pid_m] expert per block
    num_post_pad_ptr,  # int32 [1] positions in use
    widths_ptr,  # int32 [E] f_e
    col_starts_ptr,  # int64 [E] F_e = f_0 + ... + f_{e-1}; expert e's gate columns start at 2 F_e
    numel,  # T * k valid flat slots
    d_model,
    num_pid_m,
    num_pid_n,
    stride_xt,
    stride_xd,
    stride_wk,
    stride_wn,
    stride_hm,
    stride_hn,
    TOP_K: tl.constexpr,
    WIDTH_ALIGN: tl.constexpr,  # a power of two dividing every f_e (so every F_e): lets loads vectorise
    DOT_PRECISION: tl.constexpr,
    BLOCK_SIZE_M: tl.constexpr,
    BLOCK_SIZE_N: tl.constexpr,
    BLOCK_SIZE_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr,
):
    """h[s, n] = silu(x[s // k] @ W_gate_e[:, n]) * (x[s // k] @ W_up_e[:, n]) for the slots s of one block."""
    pid_m, pid_n = _tile_ids(tl.program_id(0), num_pid_m, num_pid_n, GROUP_SIZE_M)
    if pid_m * BLOCK_SIZE_M >= tl.load(num_post_pad_ptr):
        return
    expert = tl.load(expert_ids_ptr + pid_m)
    width = tl.multiple_of(tl.load(widths_ptr + expert), WIDTH_ALIGN)
    if pid_n * BLOCK_SIZE_N >= width:
        return
    gate_col0 = tl.multiple_of(2 * tl.load(col_starts_ptr + expert), WIDTH_ALIGN)  # int64
    up_col0 = tl.multiple_of(gate_col0 + width, WIDTH_ALIGN)  # the up columns follow the f_e gate columns

    slots = tl.load(sorted_ids_ptr + pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M))
    slot_mask = slots < numel
    slots = tl.where(slot_mask, slots, 0).to(tl.int64)
    tokens = slots // TOP_K
    offs_n = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    n_mask = offs_n < width
    offs_k = tl.arange(0, BLOCK_SIZE_K)

    a_ptrs = x_ptr + tokens[:, None] * stride_xt + offs_k[None, :] * stride_xd
    g_ptrs = w_up_ptr + offs_k[:, None] * stride_wk + (gate_col0 + offs_n)[None, :] * stride_wn
    u_ptrs = w_up_ptr + offs_k[:, None] * stride_wk + (up_col0 + offs_n)[None, :] * stride_wn
    acc_g = tl.zeros([BLOCK_SIZE_M, BLOCK_SIZE_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_SIZE_M, BLOCK_SIZE_N], dtype=tl.float32)
    for k0 in range(0, d_model, BLOCK_SIZE_K):
        k_mask = offs_k < d_model - k0
        a = tl.load(a_ptrs, mask=slot_mask[:, None] & k_mask[None, :], other=0.0)
        b_mask = k_mask[:, None] & n_mask[None, :]
        g = tl.load(g_ptrs, mask=b_mask, other=0.0)
        u = tl.load(u_ptrs, mask=b_mask, other=0.0)
        acc_g = tl.dot(a, g, acc_g, input_precision=DOT_PRECISION)
        acc_u = tl.dot(a, u, acc_u, input_precision=DOT_PRECISION)
        a_ptrs += BLOCK_SIZE_K * stride_xd
        g_ptrs += BLOCK_SIZE_K * stride_wk
        u_ptrs += BLOCK_SIZE_K * stride_wk

    h = acc_g * tl.sigmoid(acc_g) * acc_u  # silu(gate) * up, fp32
    h_ptrs = h_ptr + slots[:, None] * stride_hm + offs_n[None, :] * stride_hn
    tl.store(h_ptrs, h.to(h_ptr.dtype.element_ty), mask=slot_mask[:, None] & n_mask[None, :])


@triton.jit(do_not_specialize=["numel", "num_pid_m"])
def down_kernel(
    h_ptr,  # [T * k, f_max] activations per flat slot (from up_kernel)
    w_down_ptr,  # [sum f_e, d] rows per expert
    y_ptr,  # out [T * k, d] weighted expert output per flat slot
    topk_weights_ptr,  # [T * k] combine weight per flat slot
    sorted_ids_ptr,
    expert_ids_ptr,
    num_post_pad_ptr,
    widths_ptr,  # int32 [E] f_e
    row_starts_ptr,  # int64 [E] F_e: expert e's rows of w_down start here
    numel,
    d_model,
    num_pid_m,
    num_pid_n,
    stride_hm,
    stride_hk,
    stride_wk,
    stride_wn,
    stride_ym,
    stride_yn,
    WIDTH_ALIGN: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_SIZE_M: tl.constexpr,
    BLOCK_SIZE_N: tl.constexpr,
    BLOCK_SIZE_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr,
):
    """y[s, n] = w[s] * (h[s, :f_e] @ W_down_e[:, n]) for the slots s of one block; reduction length f_e."""
    pid_m, pid_n = _tile_ids(tl.program_id(0), num_pid_m, num_pid_n, GROUP_SIZE_M)
    if pid_m * BLOCK_SIZE_M >= tl.load(num_post_pad_ptr):
        return
    expert = tl.load(expert_ids_ptr + pid_m)
    width = tl.multiple_of(tl.load(widths_ptr + expert), WIDTH_ALIGN)
    row0 = tl.multiple_of(tl.load(row_starts_ptr + expert), WIDTH_ALIGN)  # int64

    slots = tl.load(sorted_ids_ptr + pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M))
    slot_mask = slots < numel
    slots = tl.where(slot_mask, slots, 0).to(tl.int64)
    offs_n = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    n_mask = offs_n < d_model
    offs_k = tl.arange(0, BLOCK_SIZE_K)

    a_ptrs = h_ptr + slots[:, None] * stride_hm + offs_k[None, :] * stride_hk
    b_ptrs = w_down_ptr + (row0 + offs_k)[:, None] * stride_wk + offs_n[None, :] * stride_wn
    acc = tl.zeros([BLOCK_SIZE_M, BLOCK_SIZE_N], dtype=tl.float32)
    for k0 in range(0, width, BLOCK_SIZE_K):
        k_mask = offs_k < width - k0
        a = tl.load(a_ptrs, mask=slot_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        a_ptrs += BLOCK_SIZE_K * stride_hk
        b_ptrs += BLOCK_SIZE_K * stride_wk

    weight = tl.load(topk_weights_ptr + slots, mask=slot_mask, other=0.0).to(tl.float32)
    acc = acc * weight[:, None]
    y_ptrs = y_ptr + slots[:, None] * stride_ym + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=slot_mask[:, None] & n_mask[None, :])


@triton.jit(do_not_specialize=["num_tokens"])
def combine_kernel(
    y_ptr,  # [T * k, d] weighted expert outputs per flat slot
    out_ptr,  # out [T, d]
    num_tokens,
    d_model,
    stride_ym,
    stride_om,
    TOP_K: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """out[t] = sum_j y[t * k + j], summed in fp32 (the scatter back to token order; slots of t are contiguous)."""
    rows = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = (rows < num_tokens)[:, None] & (cols < d_model)[None, :]
    acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    for j in range(TOP_K):
        acc += tl.load(y_ptr + (rows * TOP_K + j)[:, None] * stride_ym + cols[None, :], mask=mask, other=0.0).to(
            tl.float32
        )
    tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)
