"""Compiled Triton kernels on a CUDA GPU: bf16/fp16 near 1e-2, fp32 near 1e-4, larger shapes, dispatch, runtime.

Marked `gpu` (not `triton`): they run in the main test run and skip there without CUDA.
"""

from __future__ import annotations

import contextlib
import dataclasses
import zlib

import pytest
import torch

from kernels import dispatch, swiglu
from kernels._triton import interpreting, triton_available
from kernels.align import AlignResult, aligned_sizes, moe_align_block_size_reference, moe_align_block_size_triton
from kernels.configs import MoeKernelConfig, force_config
from kernels.routing import fused_route_reference, fused_route_triton
from kernels.swiglu import grouped_swiglu_reference, grouped_swiglu_triton

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: compiled Triton kernels"),
    pytest.mark.skipif(not triton_available(), reason="needs Triton"),
    pytest.mark.skipif(interpreting(), reason="TRITON_INTERPRET=1: these tests check the compiled kernels"),
]

WIDTHS = (256, 512, 768, 1024, 1024, 1280, 1536, 2048)  # the runtime's width ratios at base 1024
CUDA = "cuda"


def cuda_gen(request: pytest.FixtureRequest) -> torch.Generator:
    """A CUDA generator seeded from the test id."""
    return torch.Generator(CUDA).manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.mark.parametrize(("num_tokens", "num_experts", "top_k"), [(4096, 64, 8), (3001, 8, 2), (777, 16, 1)])
def test_route_compiled(request, num_tokens, num_experts, top_k):
    g = cuda_gen(request)
    logits = torch.randn(num_tokens, num_experts, device=CUDA, generator=g).to(torch.bfloat16)
    biases = 0.05 * torch.randn(num_experts, device=CUDA, generator=g)
    got = fused_route_triton(logits, biases, top_k)
    want = fused_route_reference(logits, biases, top_k)
    torch.testing.assert_close(got.scores, want.scores, rtol=1e-5, atol=1e-6)
    # Two experts within an ulp of each other may swap between exp implementations: allow it where the gap is tiny.
    same = (got.topk_ids == want.topk_ids).all(dim=1)
    assert same.float().mean() > 0.999
    select = want.scores + biases
    gap = (select.gather(1, got.topk_ids) - select.gather(1, want.topk_ids)).abs()
    assert not (~same).any() or float(gap[~same].max()) < 1e-5
    torch.testing.assert_close(got.topk_weights[same], want.topk_weights[same], rtol=1e-5, atol=1e-6)
    assert int(got.expert_counts.sum()) == num_tokens * top_k


def test_route_compiled_ties_and_infinite_biases(request):
    """As the interpreter test: ties to the lower id, -inf masks, NaN and -inf tie with -FLT_MAX, no expert twice;
    compiled."""
    g = cuda_gen(request)
    num_tokens, num_experts, top_k = 1000, 12, 4
    logits = torch.randint(-1, 2, (num_tokens, num_experts), device=CUDA, generator=g).to(torch.bfloat16)
    inf, nan = float("inf"), float("nan")
    fmax = torch.finfo(torch.float32).max  # ties with -inf and NaN on both paths
    biases = torch.tensor([0, -inf, inf, nan, -inf, 0, 0, -fmax, -inf, 0, -inf, -fmax], device=CUDA)
    for b in (None, biases, torch.full((num_experts,), -inf, device=CUDA)):
        got, want = fused_route_triton(logits, b, top_k), fused_route_reference(logits, b, top_k)
        assert torch.equal(got.topk_ids, want.topk_ids) and torch.equal(got.expert_counts, want.expert_counts)
        assert (got.topk_ids.sort(-1).values.diff(dim=-1) > 0).all()


