"""The reward: energy per token, temperature above a target, latency against a target, loss against the reference.

    r = - w_energy  * min(energy_per_token_j / ref_energy_per_token_j, 10)
        - w_temp    * max(0, temperature_c - target_temp_c) / temp_scale_c
        - w_latency * log(1 + max(0, latency_ms / target_latency_ms - 1))
        - w_loss    * clip(loss_gap / loss_scale, -10, 10)

The latency term grows logarithmically and the energy and loss terms are clipped, so a runaway backlog (a TTT
schedule that trains on many times the tokens it serves, say) costs a lot without swamping a value function.

`loss_gap` is the served model's loss minus the uncontrolled model's, nats. By default (`loss_reference="paired"`)
both are measured on the same tokens: the interval's first `EnvConfig.reference_tokens` tokens, scored again by the
base model with zero biases and no TTT (a small shadow forward pass). Interval losses swing by ~0.5 nats with the
text itself, ten times what routing changes, so only a paired gap leaves a learnable signal. `"calibrated"` takes
the interval's loss minus the uncontrolled model's mean loss on the current domain from a short cached calibration
(envs.calibration) instead: no extra compute, much more noise. `ref_energy_per_token_j` and the latency target come
from that calibration. So "no control" scores about -w_energy per step while the GPU keeps up with the demand (a
backlog adds the latency term), a domain shift by itself costs nothing, TTT that adapts earns, and routing to narrow
experts costs. Units: J, C, ms, nats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

OBJECTIVES = ("energy", "temperature", "latency", "loss")
LOSS_REFERENCES = ("paired", "calibrated")


@dataclass(frozen=True)
class RewardConfig:
    """Weights and scales of the reward.

    Attributes:
        w_energy, w_temp, w_latency, w_loss: weights of the four terms (>= 0).
        target_temp_c: temperature above which the temperature term bites, C.
        temp_scale_c: degrees above target that cost one unit, C.
        target_latency_ms: interval latency target (the SLO), ms; None takes 1.5x the calibrated no-control latency.
        loss_scale: loss increase (nats) that costs one unit. At 0.25, 0.05 nats (about 3% of the default model's
            loss) costs as much as 20% of the uncontrolled energy: the trade the best published GPU energy
            controllers make (~22% energy for < 3% slowdown).
        loss_reference: `paired` (shadow forward pass on the same tokens) or `calibrated` (per-domain mean).
    """

    w_energy: float = 1.0
    w_temp: float = 0.5
    w_latency: float = 1.0
    w_loss: float = 1.0
    target_temp_c: float = 75.0
    temp_scale_c: float = 10.0
    target_latency_ms: float | None = None
    loss_scale: float = 0.25
    loss_reference: str = "paired"

    def __post_init__(self) -> None:
        for name in ("w_energy", "w_temp", "w_latency", "w_loss"):
            if getattr(self, name) < 0 or not np.isfinite(getattr(self, name)):
                raise ValueError(f"RewardConfig.{name} must be a finite weight >= 0, got {getattr(self, name)}")
        for name in ("temp_scale_c", "loss_scale"):
            if getattr(self, name) <= 0:
                raise ValueError(f"RewardConfig.{name} must be positive, got {getattr(self, name)}")
        if self.target_latency_ms is not None and self.target_latency_ms <= 0:
            raise ValueError(f"RewardConfig.target_latency_ms must be positive, got {self.target_latency_ms}")
        if self.loss_reference not in LOSS_REFERENCES:
            raise ValueError(f"RewardConfig.loss_reference {self.loss_reference!r} is not one of {LOSS_REFERENCES}")


@dataclass(frozen=True)
class RewardReference:
    """The uncontrolled calibration the reward is measured against.

    Attributes:
        energy_per_token_j: mean energy per deployment token with no control, J.
        latency_ms: mean interval latency with no control, ms.
        loss: domain -> mean loss of the uncontrolled model on that domain, nats.
    """

    energy_per_token_j: float
    latency_ms: float
    loss: dict


def target_latency_ms(cfg: RewardConfig, ref: RewardReference) -> float:
    """The latency target (SLO), ms: the configured one, else 1.5x the calibrated no-control latency."""
    return cfg.target_latency_ms or 1.5 * ref.latency_ms


def vector_reward(
    cfg: RewardConfig,
    ref: RewardReference,
    energy_per_token_j: float,
    temperature_c: float,
    latency_ms: float,
    loss_gap: float,
) -> np.ndarray:
    """The unweighted objectives, each as a reward (higher is better), order `OBJECTIVES`. float32 [4]."""
    return np.array(
        [
            -min(energy_per_token_j / ref.energy_per_token_j, 10.0),
            -max(0.0, temperature_c - cfg.target_temp_c) / cfg.temp_scale_c,
            -math.log1p(max(0.0, latency_ms / target_latency_ms(cfg, ref) - 1.0)),
            -float(np.clip(loss_gap / cfg.loss_scale, -10.0, 10.0)),
        ],
        dtype=np.float32,
    )


def reward(cfg: RewardConfig, ref: RewardReference, **figures) -> tuple[float, dict[str, float], np.ndarray]:
    """Total reward, its weighted terms by name, and the unweighted vector (see `vector_reward`)."""
    vec = vector_reward(cfg, ref, **figures)
    weights = np.array([cfg.w_energy, cfg.w_temp, cfg.w_latency, cfg.w_loss], dtype=np.float32)
    terms = {name: float(w * v) for name, w, v in zip(OBJECTIVES, weights, vec)}
    return float(sum(terms.values())), terms, vec
