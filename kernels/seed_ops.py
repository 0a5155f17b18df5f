"""The seeds' op names as aliases and composites of the work vocabulary, default shapes, and memory pressure.

| seed op        | priced as                                                                      |
|----------------|--------------------------------------------------------------------------------|
| `ffn_gate`     | one projection x[T, d] @ W[d, d_ff]: `gemm_up` at half width (FLOPs 2 T d d_ff) |
| `ffn_up`       | the same                                                                       |
| `ffn_down`     | `gemm_down`                                                                    |
| `attention_qk` | half of `sdpa_causal` (flash attention fuses QK^T and AV into one kernel)      |
| `attention_av` | the other half                                                                 |
| `moe_router`   | `router_topk`                                                                  |
| `expert_swiglu`| a whole expert of width d_ff: `gemm_up`, `silu_mul`, `gemm_down`               |
| `ttt_update`   | an expert's forward (`ttt_forward`) and backward (`ttt_backward`) over the chunk |

Memory pressure p (a share of memory bandwidth taken by other traffic, 0..1) stretches memory-bound time by
`1 + MEMORY_PRESSURE_GAIN * ((p - MEMORY_PRESSURE_KNEE) / (1 - MEMORY_PRESSURE_KNEE))^2` above the knee (chosen
to reproduce the original system's "<50%: normal, >80%: up to 60% slower"); monotone in p.
"""

from __future__ import annotations

from kernels.work import OPS

MEMORY_PRESSURE_KNEE = 0.5  # share of bandwidth taken by others below which memory-bound time is unaffected (chosen)
MEMORY_PRESSURE_GAIN = 0.6  # memory-bound slowdown at full pressure, 60% (the seeds' "up to 60%"; chosen)
DEFAULT_SHAPE = {"d_model": 1024, "d_ff": 2048, "heads": 16, "seq_len": 1024, "experts": 8}  # DeploymentScale()
SHAPE_KEYWORDS = (*DEFAULT_SHAPE, "dtype")

# Seed op -> (work-vocabulary op, d_ff multiplier, phase, share of the launch): aliases and composites.
_EXPERT = (("gemm_up", 1.0, "forward", 1.0), ("silu_mul", 1.0, "forward", 1.0), ("gemm_down", 1.0, "forward", 1.0))
COMPOSITES = {
    "ffn_gate": (("gemm_up", 0.5, "forward", 1.0),),  # one projection x[T, d] @ W[d, d_ff]: half the fused gemm_up
    "ffn_up": (("gemm_up", 0.5, "forward", 1.0),),
    "ffn_down": (("gemm_down", 1.0, "forward", 1.0),),
    "attention_qk": (("sdpa_causal", 1.0, "forward", 0.5),),  # flash attention fuses QK^T and AV: half each
    "attention_av": (("sdpa_causal", 1.0, "forward", 0.5),),
    "moe_router": (("router_topk", 1.0, "forward", 1.0),),
    "expert_swiglu": _EXPERT,  # a whole expert of width d_ff
    "ttt_update": tuple((op, m, p, s) for p in ("ttt_forward", "ttt_backward") for op, m, _, s in _EXPERT),
    **{op: ((op, 1.0, "forward", 1.0),) for op in OPS},
}


def pressure_factor(memory_pressure: float | None) -> float:
    """Memory-bound time multiplier at a memory pressure (module docstring); 1 for None."""
    if memory_pressure is None:
        return 1.0
    p = float(memory_pressure)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"memory_pressure must be a share in [0, 1] (not percent), got {memory_pressure}")
    excess = max(p - MEMORY_PRESSURE_KNEE, 0.0) / (1.0 - MEMORY_PRESSURE_KNEE)
    return 1.0 + MEMORY_PRESSURE_GAIN * excess**2
