"""The Triton router against the PyTorch reference, under TRITON_INTERPRET=1 (marker `triton`)."""

from __future__ import annotations

import pytest
import torch

from kernels.routing import RouteResult, fused_route_reference, fused_route_triton

pytestmark = pytest.mark.triton

# (id, tokens, experts, top_k, bias scale or None for no biases, logits dtype)
ROUTE_CASES = [
    ("k1", 13, 8, 1, 0.0, torch.float32),
    ("biases_flip_selection", 37, 8, 2, 0.5, torch.float32),
    ("k_equals_E", 19, 6, 6, 0.2, torch.float32),
    ("E64_k8", 64, 64, 8, 1.0, torch.float32),
    ("no_biases", 29, 16, 4, None, torch.float32),
    ("bf16_logits", 33, 12, 3, 0.1, torch.bfloat16),
    ("one_token", 1, 4, 2, 0.0, torch.float32),
    ("no_tokens", 0, 4, 2, 0.0, torch.float32),
]


def poisoned(num_tokens: int, num_experts: int, top_k: int) -> RouteResult:
    """Outputs filled with values no correct kernel writes, so an unwritten element fails the comparison."""
    return RouteResult(
        torch.full((num_tokens, top_k), -1, dtype=torch.int64),
        torch.full((num_tokens, top_k), float("nan")),
        torch.full((num_experts,), -1, dtype=torch.int64),
        torch.full((num_tokens, num_experts), float("nan")),
    )


def assert_route_equal(got: RouteResult, want: RouteResult) -> None:
    torch.testing.assert_close(got.topk_ids, want.topk_ids, rtol=0, atol=0)
    torch.testing.assert_close(got.expert_counts, want.expert_counts, rtol=0, atol=0)
    torch.testing.assert_close(got.topk_weights, want.topk_weights, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.scores, want.scores, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("num_tokens", "num_experts", "top_k", "bias_scale", "dtype"),
                         [c[1:] for c in ROUTE_CASES], ids=[c[0] for c in ROUTE_CASES])  # fmt: skip
def test_route_matches_reference(gen, num_tokens, num_experts, top_k, bias_scale, dtype):
    logits = (2.0 * torch.randn(num_tokens, num_experts, generator=gen)).to(dtype)
    biases = None if bias_scale is None else bias_scale * torch.randn(num_experts, generator=gen)
    got = fused_route_triton(logits, biases, top_k, out=poisoned(num_tokens, num_experts, top_k))
    want = fused_route_reference(logits, biases, top_k)
    assert_route_equal(got, want)
    assert int(got.expert_counts.sum()) == num_tokens * top_k
    torch.testing.assert_close(got.topk_weights.sum(-1), torch.ones(num_tokens), rtol=1e-5, atol=1e-6)
    if bias_scale and bias_scale >= 0.5:  # the biases must have changed some choices, or the case tests nothing
        unbiased = fused_route_reference(logits, None, top_k).topk_ids
        assert (unbiased != got.topk_ids).any()


def test_route_biases_force_loads(gen):
    """A large positive bias puts every token on one expert; a large negative one leaves an expert empty."""
    num_tokens, num_experts, top_k = 24, 8, 2
    logits = torch.randn(num_tokens, num_experts, generator=gen)
    biases = torch.zeros(num_experts)
    biases[3], biases[5] = 5.0, -5.0
    got = fused_route_triton(logits, biases, top_k, out=poisoned(num_tokens, num_experts, top_k))
    assert_route_equal(got, fused_route_reference(logits, biases, top_k))
    assert (got.topk_ids[:, 0] == 3).all()
    assert int(got.expert_counts[3]) == num_tokens and int(got.expert_counts[5]) == 0


def test_route_strided_logits(gen):
    """Logits that are a column slice of a wider tensor (row stride != E)."""
    wide = torch.randn(21, 20, generator=gen)
    logits = wide[:, 2:12]  # (21, 10), stride (20, 1)
    biases = 0.3 * torch.randn(10, generator=gen)
    got = fused_route_triton(logits, biases, 3, out=poisoned(21, 10, 3))
    assert_route_equal(got, fused_route_reference(logits, biases, 3))


def test_route_ties_and_infinite_biases_agree_and_never_repeat_an_expert(gen):
    """Exact ties (a zero router, logits rounded to a few bf16 values) go to the lower expert id on both paths; a
    bias of -inf masks an expert (chosen last), +inf forces one, NaN ranks as -inf, both tie with -FLT_MAX; no token
    gets an expert twice."""
    num_tokens, num_experts, top_k = 23, 6, 4  # E = 6 pads the kernel's expert axis to 8
    inf, nan, fmax = float("inf"), float("nan"), torch.finfo(torch.float32).max
    coarse = torch.randint(-1, 2, (num_tokens, num_experts), generator=gen).float()  # 3 values: ties in every row
    cases = [
        (torch.zeros(num_tokens, num_experts), None),
        (coarse, torch.zeros(num_experts)),
        (coarse, torch.tensor([0.0, -inf, 0.0, -inf, -inf, -inf])),  # 2 experts left for k = 4
        (coarse, torch.tensor([-inf] * num_experts)),
        (coarse, torch.tensor([0.0, inf, nan, 0.0, -inf, inf])),
        # -FLT_MAX is where the kernel puts NaN and -inf: all three tie, so the lower id goes first
        (torch.zeros(num_tokens, num_experts), torch.tensor([0.0, -inf, nan, -fmax, 0.0, -fmax])),
    ]
    ids = []
    for logits, biases in cases:
        got = fused_route_triton(logits, biases, top_k, out=poisoned(num_tokens, num_experts, top_k))
        assert_route_equal(got, fused_route_reference(logits, biases, top_k))
        assert (got.topk_ids.sort(-1).values.diff(dim=-1) > 0).all(), "a token got one expert twice"
        ids.append(got.topk_ids)
    assert ids[0].tolist() == [[0, 1, 2, 3]] * num_tokens  # all tied: the lowest ids
    assert ids[2][:, :2].sort(-1).values.tolist() == [[0, 2]] * num_tokens  # the unmasked experts first
    assert ids[3].tolist() == [[0, 1, 2, 3]] * num_tokens  # all masked: ties again
    assert ids[4][:, :2].tolist() == [[1, 5]] * num_tokens  # +inf first, the lower id first
    assert ids[4][:, 2:].sort(-1).values.tolist() == [[0, 3]] * num_tokens  # then finite; NaN and -inf last
    assert ids[5].tolist() == [[0, 4, 1, 2]] * num_tokens  # after the two finite: -inf, NaN, -FLT_MAX by id
