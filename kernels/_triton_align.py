"""Triton kernels of the token alignment (imported only by `kernels.align.align_triton_segments`).

Three launches, or two where the chunk counts are few, no atomics, so the order is deterministic: within an
expert, slots keep their flat order (a stable sort by expert), exactly as the PyTorch reference.

1. `count_kernel`: each program histograms CHUNK flat slots -> chunk_counts[c, e] (ids outside [0, E) are not
   counted, and the scatter drops them, so a bad id cannot write outside the buffers).
2. `scan_kernel` (one program): exclusive prefix of chunk_counts over chunks -> chunk_base[c, e]; per expert the
   count, the padded segment start and end, the segments laid out in `segment_order`; the total padded length.
3. `scatter_kernel`: program p scatters chunk p's slots to `segment start + chunk_base + rank within chunk`, and
   fills positions [p * CHUNK, (p + 1) * CHUNK) that hold no slot with the sentinel, and their blocks' expert ids.
   With SCAN it does step 2 itself first (`_scan_counts`): every program reads all the chunk counts and keeps its
   own chunk's base, and program 0 stores the segment table. That costs each program the one-program scan's read,
   so the host takes it only where the counts are few; it saves a launch, which is host time on every call.

The scan and the scatter work in layout order: column r of their vectors is expert order[r], the expert of the
r-th segment, so the prefix over segments is a cumsum; each value is read from and stored to its expert's column.

Sizes that change with the batch are not specialised on (`do_not_specialize`), so a new batch size compiles nothing.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit(do_not_specialize=["numel"])
def count_kernel(
    topk_ids_ptr,  # [numel] expert of each flat slot (int32 or int64)
    chunk_counts_ptr,  # out int32 [num_chunks, BLOCK_E]
    numel,
    NUM_EXPERTS: tl.constexpr,
    BLOCK_E: tl.constexpr,  # next power of two >= the number of experts
    CHUNK: tl.constexpr,  # flat slots per program
):
    pid = tl.program_id(0)
    offs = pid * CHUNK + tl.arange(0, CHUNK)
    ids = tl.load(topk_ids_ptr + offs, mask=offs < numel, other=-1)  # (CHUNK,), -1 past the end
    cols = tl.arange(0, BLOCK_E)
    # An id in [E, BLOCK_E) must not open a segment past the buffers' worst-case size: count only real experts.
    onehot = ((ids[:, None] == cols[None, :]) & (cols < NUM_EXPERTS)[None, :]).to(tl.int32)  # (CHUNK, BLOCK_E)
    tl.store(chunk_counts_ptr + pid * BLOCK_E + cols, tl.sum(onehot, axis=0))


@triton.jit
def _scan_counts(
    chunk_counts_ptr, experts, num_chunks, upto,
    BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_SIZE_M: tl.constexpr,
):  # fmt: skip
    """Per segment (layout order, `experts` its expert): (slots, padded length, padded end, slots in chunks before
    `upto`)."""
    counts = tl.zeros([BLOCK_E], dtype=tl.int32)
    before = tl.zeros([BLOCK_E], dtype=tl.int32)
    for c0 in range(0, num_chunks, BLOCK_C):
        rows = c0 + tl.arange(0, BLOCK_C)
        tile = tl.load(chunk_counts_ptr + rows[:, None] * BLOCK_E + experts[None, :], mask=(rows < num_chunks)[:, None],
                       other=0)  # (BLOCK_C, BLOCK_E)  # fmt: skip
        counts += tl.sum(tile, axis=0)
        before += tl.sum(tl.where((rows < upto)[:, None], tile, 0), axis=0)
    padded = (counts + BLOCK_SIZE_M - 1) // BLOCK_SIZE_M * BLOCK_SIZE_M  # 0 for empty experts
    return counts, padded, tl.cumsum(padded, axis=0), before


@triton.jit(do_not_specialize=["num_chunks"])
def scan_kernel(
    chunk_counts_ptr,  # int32 [num_chunks, BLOCK_E]
    chunk_base_ptr,  # out int32 [num_chunks, BLOCK_E] slots of expert e in chunks before c
    seg_ptr,  # out int32 [3, BLOCK_E]: count, padded start, padded end of each expert's segment
    num_post_pad_ptr,  # out int32 [1] total padded length
    order_ptr,  # int32 [BLOCK_E] expert of the r-th segment (a permutation of 0..BLOCK_E-1, identity past E)
    num_chunks,
    BLOCK_E: tl.constexpr,
    BLOCK_C: tl.constexpr,  # chunks per step
    BLOCK_SIZE_M: tl.constexpr,  # alignment block
):
    # Column r of the scan is expert order[r]: the prefix over segments runs in layout order, and every value is
    # read from and stored to its expert's own column.
    # Masked to the expert axis so that no table, however damaged, moves a store outside the buffers.
    experts = tl.load(order_ptr + tl.arange(0, BLOCK_E)) & (BLOCK_E - 1)
    carry = tl.zeros([BLOCK_E], dtype=tl.int32)
    for c0 in range(0, num_chunks, BLOCK_C):
        rows = c0 + tl.arange(0, BLOCK_C)
        mask = (rows < num_chunks)[:, None]
        offs = rows[:, None] * BLOCK_E + experts[None, :]
        tile = tl.load(chunk_counts_ptr + offs, mask=mask, other=0)  # (BLOCK_C, BLOCK_E)
        tl.store(chunk_base_ptr + offs, tl.cumsum(tile, axis=0) - tile + carry[None, :], mask=mask)
        carry += tl.sum(tile, axis=0)
    padded = (carry + BLOCK_SIZE_M - 1) // BLOCK_SIZE_M * BLOCK_SIZE_M  # (BLOCK_E,), 0 for empty experts
    seg_end = tl.cumsum(padded, axis=0)
    tl.store(seg_ptr + experts, carry)
    tl.store(seg_ptr + BLOCK_E + experts, seg_end - padded)
    tl.store(seg_ptr + 2 * BLOCK_E + experts, seg_end)
    tl.store(num_post_pad_ptr, tl.sum(padded, axis=0))


@triton.jit(do_not_specialize=["numel", "num_chunks", "max_padded", "max_blocks"])
def scatter_kernel(
    topk_ids_ptr,  # [numel] expert of each flat slot
    chunk_counts_ptr,  # int32 [num_chunks, BLOCK_E] (read with SCAN)
    chunk_base_ptr,  # int32 [num_chunks, BLOCK_E] (read without SCAN)
    seg_ptr,  # int32 [3, BLOCK_E] count, start, end per expert (written by program 0 with SCAN, else read)
    num_post_pad_ptr,  # int32 [1] total padded length (written by program 0 with SCAN)
    order_ptr,  # int32 [BLOCK_E] expert of the r-th segment (identity past E)
    sorted_ids_ptr,  # out int32 [max_padded] flat slot per position, `numel` for padding
    expert_ids_ptr,  # out int32 [max_blocks] expert of each block, -1 past the last segment
    numel,
    num_chunks,
    max_padded,
    max_blocks,
    NUM_EXPERTS: tl.constexpr,
    BLOCK_E: tl.constexpr,
    CHUNK: tl.constexpr,  # a multiple of BLOCK_SIZE_M
    BLOCK_SIZE_M: tl.constexpr,
    SCAN: tl.constexpr,  # do the scan here (no scan_kernel before this launch)
    BLOCK_C: tl.constexpr,  # chunks per step of that scan
):
    pid = tl.program_id(0)
    experts = tl.load(order_ptr + tl.arange(0, BLOCK_E)) & (BLOCK_E - 1)  # (BLOCK_E,) layout order, as the scan's
    col_mask = experts < NUM_EXPERTS
    if SCAN:
        seg_count, padded, seg_end, chunk_base = _scan_counts(
            chunk_counts_ptr, experts, num_chunks, pid, BLOCK_E, BLOCK_C, BLOCK_SIZE_M
        )
        seg_start = seg_end - padded
        if pid == 0:  # what the gate/up GEMM reads (`kernels.swiglu`), and the down GEMM's extent
            tl.store(seg_ptr + experts, seg_count)
            tl.store(seg_ptr + BLOCK_E + experts, seg_start)
            tl.store(seg_ptr + 2 * BLOCK_E + experts, seg_end)
            tl.store(num_post_pad_ptr, tl.sum(padded, axis=0))
    else:
        seg_count = tl.load(seg_ptr + experts)
        seg_start = tl.load(seg_ptr + BLOCK_E + experts)
        seg_end = tl.load(seg_ptr + 2 * BLOCK_E + experts)

    # Fill: position p belongs to the expert whose padded segment [start, end) contains it (segments do not overlap,
    # whatever order they are laid out in; an empty one contains nothing), to none past the last one.
    pos = pid * CHUNK + tl.arange(0, CHUNK)
    is_owner = (seg_start[None, :] <= pos[:, None]) & (pos[:, None] < seg_end[None, :]) & col_mask[None, :]
    start = tl.sum(tl.where(is_owner, seg_start[None, :], 0), axis=1)  # (CHUNK,)
    count = tl.sum(tl.where(is_owner, seg_count[None, :], 0), axis=1)  # 0 where no segment holds p
    holds_slot = pos - start < count
    tl.store(sorted_ids_ptr + pos, tl.zeros([CHUNK], dtype=tl.int32) + numel, mask=(pos < max_padded) & ~holds_slot)

    blocks = pid * (CHUNK // BLOCK_SIZE_M) + tl.arange(0, CHUNK // BLOCK_SIZE_M)
    block_pos = blocks * BLOCK_SIZE_M
    owns = (seg_start[None, :] <= block_pos[:, None]) & (block_pos[:, None] < seg_end[None, :]) & col_mask[None, :]
    block_owner = tl.sum(tl.where(owns, experts[None, :] + 1, 0), axis=1) - 1  # -1 where no segment holds the block
    tl.store(expert_ids_ptr + blocks, block_owner, mask=blocks < max_blocks)

    # Scatter this program's chunk of flat slots, keeping their order within each expert.
    if pid < num_chunks:
        offs = pid * CHUNK + tl.arange(0, CHUNK)
        ids = tl.load(topk_ids_ptr + offs, mask=offs < numel, other=-1)
        onehot = (ids[:, None] == experts[None, :]) & col_mask[None, :]  # (CHUNK, BLOCK_E)
        rank = tl.sum(tl.where(onehot, tl.cumsum(onehot.to(tl.int32), axis=0), 0), axis=1) - 1
        if SCAN:
            base = chunk_base + seg_start  # (BLOCK_E,)
        else:
            base = tl.load(chunk_base_ptr + pid * BLOCK_E + experts) + seg_start
        dest = tl.sum(tl.where(onehot, base[None, :], 0), axis=1) + rank
        # A slot whose id is outside [0, E) has no segment (its rank is -1): drop it rather than write at dest -1.
        valid = (offs < numel) & (ids >= 0) & (ids < NUM_EXPERTS)
        tl.store(sorted_ids_ptr + dest, offs.to(tl.int32), mask=valid)
