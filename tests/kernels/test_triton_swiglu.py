"""The Triton grouped SwiGLU against the PyTorch reference under TRITON_INTERPRET=1 (marker `triton`).

fp32 at 1e-5 relative, 1e-5 absolute on outputs of order 1; one fp16 test for the conversions of the low-precision
path (h, y and out stored in the input dtype, fp32 sums). No bf16: Triton's interpreter returns wrong results for
bf16 `tl.dot` (off by ~1e10 here); bf16 is checked on a GPU (test_kernel_gpu.py).
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from kernels import _triton_swiglu, swiglu
from kernels._triton_swiglu import _live_tile
from kernels.align import align_triton_segments
from kernels.configs import MoeKernelConfig, force_config
from kernels.routing import fused_route_reference, fused_route_triton
from kernels.swiglu import grouped_swiglu_reference, grouped_swiglu_triton

pytestmark = pytest.mark.triton

RTOL, ATOL = 1e-5, 1e-5

# (id, tokens, d_model, expert widths, top_k, load, (BLOCK_SIZE_M, N, K, GROUP_SIZE_M[, N of the down GEMM]))
SWIGLU_CASES = [
    ("heterogeneous_k2_skewed", 37, 32, (16, 48, 24, 40), 2, "skewed", (16, 16, 16, 2)),
    ("k1_writes_output_rows", 29, 24, (20, 36, 8), 1, "uniform", (16, 16, 16, 1)),
    ("k_equals_E", 17, 16, (16, 32, 8, 48), 4, "uniform", (16, 32, 16, 1)),
    ("empty_expert", 40, 32, (24, 40, 16, 32, 48), 2, "empty", (32, 16, 16, 4)),
    ("all_on_one_expert", 33, 32, (48, 16, 32), 1, "one", (16, 16, 32, 1)),
    ("eight_experts_k3", 24, 16, (8, 12, 16, 20, 24, 32, 40, 48), 3, "skewed", (16, 16, 16, 8)),
    # the down GEMM at twice the columns (BLOCK_SIZE_N_DOWN), its last column tile half outside d_model
    ("wide_down_tile", 26, 48, (16, 40, 24), 2, "skewed", (16, 16, 16, 2, 32)),
    # every width a whole number of K tiles: the down GEMM's weights can go through a descriptor too
    ("whole_k_tile_widths", 30, 32, (32, 16, 48), 2, "skewed", (16, 16, 16, 2)),
]


def make_weights(gen: torch.Generator, d_model: int, widths: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    total = sum(widths)
    w_up = torch.randn(d_model, 2 * total, generator=gen) / d_model**0.5  # (d, sum 2 f_e)
    w_down = torch.randn(total, d_model, generator=gen) / 16**0.5  # (sum f_e, d)
    return w_up, w_down


def combine_weights(gen: torch.Generator, num_tokens: int, top_k: int) -> torch.Tensor:
    w = torch.rand(num_tokens, top_k, generator=gen) + 0.1
    return w / w.sum(-1, keepdim=True)  # (T, k)


@pytest.mark.parametrize(("num_tokens", "d_model", "widths", "top_k", "load", "blocks"),
                         [c[1:] for c in SWIGLU_CASES], ids=[c[0] for c in SWIGLU_CASES])  # fmt: skip
def test_swiglu_matches_reference(gen, make_topk_ids, num_tokens, d_model, widths, top_k, load, blocks):
    got, out, want = run_swiglu_case(gen, make_topk_ids, num_tokens, d_model, widths, top_k, load, blocks)
    assert got.data_ptr() == out.data_ptr()
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)


def run_swiglu_case(gen, make_topk_ids, num_tokens, d_model, widths, top_k, load, blocks):
    """One of SWIGLU_CASES through the Triton path at its block sizes, into a NaN-poisoned `out`: (the path's
    result, `out`, the reference's result)."""
    x = torch.randn(num_tokens, d_model, generator=gen)
    topk_ids = make_topk_ids(num_tokens, len(widths), top_k, load)
    weights = combine_weights(gen, num_tokens, top_k)
    w_up, w_down = make_weights(gen, d_model, widths)
    out = torch.full((num_tokens, d_model), float("nan"))
    down_n = blocks[4] if len(blocks) > 4 else None
    with force_config(MoeKernelConfig(*blocks[:4], num_warps=4, num_stages=2, block_size_n_down=down_n)):
        got = grouped_swiglu_triton(x, topk_ids, weights, w_up, w_down, widths, out=out)
    return got, out, grouped_swiglu_reference(x, topk_ids, weights, w_up, w_down, widths)


@pytest.mark.parametrize(("num_tokens", "d_model", "widths", "top_k", "load", "blocks"),
                         [c[1:] for c in SWIGLU_CASES], ids=[c[0] for c in SWIGLU_CASES])  # fmt: skip
def test_swiglu_with_weight_descriptors_matches_reference(gen, make_topk_ids, monkeypatch, num_tokens, d_model, widths,
                                                          top_k, load, blocks):  # fmt: skip
    """The descriptor (TMA) loads of the weights (`TMA_WEIGHTS` forced on): the same results, though the gate/up
    tiles past an expert's width now read its neighbours' columns instead of zeros. The down GEMM takes them where
    every width is a multiple of BLOCK_SIZE_K (whole_k_tile_widths)."""
    monkeypatch.setattr(swiglu, "TMA_WEIGHTS", True)
    made = []
    real = swiglu._weight_descriptor
    monkeypatch.setattr(swiglu, "_weight_descriptor", lambda *a: made.append(real(*a)) or made[-1])
    got, _, want = run_swiglu_case(gen, make_topk_ids, num_tokens, d_model, widths, top_k, load, blocks)
    assert made and all(d is not None for d in made)  # the descriptor path ran
    assert len(made) == 1 + all(f % blocks[2] == 0 for f in widths)  # w_up's, and w_down's where no tile crosses
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)


