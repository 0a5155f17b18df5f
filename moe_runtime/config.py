"""`MoEConfig`: the shape and run settings of the MoE language model, with presets."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

# Expert widths as multiples of a base width: 0.25x to 2x, so that routing load to an expert changes both its cost
# and the quality of its output. `default` and `gpu` share these ratios (DESIGN.md, "Deployment scale").
EXPERT_WIDTH_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.25, 1.5, 2.0)
DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("cpu", "cuda", "auto")


def widths_from_ratios(base: int, ratios: tuple[float, ...] = EXPERT_WIDTH_RATIOS) -> tuple[int, ...]:
    """Expert widths `round(base * r)` for each ratio."""
    return tuple(max(1, round(base * r)) for r in ratios)


@dataclass
class MoEConfig:
    """Shape and run settings of the MoE transformer.

    Attributes:
        vocab_size: byte-level vocabulary (256, no tokenizer).
        d_model: model width.
        n_layers: transformer blocks, each attention + MoE.
        n_heads: attention heads; must divide d_model.
        num_experts: experts per MoE layer.
        top_k: experts each token is sent to.
        expert_widths: SwiGLU hidden width of each expert (length num_experts).
        dropout: dropout during pretraining.
        seq_len: tokens per sequence (attention context).
        batch_size: sequences per pretraining batch.
        aux_loss_coef: weight of the Switch load-balancing loss in pretraining.
        dtype: parameter dtype at inference; `bfloat16` on CUDA by default (see `resolved_dtype`).
        device: `cpu`, `cuda` or `auto` (CUDA when present).
        seed: initialisation and stream seed.
        preset_name: the preset this config came from, for names and cache keys.
    """

    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 3
    n_heads: int = 4
    num_experts: int = 8
    top_k: int = 2
    expert_widths: tuple[int, ...] = field(default_factory=lambda: widths_from_ratios(192))
    dropout: float = 0.0
    seq_len: int = 128
    batch_size: int = 16
    aux_loss_coef: float = 0.01
    dtype: str = "auto"
    device: str = "cpu"
    seed: int = 0
    preset_name: str = "default"

    def __post_init__(self) -> None:
        if isinstance(self.expert_widths, (str, bytes)) or not isinstance(self.expert_widths, Iterable):
            raise ValueError(
                f"MoEConfig.expert_widths must be a sequence of num_experts integer widths, got {self.expert_widths!r}"
            )
        if any(isinstance(w, bool) or not isinstance(w, numbers.Integral) for w in self.expert_widths):
            raise ValueError(f"MoEConfig.expert_widths must be integers, got {self.expert_widths!r}")
        self.expert_widths = tuple(int(w) for w in self.expert_widths)
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "num_experts", "top_k", "seq_len", "batch_size"):
            value = getattr(self, name)  # numpy integers too (a sweep's values): kept as int, for the cache key's JSON
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
                raise ValueError(f"MoEConfig.{name} must be a positive integer, got {value!r}")
            setattr(self, name, int(value))
        for name in ("dropout", "aux_loss_coef"):  # a string failed below with a TypeError naming neither
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"MoEConfig.{name} must be a number, got {value!r}")
        if self.vocab_size < 256:  # the streams serve bytes: a smaller embedding fails on the first one past it
            raise ValueError(f"MoEConfig.vocab_size must be >= 256 (byte tokens), got {self.vocab_size}")
        if self.top_k > self.num_experts:
            raise ValueError(f"MoEConfig.top_k ({self.top_k}) must be <= num_experts ({self.num_experts})")
        if len(self.expert_widths) != self.num_experts:
            raise ValueError(
                f"MoEConfig.expert_widths has {len(self.expert_widths)} entries; num_experts is {self.num_experts}"
            )
        if min(self.expert_widths) <= 0:
            raise ValueError(f"MoEConfig.expert_widths must all be positive, got {self.expert_widths}")
        if self.d_model % self.n_heads:
            raise ValueError(f"MoEConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.d_model % 2:
            raise ValueError(f"MoEConfig.d_model must be even, got {self.d_model}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"MoEConfig.dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.aux_loss_coef < math.inf:  # NaN too: it would make every training loss NaN
            raise ValueError(f"MoEConfig.aux_loss_coef must be finite and >= 0, got {self.aux_loss_coef}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or self.seed < 0:  # numpy takes no other
            raise ValueError(f"MoEConfig.seed must be an integer >= 0, got {self.seed!r}")
        self.seed = int(self.seed)
        if self.dtype not in DTYPES + ("auto",):
            raise ValueError(f"MoEConfig.dtype {self.dtype!r} is not one of {DTYPES + ('auto',)}")
        if self.device not in DEVICES:
            raise ValueError(f"MoEConfig.device {self.device!r} is not one of {DEVICES}")

    @classmethod
    def preset(cls, name: str, **overrides) -> MoEConfig:
        """A named preset with field overrides.

        - `tiny`: tests; a step takes milliseconds.
        - `default`: the CPU model (d_model 128, 3 layers, experts 48-384 wide); ~1,000 tokens forward in about
          40 ms on 2 cores (a per-expert loop at 4 layers and 2x width took ~65 ms).
        - `gpu`: d_model 1024, the same expert count and width ratios as `default`, 16k-token launches.
        """
        presets = {
            "tiny": dict(
                d_model=32,
                n_layers=2,
                n_heads=2,
                num_experts=4,
                top_k=2,
                expert_widths=(16, 32, 48, 64),
                seq_len=32,
                batch_size=8,
            ),
            "default": dict(),
            "gpu": dict(
                d_model=1024,
                n_layers=8,
                n_heads=16,
                expert_widths=widths_from_ratios(2048),
                seq_len=1024,
                batch_size=16,
                device="auto",
            ),
        }
        if name not in presets:
            raise ValueError(f"unknown MoEConfig preset {name!r}; choose one of {tuple(presets)}")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown MoEConfig field(s) {sorted(unknown)}")
        return cls(**{**presets[name], "preset_name": name, **overrides})

    def resolved_device(self) -> str:
        """`cuda` when asked for (or `auto` and CUDA is present), else `cpu`."""
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("MoEConfig.device is 'cuda' but torch.cuda.is_available() is False")
        return self.device

    def resolved_dtype(self) -> str:
        """bf16 on CUDA, fp32 on the CPU, unless set explicitly."""
        if self.dtype != "auto":
            return self.dtype
        return "bfloat16" if self.resolved_device() == "cuda" else "float32"

    def expert_flops_per_token(self) -> list[float]:
        """Forward FLOPs one token costs on each expert: up/gate GEMM, SiLU-mul, down GEMM."""
        d = self.d_model
        return [2.0 * d * 2 * f + 4.0 * f + 2.0 * f * d for f in self.expert_widths]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["expert_widths"] = list(self.expert_widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MoEConfig:
        """The config `to_dict` wrote. Fields this version does not know (a checkpoint from a newer one) are left
        out with a warning naming them, rather than refused: they may not change the weights' shape."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            logger.warning("MoEConfig fields %s are not known to this version; ignored", unknown)
        return cls(**{k: v for k, v in d.items() if k in known})

    def model_key(self) -> str:
        """A hash of the fields that decide the trained weights (not device, dtype or batch size)."""
        keep = {k: v for k, v in self.to_dict().items() if k not in ("device", "dtype", "batch_size", "preset_name")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]
