"""Routing: softmax scores, top-k selection on biased scores, renormalised combine weights, per-expert counts.

The selection biases move which experts are *chosen*; the combine weights always come from the unbiased scores,
renormalised over the chosen k (DeepSeek-V3's auxiliary-loss-free balancing). Both paths choose alike on ties: the
lower expert id first, a NaN or -inf biased score ranked as the lowest finite float (-FLT_MAX), and a token never gets
one expert twice, so a bias of -inf masks an expert out (chosen only when fewer than k others remain).

`fused_route_reference` (PyTorch, differentiable) and `fused_route_triton` (one fused kernel plus a tiny count
reduction; inference only) take the same arguments and return the same `RouteResult`.
"""

from __future__ import annotations

import operator
from typing import NamedTuple

import torch

from kernels._triton import next_power_of_2, require_triton

MAX_EXPERTS = 256  # the Triton router keeps a token's whole row of E scores in registers


class RouteResult(NamedTuple):
    """Output of routing `T` tokens over `E` experts with top-`k`.

    Attributes:
        topk_ids: int64 [T, k], distinct chosen experts per token, ordered by biased score (highest first; ties to
            the lower id).
        topk_weights: float32 [T, k], unbiased softmax scores of the chosen experts, renormalised to sum to 1.
        expert_counts: int64 [E], slots routed to each expert (sums to T * k).
        scores: float32 [T, E], unbiased softmax scores (for the aux loss and router entropy).
    """

    topk_ids: torch.Tensor
    topk_weights: torch.Tensor
    expert_counts: torch.Tensor
    scores: torch.Tensor


def _check_route_args(gate_logits: torch.Tensor, biases: torch.Tensor | None, top_k: int) -> int:
    """Raises on bad arguments; returns top_k as a Python int."""
    if gate_logits.dim() != 2:
        raise ValueError(f"gate_logits must be [tokens, experts], got shape {tuple(gate_logits.shape)}")
    num_experts = gate_logits.shape[-1]
    try:
        top_k = operator.index(top_k)
    except TypeError:
        raise TypeError(f"top_k must be an int, got {top_k!r}") from None
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be in [1, {num_experts}], got {top_k}")
    if biases is not None and tuple(biases.shape) != (num_experts,):
        raise ValueError(f"biases must have shape ({num_experts},), got {tuple(biases.shape)}")
    for name, t in (("gate_logits", gate_logits), ("biases", biases)):
        if t is not None and not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    return top_k


def _check_out(out: RouteResult, num_tokens: int, num_experts: int, top_k: int, device: torch.device) -> None:
    want = {
        "topk_ids": ((num_tokens, top_k), torch.int64),
        "topk_weights": ((num_tokens, top_k), torch.float32),
        "expert_counts": ((num_experts,), torch.int64),
        "scores": ((num_tokens, num_experts), torch.float32),
    }
    for name, (shape, dtype) in want.items():
        t = getattr(out, name)
        if tuple(t.shape) != shape or t.dtype != dtype or t.device != device or not t.is_contiguous():
            raise ValueError(
                f"out.{name} must be a contiguous {dtype} tensor of shape {shape} on {device}, "
                f"got {t.dtype} {tuple(t.shape)} on {t.device}"
            )