def test_align_compiled_drops_bad_ids_inside_its_buffers(request):
    g = cuda_gen(request)
    num_experts, block_size, guard = 6, 64, 256
    topk_ids = torch.randint(0, num_experts, (3000, 2), device=CUDA, generator=g)
    topk_ids[::7, 1] = torch.tensor([-1, 6, 7, 10**6], device=CUDA).repeat(429)[: len(topk_ids[::7])]
    max_padded, max_blocks = aligned_sizes(topk_ids.numel(), block_size, num_experts)
    ids_buf = torch.full((max_padded + 2 * guard,), -7, dtype=torch.int32, device=CUDA)
    out = AlignResult(ids_buf[guard:-guard], torch.empty(max_blocks, dtype=torch.int32, device=CUDA),
                      torch.empty(1, dtype=torch.int32, device=CUDA))  # fmt: skip
    moe_align_block_size_triton(topk_ids, block_size, num_experts, out=out)
    assert (ids_buf[:guard] == -7).all() and (ids_buf[-guard:] == -7).all()
    valid = ((topk_ids >= 0) & (topk_ids < num_experts)).reshape(-1)
    placed = out.sorted_token_ids[out.sorted_token_ids < topk_ids.numel()].long()
    assert torch.equal(placed.sort().values, valid.nonzero().squeeze(1))


@pytest.mark.parametrize(("num_tokens", "num_experts", "top_k", "block_size"),
                         [(16384, 64, 8, 64), (4096, 64, 4, 64), (2000, 8, 2, 16), (513, 16, 4, 128)])  # fmt: skip
@pytest.mark.parametrize("shuffled", [False, True], ids=["expert_order", "shuffled_segments"])
def test_align_compiled_exact(request, num_tokens, num_experts, top_k, block_size, shuffled):
    g = cuda_gen(request)
    probs = torch.rand(num_experts, device=CUDA, generator=g) ** 4 + 1e-3
    probs[1] = 0.0  # an empty expert
    topk_ids = torch.multinomial(probs.expand(num_tokens, -1), top_k, generator=g)
    order = torch.randperm(num_experts, device=CUDA, generator=g).tolist() if shuffled else None
    got = moe_align_block_size_triton(topk_ids, block_size, num_experts, segment_order=order)
    want = moe_align_block_size_reference(topk_ids, block_size, num_experts, segment_order=order)
    for g_, w_ in zip(got, want):
        assert torch.equal(g_, w_)


def _swiglu_inputs(g, num_tokens, d_model, widths, top_k, dtype):
    total = sum(widths)
    x = torch.randn(num_tokens, d_model, device=CUDA, generator=g).to(dtype)
    w_up = (torch.randn(d_model, 2 * total, device=CUDA, generator=g) / d_model**0.5).to(dtype)
    w_down = (torch.randn(total, d_model, device=CUDA, generator=g) / 32.0).to(dtype)
    topk_ids = torch.multinomial(torch.ones(num_tokens, len(widths), device=CUDA), top_k, generator=g)
    weights = torch.softmax(torch.randn(num_tokens, top_k, device=CUDA, generator=g), -1).to(dtype)
    return x, topk_ids, weights, w_up, w_down


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(("num_tokens", "top_k"), [(3000, 2), (64, 8), (1000, 1)])
def test_swiglu_compiled_default_configs(request, dtype, num_tokens, top_k):
    x, ids, w, w_up, w_down = _swiglu_inputs(cuda_gen(request), num_tokens, 1024, WIDTHS, top_k, dtype)
    got = grouped_swiglu_triton(x, ids, w, w_up, w_down, WIDTHS)
    want = grouped_swiglu_reference(x.float(), ids, w.float(), w_up.float(), w_down.float(), WIDTHS)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol * float(want.abs().max()))


@pytest.mark.parametrize("cfg", [MoeKernelConfig(16, 64, 64, 1, 4, 3), MoeKernelConfig(64, 128, 64, 8, 4, 3),
                                 MoeKernelConfig(128, 128, 64, 16, 8, 3), MoeKernelConfig(128, 256, 64, 8, 8, 2),
                                 MoeKernelConfig(128, 128, 64, 8, 8, 4, block_size_n_down=256)])  # fmt: skip
