"""Token alignment: sort token-slot pairs by expert and pad each expert's segment to the GEMM block size.

As vLLM's `moe_align_block_size`: the grouped GEMM then runs one program per block of `block_size` positions, every
block belonging to a single expert. Flat slot `s = t * k + j` is token t's j-th choice, `topk_ids.reshape(-1)[s]`.

Worked example: topk_ids = [[2, 0], [1, 2], [2, 1]] (T = 3, k = 2), num_experts = 4, block_size = 4.
- Flat experts [2, 0, 1, 2, 2, 1]: expert 0 has slot 1; expert 1 slots 2, 5; expert 2 slots 0, 3, 4; expert 3 none.
- Each segment is padded to a multiple of 4 (an empty one stays empty): starts 0, 4, 8, 12; 12 positions in all.
- The buffers are sized for the worst case, numel + E * (block_size - 1) = 6 + 12 = 18 positions, 5 blocks; every
  position without a slot holds the sentinel numel = 6, and every block past the last segment has expert -1:
    sorted_token_ids = [1, 6, 6, 6,  2, 5, 6, 6,  0, 3, 4, 6,  6, 6, 6, 6, 6, 6]
    expert_ids = [0, 1, 2, -1, -1]
    num_tokens_post_padded = [12]
Within an expert, slots keep their flat order (a stable sort), so the Triton kernel and the reference agree exactly.
Unlike vLLM (which leaves unused blocks at expert 0), unused blocks say -1; the GEMMs never read them (the down GEMM
stops at `num_tokens_post_padded`, the gate/up GEMM at the last segment of `align_triton_segments`' table).

Segments are laid out in expert order unless `segment_order` says otherwise: with segment_order = (2, 0, 1, 3) the
example's segments start at 4, 8, 0, 12 (expert 2's first), sorted_token_ids = [0, 3, 4, 6,  1, 6, 6, 6,  2, 5, 6, 6,
6, ...] and expert_ids = [2, 0, 1, -1, -1]. The grouped GEMM launches its programs in block order, so this decides
which experts' programs start first (`kernels.swiglu` puts the widest first).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from typing import NamedTuple

import torch

from kernels._triton import cdiv, next_power_of_2, require_triton


class AlignResult(NamedTuple):
    """Index arrays the grouped GEMM reads (all int32; sizes are worst-case, known without a device sync).

    Attributes:
        sorted_token_ids: [numel + E * (block_size - 1)] flat slot at each position, grouped by expert, each
            expert's segment padded to a multiple of block_size; `numel` (= T * k) marks padding.
        expert_ids: [cdiv(len(sorted_token_ids), block_size)] expert of each block; -1 past the last segment.
        num_tokens_post_padded: [1] positions in use (sum of padded segment lengths).
    """

    sorted_token_ids: torch.Tensor
    expert_ids: torch.Tensor
    num_tokens_post_padded: torch.Tensor


def aligned_sizes(numel: int, block_size: int, num_experts: int) -> tuple[int, int]:
    """(max_padded positions, max blocks) for `numel` flat slots: the buffer sizes of `AlignResult`."""
    max_padded = numel + num_experts * (block_size - 1)
    return max_padded, cdiv(max_padded, block_size)


def _check_align_args(topk_ids: torch.Tensor, block_size: int, num_experts: int) -> None:
    if topk_ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"topk_ids must be int32 or int64, got {topk_ids.dtype}")
    if block_size < 1 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 1, got {block_size}")
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts}")


def segment_order_of(segment_order: Sequence[int] | None, num_experts: int) -> tuple[int, ...] | None:
    """None for expert order, else `segment_order` (a sequence of ints or a 1-D tensor) as a tuple of ints; a
    ValueError unless it is a permutation of range(E)."""
    if segment_order is None:
        return None
    if isinstance(segment_order, torch.Tensor):  # as ints: 0-d tensors would key the cache by identity
        segment_order = segment_order.tolist()
    try:
        return _checked_order(tuple(segment_order), num_experts)
    except TypeError:  # not iterable, or unhashable or non-integer entries
        pass
    raise ValueError(f"segment_order must be a permutation of range({num_experts}), got {segment_order!r}")


@functools.lru_cache(maxsize=64)
def _checked_order(segment_order: tuple, num_experts: int) -> tuple[int, ...]:
    """Once per (order, E): the ints of a permutation of range(E); a TypeError for anything else."""
    order = tuple(operator.index(e) for e in segment_order)
    if sorted(order) != list(range(num_experts)):
        raise TypeError("not a permutation")
    return order


@functools.lru_cache(maxsize=64)
def _order_table(order: tuple[int, ...] | None, num_experts: int, block_e: int, device: torch.device) -> torch.Tensor:
    """int32 [block_e] on `device`: the expert of each segment position, padded with the identity past E."""
    order = tuple(range(num_experts)) if order is None else order
    return torch.tensor(order + tuple(range(num_experts, block_e)), dtype=torch.int32, device=device)


def _check_out(out: AlignResult, numel: int, block_size: int, num_experts: int, device: torch.device) -> None:
    max_padded, max_blocks = aligned_sizes(numel, block_size, num_experts)
    for name, n in (("sorted_token_ids", max_padded), ("expert_ids", max_blocks), ("num_tokens_post_padded", 1)):
        t = getattr(out, name)
        if tuple(t.shape) != (n,) or t.dtype != torch.int32 or t.device != device or not t.is_contiguous():
            raise ValueError(
                f"out.{name} must be a contiguous int32 tensor of shape ({n},) on {device}, got "
                f"{t.dtype} {tuple(t.shape)} on {t.device}"
            )


def _allocate(numel: int, block_size: int, num_experts: int, device: torch.device) -> AlignResult:
    max_padded, max_blocks = aligned_sizes(numel, block_size, num_experts)
    return AlignResult(
        torch.empty(max_padded, dtype=torch.int32, device=device),
        torch.empty(max_blocks, dtype=torch.int32, device=device),
        torch.empty(1, dtype=torch.int32, device=device),
    )


def moe_align_block_size_reference(
    topk_ids: torch.Tensor,
    block_size: int,
    num_experts: int,
    *,
    segment_order: Sequence[int] | None = None,
    out: AlignResult | None = None,
) -> AlignResult:
    """PyTorch reference for the alignment (module docstring has a worked example).

    Args:
        topk_ids: int [T, k] (or any shape; flattened) expert of each slot, each in [0, num_experts) (a ValueError
            otherwise).
        block_size: GEMM block of positions (BLOCK_SIZE_M); a power of two.
        num_experts: E.
        segment_order: the experts in the order their segments are laid out, a permutation of range(E); None
            (default) for 0, 1, ..., E - 1.
        out: optional preallocated `AlignResult` to write into.

    Returns:
        `AlignResult`.
    """
    _check_align_args(topk_ids, block_size, num_experts)
    seg_order = segment_order_of(segment_order, num_experts)
    device = topk_ids.device
    flat = topk_ids.reshape(-1).long()  # (numel,)
    numel = flat.numel()
    if numel:
        lo, hi = (int(v) for v in torch.aminmax(flat))
        if lo < 0 or hi >= num_experts:
            raise ValueError(f"topk_ids must be expert ids in [0, {num_experts}), got values in [{lo}, {hi}]")
    counts = torch.bincount(flat, minlength=num_experts)  # (E,)
    padded = (counts + block_size - 1) // block_size * block_size
    layout = torch.arange(num_experts, device=device) if seg_order is None else torch.tensor(seg_order, device=device)
    seg_start = torch.empty_like(padded)
    seg_start[layout] = torch.cumsum(padded[layout], 0) - padded[layout]  # segments in layout order
    first_slot = torch.cumsum(counts, 0) - counts  # rank of each expert's first slot in the sorted order
    order = torch.argsort(flat, stable=True)  # flat slots grouped by expert, in flat order within one
    experts = flat[order]
    positions = seg_start[experts] + torch.arange(numel, device=device) - first_slot[experts]
    res = _allocate(numel, block_size, num_experts, device) if out is None else out
    if out is not None:
        _check_out(out, numel, block_size, num_experts, device)
    res.sorted_token_ids.fill_(numel)
    res.sorted_token_ids[positions] = order.to(torch.int32)
    blocks = torch.repeat_interleave(layout, padded[layout] // block_size)
    res.expert_ids.fill_(-1)
    res.expert_ids[: blocks.numel()] = blocks.to(torch.int32)
    res.num_tokens_post_padded.fill_(int(padded.sum()))
    return res


def moe_align_block_size_triton(
    topk_ids: torch.Tensor,
    block_size: int,
    num_experts: int,
    *,
    segment_order: Sequence[int] | None = None,
    out: AlignResult | None = None,
) -> AlignResult:
    """Triton alignment: the same contract as `moe_align_block_size_reference`, exactly equal results.

    Two or three launches (count per chunk, a one-program scan unless the chunks are few, scatter + fill), no
    atomics, no device-to-host sync; every element of the outputs is written. E <= 1024. Expert ids are not
    range-checked (that would need a sync): a slot whose id is outside [0, E) is dropped, placed nowhere and counted
    in no segment, and nothing outside the output buffers is written.

    Raises:
        RuntimeError: Triton cannot run on this device (the message says why).
    """
    _check_align_args(topk_ids, block_size, num_experts)
    order = segment_order_of(segment_order, num_experts)
    return align_triton_segments(topk_ids, block_size, num_experts, order, out)[0]


class Segments(NamedTuple):
    """What the Triton alignment knows beside `AlignResult`, for kernels that read the segments directly."""

    table: torch.Tensor  # int32, flat [3 * block_e] and up: count, padded start, padded end of each expert's segment
    order: torch.Tensor  # int32 [block_e]: the expert of the r-th segment, the identity past E
    block_e: int  # next power of two >= E: the kernels' expert axis


def align_triton_segments(
    topk_ids: torch.Tensor,
    block_size: int,
    num_experts: int,
    order: tuple[int, ...] | None,
    out: AlignResult | None = None,
) -> tuple[AlignResult, Segments]:
    """`moe_align_block_size_triton` with its arguments already checked (`order` as `segment_order_of` returns it),
    and the segments beside the result (`kernels.swiglu` maps the gate/up GEMM's programs with them). Two launches
    where the chunk counts are few (`SCAN_IN_SCATTER_MAX_COUNTS`, up to 64 experts: the scatter scans them itself),
    else three.

    The outputs and the scratch of the launches are views of one allocation (or, given `out`, the scratch
    alone): every allocation is host time on each call. Each view starts on a 16-byte boundary, as a buffer of its
    own would: Triton specialises a pointer argument on that, and an offset that moved with the batch size would
    compile another variant of every kernel reading it.
    """
    if num_experts > 1024:
        raise ValueError(f"moe_align_block_size_triton supports up to 1024 experts, got {num_experts}")
    device = topk_ids.device
    require_triton(device, "moe_align_block_size_triton")
    from kernels import _triton_align

    flat = topk_ids.reshape(-1).contiguous()
    numel = flat.numel()
    sizes = _launch_sizes(numel, block_size, num_experts)
    if out is None:
        buf = torch.empty(sum(sizes.all_parts), dtype=torch.int32, device=device)
        sorted_ids, _, expert_ids, _, num_post_pad, _, chunk_counts, chunk_base, table = buf.split_with_sizes(
            sizes.all_parts
        )
        out = AlignResult(sorted_ids, expert_ids, num_post_pad)
    else:
        _check_out(out, numel, block_size, num_experts, device)
        scratch = torch.empty(sum(sizes.scratch_parts), dtype=torch.int32, device=device)
        chunk_counts, chunk_base, table = scratch.split_with_sizes(sizes.scratch_parts)
    block_e, chunk, num_chunks = sizes.block_e, sizes.chunk, sizes.num_chunks
    order_table = _order_table(order, num_experts, block_e, device)
    _triton_align.count_kernel[(num_chunks,)](
        flat, chunk_counts, numel, NUM_EXPERTS=num_experts, BLOCK_E=block_e, CHUNK=chunk
    )
    block_c = max(1, 4096 // block_e)
    # Read here, not cached with the sizes: a test may change it. Past 64 experts the scan's vectors in every scatter
    # program cost registers (compiled for sm_90 at E = 256 it spills 936 bytes, against 152 without).
    scan_in_scatter = block_e <= 64 and num_chunks * block_e <= SCAN_IN_SCATTER_MAX_COUNTS
    if not scan_in_scatter:
        _triton_align.scan_kernel[(1,)](
            chunk_counts, chunk_base, table, out.num_tokens_post_padded, order_table, num_chunks,
            BLOCK_E=block_e, BLOCK_C=block_c, BLOCK_SIZE_M=block_size,
        )  # fmt: skip
    _triton_align.scatter_kernel[(sizes.scatter_programs,)](
        flat, chunk_counts, chunk_base, table, out.num_tokens_post_padded, order_table, out.sorted_token_ids,
        out.expert_ids, numel, num_chunks, sizes.max_padded, sizes.max_blocks, NUM_EXPERTS=num_experts,
        BLOCK_E=block_e, CHUNK=chunk, BLOCK_SIZE_M=block_size, SCAN=scan_in_scatter, BLOCK_C=block_c,
    )  # fmt: skip
    return out, Segments(table, order_table, block_e)


# The most chunk counts (chunks x BLOCK_E) for which each scatter program scans them itself: up to 64 KB of reads a
# program (four steps of the scan's loop at most), against a launch saved. The E = 64 and 8k-16k token calls whose
# eager timing was host-bound on an H100 (results/gpu/kernels/2026-11-24) have 4096-8192; a top-8 pass of 262144 slots
# would have 131072 a program, more than the launch is worth.
SCAN_IN_SCATTER_MAX_COUNTS = 16384


class _Sizes(NamedTuple):
    max_padded: int
    max_blocks: int
    block_e: int
    chunk: int  # flat slots per count/scatter program
    num_chunks: int
    scatter_programs: int
    scratch_parts: tuple[int, int, int]  # chunk counts, chunk bases, segment table: int32 elements, 16-byte multiples
    all_parts: tuple[int, ...]  # each output and the gap to the next 16 bytes, then the scratch: one allocation


@functools.lru_cache(maxsize=1024)
def _launch_sizes(numel: int, block_size: int, num_experts: int) -> _Sizes:
    """Buffer and launch sizes, once per shape: on every launch's path."""
    max_padded, max_blocks = aligned_sizes(numel, block_size, num_experts)
    block_e = next_power_of_2(num_experts)
    chunk = max(block_size, 4096 // block_e)  # both powers of two, so a chunk is a whole number of blocks
    num_chunks = max(1, cdiv(numel, chunk))
    scratch_parts = tuple(cdiv(n, 4) * 4 for n in (num_chunks * block_e, num_chunks * block_e, 3 * block_e))
    outputs = tuple(part for n in (max_padded, max_blocks, 1) for part in (n, cdiv(n, 4) * 4 - n))
    return _Sizes(
        max_padded, max_blocks, block_e, chunk, num_chunks, max(num_chunks, cdiv(max_padded, chunk)), scratch_parts,
        outputs + scratch_parts,
    )  # fmt: skip