DEVICE_DESC_CASES = [
    c for c in SWIGLU_CASES if c[0] in ("heterogeneous_k2_skewed", "wide_down_tile", "whole_k_tile_widths")
]


@pytest.mark.parametrize(("num_tokens", "d_model", "widths", "top_k", "load", "blocks"),
                         [c[1:] for c in DEVICE_DESC_CASES], ids=[c[0] for c in DEVICE_DESC_CASES])  # fmt: skip
def test_swiglu_with_descriptors_made_in_the_kernels_matches_reference(gen, make_topk_ids, monkeypatch, num_tokens,
                                                                       d_model, widths, top_k, load, blocks):  # fmt: skip
    """`DEVICE_DESCRIPTORS`: each program makes its weight descriptor (`tl.make_tensor_descriptor`), the host makes
    none; the same results as the reference."""
    monkeypatch.setattr(swiglu, "TMA_WEIGHTS", True)
    monkeypatch.setattr(swiglu, "DEVICE_DESCRIPTORS", True)
    made, launched = [], {}
    real = swiglu._weight_descriptor
    monkeypatch.setattr(swiglu, "_weight_descriptor", lambda *a: made.append(real(*a)) or made[-1])
    for name in ("up_kernel", "down_kernel"):
        monkeypatch.setattr(
            _triton_swiglu, name, LaunchSpy(getattr(_triton_swiglu, name), launched.setdefault(name, []))
        )
    got, _, want = run_swiglu_case(gen, make_topk_ids, num_tokens, d_model, widths, top_k, load, blocks)
    assert made == []  # no descriptor from the host
    ((_, up_args, up_meta),), ((_, down_args, down_meta),) = launched["up_kernel"], launched["down_kernel"]
    assert up_meta["W_DESC"] and up_meta["DEVICE_DESC"] and up_args[2] is None
    down_desc = all(f % blocks[2] == 0 for f in widths)  # no K tile crosses into the next expert's rows
    assert down_meta["W_DESC"] == down_meta["DEVICE_DESC"] == down_desc and down_args[2] is None
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)


class LaunchSpy:
    """Stands in for a Triton kernel: records the (grid, args, keyword args) of each `kernel[grid](...)` launch, then
    launches it."""

    def __init__(self, kernel, seen: list):
        self.kernel, self.seen = kernel, seen

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def record_and_launch(*args, **kwargs):
            self.seen.append((grid, args, kwargs))
            return launch(*args, **kwargs)

        return record_and_launch


TOP2_CASES = [c for c in SWIGLU_CASES if c[4] == 2]
COMBINE_KERNEL = _triton_swiglu.combine_kernel


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("num_tokens", "d_model", "widths", "top_k", "load", "blocks"),
                         [c[1:] for c in TOP2_CASES], ids=[c[0] for c in TOP2_CASES])  # fmt: skip
