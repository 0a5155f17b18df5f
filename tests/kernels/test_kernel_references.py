"""The PyTorch references against plain per-token loops, gradients included (main test run, no Triton)."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F

from kernels.align import moe_align_block_size_reference, moe_align_block_size_triton
from kernels.routing import RouteResult, fused_route_reference, fused_route_triton
from kernels.swiglu import expert_offsets, grouped_swiglu_reference, grouped_swiglu_triton

# (tokens, experts, top_k, bias scale)
ROUTE_CASES = [(9, 4, 1, 0.0), (17, 8, 2, 0.5), (6, 5, 5, 0.3), (12, 16, 8, None)]
# (tokens, d_model, widths, top_k)
SWIGLU_CASES = [(11, 8, (4, 12, 8), 1), (13, 16, (8, 24, 4, 16), 2), (7, 8, (4, 8, 12), 3)]


def route_loop(logits: torch.Tensor, biases: torch.Tensor | None, top_k: int) -> RouteResult:
    """One token at a time, experts ranked by a Python sort."""
    num_tokens, num_experts = logits.shape
    ids, weights = [], []
    scores = torch.softmax(logits.double(), -1)
    for t in range(num_tokens):
        sel = [float(scores[t, e]) + (0.0 if biases is None else float(biases[e])) for e in range(num_experts)]
        chosen = sorted(range(num_experts), key=lambda e: -sel[e])[:top_k]
        picked = [float(scores[t, e]) for e in chosen]
        ids.append(chosen)
        weights.append([p / sum(picked) for p in picked])
    ids_t = torch.tensor(ids, dtype=torch.int64).reshape(num_tokens, top_k)
    counts = torch.bincount(ids_t.reshape(-1), minlength=num_experts)
    return RouteResult(ids_t, torch.tensor(weights).reshape(num_tokens, top_k), counts, scores.float())


def swiglu_loop(x, topk_ids, topk_weights, w_up, w_down, widths) -> torch.Tensor:
    """Dense per-token, per-choice loop over the concatenated weights."""
    offsets = expert_offsets(widths)
    rows = []
    for t in range(x.shape[0]):
        acc = torch.zeros_like(x[t])
        for j in range(topk_ids.shape[1]):
            e = int(topk_ids[t, j])
            f, off = widths[e], offsets[e]
            gate = x[t] @ w_up[:, 2 * off : 2 * off + f]
            up = x[t] @ w_up[:, 2 * off + f : 2 * off + 2 * f]
            acc = acc + topk_weights[t, j] * ((F.silu(gate) * up) @ w_down[off : off + f])
        rows.append(acc)
    return torch.stack(rows)


@pytest.mark.parametrize(("num_tokens", "num_experts", "top_k", "bias_scale"), ROUTE_CASES)
def test_route_reference_matches_loop(gen, num_tokens, num_experts, top_k, bias_scale):
    logits = torch.randn(num_tokens, num_experts, generator=gen)
    biases = None if bias_scale is None else bias_scale * torch.randn(num_experts, generator=gen)
    got, want = fused_route_reference(logits, biases, top_k), route_loop(logits, biases, top_k)
    assert torch.equal(got.topk_ids, want.topk_ids)
    assert got.topk_ids.is_contiguous()  # as the Triton kernel's; the grouped SwiGLU would copy a strided slice
    assert torch.equal(got.expert_counts, want.expert_counts)
    torch.testing.assert_close(got.topk_weights, want.topk_weights, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.scores, want.scores, rtol=1e-5, atol=1e-7)


def test_route_reference_out_and_errors(gen):
    logits = torch.randn(5, 4, generator=gen)
    want = fused_route_reference(logits, None, 2)
    out = RouteResult(torch.empty(5, 2, dtype=torch.int64), torch.empty(5, 2), torch.empty(4, dtype=torch.int64),
                      torch.empty(5, 4))  # fmt: skip
    got = fused_route_reference(logits, None, 2, out=out)
    assert all(torch.equal(g, w) for g, w in zip(got, want)) and got.scores is out.scores
    with pytest.raises(ValueError, match="top_k"):
        fused_route_reference(logits, None, 5)
    with pytest.raises(ValueError, match="biases"):
        fused_route_reference(logits, torch.zeros(3), 2)
    with pytest.raises(TypeError, match="top_k must be an int, got 2.0"):
        fused_route_reference(logits, None, 2.0)


@pytest.mark.parametrize(("num_tokens", "d_model", "widths", "top_k"), SWIGLU_CASES)
def test_swiglu_reference_matches_loop_with_gradients(gen, num_tokens, d_model, widths, top_k):
    total = sum(widths)
    x = torch.randn(num_tokens, d_model, generator=gen, dtype=torch.float64, requires_grad=True)
    w_up = torch.randn(d_model, 2 * total, generator=gen, dtype=torch.float64, requires_grad=True)
    w_down = torch.randn(total, d_model, generator=gen, dtype=torch.float64, requires_grad=True)
    topk_ids = torch.stack([torch.randperm(len(widths), generator=gen)[:top_k] for _ in range(num_tokens)])
    weights = torch.rand(num_tokens, top_k, generator=gen, dtype=torch.float64, requires_grad=True)
    got = grouped_swiglu_reference(x, topk_ids, weights, w_up, w_down, widths)
    want = swiglu_loop(x, topk_ids, weights, w_up, w_down, widths)
    torch.testing.assert_close(got, want)
    probe = torch.randn(num_tokens, d_model, generator=gen, dtype=torch.float64)
    grads_got = torch.autograd.grad((got * probe).sum(), (x, weights, w_up, w_down))
    grads_want = torch.autograd.grad((want * probe).sum(), (x, weights, w_up, w_down))
    for g, w in zip(grads_got, grads_want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize(
    ("reference", "triton"),
    [
        (fused_route_reference, fused_route_triton),
        (moe_align_block_size_reference, moe_align_block_size_triton),
        (grouped_swiglu_reference, grouped_swiglu_triton),
    ],
)
def test_each_reference_takes_the_triton_kernels_parameters(reference, triton):
    params = lambda fn: [(p.name, p.kind) for p in inspect.signature(fn).parameters.values()]  # noqa: E731
    assert params(reference) == params(triton)


def test_swiglu_reference_takes_a_segment_order_without_changing_the_result(gen):
    x, ids, w = torch.randn(5, 8, generator=gen), torch.tensor([[0], [2], [1], [2], [0]]), torch.rand(5, 1)
    w_up, w_down = torch.randn(8, 2 * 12, generator=gen), torch.randn(12, 8, generator=gen)
    plain = grouped_swiglu_reference(x, ids, w, w_up, w_down, (4, 6, 2))
    ordered = grouped_swiglu_reference(x, ids, w, w_up, w_down, (4, 6, 2), segment_order=(1, 0, 2))
    torch.testing.assert_close(ordered, plain, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"segment_order must be a permutation of range\(3\)"):
        grouped_swiglu_reference(x, ids, w, w_up, w_down, (4, 6, 2), segment_order=(0, 0, 2))


def test_swiglu_reference_rejects_bad_shapes(gen):
    x = torch.randn(4, 8, generator=gen)
    ids = torch.zeros(4, 1, dtype=torch.int64)
    w = torch.ones(4, 1)
    with pytest.raises(ValueError, match="w_up"):
        grouped_swiglu_reference(x, ids, w, torch.zeros(8, 10), torch.zeros(4, 8), (4,))
    with pytest.raises(ValueError, match="w_down"):
        grouped_swiglu_reference(x, ids, w, torch.zeros(8, 8), torch.zeros(5, 8), (4,))
    for out in (torch.zeros(4, 8, dtype=torch.int64), torch.zeros(4, 9)):  # an int64 out truncated the result
        with pytest.raises(ValueError, match=r"out must be a torch.float32 \[4, 8\] tensor"):
            grouped_swiglu_reference(x, ids, w, torch.zeros(8, 8), torch.zeros(4, 8), (4,), out=out)


def test_references_name_a_wrong_dtype(gen):
    """Each was torch's own error from inside the first matmul, argsort or softmax."""
    x = torch.randn(4, 8, generator=gen)
    ids = torch.zeros(4, 1, dtype=torch.int64)
    w, w_up, w_down = torch.ones(4, 1), torch.randn(8, 8, generator=gen), torch.randn(4, 8, generator=gen)
    with pytest.raises(TypeError, match="topk_ids must be int32 or int64 expert ids, got torch.float32"):
        grouped_swiglu_reference(x, ids.float(), w, w_up, w_down, (4,))
    with pytest.raises(TypeError, match="x, w_up and w_down must share one dtype, got torch.float64, torch.float32"):
        grouped_swiglu_reference(x.double(), ids, w, w_up, w_down, (4,))
    with pytest.raises(TypeError, match="topk_weights must be a floating-point tensor, got torch.int64"):
        grouped_swiglu_reference(x, ids, w.long(), w_up, w_down, (4,))
    with pytest.raises(TypeError, match="gate_logits must be a floating-point tensor, got torch.int64"):
        fused_route_reference(torch.zeros(4, 3, dtype=torch.int64), None, 1)
    with pytest.raises(TypeError, match="biases must be a floating-point tensor, got torch.int32"):
        fused_route_reference(torch.zeros(4, 3), torch.zeros(3, dtype=torch.int32), 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # pretraining's mixed dtypes stay allowed under autocast
        assert grouped_swiglu_reference(x.bfloat16(), ids, w, w_up, w_down, (4,)).dtype == torch.bfloat16


@pytest.mark.parametrize("bad_id", [-1, 4, 1000])
def test_references_reject_expert_ids_out_of_range(gen, bad_id):
    x = torch.randn(5, 8, generator=gen)
    ids = torch.randint(0, 4, (5, 2), generator=gen)
    ids[3, 1] = bad_id
    w = torch.full((5, 2), 0.5)
    widths = (4, 8, 4, 4)
    w_up, w_down = torch.randn(8, 40, generator=gen), torch.randn(20, 8, generator=gen)
    with pytest.raises(ValueError, match=r"topk_ids must be expert ids in \[0, 4\), got 1 outside"):
        grouped_swiglu_reference(x, ids, w, w_up, w_down, widths)
    with pytest.raises(ValueError, match=rf"expert ids in \[0, 4\), got values in \[{min(bad_id, 0)}, "):
        moe_align_block_size_reference(ids, 4, 4)


def test_align_reference_worked_example():
    got = moe_align_block_size_reference(torch.tensor([[2, 0], [1, 2], [2, 1]]), 4, 4)
    assert got.sorted_token_ids.tolist() == [1, 6, 6, 6, 2, 5, 6, 6, 0, 3, 4, 6, 6, 6, 6, 6, 6, 6]
    assert got.expert_ids.tolist() == [0, 1, 2, -1, -1]
    assert got.num_tokens_post_padded.tolist() == [12]
    with pytest.raises(ValueError, match="power of two"):
        moe_align_block_size_reference(torch.zeros(2, 1, dtype=torch.int64), 12, 4)
