"""Chooses the implementation of each MoE kernel: Triton on CUDA, the PyTorch reference on the CPU.

The runtime calls `route` and `expert_swiglu` here and nowhere else, so replacing the implementation changes no
caller. `describe()` says which path each op takes on a given device.

Rules, per call: the Triton kernels run when the tensors are on CUDA, Triton imports, and no gradient is needed
(`torch.is_grad_enabled()` is off, as under `torch.inference_mode()`, or no input requires grad). Otherwise the
reference runs: always on the CPU (the Triton interpreter is for the kernel tests only), and on CUDA for
pretraining and TTT, which differentiate through the reference. The path taken on each device is logged once.
"""

from __future__ import annotations

import functools
import logging

import torch

from kernels import swiglu
from kernels._triton import unavailable_reason
from kernels.routing import RouteResult, fused_route_reference, fused_route_triton
from kernels.swiglu import grouped_swiglu_reference, grouped_swiglu_triton

logger = logging.getLogger(__name__)

TRITON = "triton"
REFERENCE = "torch-reference"


def _triton_reason(device: torch.device) -> str | None:
    """None when the Triton kernels serve `device`, else why the reference does."""
    if device.type != "cuda":
        return f"{device.type}: the Triton kernels run on CUDA only (the interpreter is for the kernel tests)"
    return unavailable_reason(device)


@functools.cache
def _announce(device: torch.device) -> str | None:
    reason = _triton_reason(device)
    if reason is None:
        logger.info("kernels.dispatch on %s: Triton kernels (the reference when gradients are needed)", device)
    elif device.type == "cuda":
        logger.warning("kernels.dispatch on %s: PyTorch reference, Triton unavailable: %s", device, reason)
    else:
        logger.info("kernels.dispatch on %s: PyTorch reference (%s)", device, reason)
    return reason


def describe(device: str | torch.device = "cpu") -> dict[str, str]:
    """The implementation each op uses on `device`, and why.

    Returns:
        {"route": "triton" | "torch-reference", "expert_swiglu": ..., "align": ..., "note": reason, "tma_weights":
        ..., "atomic_top2": ..., "experiments": ...}; on CUDA with Triton the note says that calls needing gradients
        take the reference. "tma_weights" says when the Triton path loads weight tiles through tensor descriptors
        (`kernels.swiglu.use_tma_weights`): "on", "off" or "auto (...)"; "atomic_top2" whether its down launch adds
        a top-2 token's rows into the output itself instead of a combine launch (`kernels.swiglu.use_atomic_top2`):
        "on" or "off", and why where the policy chose; "experiments" names the experimental switches that are on
        (`DEVICE_DESCRIPTORS`), comma-separated, or is "none". Each changes how the Triton path runs, so a timing
        should say.
    """
    reason = _triton_reason(torch.device(device))
    impl = TRITON if reason is None else REFERENCE
    note = "inference calls; calls that need gradients take torch-reference" if reason is None else reason
    if impl == TRITON and swiglu.TMA_WEIGHTS is None:
        tma = f"auto (passes of >= {swiglu.TMA_MIN_SLOTS} slots on compute capability >= 9.0)"
    else:
        tma = "on" if impl == TRITON and swiglu.TMA_WEIGHTS else "off"
    if impl != TRITON:
        atomic = "off"
    elif swiglu.ATOMIC_TOP2 is None:
        chosen = swiglu.use_atomic_top2(torch.device(device), 2)
        atomic = f"{'on' if chosen else 'off'} (auto: on from compute capability 9.0)"
    else:
        atomic = "on" if swiglu.ATOMIC_TOP2 else "off"
    on = [name for name in ("DEVICE_DESCRIPTORS",) if impl == TRITON and getattr(swiglu, name)]
    return {"route": impl, "align": impl, "expert_swiglu": impl, "note": note, "tma_weights": tma,
            "atomic_top2": atomic, "experiments": ",".join(on) or "none"}  # fmt: skip


def _use_triton(*tensors: torch.Tensor | None) -> bool:
    device = tensors[0].device
    if _announce(device) is not None:
        return False
    return not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))


def route(gate_logits: torch.Tensor, biases: torch.Tensor | None, top_k: int) -> RouteResult:
    """Route [T, E] logits with selection biases [E]; see `kernels.routing.fused_route_reference`."""
    if _use_triton(gate_logits, biases):
        return fused_route_triton(gate_logits, biases, top_k)
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
    if _use_triton(x, topk_weights, w_up, w_down):
        return grouped_swiglu_triton(x, topk_ids, topk_weights, w_up, w_down, widths)
    return grouped_swiglu_reference(x, topk_ids, topk_weights, w_up, w_down, widths)