def test_swiglu_atomic_top2_equals_the_combine_exactly(gen, make_topk_ids, monkeypatch, dtype, num_tokens, d_model,
                                                       widths, top_k, load, blocks):  # fmt: skip
    """`ATOMIC_TOP2` (the down launch adds both rows of a token into the zeroed output; on Hopper by default): the same
    bits as the combine kernel's fp32 sum of the two rounded rows, in passes of 16 tokens into a strided `out` whose
    every element is poisoned first, and no launch of the combine kernel."""
    monkeypatch.setattr(swiglu, "SLOTS_PER_PASS", 32)
    x = torch.randn(num_tokens, d_model, generator=gen).to(dtype)
    topk_ids = make_topk_ids(num_tokens, len(widths), top_k, load)
    weights = combine_weights(gen, num_tokens, top_k).to(dtype)
    w_up, w_down = (w.to(dtype) for w in make_weights(gen, d_model, widths))
    down_n = blocks[4] if len(blocks) > 4 else None
    results = {}
    for atomic in (False, True):
        monkeypatch.setattr(swiglu, "ATOMIC_TOP2", atomic)
        launched = []
        monkeypatch.setattr(_triton_swiglu, "combine_kernel", LaunchSpy(COMBINE_KERNEL, launched))
        buf = torch.full((num_tokens, d_model + 3), float("nan"), dtype=dtype)
        with force_config(MoeKernelConfig(*blocks[:4], num_warps=4, num_stages=2, block_size_n_down=down_n)):
            results[atomic] = grouped_swiglu_triton(x, topk_ids, weights, w_up, w_down, widths, out=buf[:, 1:-2])
        assert buf[:, [0, -2, -1]].isnan().all(), "nothing written outside out"
        passes = -(-num_tokens // 16)
        assert len(launched) == (0 if atomic else passes), "a combine launch a pass without ATOMIC_TOP2, none with it"
    assert torch.equal(results[True], results[False])
    want = grouped_swiglu_reference(x.float(), topk_ids, weights.float(), w_up.float(), w_down.float(), widths)
    scale = float(want.abs().max())
    tol = (RTOL, ATOL) if dtype == torch.float32 else (4e-3, 4e-3 * scale)
    torch.testing.assert_close(results[True].float(), want, rtol=tol[0], atol=tol[1])


@pytest.mark.parametrize("atomic", [False, True])
def test_swiglu_writes_its_output_over_its_input(gen, make_topk_ids, monkeypatch, atomic):
    """`out=x` (in place), as the reference allows: the output is written only after x has been read, the top-2
    reductions' zeroed output included."""
    monkeypatch.setattr(swiglu, "ATOMIC_TOP2", atomic)
    widths, d_model, num_tokens = (16, 48, 24, 40), 32, 37
    x = torch.randn(num_tokens, d_model, generator=gen)
    topk_ids = make_topk_ids(num_tokens, len(widths), 2, "skewed")
    weights = combine_weights(gen, num_tokens, 2)
    w_up, w_down = make_weights(gen, d_model, widths)
    want = grouped_swiglu_reference(x, topk_ids, weights, w_up, w_down, widths)
    with force_config(MoeKernelConfig(16, 16, 16, 2, num_warps=4, num_stages=2)):
        got = grouped_swiglu_triton(x, topk_ids, weights, w_up, w_down, widths, out=x)
    assert got.data_ptr() == x.data_ptr()
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)


def test_weight_descriptor_falls_back_where_the_layout_allows_none(gen):
    w = torch.randn(16, 40, generator=gen)
    assert swiglu._weight_descriptor(w, 16, 16) is not None
    assert swiglu._weight_descriptor(w.t().contiguous().t(), 16, 16) is None  # column stride 16, not 1
    assert swiglu._weight_descriptor(torch.randn(16, 42, generator=gen)[:, :40], 16, 16) is None  # rows of 168 bytes
    assert swiglu._weight_descriptor(torch.randn(16 * 40 + 1, generator=gen)[1:].view(16, 40), 16, 16) is None