def test_swiglu_compiled_forced_configs(request, cfg):
    x, ids, w, w_up, w_down = _swiglu_inputs(cuda_gen(request), 2500, 2048, WIDTHS, 2, torch.bfloat16)
    with force_config(cfg):
        got = grouped_swiglu_triton(x, ids, w, w_up, w_down, WIDTHS)
    want = grouped_swiglu_reference(x.float(), ids, w.float(), w_up.float(), w_down.float(), WIDTHS)
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))


def fitting_stages(cfg: MoeKernelConfig | None, dtype: torch.dtype) -> MoeKernelConfig | None:
    """`cfg` with 2 stages where its 4 (sized for 16-bit inputs) would overflow an H100's 227 KiB of shared memory in
    fp32 (the tuned tables are for bf16; `default_config` sizes fp32 tiles by the shared memory)."""
    if cfg is None or dtype != torch.float32 or cfg.num_stages < 4:
        return cfg
    return dataclasses.replace(cfg, num_stages=2)


@pytest.mark.parametrize("device_descriptors", [False, True], ids=["host_descriptors", "device_descriptors"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("cfg", [MoeKernelConfig(128, 128, 64, 8, 8, 4, block_size_n_down=256),
                                 MoeKernelConfig(64, 128, 64, 8, 4, 3)])  # fmt: skip
def test_swiglu_compiled_with_tma_weights(request, monkeypatch, dtype, cfg, device_descriptors):
    """The descriptor (TMA) loads of both GEMMs' weights (`swiglu.TMA_WEIGHTS` forced on), compiled, the
    descriptors from the host or made in the kernels (`DEVICE_DESCRIPTORS`): the widths are multiples of
    BLOCK_SIZE_K, so the down GEMM takes them too; the last expert (192 wide, not a multiple of the 128-column tile)
    has a gate tile reaching into its up columns and an up tile running past w_up's end."""
    cfg = fitting_stages(cfg, dtype)
    widths = WIDTHS[:-1] + (192,)
    monkeypatch.setattr(swiglu, "TMA_WEIGHTS", True)
    monkeypatch.setattr(swiglu, "DEVICE_DESCRIPTORS", device_descriptors)
    made = []
    real = swiglu._weight_descriptor
    monkeypatch.setattr(swiglu, "_weight_descriptor", lambda *a: made.append(real(*a)) or made[-1])
    x, ids, w, w_up, w_down = _swiglu_inputs(cuda_gen(request), 3000, 1024, widths, 2, dtype)
    with force_config(cfg):
        got = grouped_swiglu_triton(x, ids, w, w_up, w_down, widths)
    assert len(made) == (0 if device_descriptors else 2) and all(d is not None for d in made)
    want = grouped_swiglu_reference(x.float(), ids, w.float(), w_up.float(), w_down.float(), widths)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol * float(want.abs().max()))


def test_swiglu_default_policy_takes_descriptors_for_large_passes_on_hopper(request, monkeypatch):
    """The default (`TMA_WEIGHTS` None): descriptors from TMA_MIN_SLOTS slots a pass on compute capability >= 9.0
    (lowered here so that a small batch counts as large), none below it or on older GPUs; the same results."""
    made = []
    real = swiglu._weight_descriptor
    monkeypatch.setattr(swiglu, "_weight_descriptor", lambda *a: made.append(real(*a)) or made[-1])
    monkeypatch.setattr(swiglu, "TMA_MIN_SLOTS", 4096)
    assert swiglu.TMA_WEIGHTS is None
    hopper = torch.cuda.get_device_capability()[0] >= 9
    x, ids, w, w_up, w_down = _swiglu_inputs(cuda_gen(request), 3000, 1024, WIDTHS, 2, torch.bfloat16)
    want = grouped_swiglu_reference(x.float(), ids, w.float(), w_up.float(), w_down.float(), WIDTHS)
    for num_tokens, large in ((3000, True), (1000, False)):  # 6000 and 2000 slots
        made.clear()
        got = grouped_swiglu_triton(x[:num_tokens], ids[:num_tokens], w[:num_tokens], w_up, w_down, WIDTHS)
        assert len(made) == (2 if large and hopper else 0), f"{num_tokens} tokens: {len(made)} descriptors"
        torch.testing.assert_close(got.float(), want[:num_tokens], rtol=2e-2, atol=2e-2 * float(want.abs().max()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("cfg", [None, MoeKernelConfig(128, 128, 64, 8, 8, 4, block_size_n_down=256)])
def test_swiglu_compiled_atomic_top2_equals_the_combine(request, monkeypatch, dtype, cfg):
    """`swiglu.ATOMIC_TOP2` (the down GEMM adds both rows of a token into the zeroed output with 16-byte atomic
    adds; the default at top-2 on Hopper), compiled: the same values as the combine kernel's, in one pass and in
    several."""
    cfg = fitting_stages(cfg, dtype)
    x, ids, w, w_up, w_down = _swiglu_inputs(cuda_gen(request), 5000, 1024, WIDTHS, 2, dtype)
    for slots in (swiglu.SLOTS_PER_PASS, 4096):
        monkeypatch.setattr(swiglu, "SLOTS_PER_PASS", slots)
        got = {}
        for atomic in (False, True):
            monkeypatch.setattr(swiglu, "ATOMIC_TOP2", atomic)
            out = torch.full_like(x, float("nan"))
            with force_config(cfg) if cfg is not None else contextlib.nullcontext():
                got[atomic] = grouped_swiglu_triton(x, ids, w, w_up, w_down, WIDTHS, out=out)
        assert torch.equal(got[True], got[False]), f"{slots} slots a pass"
    want = grouped_swiglu_reference(x.float(), ids, w.float(), w_up.float(), w_down.float(), WIDTHS)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got[True].float(), want, rtol=tol, atol=tol * float(want.abs().max()))


def test_swiglu_compiled_several_passes(request, monkeypatch):
    monkeypatch.setattr(swiglu, "SLOTS_PER_PASS", 2048)  # 1024 tokens a pass at top-2
    widths = (64, 128, 32, 96)
    x, ids, w, w_up, w_down = _swiglu_inputs(cuda_gen(request), 3333, 128, widths, 2, torch.bfloat16)
    got = grouped_swiglu_triton(x, ids, w, w_up, w_down, widths)
    want = grouped_swiglu_reference(x.float(), ids, w.float(), w_up.float(), w_down.float(), widths)
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))


