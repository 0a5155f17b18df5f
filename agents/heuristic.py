"""`EnergyAwareTTTRouter`: the original system's heuristic router, with its five parts, as a `Controller` on the
env's observation and as a router module in an MoE layer.

The five parts (seed 002):
1. TTT feedback extraction: gradient norms and activation energy of test-time updates (`_extract_ttt_feedback`; the
   observation's `ttt_grad_norm` / `ttt_activation_energy`, or a module context's `gradients` / `activations`).
2. Kernel-statistical integration: each expert's energy per token from the kernel cost model (the observation's
   `expert_cost_ratio_e*`, or the KCM priced at the config's shape) combined with a `StatisticalLoadBalancer` over
   the expert-usage history.
3. Dynamic thermal scaling: `ThermalAdaptiveScaler` (cool / warm / hot thresholds, power share of the limit) scales
   the energy adjustments up and the TTT intensity down.
4. The energy-aware loss: `update_energy_aware_loss` weighs power, temperature and latency against targets; it sets
   how hard a differentiable surrogate of routing energy pushes the small fast-weight network (a SwiGLU MLP that
   corrects the biases), trained at test time with Muon (or AdamW) every `ttt_update_frequency` tokens on the
   latest `ttt_chunk_size` tokens.
5. Hardware monitoring: a `telemetry.GpuSystemMonitor` in the module face; the observation's telemetry in the
   controller face (a controller reads only its observation, so it works in any process).

Decision, each interval (units: biases in softmax-score units, temperatures C, power W, loss nats):

    s        = ThermalAdaptiveScaler(temperature, power / limit, throttled)           # 1 cool ... ~2.5 hot at cap
    pressure = (w_energy + w_thermal) * s + w_performance * min(backlog, 2)
    guard    = 1 / (1 + max(0, loss_gap) / 0.1)                                       # protect quality
    bias_e   = -0.15 * pressure * guard * (cost_e - mean cost)                        # toward cheap (narrow) experts
             + 0.1 * w_load_balance * (1 - E * usage_e)                              # statistical balancing
             + s * fast_weights(features)_e
    adapt    = max(0.8 * adapt, min(1, max(0, loss_delta) / 0.1 + max(0, loss_gap) / 0.1))   # loss spike memory
    ttt      = clip((0.3 + 0.7 * adapt + gradient boost) / s - 0.5 * min(backlog, 1), 0, 1)
    TTT off below 0.15; else frequency from the action's rarest (`ttt_frequency_range[1]`, 16384 tokens) to
    `ttt_update_frequency` clamped to that range (1024 by default), and chunk from the smallest size to
    `ttt_chunk_size`, log-linear in ttt, then the chunk is cut to the compute budget:
    budget   = R * max(0, 0.85 / utilisation - 1) / kappa      (trained tokens per interval that keep busy < 85%)
    with R the runtime tokens per interval and kappa the TTT cost ratio (busy time per trained token over busy time
    per served token, at deployment scale), learned from the KCM's prediction after each update (part 1); no TTT
    while a backlog waits. At deployment scale small TTT chunks are weight-load bound, so kappa is large (over 40
    on the tiny preset) and TTT is rarely affordable: the budget keeps the heuristic from stalling the GPU.

So hotter or nearer the power cap: more negative bias on wide (costly) experts and less TTT; after a loss spike
(domain shift): more TTT for several intervals.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from agents.controller import ControlSpec, require_finite_numbers
from agents.heuristic_module import RouterModuleFace
from agents.heuristic_parts import (
    SURROGATE_TEMP,
    FastWeightNet,
    StatisticalLoadBalancer,
    ThermalAdaptiveScaler,
    _normalise,
    _one_torch_thread,
    _surrogate_load,
    energy_aware_loss,
)
from envs import ActionConfig
from moe_runtime import ControlAction, Muon

DEFAULT_OBJECTIVE_WEIGHTS = {"performance": 0.25, "energy": 0.35, "thermal": 0.20, "memory": 0.10, "load_balance": 0.10}
BIAS_GAIN = 0.15  # bias (score units) per unit of pressure x centred cost ratio
BALANCE_GAIN = 0.1  # bias per unit of relative over-use, times w_load_balance
LOSS_SCALE_NATS = 0.1  # a loss spike or gap of this size counts fully
ADAPT_DECAY = 0.8  # per interval: a loss spike keeps TTT up for ~5 intervals
TTT_BASE = 0.3  # TTT intensity with no spike, cool and idle queue
TTT_OFF_BELOW = 0.15  # intensity under which TTT is switched off
UTIL_TARGET = 0.85  # busy share of the interval TTT may fill up to
TTT_COST_PRIOR = 20.0  # kappa before any update was seen (the runtime-scale figure is ~5; deployment scale is larger)
MAX_UPDATES_PER_CALL = 4


@dataclass
class Decision:
    """One decision of the router: biases [E] (score units), the TTT schedule and what produced them."""

    biases: np.ndarray
    ttt_frequency_tokens: int
    ttt_chunk_tokens: int
    ttt_intensity: float
    thermal_scaling: float
    energy_bias: np.ndarray
    balance_bias: np.ndarray
    learned_bias: np.ndarray


class EnergyAwareTTTRouter(RouterModuleFace, nn.Module):
    """The heuristic router (module docstring): a `Controller` (`reset`, `act`) and an MoE router module (`forward`).

    Args:
        config: the served model's `MoEConfig` (num_experts, top_k, expert widths); None takes E from `spec` and
            top_k = 2.
        kernel_cost_model: a `kernels.KernelCostModel` pricing each expert's energy per token for the module face
            (at the config's shape); None prices by expert width. The controller face reads the KCM's figures from
            the observation.
        gpu_system_monitor: a `telemetry.GpuSystemMonitor` read by the module face; None reads `context["gpu_stats"]`.
        ttt_chunk_size: tokens each fast-weight update trains on; also the largest runtime TTT chunk it asks for.
        ttt_update_frequency: tokens between fast-weight updates; also the most frequent runtime TTT it asks for.
        energy_aware_lr: learning rate of the fast-weight network (with Muon, the spectral norm of one step's
            change). The seeds' 1e-4 leaves part 4 all but inert: on a `default` episode (seed 0) its largest
            learned bias was 0.002 with Muon (0.009 with AdamW) beside energy biases up to 0.15; 0.02, Muon's usual
            rate, made it 0.15.
        muon_enabled: Muon for the fast weights (else AdamW).
        spec: the env's `ControlSpec`; needed for the controller face (`act`).
        seed: initialises the fast weights.
        hidden: fast-weight network width.
        ttt_cost_ratio: prior of kappa, the runtime TTT's busy time per trained token over serving's per served
            token (module docstring); replaced by what the observations show after the first update and kept
            across `reset` (it is a fact of the hardware, not of the episode).

    Raises:
        ValueError: non-positive sizes or rate; config and spec disagree on the expert count.
    """

    def __init__(
        self,
        config: Any = None,
        kernel_cost_model: Any = None,
        gpu_system_monitor: Any = None,
        ttt_chunk_size: int = 2048,
        ttt_update_frequency: int = 512,
        energy_aware_lr: float = 1e-4,
        muon_enabled: bool = True,
        *,
        spec: ControlSpec | None = None,
        seed: int = 0,
        hidden: int = 32,
        ttt_cost_ratio: float = TTT_COST_PRIOR,
    ):
        super().__init__()
        require_finite_numbers("EnergyAwareTTTRouter", ttt_chunk_size=ttt_chunk_size,
                               ttt_update_frequency=ttt_update_frequency, energy_aware_lr=energy_aware_lr,
                               hidden=hidden, ttt_cost_ratio=ttt_cost_ratio)  # fmt: skip
        if ttt_chunk_size <= 0 or ttt_update_frequency <= 0 or not energy_aware_lr > 0 or hidden <= 0:
            raise ValueError(
                "ttt_chunk_size, ttt_update_frequency, energy_aware_lr and hidden must be positive, got "
                f"{ttt_chunk_size}, {ttt_update_frequency}, {energy_aware_lr}, {hidden}"
            )
        if not ttt_cost_ratio > 0:
            raise ValueError(f"ttt_cost_ratio must be positive, got {ttt_cost_ratio}")
        self.ttt_cost_ratio = float(ttt_cost_ratio)
        self._ttt_cost_measured = False
        if config is None and spec is None:
            raise ValueError("give the model's config (MoEConfig) or the env's spec (ControlSpec)")
        num_experts = int(getattr(config, "num_experts", 0) or spec.num_experts)
        if spec is not None and spec.num_experts != num_experts:
            raise ValueError(f"config has {num_experts} experts but the spec has {spec.num_experts}")
        self.config, self.spec = config, spec
        self.num_experts = num_experts
        self.top_k = int(getattr(config, "top_k", 2))
        self.kernel_cost_model = kernel_cost_model
        self.gpu_system_monitor = gpu_system_monitor
        self.ttt_chunk_size = int(ttt_chunk_size)
        self.ttt_update_frequency = int(ttt_update_frequency)
        self.energy_aware_lr = float(energy_aware_lr)
        self.muon_enabled = bool(muon_enabled)
        self.action_config = spec.action if spec is not None else ActionConfig()
        self.objective_weights = dict(DEFAULT_OBJECTIVE_WEIGHTS)
        self.thermal_adaptive_scaler = ThermalAdaptiveScaler()
        self.statistical_load_balancer = StatisticalLoadBalancer(num_experts)
        # Targets of the energy-aware loss in the controller face: below the power cap's reach, the env's reward
        # temperature target (slowdown - 14 C = 75 C on an H100), and the interval's work fitting the interval.
        if spec is not None:
            self.target_power_w = 0.8 * spec.tdp_w
            self.target_temp_c = spec.slowdown_temp_c - 14.0
            self.target_latency_ms = 1000.0 * spec.interval_s
        else:  # the seed's defaults
            self.target_power_w, self.target_temp_c, self.target_latency_ms = 200.0, 65.0, 10.0
        self.fast_weight_net = FastWeightNet(
            6 + 2 * num_experts, num_experts, hidden, self.action_config.bias_range, seed
        )
        self._initial_fast_weights = copy.deepcopy(self.fast_weight_net.state_dict())
        self._expert_cost = self._module_expert_cost()
        self.reset()

    # ----- Controller face ----------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Start an episode: fast weights back to their initial values, histories and statistics cleared."""
        self.fast_weight_net.load_state_dict(self._initial_fast_weights)
        params = [self.fast_weight_net.w_up, self.fast_weight_net.w_down]
        self.optimizer = (
            Muon(params, lr=self.energy_aware_lr)
            if self.muon_enabled
            else torch.optim.AdamW(params, lr=self.energy_aware_lr)
        )
        self.statistical_load_balancer.reset()
        self._adapt = 0.0
        self._grad_ema: float | None = None
        self._loss_ema: float | None = None
        self._last_loss: float | None = None
        self._rows: deque[dict] = deque(maxlen=256)
        self._tokens_since_update = 0
        self._stats = {
            "ttt_update_count": 0,
            "tokens_processed": 0,
            "decisions": 0,
            "energy_savings_w": [],
            "thermal_scaling": [],
            "energy_aware_loss": [],
            "surrogate_loss": [],
        }
        self._last_decision: Decision | None = None
        self._last_energy_loss: dict[str, float] = {}
        self._serve_ms_per_demand: float | None = None  # KCM busy ms per unit of due demand, intervals without TTT
        self._util_serving: float | None = None  # busy share of the last interval without a TTT update

    def act(self, observation: np.ndarray) -> np.ndarray:
        """The action vector [E + 2] for one observation [obs_dim] (needs `spec`)."""
        if self.spec is None:
            raise ValueError("EnergyAwareTTTRouter.act needs the env's ControlSpec: build it with spec=...")
        spec = self.spec
        obs = spec.check_observation(observation)
        stats = self._stats_from_observation(obs)  # part 5, from the observation's telemetry
        feedback = {  # part 1, from the runtime's last TTT update (log1p in the observation)
            "gradient_mean": float(np.expm1(spec.raw(obs, "ttt_grad_norm"))),
            "activation_energy_mean": float(np.expm1(spec.raw(obs, "ttt_activation_energy"))),
        }
        cost = spec.raw_experts(obs, "expert_cost_ratio")
        load = spec.raw_experts(obs, "load_fraction")
        bias_now = spec.raw_experts(obs, "bias")
        load0 = _normalise(np.clip(load, 1e-6, None) * np.exp(-bias_now / SURROGATE_TEMP))  # load with zero bias
        self.statistical_load_balancer.update_distribution(load)  # part 2
        energy_loss = self.update_energy_aware_loss(  # part 4
            stats,
            target_power=self.target_power_w,
            target_temp=self.target_temp_c,
            target_latency=self.target_latency_ms,
        )
        pred = spec.raw_experts(obs, "pred_energy_j")
        total = spec.raw(obs, "pred_total_energy_j")
        expert_share = float(np.clip(pred.sum() / total, 0.0, 1.0)) if total > 0 else 1.0
        utilization = self._observe_ttt_cost(obs)
        d = self._decide(
            stats,
            feedback,
            cost,
            load0,
            loss_delta=spec.raw(obs, "loss_delta"),
            loss_gap=spec.raw(obs, "loss_gap"),
            backlog=spec.raw(obs, "backlog"),
            energy_loss=energy_loss["total_loss"],
            tokens=spec.runtime_tokens,
            power_w=stats["power_watt"] * expert_share,
            utilization=utilization,
        )
        return spec.encode(ControlAction(tuple(d.biases), d.ttt_frequency_tokens, d.ttt_chunk_tokens))

    def _observe_ttt_cost(self, obs: np.ndarray) -> float:
        """Part 1, the cost side: learn kappa from the KCM's busy-time prediction after an interval with a TTT update
        (against intervals without one); returns the serving utilisation (busy share without TTT)."""
        spec = self.spec
        due = spec.raw(obs, "demand") + spec.raw(obs, "backlog")  # intervals of capacity due next
        pred_ms = spec.raw(obs, "pred_total_latency_ms")  # clipped at 5 intervals: a lower bound when TTT floods
        updated = spec.raw(obs, "ttt_grad_norm") > 0  # the last interval ran a TTT update
        last = self._last_decision
        if not updated:
            self._util_serving = spec.raw(obs, "gpu_utilization")
            if due > 0:
                ms = pred_ms / due
                self._serve_ms_per_demand = (
                    ms if self._serve_ms_per_demand is None else 0.8 * self._serve_ms_per_demand + 0.2 * ms
                )
        elif self._serve_ms_per_demand and due > 0 and last is not None and last.ttt_frequency_tokens > 0:
            serve_ms = self._serve_ms_per_demand * due
            updates = max(1.0, spec.runtime_tokens / last.ttt_frequency_tokens)
            kappa = max(0.0, pred_ms - serve_ms) / serve_ms * spec.runtime_tokens / (updates * last.ttt_chunk_tokens)
            if kappa > 0:
                self.ttt_cost_ratio = kappa if not self._ttt_cost_measured else 0.5 * (self.ttt_cost_ratio + kappa)
                self._ttt_cost_measured = True
        if self._util_serving is not None:
            return self._util_serving
        return spec.raw(obs, "demand") / max(spec.raw(obs, "sm_clock_ratio"), 0.5)

    def _stats_from_observation(self, obs: np.ndarray) -> dict[str, float]:
        spec = self.spec
        latency_ms = spec.raw(obs, "pred_total_latency_ms") + 1000.0 * spec.interval_s * spec.raw(obs, "backlog")
        return {
            "temperature": spec.raw(obs, "temperature_c"),
            "power_watt": spec.raw(obs, "power_w"),
            "power_limit_watt": spec.tdp_w,
            "throttled": spec.raw(obs, "throttled") > 0.5,
            "sm_clock_ratio": spec.raw(obs, "sm_clock_ratio"),
            "memory_utilization_percent": 100.0 * spec.raw(obs, "memory_pressure"),
            "inference_latency_ms": latency_ms,  # predicted busy time + the backlog's wait
        }

    # ----- the shared decision ------------------------------------------------------------------------------------
    def _decide(
        self,
        stats: dict[str, Any],
        feedback: dict[str, float],
        cost: np.ndarray,
        load0: np.ndarray,
        *,
        loss_delta: float,
        loss_gap: float,
        backlog: float,
        energy_loss: float,
        tokens: int,
        power_w: float,
        utilization: float,
    ) -> Decision:
        w = self.objective_weights
        bias_range = self.action_config.bias_range
        scaling = self.thermal_adaptive_scaler.get_scaling_factor(stats)  # part 3
        centred = np.asarray(cost, dtype=np.float64) - float(np.mean(cost))
        queue = min(max(backlog, 0.0), 2.0)
        pressure = (w["energy"] + w["thermal"]) * scaling + w["performance"] * queue
        guard = 1.0 / (1.0 + max(0.0, loss_gap) / LOSS_SCALE_NATS)
        energy_bias = -BIAS_GAIN * pressure * guard * centred
        balance_bias = BALANCE_GAIN * w["load_balance"] * self.statistical_load_balancer.get_balance_biases()
        spike = max(0.0, loss_delta) / LOSS_SCALE_NATS + max(0.0, loss_gap) / LOSS_SCALE_NATS
        self._adapt = max(self._adapt * ADAPT_DECAY, min(1.0, spike))
        grad = float(feedback.get("gradient_mean", 0.0))
        boost = 0.0
        if grad > 0:
            boost = 0.25 * float(np.clip(grad / self._grad_ema - 1.0, 0.0, 1.0)) if self._grad_ema else 0.0
            self._grad_ema = grad if self._grad_ema is None else 0.9 * self._grad_ema + 0.1 * grad
        features = np.concatenate(
            [
                [
                    scaling - 1.0,
                    float(stats.get("power_watt") or 0.0) / max(self.target_power_w, 1e-9),
                    float(bool(stats.get("throttled"))),
                    queue,
                    float(np.clip(loss_gap, -1, 1)),
                    float(np.clip(loss_delta, -1, 1)),
                ],
                centred,
                self.num_experts * load0 - 1.0,
            ]
        ).astype(np.float32)
        with torch.inference_mode(False), torch.no_grad(), _one_torch_thread():
            learned = self.fast_weight_net(torch.from_numpy(features)[None])[0].double().numpy()
        biases = np.clip(energy_bias + balance_bias + scaling * learned, -bias_range, bias_range)
        intensity = (TTT_BASE + (1.0 - TTT_BASE) * self._adapt + boost) / scaling - 0.5 * min(queue, 1.0)
        intensity = float(np.clip(intensity, 0.0, 1.0))
        budget = 0.0
        if queue <= 0.01:  # no TTT while a backlog waits
            budget = tokens * max(0.0, UTIL_TARGET / max(utilization, 1e-3) - 1.0) / self.ttt_cost_ratio
        freq, chunk = self._ttt_schedule(intensity, budget, tokens)
        base = energy_bias + balance_bias
        self._rows.append(
            {
                "x": features,
                "base": base,
                "scaling": scaling,
                "load0": load0,
                "cost": np.asarray(cost, dtype=np.float64),
                "w": (
                    (w["energy"] + w["thermal"]) * scaling * (1.0 + energy_loss),
                    w["load_balance"],
                    w["performance"] * (1.0 + max(0.0, loss_gap) / LOSS_SCALE_NATS),
                ),
                "tokens": tokens,
            }
        )
        self._count_tokens(tokens)
        p = _surrogate_load(load0, biases)
        saved = (load0 @ cost - p @ cost) / max(float(load0 @ cost), 1e-12)
        s = self._stats
        s["decisions"] += 1
        s["energy_savings_w"].append(float(saved * power_w))
        s["thermal_scaling"].append(scaling)
        d = Decision(biases, freq, chunk, intensity, scaling, energy_bias, balance_bias, learned)
        self._last_decision = d
        return d

    def _ttt_schedule(self, intensity: float, budget_tokens: float, interval_tokens: int) -> tuple[int, int]:
        """(frequency tokens, chunk tokens) for a TTT intensity in [0, 1], cut to a budget of trained tokens per
        interval; frequency 0 (off) below TTT_OFF_BELOW or when not even the smallest chunk fits."""
        a = self.action_config
        sizes = a.ttt_chunk_sizes
        if intensity < TTT_OFF_BELOW:
            return 0, sizes[0]
        lo, hi = a.ttt_frequency_range
        fast = min(max(self.ttt_update_frequency, lo), hi)
        share = (intensity - TTT_OFF_BELOW) / (1.0 - TTT_OFF_BELOW)
        freq = int(round(math.exp(math.log(hi) + share * (math.log(fast) - math.log(hi)))))
        big = min(max(self.ttt_chunk_size, sizes[0]), sizes[-1])
        target = math.exp(math.log(sizes[0]) + share * (math.log(big) - math.log(sizes[0])))
        updates = max(1.0, interval_tokens / freq)  # updates in an interval that has one
        limit = min(target * 1.0001, budget_tokens / updates)
        fitting = [c for c in sizes if c <= limit]
        if not fitting:
            return 0, sizes[0]
        return freq, int(fitting[-1])

    # ----- part 4: the energy-aware loss and the fast-weight updates ----------------------------------------------
    def update_energy_aware_loss(
        self,
        observed_metrics: dict[str, float],
        target_power: float = 200.0,
        target_temp: float = 65.0,
        target_latency: float = 10.0,
    ) -> dict[str, float]:
        """The energy-aware loss of observed hardware metrics (the seed's API): `heuristic_parts.energy_aware_loss`
        with this router's objective weights, kept for `get_statistics`. Targets in W, C and ms.

        Returns:
            {"total_loss", "power_loss", "temp_loss", "latency_penalty"}.
        """
        result = energy_aware_loss(observed_metrics, self.objective_weights, target_power, target_temp, target_latency)
        self._last_energy_loss = result
        self._stats["energy_aware_loss"].append(result["total_loss"])
        return result

    def _count_tokens(self, tokens: int) -> None:
        self._stats["tokens_processed"] += tokens
        self._tokens_since_update += tokens
        due = self._tokens_since_update // self.ttt_update_frequency
        self._tokens_since_update %= self.ttt_update_frequency
        for _ in range(min(due, MAX_UPDATES_PER_CALL)):
            self._fast_weight_update()

    def _fast_weight_update(self) -> None:
        """One optimiser step on the surrogate energy-aware objective over the latest `ttt_chunk_size` tokens."""
        rows, covered = [], 0
        for row in reversed(self._rows):
            rows.append(row)
            covered += row["tokens"]
            if covered >= self.ttt_chunk_size:
                break
        if not rows:
            return
        with torch.inference_mode(False), torch.enable_grad(), _one_torch_thread():

            def stack(key):
                return torch.as_tensor(
                    np.stack([np.asarray(r[key], dtype=np.float64) for r in rows]), dtype=torch.float32
                )

            x, base, load0, cost, w = stack("x"), stack("base"), stack("load0"), stack("cost"), stack("w")
            scaling = stack("scaling")[:, None]
            tokens = stack("tokens")
            b = base + scaling * self.fast_weight_net(x)  # (N, E)
            p = torch.softmax(torch.log(load0.clamp_min(1e-6)) + b / SURROGATE_TEMP, dim=-1)  # (N, E)
            e = self.num_experts
            energy = (p * cost).sum(-1)
            balance = e * ((p - 1.0 / e) ** 2).sum(-1)
            fidelity = e * ((p - load0) ** 2).sum(-1)
            per_row = w[:, 0] * energy + w[:, 1] * balance + w[:, 2] * fidelity  # (N,)
            loss = (per_row * tokens).sum() / tokens.sum()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self._stats["ttt_update_count"] += 1
        self._stats["surrogate_loss"].append(float(loss.detach()))

    # ----- statistics ---------------------------------------------------------------------------------------------
    def get_statistics(self) -> dict[str, Any]:
        """Statistics since the last `reset` (the seed's keys first).

        Keys: ttt_update_count, avg_energy_savings_watts (predicted by the load surrogate: expert energy saved
        against the same routing without biases, x the experts' share of power), tokens_processed, decisions,
        thermal_scaling (last), avg_thermal_scaling, energy_aware_loss (last terms), avg_energy_aware_loss,
        surrogate_loss (last), expert_usage [E], load_balance_cv, last_biases [E], ttt_intensity,
        ttt_schedule (frequency tokens, chunk tokens), fast_weight_norm, ttt_cost_ratio (kappa), objective_weights.
        """
        s, d = self._stats, self._last_decision
        return {
            "ttt_update_count": s["ttt_update_count"],
            "avg_energy_savings_watts": float(np.mean(s["energy_savings_w"])) if s["energy_savings_w"] else 0.0,
            "tokens_processed": s["tokens_processed"],
            "decisions": s["decisions"],
            "thermal_scaling": s["thermal_scaling"][-1] if s["thermal_scaling"] else 1.0,
            "avg_thermal_scaling": float(np.mean(s["thermal_scaling"])) if s["thermal_scaling"] else 1.0,
            "energy_aware_loss": dict(self._last_energy_loss),
            "avg_energy_aware_loss": float(np.mean(s["energy_aware_loss"])) if s["energy_aware_loss"] else 0.0,
            "surrogate_loss": s["surrogate_loss"][-1] if s["surrogate_loss"] else None,
            "expert_usage": self.statistical_load_balancer.mean_usage.tolist(),
            "load_balance_cv": self.statistical_load_balancer.coefficient_of_variation(),
            "last_biases": d.biases.tolist() if d else [0.0] * self.num_experts,
            "ttt_intensity": d.ttt_intensity if d else 0.0,
            "ttt_schedule": (d.ttt_frequency_tokens, d.ttt_chunk_tokens) if d else (0, 0),
            "fast_weight_norm": float(sum(p.detach().norm() ** 2 for p in self.fast_weight_net.parameters()) ** 0.5),
            "ttt_cost_ratio": self.ttt_cost_ratio,
            "objective_weights": dict(self.objective_weights),
        }