@pytest.mark.parametrize("top_k", [1, 3])
def test_swiglu_fp16_matches_upcast_reference(gen, make_topk_ids, top_k):
    """fp16 inputs (the interpreter's fp16 `tl.dot` is right): against the reference on the same values in fp32, to
    a few fp16 roundings of the output's scale (h, then y and out, are rounded to fp16; sums stay fp32)."""
    widths, d_model, num_tokens = (16, 48, 24, 40), 32, 37
    x = torch.randn(num_tokens, d_model, generator=gen).half()
    topk_ids = make_topk_ids(num_tokens, len(widths), top_k, "skewed")
    weights = combine_weights(gen, num_tokens, top_k).half()
    w_up, w_down = (w.half() for w in make_weights(gen, d_model, widths))
    out = torch.full((num_tokens, d_model), float("nan"), dtype=torch.float16)
    with force_config(MoeKernelConfig(16, 16, 16, 2, num_warps=4, num_stages=2)):
        got = grouped_swiglu_triton(x, topk_ids, weights, w_up, w_down, widths, out=out)
    want = grouped_swiglu_reference(x.float(), topk_ids, weights.float(), w_up.float(), w_down.float(), widths)
    assert got.dtype == torch.float16
    scale = float(want.abs().max())
    torch.testing.assert_close(got.float(), want, rtol=4e-3, atol=4e-3 * scale)


def test_swiglu_passes_and_strided_input(gen, make_topk_ids, monkeypatch):
    """Several passes (of SLOTS_PER_PASS / k tokens), and x a column slice of a wider tensor."""
    monkeypatch.setattr(swiglu, "SLOTS_PER_PASS", 32)  # 16 tokens a pass at top-2: 16, 16, 5
    widths, d_model, num_tokens, top_k = (24, 16, 40), 16, 37, 2
    x = torch.randn(num_tokens, d_model + 5, generator=gen)[:, 3 : 3 + d_model]  # (T, d), row stride d + 5
    topk_ids = make_topk_ids(num_tokens, len(widths), top_k, "skewed")
    weights = combine_weights(gen, num_tokens, top_k)
    w_up, w_down = make_weights(gen, d_model, widths)
    out = torch.full((num_tokens, d_model), float("nan"))
    with force_config(MoeKernelConfig(16, 16, 16, 1, num_warps=4, num_stages=2)):
        got = grouped_swiglu_triton(x, topk_ids, weights, w_up, w_down, widths, out=out)
    torch.testing.assert_close(got, grouped_swiglu_reference(x, topk_ids, weights, w_up, w_down, widths),
                               rtol=RTOL, atol=ATOL)  # fmt: skip


@pytest.mark.parametrize(("top_k", "passes"), [(1, [30]), (4, [8, 8, 8, 6])])
def test_swiglu_passes_are_bounded_in_slots(gen, make_topk_ids, monkeypatch, top_k, passes):
    """A pass holds SLOTS_PER_PASS token-expert slots whatever k is (top-1 runs as one pass where top-4 needs four),
    and each pass looks its block sizes up by its own token count."""
    monkeypatch.setattr(swiglu, "SLOTS_PER_PASS", 32)
    aligned_slots, lookups = [], []
    real_align, real_get_config = swiglu.align_triton_segments, swiglu.get_config
    monkeypatch.setattr(swiglu, "align_triton_segments",
                        lambda ids, *a, **kw: aligned_slots.append(ids.numel()) or real_align(ids, *a, **kw))  # fmt: skip
    monkeypatch.setattr(swiglu, "get_config", lambda t, *a: lookups.append(t) or real_get_config(t, *a))
    widths, d_model, num_tokens = (16, 24, 32, 8), 16, 30
    x = torch.randn(num_tokens, d_model, generator=gen)
    topk_ids = make_topk_ids(num_tokens, len(widths), top_k, "uniform")
    weights = combine_weights(gen, num_tokens, top_k)
    w_up, w_down = make_weights(gen, d_model, widths)
    with force_config(MoeKernelConfig(16, 16, 16, 1, num_warps=4, num_stages=2)):
        got = grouped_swiglu_triton(x, topk_ids, weights, w_up, w_down, widths)
    assert aligned_slots == [t * top_k for t in passes]
    assert lookups == [passes[0]]
    torch.testing.assert_close(got, grouped_swiglu_reference(x, topk_ids, weights, w_up, w_down, widths),
                               rtol=RTOL, atol=ATOL)  # fmt: skip


