"""The Triton token alignment against the PyTorch reference, exactly, under TRITON_INTERPRET=1 (marker `triton`)."""

from __future__ import annotations

import pytest
import torch

from kernels import align
from kernels.align import (
    AlignResult,
    align_triton_segments,
    aligned_sizes,
    moe_align_block_size_reference,
    moe_align_block_size_triton,
)

pytestmark = pytest.mark.triton


@pytest.fixture(autouse=True, params=["scan_launch", "scan_in_scatter"])
def scan_path(request, monkeypatch):
    """Every test on both paths of the scan: its own launch, and done by each scatter program (the default where the
    chunk counts are few, as in these small cases)."""
    monkeypatch.setattr(align, "SCAN_IN_SCATTER_MAX_COUNTS", -1 if request.param == "scan_launch" else 1 << 30)
    return request.param

# (id, tokens, experts, top_k, block_size, load); T * k is rarely a multiple of the block.
ALIGN_CASES = [
    ("uniform_ragged_tail", 37, 8, 2, 16, "uniform"),
    ("skewed_two_chunks", 64, 16, 8, 16, "skewed"),
    ("empty_expert", 40, 8, 2, 32, "empty"),
    ("all_on_one_expert", 50, 4, 1, 16, "one"),
    ("first_choice_one_expert", 27, 6, 2, 16, "one"),
    ("k_equals_E", 21, 4, 4, 16, "uniform"),
    ("E64_eight_chunks", 64, 64, 8, 16, "skewed"),
    ("E64_two_scan_steps", 600, 64, 8, 16, "skewed"),  # 75 chunks: the scan's loop takes 64 a step
    ("block64", 30, 8, 3, 64, "skewed"),
    ("one_token", 1, 8, 2, 16, "uniform"),
    ("no_tokens", 0, 4, 2, 16, "uniform"),
]


def poisoned(numel: int, block_size: int, num_experts: int) -> AlignResult:
    max_padded, max_blocks = aligned_sizes(numel, block_size, num_experts)
    return AlignResult(
        torch.full((max_padded,), -7, dtype=torch.int32),
        torch.full((max_blocks,), -7, dtype=torch.int32),
        torch.full((1,), -7, dtype=torch.int32),
    )


