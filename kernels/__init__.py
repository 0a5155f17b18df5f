"""Kernels: the work vocabulary, MoE kernels (Triton on CUDA, PyTorch references) and the kernel cost model."""

from kernels import dispatch
from kernels.routing import RouteResult, fused_route_reference
from kernels.swiglu import expert_offsets, grouped_swiglu_reference
from kernels.work import OPS, PHASES, DeploymentScale, KernelCall, total_flops

__all__ = [
    "OPS",
    "PHASES",
    "DeploymentScale",
    "KernelCall",
    "RouteResult",
    "dispatch",
    "expert_offsets",
    "fused_route_reference",
    "grouped_swiglu_reference",
    "total_flops",
]