def test_swiglu_starts_the_widest_experts_first_and_any_order_gives_the_same_result(gen, make_topk_ids, monkeypatch):
    """The default segment order is widest first (ties in expert order); the order moves programs, not results."""
    orders = []
    real_align = swiglu.align_triton_segments
    monkeypatch.setattr(swiglu, "align_triton_segments",
                        lambda ids, block_size, num_experts, order: orders.append(order) or real_align(
                            ids, block_size, num_experts, order))  # fmt: skip
    widths, d_model, num_tokens, top_k = (16, 48, 24, 48, 8), 16, 33, 2
    x = torch.randn(num_tokens, d_model, generator=gen)
    topk_ids = make_topk_ids(num_tokens, len(widths), top_k, "skewed")
    weights = combine_weights(gen, num_tokens, top_k)
    w_up, w_down = make_weights(gen, d_model, widths)
    want = grouped_swiglu_reference(x, topk_ids, weights, w_up, w_down, widths)
    with force_config(MoeKernelConfig(16, 16, 16, 2, num_warps=4, num_stages=2)):
        for order in (None, (0, 1, 2, 3, 4), (4, 0, 3, 1, 2)):
            got = grouped_swiglu_triton(x, topk_ids, weights, w_up, w_down, widths, segment_order=order,
                                        out=torch.full_like(x, float("nan")))  # fmt: skip
            torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)
        with pytest.raises(ValueError, match="segment_order must be a permutation of range"):
            grouped_swiglu_triton(x, topk_ids, weights, w_up, w_down, widths, segment_order=(0, 1, 2))
        with pytest.raises(ValueError, match="segment_order must be a permutation of range"):  # checked if T = 0 too
            grouped_swiglu_triton(x[:0], topk_ids[:0], weights[:0], w_up, w_down, widths, segment_order=(0, 0))
        # Checked once for every pass: an iterator serves all three passes of 16 tokens.
        monkeypatch.setattr(swiglu, "SLOTS_PER_PASS", 32)
        got = grouped_swiglu_triton(x, topk_ids, weights, w_up, w_down, widths, segment_order=iter((4, 0, 3, 1, 2)))
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)
    assert orders == [(1, 3, 2, 0, 4), (0, 1, 2, 3, 4), (4, 0, 3, 1, 2)] + [(4, 0, 3, 1, 2)] * 3
    assert swiglu.widest_first((32, 32, 32)) == (0, 1, 2)


def test_route_then_swiglu_end_to_end(gen):
    """The MoE layer's two calls chained on the Triton path, against both references chained."""
    widths, d_model, num_tokens, top_k = (16, 32, 48, 24), 32, 30, 2
    x = torch.randn(num_tokens, d_model, generator=gen)
    gate = torch.randn(d_model, len(widths), generator=gen)
    biases = 0.3 * torch.randn(len(widths), generator=gen)
    w_up, w_down = make_weights(gen, d_model, widths)
    with force_config(MoeKernelConfig(16, 16, 16, 1, num_warps=4, num_stages=2)):
        r = fused_route_triton(x @ gate, biases, top_k)
        got = grouped_swiglu_triton(x, r.topk_ids, r.topk_weights, w_up, w_down, widths)
    q = fused_route_reference(x @ gate, biases, top_k)
    want = grouped_swiglu_reference(x, q.topk_ids, q.topk_weights, w_up, w_down, widths)
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("top_k", [1, 2])
# The bad tokens' rows sum slots no program wrote (undefined by contract): the interpreter's numpy may see NaN there.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_swiglu_bad_expert_ids_stay_inside_their_tokens(gen, top_k):
    """An id outside [0, E) is not checked on the device: only its own token's row is undefined, and nothing
    outside `out` is written."""
    num_tokens, d_model, widths, guard = 21, 16, (16, 24, 8), 3
    x = torch.randn(num_tokens, d_model, generator=gen)
    topk_ids = torch.stack([torch.randperm(len(widths), generator=gen)[:top_k] for _ in range(num_tokens)])
    bad_tokens = [2, 11, 20]
    topk_ids[bad_tokens, top_k - 1] = torch.tensor([-1, 3, 1000])
    weights = combine_weights(gen, num_tokens, top_k)
    w_up, w_down = make_weights(gen, d_model, widths)
    buf = torch.full((num_tokens + 2 * guard, d_model), float("nan"))
    with force_config(MoeKernelConfig(16, 16, 16, 1, num_warps=4, num_stages=2)):
        grouped_swiglu_triton(x, topk_ids, weights, w_up, w_down, widths, out=buf[guard:-guard])
    assert buf[:guard].isnan().all() and buf[-guard:].isnan().all()
    good = [t for t in range(num_tokens) if t not in bad_tokens]
    want = grouped_swiglu_reference(x[good], topk_ids[good], weights[good], w_up, w_down, widths)
    torch.testing.assert_close(buf[guard:-guard][good], want, rtol=RTOL, atol=ATOL)