def test_dispatch_on_cuda_uses_triton_for_inference_and_reference_for_grad(request):
    assert dispatch.describe(CUDA)["expert_swiglu"] == dispatch.TRITON
    widths = (64, 128, 32, 96)
    x, ids, w, w_up, w_down = _swiglu_inputs(cuda_gen(request), 300, 128, widths, 2, torch.float32)
    w_up.requires_grad_(True)
    y = dispatch.expert_swiglu(x, ids, w, w_up, w_down, widths)
    assert y.grad_fn is not None  # the differentiable reference
    with torch.inference_mode():
        y_fast = dispatch.expert_swiglu(x, ids, w, w_up, w_down, widths)
    torch.testing.assert_close(y_fast, y.detach(), rtol=1e-4, atol=1e-4)


def test_runtime_tiny_on_cuda():
    import moe_runtime as mr

    runtime = mr.MoERuntime(mr.MoEConfig.preset("tiny", device=CUDA))
    assert torch.isfinite(torch.tensor(runtime.step(256).loss))


def test_precompile_workers_fill_the_triton_cache(tmp_path, monkeypatch):
    """The tuner's compile step on CUDA: spawned workers compile every candidate into Triton's on-disk cache."""
    from kernels.configs.tuning import Shape, precompile

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # the spawned workers read it when they import Triton
    space = [MoeKernelConfig(16, 64, 64, 8, 4, 3), MoeKernelConfig(64, 128, 64, 8, 4, 3)]
    shapes = [Shape(4, 1, 256, (128, 256, 128, 64)), Shape(4, 2, 256, (128, 256, 128, 64))]
    assert precompile(space, shapes, torch.bfloat16, CUDA, workers=2) == {}
    assert len(list(tmp_path.rglob("*up_kernel*.cubin"))) >= len(space) * 2  # one per candidate and top-k
