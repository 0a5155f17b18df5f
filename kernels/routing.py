"""Routing: softmax scores, top-k selection on biased scores, renormalised combine weights, per-expert counts.

The selection biases move which experts are *chosen*; the combine weights always come from the unbiased scores,
renormalised over the chosen k (DeepSeek-V3's auxiliary-loss-free balancing).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class RouteResult(NamedTuple):
    """Output of routing `T` tokens over `E` experts with top-`k`.

    Attributes:
        topk_ids: int64 [T, k], chosen experts per token, ordered by biased score (highest first).
        topk_weights: float32 [T, k], unbiased softmax scores of the chosen experts, renormalised to sum to 1.
        expert_counts: int64 [E], slots routed to each expert (sums to T * k).
        scores: float32 [T, E], unbiased softmax scores (for the aux loss and router entropy).
    """

    topk_ids: torch.Tensor
    topk_weights: torch.Tensor
    expert_counts: torch.Tensor
    scores: torch.Tensor


def fused_route_reference(gate_logits: torch.Tensor, biases: torch.Tensor | None, top_k: int) -> RouteResult:
    """PyTorch reference for routing.

    Args:
        gate_logits: [T, E] router logits (any float dtype; computed in fp32).
        biases: [E] selection biases added to the scores only for choosing experts, or None for zero.
        top_k: experts per token, 1 <= top_k <= E.

    Returns:
        `RouteResult`. Differentiable through `topk_weights` and `scores`.
    """
    num_experts = gate_logits.shape[-1]
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be in [1, {num_experts}], got {top_k}")
    scores = torch.softmax(gate_logits.float(), dim=-1)  # (T, E)
    select = scores if biases is None else scores + biases.to(scores.device, torch.float32)
    topk_ids = torch.topk(select.detach(), top_k, dim=-1).indices  # (T, k)
    picked = torch.gather(scores, -1, topk_ids)  # (T, k)
    topk_weights = picked / picked.sum(dim=-1, keepdim=True).clamp_min(1e-20)
    counts = torch.bincount(topk_ids.reshape(-1), minlength=num_experts)
    return RouteResult(topk_ids, topk_weights, counts, scores)