def check_invariants(res: AlignResult, topk_ids: torch.Tensor, block_size: int) -> None:
    """Every slot once, in a block of its own expert; padding is the sentinel; blocks past the end are -1."""
    flat = topk_ids.reshape(-1)
    numel = flat.numel()
    used = int(res.num_tokens_post_padded)
    assert used % block_size == 0
    ids = res.sorted_token_ids.long()
    real = ids < numel
    assert sorted(ids[real].tolist()) == list(range(numel))
    assert (ids[~real] == numel).all()
    assert not real[used:].any()
    block_of_pos = torch.arange(ids.numel()) // block_size
    assert (res.expert_ids.long()[block_of_pos[real]] == flat[ids[real]]).all()
    assert (res.expert_ids[used // block_size :] == -1).all()


@pytest.mark.parametrize(("num_tokens", "num_experts", "top_k", "block_size", "load"),
                         [c[1:] for c in ALIGN_CASES], ids=[c[0] for c in ALIGN_CASES])  # fmt: skip
@pytest.mark.parametrize("id_dtype", [torch.int64, torch.int32])
def test_align_matches_reference_exactly(make_topk_ids, num_tokens, num_experts, top_k, block_size, load, id_dtype):
    topk_ids = make_topk_ids(num_tokens, num_experts, top_k, load).to(id_dtype)
    got = moe_align_block_size_triton(
        topk_ids, block_size, num_experts, out=poisoned(topk_ids.numel(), block_size, num_experts)
    )
    want = moe_align_block_size_reference(topk_ids, block_size, num_experts)
    for name, g, w in zip(AlignResult._fields, got, want):
        assert torch.equal(g, w), f"{name} differs:\n{g.tolist()}\n{w.tolist()}"
    check_invariants(got, topk_ids, block_size)


def test_align_worked_example():
    """The example in `kernels.align`'s docstring."""
    topk_ids = torch.tensor([[2, 0], [1, 2], [2, 1]])
    got = moe_align_block_size_triton(topk_ids, 4, 4, out=poisoned(6, 4, 4))
    assert got.sorted_token_ids.tolist() == [1, 6, 6, 6, 2, 5, 6, 6, 0, 3, 4, 6, 6, 6, 6, 6, 6, 6]
    assert got.expert_ids.tolist() == [0, 1, 2, -1, -1]
    assert got.num_tokens_post_padded.tolist() == [12]


@pytest.mark.parametrize(("num_experts", "bad_ids"), [(6, (-1, 6, 7, 1000)), (8, (-5, 8, 2**31 - 1))])
@pytest.mark.parametrize("reverse", [False, True], ids=["expert_order", "reversed_segments"])
def test_align_drops_out_of_range_ids_without_writing_outside(gen, num_experts, bad_ids, reverse):
    """Ids are not range-checked on the device: a bad slot is dropped, and nothing outside the buffers is written.

    E = 6 pads the kernels' expert axis to 8, so ids 6 and 7 fall inside it; -1 and large ids fall outside.
    """
    segment_order = list(range(num_experts))[::-1] if reverse else None
    block_size, guard = 16, 64
    topk_ids = torch.randint(0, num_experts, (37, 2), generator=gen)
    bad_slots = torch.randperm(topk_ids.numel(), generator=gen)[: len(bad_ids)]
    topk_ids.view(-1)[bad_slots] = torch.tensor(bad_ids)
    numel = topk_ids.numel()
    max_padded, max_blocks = aligned_sizes(numel, block_size, num_experts)
    # The outputs are views into larger poisoned buffers, so a write before or past either end shows.
    ids_buf = torch.full((max_padded + 2 * guard,), -7, dtype=torch.int32)
    blocks_buf = torch.full((max_blocks + 2 * guard,), -7, dtype=torch.int32)
    out = AlignResult(ids_buf[guard:-guard], blocks_buf[guard:-guard], torch.full((1,), -7, dtype=torch.int32))
    moe_align_block_size_triton(topk_ids, block_size, num_experts, segment_order=segment_order, out=out)
    assert (ids_buf[:guard] == -7).all() and (ids_buf[-guard:] == -7).all()
    assert (blocks_buf[:guard] == -7).all() and (blocks_buf[-guard:] == -7).all()

    # Expected: the reference layout of the valid slots alone, bad slots placed nowhere.
    flat = topk_ids.reshape(-1).tolist()
    want_ids, want_blocks = [], []
    for e in segment_order or range(num_experts):
        slots = [s for s, x in enumerate(flat) if x == e]
        padded = -(-len(slots) // block_size) * block_size
        want_ids += slots + [numel] * (padded - len(slots))
        want_blocks += [e] * (padded // block_size)
    used = len(want_ids)
    assert out.num_tokens_post_padded.tolist() == [used]
    assert out.sorted_token_ids.tolist() == want_ids + [numel] * (max_padded - used)
    assert out.expert_ids.tolist() == want_blocks + [-1] * (max_blocks - len(want_blocks))


ORDER_CASES = [("skewed_two_chunks", 64, 16, 8, 16, "skewed"), ("empty_expert", 40, 8, 2, 32, "empty"),
               ("E64_eight_chunks", 64, 64, 8, 16, "skewed"), ("all_on_one_expert", 50, 4, 1, 16, "one")]  # fmt: skip


@pytest.mark.parametrize(("num_tokens", "num_experts", "top_k", "block_size", "load"),
                         [c[1:] for c in ORDER_CASES], ids=[c[0] for c in ORDER_CASES])  # fmt: skip
@pytest.mark.parametrize("order", ["reversed", "random"])
def test_align_lays_segments_out_in_the_given_order(gen, make_topk_ids, num_tokens, num_experts, top_k, block_size,
                                                    load, order):  # fmt: skip
    topk_ids = make_topk_ids(num_tokens, num_experts, top_k, load)
    perm = torch.randperm(num_experts, generator=gen) if order == "random" else torch.arange(num_experts).flip(0)
    segment_order = perm.tolist()
    got = moe_align_block_size_triton(topk_ids, block_size, num_experts, segment_order=segment_order,
                                      out=poisoned(topk_ids.numel(), block_size, num_experts))  # fmt: skip
    want = moe_align_block_size_reference(topk_ids, block_size, num_experts, segment_order=segment_order)
    for name, g, w in zip(AlignResult._fields, got, want):
        assert torch.equal(g, w), f"{name} differs:\n{g.tolist()}\n{w.tolist()}"
    check_invariants(got, topk_ids, block_size)
    # The blocks' experts run through the used experts in the given order, each once, contiguously.
    used_blocks = got.expert_ids[: int(got.num_tokens_post_padded) // block_size].tolist()
    present = set(topk_ids.reshape(-1).tolist())
    assert list(dict.fromkeys(used_blocks)) == [e for e in segment_order if e in present]
    assert sum(a != b for a, b in zip(used_blocks, used_blocks[1:])) == len(present) - 1
    # Only the segments moved: each expert holds the same slots, in the same order, as in expert order.
    plain = moe_align_block_size_reference(topk_ids, block_size, num_experts)
    numel = topk_ids.numel()
    for e in present:
        assert expert_slots(got, e, block_size, numel) == expert_slots(plain, e, block_size, numel)


def expert_slots(res: AlignResult, expert: int, block_size: int, numel: int) -> list[int]:
    """The slots in `expert`'s blocks, in position order, without the padding (the sentinel `numel`)."""
    used = int(res.num_tokens_post_padded)
    blocks = res.sorted_token_ids[:used].view(-1, block_size)[res.expert_ids[: used // block_size] == expert]
    return [s for s in blocks.reshape(-1).tolist() if s < numel]


def test_align_worked_example_in_another_segment_order():
    """The second example in `kernels.align`'s docstring."""
    topk_ids = torch.tensor([[2, 0], [1, 2], [2, 1]])
    got = moe_align_block_size_triton(topk_ids, 4, 4, segment_order=(2, 0, 1, 3), out=poisoned(6, 4, 4))
    assert got.sorted_token_ids.tolist() == [0, 3, 4, 6, 1, 6, 6, 6, 2, 5, 6, 6, 6, 6, 6, 6, 6, 6]
    assert got.expert_ids.tolist() == [2, 0, 1, -1, -1]
    assert got.num_tokens_post_padded.tolist() == [12]


@pytest.mark.parametrize("bad", [(0, 1, 2), (0, 0, 1, 2), (0, 1, 2, 4), (0.0, 1, 2, 3), 3, "0123"])
@pytest.mark.parametrize("align", [moe_align_block_size_reference, moe_align_block_size_triton])
def test_align_refuses_a_segment_order_that_is_not_a_permutation(align, bad):
    with pytest.raises(ValueError, match=r"segment_order must be a permutation of range\(4\), got"):
        align(torch.tensor([[2, 0], [1, 2]]), 4, 4, segment_order=bad)


@pytest.mark.parametrize("num_experts", [3, 8, 64])
def test_align_buffers_start_16_byte_aligned_at_every_batch_size(make_topk_ids, num_experts):
    """The outputs and scratch share one allocation; each view starts on 16 bytes whatever the batch size, as Triton
    specialises pointers on that (an offset that moved with the batch would compile new kernel variants)."""
    for num_tokens in range(1, 9):
        topk_ids = make_topk_ids(num_tokens, num_experts, 1, "uniform")
        aligned, segments = align_triton_segments(topk_ids, 16, num_experts, None)
        views = {**aligned._asdict(), "table": segments.table}
        assert {name: t.data_ptr() % 16 for name, t in views.items()} == dict.fromkeys(views, 0), num_tokens
        sizes = (aligned.sorted_token_ids.numel(), aligned.expert_ids.numel())
        assert sizes == aligned_sizes(num_tokens, 16, num_experts)
        assert segments.table.numel() >= 3 * segments.block_e


@pytest.mark.parametrize(("num_tokens", "num_experts", "top_k", "launches"),
                         [(64, 8, 1, 4), (64, 8, 2, 5), (4200, 64, 8, 6)])  # fmt: skip
def test_swiglu_launches_per_call(monkeypatch, make_topk_ids, scan_path, num_tokens, num_experts, top_k, launches):
    """A top-1 call launches count, scatter (with the scan), gate/up and down; top-k > 1 adds the combine; a pass of
    64 experts x 263 chunks of 128 slots (over `SCAN_IN_SCATTER_MAX_COUNTS`) adds the scan's own launch. Launches are
    host time on every call (the eager timings at 8k-16k tokens were host-bound on an H100)."""
    from kernels import _triton_align, _triton_swiglu
    from kernels.configs import MoeKernelConfig, force_config
    from kernels.swiglu import grouped_swiglu_triton

    taken = []
    for module in (_triton_align, _triton_swiglu):
        for name in [n for n in dir(module) if n.endswith("_kernel")]:
            monkeypatch.setattr(module, name, type("Stub", (), {"__getitem__": lambda self, grid, n=name: (
                lambda *args, **kwargs: taken.append(n))})())  # fmt: skip
    monkeypatch.setattr(align, "SCAN_IN_SCATTER_MAX_COUNTS", 16384)  # the shipped bound, whatever scan_path set
    widths = (16,) * num_experts
    x = torch.zeros(num_tokens, 16)
    ids = make_topk_ids(num_tokens, num_experts, top_k, "uniform")
    with force_config(MoeKernelConfig(128, 64, 32, 8, num_warps=4, num_stages=2)):  # chunks of 128 slots
        grouped_swiglu_triton(x, ids, torch.ones(num_tokens, top_k), torch.zeros(16, 2 * sum(widths)),
                              torch.zeros(sum(widths), 16), widths)  # fmt: skip
    assert len(taken) == launches, taken
    assert ("scan_kernel" in taken) == (launches == 6)
