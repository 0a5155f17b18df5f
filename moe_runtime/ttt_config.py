"""`TTTConfig` (what adapts at test time, and how) and `TTTUpdate` (what one update did), for `moe_runtime.ttt`.

Which method (benchmarks/ttt_shift.py protocol, `default` preset pretrained on prose, held-out code loss after
8,192 code tokens with one 2,048-token update every 2,048 tokens; off: 2.525 nats): `fast_weights` 2.412, `lora`
2.457 (2.450 at lr 0.005), `tent` 3.041 (entropy minimisation sharpens wrong predictions: it raises next-token loss
here; it is kept for the research comparison). `fast_weights` with Muon is the default.

Default schedule (`DEFAULT_FREQUENCY_TOKENS`, `DEFAULT_CHUNK_TOKENS`): one 512-token update every 8,192 tokens, i.e.
every 8th control interval of 1,024 tokens. The environment's target is 15 steps/s on 2 cores (67 ms a step) and a
1,024-token forward of `default` takes ~44 ms, so TTT gets ~15 ms a step on average. Measured with
benchmarks/ttt_shift.py (2 threads, interleaved medians, on a shared 2-core machine; results/ttt_shift.json): forward
43.5 ms per 1,024 tokens; updates of 256 / 512 / 2,048 tokens 64 / 94 / 281 ms (250 / 184 / 137 us per token
trained: fixed per-update costs of ~40 ms favour large chunks, as LaCT argues); serving with adapted fast weights
adds ~3 ms per 1,024 tokens. The default costs ~15 ms per interval on average (34% of the forward; the interval
that holds the update ~141 ms), against ~27 ms at one 512-token update every 4,096 tokens, and nothing before its
first update. `check_after=False` saves the extra forward, about a quarter of an update.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from kernels import KernelCall

METHODS = ("fast_weights", "lora", "tent")
OPTIMIZERS = ("muon", "adamw")
DEFAULT_FREQUENCY_TOKENS = 8192  # one update every 8 control intervals of 1,024 tokens
DEFAULT_CHUNK_TOKENS = 512


@dataclass
class TTTConfig:
    """What adapts at test time, and how.

    Attributes:
        method: `fast_weights` (LaCT SwiGLU fast weights), `lora` (dynamic evaluation) or `tent` (entropy).
        optimizer: `muon` (matrices; vectors get AdamW at `vector_lr`) or `adamw`.
        lr: learning rate of `optimizer` for an update on `lr_chunk_tokens` tokens (Muon: the spectral norm of one
            step's change).
        vector_lr: the same for AdamW on non-matrix tensors (LayerNorm deltas) when `optimizer` is `muon`.
        lr_chunk_tokens: an update on c tokens, every f tokens, steps with lr * min(c, f) / lr_chunk_tokens (0: lr
            whatever c and f); an update a lowered f made overdue counts all the tokens new since the last one.
            Muon's and AdamW's steps have a size set by the learning rate, not by the gradient, so without this a
            2,048-token update would move the weights 8x less per token trained than a 256-token one; counting only
            the min(c, f) tokens new since the last update keeps chunks that overlap (c > f) from training each
            token c / f times at the full rate.
        steps_per_update: optimiser steps each update takes on its chunk.
        grad_clip: maximum global gradient L2 norm per step (0 = no clipping).
        max_update_norm: maximum L2 norm of one step's change over all adapted tensors (0 = no limit); the
            default binds on fast weights only above ~3,000 new tokens per update, where it caps the scaling.
        weight_decay: decoupled weight decay of the adapted tensors (pulls deltas toward the base model).
        momentum: Muon momentum, and AdamW's beta1.
        fast_weight_dim: hidden width h of each layer's fast-weight SwiGLU network.
        lora_rank: rank of the LoRA deltas.
        frequency_tokens: tokens between updates until `set_schedule` says otherwise (0 = off).
        chunk_tokens: tokens each update trains on until `set_schedule` says otherwise.
        buffer_tokens: seen tokens kept for updates (grows to the largest chunk asked for).
        check_after: after each update, measure the chunk's loss again (reported as `loss_after`) and roll the
            update back if it is not finite; costs one forward pass over the chunk.
        seed: initialisation of the fast weights and LoRA factors.
    """

    method: str = "fast_weights"
    optimizer: str = "muon"
    lr: float = 0.02
    vector_lr: float = 1e-3
    lr_chunk_tokens: int = 256
    steps_per_update: int = 1
    grad_clip: float = 1.0
    max_update_norm: float = 8.0
    weight_decay: float = 0.0
    momentum: float = 0.9
    fast_weight_dim: int = 64
    lora_rank: int = 8
    frequency_tokens: int = DEFAULT_FREQUENCY_TOKENS
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    buffer_tokens: int = 8192
    check_after: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"TTTConfig.method {self.method!r} is not one of {METHODS}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TTTConfig.optimizer {self.optimizer!r} is not one of {OPTIMIZERS}")
        for name in ("lr", "vector_lr"):  # NaN or inf would have every update rolled back, silently
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"TTTConfig.{name} must be positive and finite, got {getattr(self, name)}")
        for name in ("steps_per_update", "fast_weight_dim", "lora_rank", "chunk_tokens", "buffer_tokens"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ValueError(f"TTTConfig.{name} must be a positive integer, got {value!r}")
        for name in ("grad_clip", "max_update_norm", "weight_decay"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"TTTConfig.{name} must be finite and >= 0 (0 = off), got {getattr(self, name)}")
        for name in ("lr_chunk_tokens", "frequency_tokens"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"TTTConfig.{name} must be an integer >= 0 (0 = off), got {value!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"TTTConfig.momentum must be in [0, 1), got {self.momentum}")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass
class TTTUpdate:
    """What one update did.

    Attributes:
        applied: False when the update was rolled back (`reason` says why).
        tokens: (input, target) pairs trained on.
        first_token, end_token: the pairs' range [first, end) in the engine's count of seen tokens.
        loss_before: next-token loss (nats) on the chunk before the update.
        loss_after: the same after it (NaN without `check_after`, or when rolled back).
        grad_norms: [L] gradient L2 norm of each MoE layer's adapted tensors at the last step (before clipping).
        activation_energy: [L] mean square of each MoE layer's output over the chunk at the last step.
        wall_time_s: wall time of the update.
        work: the `KernelCall`s it performed (`ttt_forward`, `ttt_backward`).
        reason: why it was rolled back; empty when applied.
    """

    applied: bool
    tokens: int
    first_token: int
    end_token: int
    loss_before: float
    loss_after: float
    grad_norms: list[float]
    activation_energy: list[float]
    wall_time_s: float
    work: list[KernelCall] = field(default_factory=list)
    reason: str = ""
