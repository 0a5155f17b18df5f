"""Parts of the EnergyAwareTTTRouter that stand alone: statistical load balancing over the expert-usage
history, thermal-adaptive scaling, the energy-aware loss of hardware metrics, and the small fast-weight network the
surrogate of that loss trains."""

from __future__ import annotations

import contextlib
import math
from collections import deque
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SURROGATE_TEMP = 0.1  # softmax-score spread the load surrogate assumes (bias / this = log-load change)
_STAT_DEFAULTS = {"temperature": 50.0, "power_watt": 200.0}  # the seed's defaults when a reading is missing


class StatisticalLoadBalancer:
    """Statistical load balancing from the history of expert usage.

    Args:
        num_experts: E.
        history_size: distributions kept (one per routing call or control interval).
    """

    def __init__(self, num_experts: int, history_size: int = 32):
        if num_experts < 1 or history_size < 1:
            raise ValueError(f"need num_experts >= 1 and history_size >= 1, got {num_experts}, {history_size}")
        self.num_experts = num_experts
        self.usage_history: deque[np.ndarray] = deque(maxlen=history_size)

    def reset(self) -> None:
        self.usage_history.clear()

    def update_usage(self, expert_indices: torch.Tensor) -> None:
        """Add the distribution of a routing call's chosen experts (int tensor of expert ids, any shape)."""
        counts = torch.bincount(expert_indices.detach().flatten().long().cpu(), minlength=self.num_experts)
        total = float(counts.sum())
        if total > 0:
            self.update_distribution(counts.double().numpy() / total)

    def update_distribution(self, distribution: np.ndarray) -> None:
        """Add a usage distribution [E] (shares of routed slots; renormalised)."""
        d = np.clip(np.asarray(distribution, dtype=np.float64), 0.0, None)
        if d.shape != (self.num_experts,):
            raise ValueError(f"usage distribution must have shape ({self.num_experts},), got {d.shape}")
        total = d.sum()
        self.usage_history.append(d / total if total > 0 else np.full(self.num_experts, 1.0 / self.num_experts))

    @property
    def mean_usage(self) -> np.ndarray:
        """[E] mean share of slots per expert over the history (uniform when empty)."""
        if not self.usage_history:
            return np.full(self.num_experts, 1.0 / self.num_experts)
        return np.mean(self.usage_history, axis=0)

    def usage_trend(self) -> np.ndarray:
        """[E] latest share minus the history's mean (positive: usage rising)."""
        if not self.usage_history:
            return np.zeros(self.num_experts)
        return self.usage_history[-1] - self.mean_usage

    def get_balance_biases(self) -> np.ndarray:
        """[E] `1 - E * usage_e`: +1 for an unused expert, 0 at a fair share, -1 at twice it."""
        return 1.0 - self.num_experts * self.mean_usage

    def coefficient_of_variation(self) -> float:
        """std / mean of the mean usage (0 = perfectly balanced)."""
        u = self.mean_usage
        return float(u.std() / u.mean()) if u.mean() > 0 else 0.0


class ThermalAdaptiveScaler:
    """Scales adjustments by the GPU's thermal and power state.

    `scaling = base * {1.0 below cool, 1.2 below warm, 1.5 below hot, 2.0 above}(temperature)
               * (1 + power_gain * max(0, power / limit - power_knee) / (1 - power_knee)) * (1.1 if throttled)`

    Args:
        thermal_thresholds: {"cool", "warm", "hot"} temperatures, C (ascending).
        base_scaling: scaling when cool, idle and unthrottled.
        power_knee: share of the power limit above which power adds to the scaling.
        power_gain: extra scaling at the power limit.
    """

    def __init__(
        self,
        thermal_thresholds: dict[str, float] | None = None,
        base_scaling: float = 1.0,
        power_knee: float = 0.8,
        power_gain: float = 0.5,
    ):
        self.thermal_thresholds = dict(thermal_thresholds or {"cool": 60.0, "warm": 70.0, "hot": 80.0})
        t = self.thermal_thresholds
        if set(t) != {"cool", "warm", "hot"} or not t["cool"] <= t["warm"] <= t["hot"]:
            raise ValueError(f"thermal_thresholds must be ascending cool <= warm <= hot, got {thermal_thresholds}")
        if not base_scaling > 0 or not 0 <= power_knee < 1 or power_gain < 0:
            raise ValueError(
                f"need base_scaling > 0, 0 <= power_knee < 1, power_gain >= 0; got {base_scaling}, {power_knee}, "
                f"{power_gain}"
            )
        self.base_scaling, self.power_knee, self.power_gain = base_scaling, power_knee, power_gain

    def get_scaling_factor(self, gpu_stats: dict[str, Any]) -> float:
        """Scaling for the readings in `gpu_stats` (the seed's keys: `temperature` C, `power_watt` W,
        `power_limit_watt` W, `throttled`); missing readings count as cool and idle."""
        temp = _stat(gpu_stats, "temperature")
        t = self.thermal_thresholds
        if temp < t["cool"]:
            scaling = self.base_scaling
        elif temp < t["warm"]:
            scaling = self.base_scaling * 1.2
        elif temp < t["hot"]:
            scaling = self.base_scaling * 1.5
        else:
            scaling = self.base_scaling * 2.0
        limit = gpu_stats.get("power_limit_watt")
        if limit:
            share = _stat(gpu_stats, "power_watt") / float(limit)
            scaling *= 1.0 + self.power_gain * max(0.0, share - self.power_knee) / (1.0 - self.power_knee)
        if gpu_stats.get("throttled"):
            scaling *= 1.1
        return float(scaling)


