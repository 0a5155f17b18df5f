"""The work vocabulary: what the runtime did, in units the cost model can price.

`KernelCall` names one launch the runtime makes (or would make on a GPU) with its shape; `DeploymentScale` names the
model shape and launch size at which the simulated backend prices the same routing decisions. Both are plain
dataclasses: the lowest layer that `moe_runtime` and the kernel cost model share (see DESIGN.md, "The work
vocabulary").

FLOP and byte counts follow `shared/reference/h100-op-costs.csv` exactly, so that measured rows and predictions use
one definition:

| op          | shape fields                       | FLOPs                    | bytes moved (x dtype bytes)          |
|-------------|------------------------------------|--------------------------|--------------------------------------|
| gemm_up     | tokens T, d_model d, d_ff f        | 2 T d (2 f)              | T d + d (2 f) + T (2 f)              |
| gemm_down   | tokens T, d_model d, d_ff f        | 2 T f d                  | T f + f d + T d                      |
| silu_mul    | tokens T, d_ff f                   | 4 T f                    | T (2 f) + T f                        |
| sdpa_causal | tokens T, d_model d, seq_len S     | 2 T S d (causal half)    | 4 T d (q, k, v, out)                 |
| router_topk | tokens T, d_model d, experts E     | 2 T d E                  | T d + d E                            |
| embed_head  | tokens T, d_model d, d_ff = vocab  | 2 T d V                  | T d + d V + T V                      |

Dense projections outside the experts are expressed with the same GEMM ops (`expert = -1`): the fused QKV
projection is `gemm_up` with `d_ff = 3 d / 2` and the attention output projection is `gemm_down` with `d_ff = d`.
A backward pass (`phase="ttt_backward"`) is priced as two forward GEMMs of the same shape.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

OPS = ("gemm_up", "gemm_down", "silu_mul", "sdpa_causal", "router_topk", "embed_head")
PHASES = ("forward", "ttt_forward", "ttt_backward")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class KernelCall:
    """One kernel launch and its shape.

    Attributes:
        op: one of `OPS`.
        tokens: rows processed by the launch (tokens routed to the expert, for expert GEMMs).
        d_model: model width.
        d_ff: expert width for the expert ops; vocabulary size for `embed_head`; see the module table.
        heads: attention heads (`sdpa_causal`).
        seq_len: attention context length (`sdpa_causal`).
        experts: number of experts (`router_topk`).
        layer: transformer layer index, -1 for none.
        expert: expert index, -1 for work that belongs to no expert.
        phase: `forward`, `ttt_forward` or `ttt_backward`.
    """

    op: str
    tokens: int
    d_model: int
    d_ff: int = 0
    heads: int = 0
    seq_len: int = 0
    experts: int = 0
    layer: int = -1
    expert: int = -1
    phase: str = "forward"

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"KernelCall op {self.op!r} is not one of {OPS}")
        if self.phase not in PHASES:
            raise ValueError(f"KernelCall phase {self.phase!r} is not one of {PHASES}")
        if self.tokens < 0:
            raise ValueError(f"KernelCall tokens must be >= 0, got {self.tokens}")
        if not self.d_model > 0:
            raise ValueError(f"KernelCall d_model must be positive, got {self.d_model}")
        for name in ("d_ff", "heads", "seq_len", "experts"):
            if getattr(self, name) < 0:
                raise ValueError(f"KernelCall {name} must be >= 0, got {getattr(self, name)}")

    @property
    def backward_multiplier(self) -> int:
        """2 for a backward pass (input and weight gradients), else 1."""
        return 2 if self.phase == "ttt_backward" else 1

    def flops(self) -> float:
        """Floating-point operations of this launch (backward counted as two forward launches)."""
        t, d, f = self.tokens, self.d_model, self.d_ff
        if self.op == "gemm_up":
            n = 2.0 * t * d * (2 * f)
        elif self.op == "gemm_down":
            n = 2.0 * t * f * d
        elif self.op == "silu_mul":
            n = 4.0 * t * f
        elif self.op == "sdpa_causal":
            n = 2.0 * t * self.seq_len * d
        elif self.op == "router_topk":
            n = 2.0 * t * d * self.experts
        else:  # embed_head
            n = 2.0 * t * d * f
        return n * self.backward_multiplier

    def bytes(self, dtype_bytes: int = 2) -> float:
        """Bytes moved to and from memory at `dtype_bytes` per element (backward counted twice)."""
        t, d, f = self.tokens, self.d_model, self.d_ff
        if self.op == "gemm_up":
            n = t * d + d * 2 * f + t * 2 * f
        elif self.op == "gemm_down":
            n = t * f + f * d + t * d
        elif self.op == "silu_mul":
            n = t * 2 * f + t * f
        elif self.op == "sdpa_causal":
            n = 4 * t * d
        elif self.op == "router_topk":
            n = t * d + d * self.experts
        else:  # embed_head
            n = t * d + d * f + t * f
        return float(n) * dtype_bytes * self.backward_multiplier

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def total_flops(work: list[KernelCall]) -> float:
    """Sum of `KernelCall.flops()` over a list of calls."""
    return float(sum(c.flops() for c in work))


@dataclass(frozen=True)
class DeploymentScale:
    """The model shape and launch size at which simulated hardware prices the runtime's decisions.

    Defaults are the `gpu` preset's shape (`moe_runtime.MoEConfig.preset("gpu")`), so that a policy trained in
    simulation sees the same cost structure on a real GPU.

    Attributes:
        d_model: model width.
        layers: transformer layers.
        heads: attention heads.
        seq_len: context length of each sequence, tokens.
        expert_widths: SwiGLU width of each expert; the same ratios as the runtime's experts.
        vocab_size: output vocabulary.
        dtype: `bfloat16`, `float16` or `float32`.
        batch_tokens: tokens per forward launch.
    """

    d_model: int = 1024
    layers: int = 8
    heads: int = 16
    seq_len: int = 1024
    expert_widths: tuple[int, ...] = (512, 1024, 1536, 2048, 2048, 2560, 3072, 4096)
    vocab_size: int = 256
    dtype: str = "bfloat16"
    batch_tokens: int = 16384

    def __post_init__(self) -> None:
        for name in ("d_model", "layers", "heads", "seq_len", "vocab_size", "batch_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"DeploymentScale.{name} must be positive, got {getattr(self, name)}")
        if not self.expert_widths or min(self.expert_widths) <= 0:
            raise ValueError(f"DeploymentScale.expert_widths must be positive, got {self.expert_widths}")
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"DeploymentScale.dtype {self.dtype!r} is not one of {tuple(DTYPE_BYTES)}")
        if self.d_model % self.heads:
            raise ValueError(f"DeploymentScale.d_model {self.d_model} is not divisible by heads {self.heads}")

    @property
    def num_experts(self) -> int:
        return len(self.expert_widths)

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def weight_count(self) -> int:
        """Parameters of the deployment model: per layer attention (4 d^2), the SwiGLU experts (3 d w_e each) and
        the router (d E); embedding and head (2 V d)."""
        d = self.d_model
        per_layer = 4 * d * d + 3 * d * sum(self.expert_widths) + d * self.num_experts
        return self.layers * per_layer + 2 * self.vocab_size * d

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["expert_widths"] = list(self.expert_widths)
        return d
