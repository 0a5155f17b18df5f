"""`MoERoutingEnv`: control a live MoE runtime's routing and test-time training for energy."""

from __future__ import annotations

import dataclasses
import os
import time

import gymnasium as gym
import numpy as np
import torch
from gymnasium import logger, spaces

from envs.actions import ActionCodec
from envs.backends import IntervalResult, make_backend
from envs.calibration import reward_reference
from envs.config import EnvConfig
from envs.observation import ObservationBuilder
from envs.render import ansi_line, rgb_frame
from envs.rewards import OBJECTIVES, reward, target_latency_ms
from envs.workload import DemandTrace
from moe_runtime import ControlAction, DomainSchedule, MoERuntime, ensure_pretrained, load_model, load_or_pretrain

_FORKED_CHILD = False


def _after_fork_in_child() -> None:
    # A child forked from a process whose torch already ran multi-threaded (AsyncVectorEnv's default start
    # method) hangs on its first parallel op: keep the child's torch on one thread.
    global _FORKED_CHILD
    _FORKED_CHILD = True
    torch.set_num_threads(1)


os.register_at_fork(after_in_child=_after_fork_in_child)


class MoERoutingEnv(gym.Env):
    """Route a Mixture-of-Experts language model and schedule its test-time training for energy.

    ## Description
    A real byte-level MoE transformer (`moe_runtime`) serves a token stream that shifts domain mid-episode (prose,
    then Python source). Each step is one control interval of `interval_s` seconds in which the GPU must serve a
    token demand (`Workload`). The agent sets per-expert selection biases (experts differ in width, so in cost and
    quality) and the TTT schedule. The hardware figures come from NVML on a GPU (`measured`) or from a simulated
    GPU fitted to a measured H100 that executes the runtime's routing decisions priced at `DeploymentScale` by the
    kernel cost model (`simulated`); `info["source"]` says which.

    ## Action Space
    `Box(-1, 1, (E + 2,), float32)`: E selection biases (x `bias_range`), TTT frequency (log scale; below
    `ttt_off_below` means off), TTT chunk size (log scale, snapped). See `envs.actions`; `decode_action` and
    `encode_action` convert to and from `ControlAction`. Out-of-range values are clipped; NaN, inf or a wrong shape
    raise `ValueError`. With `ttt=False` the space keeps its shape (a policy fits either) and the TTT entries are
    ignored: TTT stays off. Experts are chosen by top-k of score + bias, so adding one constant to every bias changes
    nothing: only their differences steer. The zero action is not "no control": its TTT entries are mid-range (TTT
    on); `encode_action(ControlAction.uncontrolled(E))` is (zero biases, TTT off).

    ## Observation Space
    `Box` float32 of fixed-scale features with finite bounds (values clipped): telemetry, KCM predictions for the
    next interval, runtime state, TTT feedback, workload and measurement validity. The table with names, units,
    scales and bounds is in `envs.observation`; names in `observation_names`.

    ## Rewards
    `r = -w_energy * min(E_tok / E_tok_ref, 10) - w_temp * max(0, T - T_target) / T_scale
         - w_latency * log(1 + max(0, L / L_target - 1)) - w_loss * clip(loss_gap / loss_scale, ±10)`,
    where `loss_gap` is the served model's loss minus the uncontrolled base model's on the same tokens (a shadow
    forward pass over the interval's first `reference_tokens`), and the energy and latency references come from a
    cached uncontrolled calibration (`envs.calibration`): no control scores about -w_energy per step while the GPU
    keeps up with the demand. The demand is a fraction of the GPU's capacity at full clock, and under load the GPU
    runs power-capped below it, so a high load with its bursts can outrun it: the backlog then adds the latency term
    (uncontrolled, 7 of 10 `default` episodes at seeds 0-9 broke the SLO in 11-59 of 64 intervals, which then scored
    -2.9 to -7.2 a step against about -1.1), which routing to cheaper experts avoids. `info["reward_terms"]` has each weighted term, `info["vector_reward"]` the unweighted
    objectives (`MoERoutingMO-v0` returns that vector as the reward).

    ## Info
    `reset` and `step` return the same keys, for the interval just served (`source` says where its hardware figures
    came from: `simulated` or `measured`):
    | key | meaning |
    |---|---|
    | source, interval | the backend's source; steps taken in the episode (0 at reset, `episode_intervals` at its end) |
    | tokens, demand_tokens, backlog_tokens | tokens served, demanded and left queued at deployment scale |
    | runtime_tokens | tokens the runtime model served for it (what its loss is measured on) |
    | energy_j, energy_per_token_j | energy of the interval, J, and per served token |
    | power_w, peak_power_w | mean and peak power over the interval, W |
    | temperature_c, peak_temperature_c | GPU temperature at the interval's end and its peak, C |
    | sm_clock_mhz, busy_sm_clock_mhz | mean SM clock over the interval, and over its busy time, MHz |
    | throttle_reasons, throttled_share | NVML's clock-event reasons seen (comma-separated), share of time throttled |
    | latency_ms, slo_violated | latency a token sees (its launch plus the wait behind the backlog), ms; above target |
    | loss, loss_gap, domain | the served model's mean loss, nats; the gap to the base model (see Rewards); domain |
    | ttt_updates, ttt_tokens_trained, ttt_share_of_busy | TTT updates, tokens they trained on, their busy share |
    | expert_load, routing_biases | tokens per expert (all layers) [E]; the biases in force [E] |
    | ttt_frequency_tokens, ttt_chunk_tokens | the TTT schedule in force (0: off) |
    | kcm_pred_energy_j, kcm_pred_latency_ms | the KCM's prediction for this interval |
    | reward_terms, vector_reward | the weighted reward terms (dict); the unweighted objectives [4] |

    ## Starting State
    `reset(seed=...)` seeds the stream position, the shift point, the workload, ambient temperature, cooling,
    initial temperature and sensor noise, and restores the TTT weights. It then serves one uncontrolled interval at
    the first interval's demand, whose figures are the first observation; its backlog is queued for step 0. The
    stream shifts domain `shift_tokens` runtime tokens into the steps that follow.

    ## Episode End
    1. Truncation: after `episode_intervals` intervals. There is no termination.

    Steps past truncation go on serving at the last interval's demand, with a warning at the first of them in an
    episode (Python's default filter shows it once per process): call `reset()` after `truncated` is True (SB3's
    vector envs do).

    A running env on the simulated backend can be copied (`copy.deepcopy`, pickle) to branch an episode: the copy
    goes on from the same state, step for step as the original would. One on NVML cannot (its GPU is the one card).

    ## Arguments
    | argument | default | meaning |
    |---|---|---|
    | preset | "default" | model preset (`tiny` for tests) |
    | telemetry | "auto" | `auto`, `nvml`, `simulated` |
    | gpu | "H100" | simulated GPU spec |
    | interval_s | 1.0 | seconds per step |
    | episode_intervals | 64 | steps per episode |
    | ... | | all of `EnvConfig`, as keywords of `gymnasium.make` |

    ## Version History
    - v0: initial release.
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 1}

    def __init__(self, config: EnvConfig | None = None, render_mode: str | None = None, **kwargs):
        if config is not None and kwargs:
            raise ValueError("give either an EnvConfig or keyword arguments, not both")
        self.config = cfg = config or EnvConfig.from_kwargs(**kwargs)
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode {render_mode!r} is not supported; use None, 'ansi' or 'rgb_array'")
        self.render_mode = render_mode
        torch.set_num_threads(1 if _FORKED_CHILD else cfg.torch_threads)
        self.backend = make_backend(cfg)
        self.model_config = model_cfg = cfg.model
        self.runtime = MoERuntime(
            model_cfg,
            model=self._load_model(),
            split=cfg.split,
            ttt=self._make_ttt(),
            reference_tokens=cfg.reference_tokens,
        )
        self.codec = ActionCodec(model_cfg.num_experts, cfg.action)
        self.observation_builder = ObservationBuilder(
            model_cfg.num_experts,
            self.backend.spec.tdp_w,
            self.backend.spec.slowdown_temp_c,
            cfg.interval_s,
            cfg.action.bias_range,
        )
        self.observation_names = list(self.observation_builder.names)
        b = self.observation_builder
        self.observation_space = spaces.Box(b.low, b.high, dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(self.codec.size,), dtype=np.float32)
        self.reference = reward_reference(cfg, self.runtime, self.backend)
        self.capacity_tokens_per_s = self.reference.capacity_tokens_per_s
        self.last_timing: dict[str, float] = {}
        self._interval = -1
        self._last: IntervalResult | None = None

    def _load_model(self):
        cfg = self.config
        if cfg.checkpoint == "none":
            return None
        if cfg.checkpoint:
            return load_model(cfg.checkpoint, cfg.model)
        return load_or_pretrain(cfg.model, cfg.pretrain_config())

    def _make_ttt(self):
        if not self.config.ttt:
            return None
        from moe_runtime import TTTConfig, TTTEngine

        return TTTEngine(TTTConfig())

    # -- action helpers -------------------------------------------------------------------------------------------
    def decode_action(self, action) -> ControlAction:
        """The `ControlAction` an action vector means (clipped; ValueError on NaN, inf or a wrong shape); with
        `ttt=False`, TTT off whatever the TTT entries say."""
        control = self.codec.decode(action)
        if self.runtime.ttt is None and control.ttt_enabled:
            control = dataclasses.replace(control, ttt_frequency_tokens=0)
        return control

    def encode_action(self, control: ControlAction) -> np.ndarray:
        """The action vector for a `ControlAction` (e.g. `ControlAction.uncontrolled()`)."""
        return self.codec.encode(control)

    # -- gymnasium API --------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode (see Starting State); `options` is unused.

        Returns:
            (observation, info): the reset interval's observation, and its info with zero reward terms.
        """
        super().reset(seed=seed)
        cfg, rng = self.config, self.np_random
        tokens_total = cfg.runtime_tokens * cfg.episode_intervals
        share = rng.uniform(*cfg.shift_range) if cfg.randomize else float(np.mean(cfg.shift_range))
        # Tokens into the episode's steps; the stream shifts that far after the reset interval's runtime tokens
        # (exact on the simulated backend; the measured one's reset serves whole launches, as its steps do, so there
        # the shift point is as approximate as its per-step token counts).
        self.shift_tokens = max(1, int(share * tokens_total))
        self.runtime.reset_stream(
            DomainSchedule.shift(cfg.domains[0], cfg.domains[1], cfg.runtime_tokens + self.shift_tokens),
            split=cfg.split,
            seed=int(rng.integers(2**31)),
        )
        self.runtime.reset_ttt()
        self.runtime.apply(ControlAction.uncontrolled(self.model_config.num_experts))
        self.demand = DemandTrace(cfg.workload, cfg.episode_intervals, rng)
        self._interval = 0
        self._prev_loss = self.reference.loss.get(cfg.domains[0], 0.0)
        self._tokens_since_ttt = 0
        self._last = self.backend.reset(rng, self.runtime, self.demand.load_at(0) * self.capacity_tokens_per_s)
        obs = self._observation(self._last)
        # The reset interval is the one before the agent's first: what it left unserved is queued for step 0, as
        # the first observation says, and step 0's loss_delta is against its loss.
        self.backlog_tokens = self._last.backlog_tokens
        self._prev_loss = self._last.report.loss
        return obs, self._info(self._last, {name: 0.0 for name in OBJECTIVES}, np.zeros(len(OBJECTIVES), np.float32))

    def step(self, action):
        """Apply `action` for one interval and serve it.

        Returns:
            (observation, reward, terminated, truncated, info): terminated is always False; truncated after
            `episode_intervals` steps; info has the interval's figures and the `source` of its hardware ones.
        Raises:
            RuntimeError: before the first `reset`. ValueError: a NaN, infinite or wrongly shaped action.
        """
        if self._interval < 0:
            raise RuntimeError("call reset() before step()")
        if self._interval == self.config.episode_intervals:  # warned once: the next steps are past it too
            logger.warn(
                f"step() called after the episode was truncated at {self.config.episode_intervals} intervals; "
                "call reset() once `truncated` is True (further steps serve the last interval's demand again)"
            )
        t0 = time.perf_counter()
        control = self.decode_action(action)
        self.runtime.apply(control)
        cfg = self.config
        demand_tokens = self.demand.load_at(self._interval) * self.capacity_tokens_per_s * cfg.interval_s
        result = self.backend.run_interval(self.runtime, cfg.runtime_tokens, demand_tokens, self.backlog_tokens)
        self.backlog_tokens = result.backlog_tokens
        t1 = time.perf_counter()
        rep = result.report
        self._tokens_since_ttt = 0 if rep.ttt_updates else self._tokens_since_ttt + rep.tokens
        total, terms, vec = reward(
            cfg.reward,
            self.reference,
            energy_per_token_j=result.energy_per_token_j,
            temperature_c=result.temperature_c,
            latency_ms=result.latency_ms,
            loss_gap=self._loss_gap(rep),
        )
        self._last = result
        obs = self._observation(result)
        self._prev_loss = rep.loss
        self._interval += 1
        truncated = self._interval >= cfg.episode_intervals
        info = self._info(result, terms, vec)
        t2 = time.perf_counter()
        self.last_timing = {
            "runtime_s": rep.wall_time_s,
            "backend_s": (t1 - t0) - rep.wall_time_s,
            "env_s": t2 - t1,
            "step_s": t2 - t0,
        }
        return obs, self._scalarize(total, vec), False, truncated, info

    def _loss_gap(self, rep) -> float:
        """Served loss minus the uncontrolled model's, nats: paired on the same tokens when the runtime scored a
        reference, else against the calibrated mean loss of the domain."""
        if self.config.reward.loss_reference == "paired" and np.isfinite(rep.reference_loss):
            return float(rep.served_reference_loss - rep.reference_loss)
        return float(rep.loss - self.reference.loss.get(rep.domain, rep.loss))

    def _scalarize(self, total: float, vec: np.ndarray):
        return total

    def _observation(self, r: IntervalResult) -> np.ndarray:
        rep, control = r.report, self.runtime.action
        counts = np.asarray(rep.expert_token_counts, dtype=np.float64).sum(0)
        ttt_freq = control.ttt_frequency_tokens
        figures = {
            "power_w": r.power_w,
            "interval_energy_j": r.energy_j,
            "temperature_c": r.temperature_c,
            "sm_clock_ratio": r.sm_clock_mhz / self.backend.spec.boost_sm_clock_mhz,
            "gpu_utilization": r.gpu_utilization,
            "memory_pressure": r.memory_pressure,
            "throttled": float(r.throttled),
            "pred_energy_j_e": r.next_pred_expert_energy_j,
            "pred_latency_ms_e": r.next_pred_expert_latency_ms,
            "expert_cost_ratio_e": self.reference.expert_cost_ratio,
            "pred_total_energy_j": r.next_pred_energy_j,
            "pred_total_latency_ms": r.next_pred_latency_ms,
            "load_fraction_e": counts / max(1.0, counts.sum()),
            "loss": rep.loss,
            "loss_delta": rep.loss - self._prev_loss,
            "loss_gap": self._loss_gap(rep),
            "router_entropy": rep.router_entropy,
            "tokens_since_ttt": self._tokens_since_ttt,
            "bias_e": control.biases(self.model_config.num_experts),
            "ttt_frequency": np.log2(ttt_freq) / 16 if ttt_freq > 0 else 0.0,
            "ttt_chunk": np.log2(control.ttt_chunk_tokens) / 16,
            "ttt_grad_norm": np.log1p(np.mean(rep.ttt_grad_norms)) if rep.ttt_grad_norms else 0.0,
            "ttt_activation_energy": np.log1p(np.mean(rep.ttt_activation_energy)) if rep.ttt_activation_energy else 0.0,
            "demand": self.demand.load_at(self._interval),
            "backlog": r.backlog_tokens / (self.capacity_tokens_per_s * self.config.interval_s),
            "energy_from_counter": float(r.energy_from_counter),
            "sample_staleness_s": r.sample_staleness_s,
        }
        return self.observation_builder.build(figures)

    def _info(self, r: IntervalResult, terms: dict, vec: np.ndarray) -> dict:
        rep, control = r.report, self.runtime.action
        return {
            "source": self.backend.source,
            "interval": self._interval,
            "tokens": int(r.tokens_served),
            "runtime_tokens": int(rep.tokens),
            "demand_tokens": float(r.demand_tokens),
            "backlog_tokens": float(r.backlog_tokens),
            "energy_j": float(r.energy_j),
            "energy_per_token_j": float(r.energy_per_token_j),
            "power_w": float(r.power_w),
            "peak_power_w": float(r.peak_power_w),
            "temperature_c": float(r.temperature_c),
            "peak_temperature_c": float(r.peak_temperature_c),
            "sm_clock_mhz": float(r.sm_clock_mhz),
            "busy_sm_clock_mhz": float(r.busy_sm_clock_mhz),
            "throttle_reasons": ",".join(r.throttle_reasons),
            "throttled_share": float(r.throttled_share),
            "latency_ms": float(r.latency_ms),
            "slo_violated": bool(r.latency_ms > target_latency_ms(self.config.reward, self.reference)),
            "loss": float(rep.loss),
            "loss_gap": self._loss_gap(rep),
            "domain": rep.domain,
            "ttt_updates": int(rep.ttt_updates),
            "ttt_tokens_trained": int(rep.ttt_tokens_trained),
            "ttt_share_of_busy": float(r.ttt_busy_share),
            "expert_load": np.asarray(rep.expert_token_counts, dtype=np.float64).sum(0).astype(np.float32),
            "routing_biases": np.asarray(control.biases(self.model_config.num_experts), dtype=np.float32),
            "ttt_frequency_tokens": int(control.ttt_frequency_tokens),
            "ttt_chunk_tokens": int(control.ttt_chunk_tokens),
            "kcm_pred_energy_j": float(r.pred_energy_j),
            "kcm_pred_latency_ms": float(r.pred_latency_ms),
            "reward_terms": {k: float(v) for k, v in terms.items()},
            "vector_reward": np.asarray(vec, dtype=np.float32),
        }

    def render(self):
        """The last interval: a line of text (`ansi`) or a 360 x 640 RGB frame (`rgb_array`); None before `reset`
        or with no render mode."""
        if self.render_mode is None or self._last is None:
            return None
        if self.render_mode == "ansi":
            return ansi_line(self._interval, self._last, self.runtime.action)
        spec = self.backend.spec
        return rgb_frame(self._interval, self._last, self.runtime.action, spec.tdp_w, spec.slowdown_temp_c)

    def close(self):
        self.backend.close()


