"""Triton kernels of the grouped SwiGLU (imported only by `kernels.swiglu.grouped_swiglu_triton`; needs Triton).

Both GEMMs run over the aligned index arrays of `kernels.align`: a program takes one block of `sorted_token_ids`
(BLOCK_SIZE_M slots, one expert) and one BLOCK_SIZE_N tile of that expert's output columns. Products accumulate
in fp32. Neither grid needs a device-to-host sync: both are sized for the worst case, and programs past the work
return at once.
- down: program (pid_m, pid_n) for every block and every column tile of d_model (the same for all experts); the
  programs whose block starts past `num_tokens_post_padded` return.
- gate/up: experts have different widths f_e, so expert e has ceil(f_e / BLOCK_SIZE_N) column tiles of its own.
  Program t takes the t-th live tile (`_live_tile`): tiles are counted segment by segment in the alignment's
  layout order, so the programs that return at once (past the last live tile) all come at the end of the launch,
  where they take SMs the last live tiles leave idle. With a grid of every block times the widest expert's tiles,
  those with a narrower expert (about half of them, at widths from 0.25x to 2x) were spread through the launch,
  each taking an SM for its few loads.

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


@triton.jit
def _live_tile(
    tile, seg_ptr, order_ptr, widths_ptr,
    NUM_EXPERTS: tl.constexpr, BLOCK_E: tl.constexpr, WIDTH_ALIGN: tl.constexpr, BLOCK_SIZE_M: tl.constexpr,
    BLOCK_SIZE_N: tl.constexpr, GROUP_SIZE_M: tl.constexpr,
):  # fmt: skip
    """The `tile`-th live (block, column tile) of the gate/up GEMM: (pid_m, pid_n, expert, width, live tiles).

    Segment r of the layout is expert order[r], with blocks_r = (end - start) / BLOCK_SIZE_M blocks and
    n_r = ceil(f / BLOCK_SIZE_N) column tiles; its blocks_r * n_r tiles follow those of segments 0..r-1, in the
    grouped order of `_tile_ids` within the segment. Past the last live tile the first four mean nothing.
    """
    ranks = tl.arange(0, BLOCK_E)
    in_range = ranks < NUM_EXPERTS
    experts = tl.load(order_ptr + ranks) & (BLOCK_E - 1)  # (BLOCK_E,) expert of each segment, as the alignment reads it
    starts = tl.load(seg_ptr + BLOCK_E + experts)
    blocks = (tl.load(seg_ptr + 2 * BLOCK_E + experts) - starts) // BLOCK_SIZE_M
    widths = tl.load(widths_ptr + experts, mask=in_range, other=0)
    tiles = tl.where(in_range, blocks * ((widths + BLOCK_SIZE_N - 1) // BLOCK_SIZE_N), 0)
    ends = tl.cumsum(tiles, axis=0)
    holds = (ends - tiles <= tile) & (tile < ends)  # one segment holds a live tile, none holds one past the last
    local = tile - tl.sum(tl.where(holds, ends - tiles, 0))
    num_blocks = tl.maximum(tl.sum(tl.where(holds, blocks, 0)), 1)
    num_cols = tl.maximum(tl.sum(tl.where(holds, tiles, 0)) // num_blocks, 1)
    pid_m, pid_n = _tile_ids(local, num_blocks, num_cols, GROUP_SIZE_M)
    first_block = tl.sum(tl.where(holds, starts, 0)) // BLOCK_SIZE_M
    expert = tl.sum(tl.where(holds, experts, 0))
    # The hint here, not on the call's result (there it reached all five values). Triton 3.6 drops it, 3.9 keeps it:
    # up_kernel reads the width back from memory instead.
    width = tl.multiple_of(tl.sum(tl.where(holds, widths, 0)), WIDTH_ALIGN)
    return first_block + pid_m, pid_n, expert, width, tl.sum(tiles, axis=0)


@triton.jit(do_not_specialize=["numel"])
def up_kernel(
    x_ptr,  # [T, d] token activations
    w_up_ptr,  # [d, sum 2 f_e] gate|up columns per expert
    w_up_desc,  # a TensorDescriptor of w_up with [BLOCK_SIZE_K, BLOCK_SIZE_N] blocks where W_DESC, else None
    h_ptr,  # out [T * k, f_max] silu(gate) * up per flat slot; columns >= f_e of a slot are not written
    sorted_ids_ptr,  # int32 [max_padded] flat slot per position (numel = padding)
    seg_ptr,  # int32 [3, BLOCK_E] count, padded start, padded end of each expert's segment (kernels.align)
    order_ptr,  # int32 [BLOCK_E] expert of the r-th segment (identity past E)
    widths_ptr,  # int32 [E] f_e
    col_starts_ptr,  # int64 [E] F_e = f_0 + ... + f_{e-1}; expert e's gate columns start at 2 F_e
    numel,  # T * k valid flat slots
    d_model,
    w_up_cols,  # sum 2 f_e: w_up's columns (the shape of a descriptor made here)
    stride_xt,
    stride_xd,
    stride_wk,
    stride_wn,
    stride_hm,
    stride_hn,
    TOP_K: tl.constexpr,
    NUM_EXPERTS: tl.constexpr,
    BLOCK_E: tl.constexpr,  # next power of two >= the number of experts (the alignment's)
    WIDTH_ALIGN: tl.constexpr,  # a power of two dividing every f_e (so every F_e): lets loads vectorise
    DOT_PRECISION: tl.constexpr,
    BLOCK_SIZE_M: tl.constexpr,
    BLOCK_SIZE_N: tl.constexpr,
    BLOCK_SIZE_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr,
    W_DESC: tl.constexpr,  # load the weight tiles through w_up_desc (TMA on Hopper) rather than pointers
    DEVICE_DESC: tl.constexpr = False,  # with W_DESC: make the descriptor here (w_up_desc is None)
):
    """h[s, n] = silu(x[s // k] @ W_gate_e[:, n]) * (x[s // k] @ W_up_e[:, n]) for the slots s of one block.

    With W_DESC the gate and up tiles come through a tensor descriptor: on Hopper one bulk copy (TMA) a tile instead
    of a load a thread, the rows gathered by token still by pointers. Columns past the expert's width then read the
    next columns of w_up (zeros past its end) instead of masked zeros: they only reach h's columns past f_e, which
    are not stored. Where the host takes it: `kernels.swiglu.use_tma_weights`. With DEVICE_DESC each program makes
    the descriptor (`tl.make_tensor_descriptor`, in Triton's global scratch) instead of the launcher encoding one on
    the host at every launch (`kernels.swiglu.DEVICE_DESCRIPTORS`).
    """
    tile = tl.program_id(0)
    pid_m, pid_n, expert, _, num_live = _live_tile(
        tile, seg_ptr, order_ptr, widths_ptr, NUM_EXPERTS, BLOCK_E, WIDTH_ALIGN, BLOCK_SIZE_M, BLOCK_SIZE_N,
        GROUP_SIZE_M,
    )  # fmt: skip
    if tile >= num_live:
        return
    # Read back rather than taken from `_live_tile`: Triton 3.6 drops a divisibility hint on a reduction's result, and
    # without it no weight load vectorises and the K loop is not pipelined (2.1x slower on the H100, 2026-11-24).
    width = tl.multiple_of(tl.load(widths_ptr + expert), WIDTH_ALIGN)
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
    gate_tile_col = (gate_col0 + pid_n * BLOCK_SIZE_N).to(tl.int32)  # descriptor coordinates are int32
    w_desc = w_up_desc
    if DEVICE_DESC:
        w_desc = tl.make_tensor_descriptor(w_up_ptr, shape=[d_model, w_up_cols], strides=[stride_wk, 1],
                                           block_shape=[BLOCK_SIZE_K, BLOCK_SIZE_N])  # fmt: skip
    acc_g = tl.zeros([BLOCK_SIZE_M, BLOCK_SIZE_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_SIZE_M, BLOCK_SIZE_N], dtype=tl.float32)
    for k0 in range(0, d_model, BLOCK_SIZE_K):
        k_mask = offs_k < d_model - k0
        a = tl.load(a_ptrs, mask=slot_mask[:, None] & k_mask[None, :], other=0.0)
        if W_DESC:
            g = w_desc.load([k0, gate_tile_col])
            u = w_desc.load([k0, gate_tile_col + width])
        else:
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
    w_down_desc,  # a TensorDescriptor of w_down with [BLOCK_SIZE_K, BLOCK_SIZE_N] blocks where W_DESC, else None
    y_ptr,  # out [T * k, d] weighted expert output per flat slot
    topk_weights_ptr,  # [T * k] combine weight per flat slot
    sorted_ids_ptr,
    expert_ids_ptr,
    num_post_pad_ptr,
    widths_ptr,  # int32 [E] f_e
    row_starts_ptr,  # int64 [E] F_e: expert e's rows of w_down start here
    numel,
    d_model,
    w_down_rows,  # sum f_e: w_down's rows (the shape of a descriptor made here)
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
    W_DESC: tl.constexpr,  # load the weight tiles through w_down_desc (every f_e a multiple of BLOCK_SIZE_K)
    ADD_TO_TOKEN: tl.constexpr = False,  # y is the zeroed [T, d] output: add row s into row s // TOP_K
    TOP_K: tl.constexpr = 1,
    DEVICE_DESC: tl.constexpr = False,  # with W_DESC: make the descriptor here (w_down_desc is None), as up_kernel
):
    """y[s, n] = w[s] * (h[s, :f_e] @ W_down_e[:, n]) for the slots s of one block; reduction length f_e.

    With W_DESC the W_down tiles come through a tensor descriptor (TMA on Hopper, as the gate/up GEMM's; made by
    each program with DEVICE_DESC). Its host only asks for it where every f_e is a multiple of BLOCK_SIZE_K, so that
    no tile reaches into the next expert's rows (0 x a non-finite weight there would reach this expert's sums).

    With ADD_TO_TOKEN each row, rounded to y's dtype as it would be stored, is added into its token's row of a zeroed
    output (16-byte atomic adds on Hopper: `red`, or `atom` under Triton 3.6) instead of being stored for the combine.
    At k = 2 that is the combine's result, whichever row comes first: 0 + a is exact and a + b is rounded once to
    y's dtype; the combine's fp32 sum of the same two rows is exact (or, far apart in scale, rounded where it cannot
    move the final rounding) before it is rounded to y's dtype (`kernels.swiglu.use_atomic_top2`: on by default on
    Hopper and later).
    """
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
    w_desc = w_down_desc
    if DEVICE_DESC:
        w_desc = tl.make_tensor_descriptor(w_down_ptr, shape=[w_down_rows, d_model], strides=[stride_wk, 1],
                                           block_shape=[BLOCK_SIZE_K, BLOCK_SIZE_N])  # fmt: skip
    acc = tl.zeros([BLOCK_SIZE_M, BLOCK_SIZE_N], dtype=tl.float32)
    for k0 in range(0, width, BLOCK_SIZE_K):
        k_mask = offs_k < width - k0
        a = tl.load(a_ptrs, mask=slot_mask[:, None] & k_mask[None, :], other=0.0)
        if W_DESC:
            b = w_desc.load([(row0 + k0).to(tl.int32), (pid_n * BLOCK_SIZE_N).to(tl.int32)])
        else:
            b = tl.load(b_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        a_ptrs += BLOCK_SIZE_K * stride_hk
        b_ptrs += BLOCK_SIZE_K * stride_wk

    weight = tl.load(topk_weights_ptr + slots, mask=slot_mask, other=0.0).to(tl.float32)
    acc = (acc * weight[:, None]).to(y_ptr.dtype.element_ty)
    y_mask = slot_mask[:, None] & n_mask[None, :]
    if ADD_TO_TOKEN:
        y_ptrs = y_ptr + (slots // TOP_K)[:, None] * stride_ym + offs_n[None, :] * stride_yn
        tl.atomic_add(y_ptrs, acc, mask=y_mask, sem="relaxed")
    else:
        y_ptrs = y_ptr + slots[:, None] * stride_ym + offs_n[None, :] * stride_yn
        tl.store(y_ptrs, acc, mask=y_mask)


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
