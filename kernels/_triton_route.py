"""Triton kernels of the fused router (imported only by `kernels.routing.fused_route_triton`; needs Triton).

Sizes that change with the batch are not specialised on (`do_not_specialize`), so a new batch size compiles nothing.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit(do_not_specialize=["num_tokens"])
def route_kernel(
    logits_ptr,  # [T, E] gate logits, any float dtype (read as fp32)
    bias_ptr,  # [E] selection biases (read only when HAS_BIAS)
    ids_ptr,  # out int64 [T, TOP_K] chosen experts, highest biased score first
    weights_ptr,  # out fp32 [T, TOP_K] unbiased scores of the chosen experts, renormalised over the k
    scores_ptr,  # out fp32 [T, E] softmax of the logits
    partial_counts_ptr,  # out int32 [num_programs, BLOCK_E] slots per expert among this program's tokens
    num_tokens,
    stride_lt,
    stride_le,
    NUM_EXPERTS: tl.constexpr,
    TOP_K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_T: tl.constexpr,  # tokens per program
    BLOCK_E: tl.constexpr,  # next power of two >= NUM_EXPERTS
    BLOCK_K: tl.constexpr,  # next power of two >= TOP_K
):
    """Softmax, top-k on scores + bias by k rounds of arg-max, renormalised combine weights, per-expert counts.

    One program routes BLOCK_T tokens; every token's whole row of E logits sits in registers. Each round picks the
    arg-max of the biased scores (ties to the lowest expert id; NaN ranks as -inf), records its unbiased score and
    masks it out.
    """
    pid = tl.program_id(0)
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_E)
    kcols = tl.arange(0, BLOCK_K)
    row_mask = rows < num_tokens
    col_mask = cols < NUM_EXPERTS
    rows64 = rows.to(tl.int64)
    tile_mask = row_mask[:, None] & col_mask[None, :]

    logits = tl.load(
        logits_ptr + rows64[:, None] * stride_lt + cols[None, :] * stride_le, mask=tile_mask, other=0.0
    ).to(tl.float32)
    logits = tl.where(col_mask[None, :], logits, float("-inf"))  # (BLOCK_T, BLOCK_E)
    num = tl.exp(logits - tl.max(logits, axis=1)[:, None])
    scores = num / tl.sum(num, axis=1)[:, None]  # (BLOCK_T, BLOCK_E), 0 in padded columns
    tl.store(scores_ptr + rows64[:, None] * NUM_EXPERTS + cols[None, :], scores, mask=tile_mask)

    select = scores
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        select = scores + bias[None, :]
    # A NaN ranks with -inf, and both sit at -FLT_MAX, strictly above the -inf that marks padded and already chosen
    # columns: an expert biased to -inf (masked out) is then chosen last, never twice.
    select = tl.maximum(tl.where(select == select, select, float("-inf")), -3.4028234663852886e38)
    select = tl.where(col_mask[None, :], select, float("-inf"))

    ids = tl.zeros([BLOCK_T, BLOCK_K], dtype=tl.int32)
    picked = tl.zeros([BLOCK_T, BLOCK_K], dtype=tl.float32)
    counts = tl.zeros([BLOCK_E], dtype=tl.int32)
    for j in range(TOP_K):
        best = tl.argmax(select, axis=1)  # (BLOCK_T,)
        hit = cols[None, :] == best[:, None]  # (BLOCK_T, BLOCK_E)
        score = tl.sum(tl.where(hit, scores, 0.0), axis=1)  # (BLOCK_T,)
        ids = tl.where(kcols[None, :] == j, best[:, None], ids)
        picked = tl.where(kcols[None, :] == j, score[:, None], picked)
        counts += tl.sum((hit & row_mask[:, None]).to(tl.int32), axis=0)
        select = tl.where(hit, float("-inf"), select)

    weights = picked / tl.maximum(tl.sum(picked, axis=1), 1e-20)[:, None]
    out_mask = row_mask[:, None] & (kcols[None, :] < TOP_K)
    out_offs = rows64[:, None] * TOP_K + kcols[None, :]
    tl.store(ids_ptr + out_offs, ids.to(tl.int64), mask=out_mask)
    tl.store(weights_ptr + out_offs, weights, mask=out_mask)
    tl.store(partial_counts_ptr + pid * BLOCK_E + cols, counts)


@triton.jit(do_not_specialize=["num_partials"])
def reduce_counts_kernel(
    partial_counts_ptr,  # int32 [num_partials, BLOCK_E]
    counts_ptr,  # out int64 [NUM_EXPERTS]
    num_partials,
    NUM_EXPERTS: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_P: tl.constexpr,  # partial rows summed per step
):
    """counts[e] = sum over partial rows of partial_counts[:, e]; one program, deterministic (no atomics)."""
    cols = tl.arange(0, BLOCK_E)
    total = tl.zeros([BLOCK_E], dtype=tl.int64)
    for p0 in range(0, num_partials, BLOCK_P):
        rows = p0 + tl.arange(0, BLOCK_P)
        tile = tl.load(
            partial_counts_ptr + rows[:, None] * BLOCK_E + cols[None, :], mask=(rows < num_partials)[:, None], other=0
        )
        total += tl.sum(tile.to(tl.int64), axis=0)
    tl.store(counts_ptr + cols, total, mask=cols < NUM_EXPERTS)