class MoERoutingMOEnv(MoERoutingEnv):
    """`MoERoutingEnv` with the unweighted objective vector as reward (MO-Gymnasium convention).

    The reward is `float32[len(OBJECTIVES)]` in `reward_space` (reach it as `env.unwrapped.reward_space`: Gymnasium
    1.x wrappers do not forward attributes). Gymnasium's own vector envs hold one scalar reward per env, so they
    cannot batch this one; use MO-Gymnasium's `MOSyncVectorEnv`, or `MoERouting-v0` with `info["vector_reward"]`.
    """

    def __init__(self, config: EnvConfig | None = None, render_mode: str | None = None, **kwargs):
        super().__init__(config, render_mode, **kwargs)
        self.reward_space = spaces.Box(low=-np.inf, high=np.inf, shape=(len(OBJECTIVES),), dtype=np.float32)
        self.reward_dim = len(OBJECTIVES)

    def _scalarize(self, total: float, vec: np.ndarray):
        return vec


def pretrain_served_model(env_id: str = "MoERouting-v0", progress: bool = True, **kwargs) -> None:
    """Pretrain, once and cached, the model that `gymnasium.make(env_id, **kwargs)` would serve (nothing when it
    serves a checkpoint file or none). Called before making envs, it lets `progress=False` hide pretraining's bar,
    and spares the workers of a vector env started next from waiting on each other for it."""
    cfg = EnvConfig.from_kwargs(**{**gym.spec(env_id).kwargs, **kwargs})
    if (pcfg := cfg.pretrain_config(progress)) is not None:
        ensure_pretrained(cfg.model, pcfg)