def fused_route_reference(
    gate_logits: torch.Tensor, biases: torch.Tensor | None, top_k: int, *, out: RouteResult | None = None
) -> RouteResult:
    """PyTorch reference for routing.

    Args:
        gate_logits: [T, E] router logits (any float dtype; computed in fp32).
        biases: [E] selection biases added to the scores only for choosing experts, or None for zero.
        top_k: experts per token, 1 <= top_k <= E.
        out: optional preallocated `RouteResult` (shapes and dtypes as returned) to write into; not differentiable.

    Returns:
        `RouteResult`. Differentiable through `topk_weights` and `scores` when `out` is None.
    """
    top_k = _check_route_args(gate_logits, biases, top_k)
    num_experts = gate_logits.shape[-1]
    scores = torch.softmax(gate_logits.float(), dim=-1)  # (T, E)
    select = scores if biases is None else scores + biases.to(scores.device, torch.float32)
    # A stable sort, not topk, so that ties go to the lower expert id as in the Triton kernel (topk's tie order is
    # unspecified, and ties are common in bf16 or at a zero-initialised router). NaN and -inf rank as -FLT_MAX, as
    # in the kernel (which keeps -inf to mark chosen experts), so they tie with a biased score of exactly -FLT_MAX.
    key = select.detach().masked_fill(select.isnan(), float("-inf")).clamp_min(torch.finfo(torch.float32).min)
    # Contiguous, as the Triton kernel's: the grouped SwiGLU would otherwise copy the slice on every call.
    topk_ids = torch.sort(key, dim=-1, descending=True, stable=True).indices[:, :top_k].contiguous()  # (T, k)
    picked = torch.gather(scores, -1, topk_ids)  # (T, k)
    topk_weights = picked / picked.sum(dim=-1, keepdim=True).clamp_min(1e-20)
    counts = torch.bincount(topk_ids.reshape(-1), minlength=num_experts)
    result = RouteResult(topk_ids, topk_weights, counts, scores)
    if out is None:
        return result
    _check_out(out, gate_logits.shape[0], num_experts, top_k, gate_logits.device)
    for dst, src in zip(out, result):
        dst.copy_(src.detach())
    return out


def fused_route_triton(
    gate_logits: torch.Tensor, biases: torch.Tensor | None, top_k: int, *, out: RouteResult | None = None
) -> RouteResult:
    """Triton routing: the same contract as `fused_route_reference`, without autograd.

    One kernel computes the softmax, the top-k on `scores + biases` (ties go to the lower expert id), the
    renormalised weights and per-program expert counts; a one-program kernel sums the counts (no atomics, so the
    result is deterministic). E <= 256; any 1 <= k <= E.

    Args:
        gate_logits: [T, E] router logits (fp32, bf16 or fp16; read as fp32), on CUDA (or CPU under the interpreter).
        biases: [E] selection biases, or None.
        top_k: experts per token.
        out: optional preallocated `RouteResult` (contiguous; every element is written).

    Returns:
        `RouteResult` (int64 ids [T, k], fp32 weights [T, k], int64 counts [E], fp32 scores [T, E]).

    Raises:
        RuntimeError: Triton cannot run on this device (the message says why).
        ValueError: bad shapes, k out of range or E > 256.
    """
    top_k = _check_route_args(gate_logits, biases, top_k)
    num_tokens, num_experts = gate_logits.shape
    if num_experts > MAX_EXPERTS:
        raise ValueError(f"fused_route_triton supports up to {MAX_EXPERTS} experts, got {num_experts}")
    device = gate_logits.device
    require_triton(device, "fused_route_triton")
    from kernels import _triton_route

    if out is None:
        out = RouteResult(
            torch.empty(num_tokens, top_k, dtype=torch.int64, device=device),
            torch.empty(num_tokens, top_k, dtype=torch.float32, device=device),
            torch.empty(num_experts, dtype=torch.int64, device=device),
            torch.empty(num_tokens, num_experts, dtype=torch.float32, device=device),
        )
    else:
        _check_out(out, num_tokens, num_experts, top_k, device)
    block_e = next_power_of_2(num_experts)
    block_t = max(1, min(64, 2048 // block_e))  # a program holds BLOCK_T x BLOCK_E fp32 scores
    grid = max(1, -(-num_tokens // block_t))
    partial = torch.empty(grid, block_e, dtype=torch.int32, device=device)
    bias = biases.to(device) if biases is not None else gate_logits
    _triton_route.route_kernel[(grid,)](
        gate_logits,
        bias,
        out.topk_ids,
        out.topk_weights,
        out.scores,
        partial,
        num_tokens,
        gate_logits.stride(0),
        gate_logits.stride(1),
        NUM_EXPERTS=num_experts,
        TOP_K=top_k,
        HAS_BIAS=biases is not None,
        BLOCK_T=block_t,
        BLOCK_E=block_e,
        BLOCK_K=next_power_of_2(top_k),
        num_warps=4,
    )
    _triton_route.reduce_counts_kernel[(1,)](
        partial,
        out.expert_counts,
        grid,
        NUM_EXPERTS=num_experts,
        BLOCK_E=block_e,
        BLOCK_P=max(1, min(64, 4096 // block_e)),
        num_warps=4,
    )
    return out