class FastWeightNet(nn.Module):
    """SwiGLU MLP [N, F] -> [N, E] bias corrections in (-bias_range / 2, bias_range / 2); the output projection
    starts at zero, so an untrained network changes nothing."""

    def __init__(self, in_features: int, num_experts: int, hidden: int, bias_range: float, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w_up = nn.Parameter(torch.randn(in_features, 2 * hidden, generator=g) / math.sqrt(in_features))
        self.w_down = nn.Parameter(torch.zeros(hidden, num_experts))
        self.bias_range = bias_range

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = (x @ self.w_up).chunk(2, dim=-1)  # each (N, H)
        return 0.5 * self.bias_range * torch.tanh(F.silu(gate) * up @ self.w_down)  # (N, E)


def _stat(stats: dict[str, Any], key: str) -> float:
    value = stats.get(key)
    return float(value) if value is not None else _STAT_DEFAULTS[key]


@contextlib.contextmanager
def _one_torch_thread():
    """Run the fast weights' tiny matmuls on one torch thread (restored after): on two contended cores a thread pool
    made a 14 x 64 Newton-Schulz step ~100x slower (160 ms against 0.4 ms, measured)."""
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def _project_names(metrics: dict[str, Any]) -> dict[str, float]:
    """The seed's metric names mapped to the project's (power_w, temperature_c, latency_ms); None dropped."""
    aliases = {
        "power_watt": "power_w",
        "power_w": "power_w",
        "temperature": "temperature_c",
        "temperature_c": "temperature_c",
        "inference_latency_ms": "latency_ms",
        "latency_ms": "latency_ms",
    }
    return {aliases[k]: float(v) for k, v in metrics.items() if k in aliases and v is not None}


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    total = x.sum()
    return x / total if total > 0 else np.full(x.shape, 1.0 / x.shape[-1])


def _surrogate_load(load0: np.ndarray, biases: np.ndarray) -> np.ndarray:
    """[E] share of slots the surrogate expects under `biases`, from the zero-bias share `load0`."""
    logits = np.log(np.clip(load0, 1e-6, None)) + biases / SURROGATE_TEMP
    z = np.exp(logits - logits.max())
    return z / z.sum()


def energy_aware_loss(
    observed_metrics: dict[str, float],
    weights: dict[str, float],
    target_power: float = 200.0,
    target_temp: float = 65.0,
    target_latency: float = 10.0,
) -> dict[str, float]:
    """The energy-aware loss of observed hardware metrics against targets.

    Args:
        observed_metrics: `power_watt` (W), `temperature` (C), `inference_latency_ms` (ms) (the seed's names;
            the project's `power_w`, `temperature_c`, `latency_ms` are accepted too); a missing one is on target.
        weights: objective weights with keys `energy`, `thermal` and `performance`.
        target_power, target_temp, target_latency: targets, W, C, ms.

    Returns:
        {"total_loss", "power_loss", "temp_loss", "latency_penalty"}:
        power_loss = (max(0, P - P*) / P*)^2, temp_loss = (max(0, T - T*) / 10 C)^2,
        latency_penalty = max(0, L / L* - 1), total = w_energy power_loss + w_thermal temp_loss
        + w_performance latency_penalty. (The seed took the raw-unit MSE, where 1 W weighed like 1 C and being
        under a target cost as much as over it; relative, one-sided terms keep the three commensurate.)
    """
    if not (target_power > 0 and target_latency > 0):
        raise ValueError(f"target_power and target_latency must be positive, got {target_power}, {target_latency}")
    m = _project_names(observed_metrics)
    power_w = m.get("power_w", target_power)
    temperature_c = m.get("temperature_c", target_temp)
    latency_ms = m.get("latency_ms", target_latency)
    power_loss = (max(0.0, power_w - target_power) / target_power) ** 2
    temp_loss = (max(0.0, temperature_c - target_temp) / 10.0) ** 2
    latency_penalty = max(0.0, latency_ms / target_latency - 1.0)
    total = weights["energy"] * power_loss + weights["thermal"] * temp_loss + weights["performance"] * latency_penalty
    return {
        "total_loss": float(total),
        "power_loss": float(power_loss),
        "temp_loss": float(temp_loss),
        "latency_penalty": float(latency_penalty),
    }