@triton.jit
def map_live_tiles(seg_ptr, order_ptr, widths_ptr, out_ptr, NUM_EXPERTS: tl.constexpr, BLOCK_E: tl.constexpr,
                   BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, GROUP_SIZE_M: tl.constexpr):  # fmt: skip
    """out[t] = (pid_m, pid_n, expert, width, live tiles) of program t of the gate/up launch."""
    tile = tl.program_id(0)
    pid_m, pid_n, expert, width, num_live = _live_tile(
        tile, seg_ptr, order_ptr, widths_ptr, NUM_EXPERTS, BLOCK_E, 8, BLOCK_SIZE_M, BLOCK_SIZE_N, GROUP_SIZE_M
    )
    tl.store(out_ptr + tile * 5 + 0, pid_m)
    tl.store(out_ptr + tile * 5 + 1, pid_n)
    tl.store(out_ptr + tile * 5 + 2, expert)
    tl.store(out_ptr + tile * 5 + 3, width)
    tl.store(out_ptr + tile * 5 + 4, num_live)


# (id, tokens, expert widths, top_k, load, BLOCK_SIZE_M, BLOCK_SIZE_N, GROUP_SIZE_M)
LIVE_TILE_CASES = [
    ("ragged_64_experts", 300, tuple(16 * (1 + e % 8) for e in range(64)), 2, "skewed", 16, 32, 4),
    ("empty_expert", 90, (48, 16, 80, 32, 64), 2, "empty", 16, 16, 2),
    ("all_on_one_expert", 70, (32, 96, 16), 1, "one", 16, 32, 8),
    ("one_column_tile_each", 40, (16, 16, 16), 3, "uniform", 32, 64, 1),
    ("non_power_of_two_experts", 123, (40, 24, 8, 56, 16, 48, 32), 3, "uniform", 16, 16, 4),
]


@pytest.mark.parametrize(("num_tokens", "widths", "top_k", "load", "block_m", "block_n", "group_m"),
                         [c[1:] for c in LIVE_TILE_CASES], ids=[c[0] for c in LIVE_TILE_CASES])  # fmt: skip
def test_gate_up_programs_take_every_live_tile_once_in_segment_order(
    gen, make_topk_ids, num_tokens, widths, top_k, load, block_m, block_n, group_m
):
    """The gate/up launch's program -> tile map (`_live_tile`): every (block, column tile) of an expert's width taken
    by exactly one program, the programs in the alignment's segment order, none past the last live tile, and the
    launch (`up_programs`, sized without the counts) large enough for all of them."""
    num_experts = len(widths)
    topk_ids = make_topk_ids(num_tokens, num_experts, top_k, load)
    order = swiglu.widest_first(widths)
    aligned, segments = align_triton_segments(topk_ids, block_m, num_experts, order)
    plan = swiglu._launch_plan(MoeKernelConfig(block_m, block_n, 16, group_m, num_warps=4, num_stages=2), 16, widths,
                               torch.float32, torch.device("cpu"), False)  # fmt: skip
    programs = plan.up_programs(topk_ids.numel())
    got = torch.full((programs, 5), -7, dtype=torch.int32)
    map_live_tiles[(programs,)](segments.table, segments.order, plan.widths_t, got, NUM_EXPERTS=num_experts,
                                BLOCK_E=segments.block_e, BLOCK_SIZE_M=block_m, BLOCK_SIZE_N=block_n,
                                GROUP_SIZE_M=group_m)  # fmt: skip

    used_blocks = int(aligned.num_tokens_post_padded) // block_m
    block_experts = aligned.expert_ids[:used_blocks].tolist()
    want = {(b, n) for b, e in enumerate(block_experts) for n in range(-(-widths[e] // block_n))}
    num_live = int(got[0, 4])
    assert num_live == len(want) <= programs
    assert (got[:, 4] == num_live).all()
    live = got[:num_live].tolist()
    assert sorted((m, n) for m, n, *_ in live) == sorted(want)  # each tile once
    assert all(e == block_experts[m] and w == widths[e] for m, _, e, w, _ in live)
    rank = {e: r for r, e in enumerate(order)}
    assert [rank[e] for _, _, e, _, _ in live] == sorted(rank[e] for _, _, e, _, _ in live)  # segment by segment
