"""Kernels: the work vocabulary, MoE kernels (Triton on CUDA, PyTorch references) and the kernel cost model.

Importing this package never imports Triton; the Triton entry points import it when called and say why they cannot
run when it is missing.
"""

from kernels import dispatch
from kernels.align import (
    AlignResult,
    aligned_sizes,
    moe_align_block_size_reference,
    moe_align_block_size_triton,
)
from kernels.configs import MoeKernelConfig, config_source, force_config, get_config
from kernels.deploy_work import deployment_calls
from kernels.routing import RouteResult, fused_route_reference, fused_route_triton
from kernels.step_cost import CostParts, StepCost
from kernels.swiglu import expert_offsets, grouped_swiglu_reference, grouped_swiglu_triton
from kernels.work import OPS, PHASES, DeploymentScale, KernelCall, total_flops

__all__ = [
    "OPS",
    "PHASES",
    "AlignResult",
    "CostParts",
    "DeploymentScale",
    "KernelCall",
    "KernelCostModel",
    "MoeKernelConfig",
    "RouteResult",
    "StepCost",
    "aligned_sizes",
    "config_source",
    "deployment_calls",
    "dispatch",
    "expert_offsets",
    "force_config",
    "fused_route_reference",
    "fused_route_triton",
    "get_config",
    "grouped_swiglu_reference",
    "grouped_swiglu_triton",
    "moe_align_block_size_reference",
    "moe_align_block_size_triton",
    "total_flops",
]


def __getattr__(name: str):
    # Imported on first use, so that `python -m kernels.cost_model` does not find the module already imported.
    if name == "KernelCostModel":
        from kernels.cost_model import KernelCostModel

        return KernelCostModel
    raise AttributeError(f"module 'kernels' has no attribute {name!r}")
