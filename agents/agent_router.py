"""`AgentRouter`: any `Controller` driving a live `MoERuntime` outside the env.

Every interval it serves the runtime's next tokens, reads the GPU through a `telemetry.GpuSystemMonitor` (an energy
window around the interval, then the current stats), prices the next interval with the `kernels.KernelCostModel`,
builds the observation with the env's `ObservationBuilder` (same names, scales and bounds as `MoERouting-v0`), asks
the controller, and applies its decision with `runtime.apply(ControlAction)`.

GPU sources:
- simulated (a `SimulatedGpu`, or a monitor over one): the runtime's work is priced at the `DeploymentScale` for the
  interval's demand and executed on the simulated GPU, in slices until the interval is used up (what does not fit
  is backlog), as the env's simulated backend does, so a policy trained in the env sees the same figures here;
- NVML: the runtime serves the demand on the GPU itself, as the measured env's backend does (`envs.serve_interval`):
  launches of `interval_tokens` back to back until the demand is served or the interval is used up, then idle for
  the rest of it; the window measures the whole interval, and the KCM prices the runtime's own work. A policy
  trained on `MoERoutingMeasured-v0` therefore sees its energy, power and utilisation on the same scale here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np

from agents.controller import Controller, ControlSpec, make_controller
from envs import (
    ActionConfig,
    ObservationBuilder,
    deployment_for,
    deployment_memory_pressure,
    execute_interval,
    interval_latency_ms,
    merge_reports,
    serve_interval,
    source_memory_pressure,
    spec_name_for,
)
from kernels import DeploymentScale, KernelCostModel
from moe_runtime import ControlAction, MoERuntime, forward_work
from telemetry import GpuSystemMonitor, SimulatedGpu, get_gpu_spec

_WINDOW = "agent_router_interval"


@dataclass
class IntervalRecord:
    """What one interval did (units in the names).

    `tokens` is what the runtime really served (its loss and routing); `served_tokens` what the interval's energy
    paid for, the demand less what is left as backlog: deployment-scale tokens on the simulated source, the
    runtime's own on NVML.
    """

    interval: int
    source: str  # "simulated" or "measured" (NVML), as the env's `info["source"]`
    tokens: int
    served_tokens: float
    loss: float
    domain: str
    energy_j: float
    power_w: float
    temperature_c: float
    latency_ms: float
    backlog_tokens: float
    ttt_updates: int
    applied: ControlAction
    next_action: ControlAction
    observation: np.ndarray

    @property
    def energy_per_token_j(self) -> float:
        """Energy per served token, J, as the env's `energy_per_token_j` (at least one token counted)."""
        return self.energy_j / max(self.served_tokens, 1.0)


def _check_types(controller, runtime, monitor, kernel_cost_model, deployment, action_config) -> None:
    """A wrong object would otherwise fail as an AttributeError somewhere in the first `step`."""
    if not isinstance(runtime, MoERuntime):
        raise TypeError(f"runtime must be a moe_runtime.MoERuntime, got {type(runtime).__name__}")
    if not isinstance(controller, str) and not (
        callable(getattr(controller, "act", None)) and callable(getattr(controller, "reset", None))
    ):
        raise TypeError(
            f"controller must be a controller name or have act() and reset(), got {type(controller).__name__}"
        )
    expected = (
        ("kernel_cost_model", kernel_cost_model, KernelCostModel),
        ("deployment", deployment, DeploymentScale),
        ("action_config", action_config, ActionConfig),
    )
    for name, value, kind in expected:
        if value is not None and not isinstance(value, kind):
            raise TypeError(f"{name} must be None or a {kind.__name__}, got {type(value).__name__}")
    if monitor is None or isinstance(monitor, (str, GpuSystemMonitor)) or callable(getattr(monitor, "sample", None)):
        return
    raise TypeError(
        f"monitor must be None, a GpuSystemMonitor, a GPU source (SimulatedGpu, NvmlSource) or a source name "
        f"('simulated', 'nvml', 'auto'), got {type(monitor).__name__}"
    )


def _checked_reference_loss(reference_loss: Mapping[str, float] | None) -> dict[str, float] | None:
    if not reference_loss:
        return None
    if not isinstance(reference_loss, Mapping):
        raise TypeError(f"reference_loss must be None or a mapping domain -> loss, got {type(reference_loss).__name__}")
    bad = {k: v for k, v in reference_loss.items() if not isinstance(v, Real) or not math.isfinite(v)}
    if bad:
        raise ValueError(f"reference_loss must map each domain to a finite loss in nats, got {bad}")
    return {str(k): float(v) for k, v in reference_loss.items()}


class AgentRouter:
    """Drives a live `MoERuntime` with a controller, one control interval per `step()`.

    Args:
        controller: a `Controller` reading `MoERouting-v0` observations, or a `make_controller` name (built on
            this router's `spec`); to swap it later, assign `router.controller` (checked the same way).
        runtime: the live runtime (with a TTT engine if the controller schedules TTT).
        monitor: a `GpuSystemMonitor`, a GPU source (`SimulatedGpu`, `NvmlSource`; read through a monitor) or a
            source name for `GpuSystemMonitor`; None simulates `gpu`.
        kernel_cost_model: the KCM; None builds one for the GPU.
        deployment: the shape the simulated GPU prices decisions at; None: what the env uses,
            `envs.deployment_for(runtime.config)` (on NVML at the runtime's own d_model, for the experts' cost ratio).
        interval_tokens: runtime tokens per interval as the env's `runtime_tokens` (the controller counts tokens
            with it); None: 128 for the tiny preset, else 1024. On NVML it sizes the capacity the demand is a
            fraction of, as the measured env's calibration does.
        launch_tokens: NVML only: tokens per launch; None: seq_len x batch_size, as the measured env's.
        interval_s: control interval, s (the GPU idles for what the work leaves of it).
        demand: token demand as a fraction of capacity at full clock: the deployment's (simulated source), the
            runtime's own for an `interval_tokens` step with even routing, as the KCM predicts it (NVML).
        action_config: the env's `ActionConfig` (bias range, TTT ranges).
        reference_tokens: tokens at the start of each interval the runtime's uncontrolled base model also scores,
            for the paired `loss_gap` (served minus base model on the same tokens) the env observes; None: half a
            sequence, as the env's default, unless the runtime already keeps some. Set on the runtime.
        reference_loss: with `reference_tokens=0` only: uncontrolled loss per domain, nats (the env's
            `reference.loss`), for `loss_gap`; None measures the gap against a running mean of the loss.
        gpu: GPU model for the simulated source and the KCM; None: "H100" simulated, the measured GPU's on NVML.

    Raises:
        ValueError: bad sizes; a controller whose observation size differs from this router's.
    """

    def __init__(
        self,
        controller: Controller | str,
        runtime: MoERuntime,
        monitor: GpuSystemMonitor | SimulatedGpu | None = None,
        kernel_cost_model: KernelCostModel | None = None,
        deployment: DeploymentScale | None = None,
        interval_tokens: int | None = None,
        launch_tokens: int | None = None,
        interval_s: float = 1.0,
        demand: float = 0.6,
        action_config: ActionConfig | None = None,
        reference_tokens: int | None = None,
        reference_loss: Mapping[str, float] | None = None,
        gpu: str | None = None,
    ):
        _check_types(controller, runtime, monitor, kernel_cost_model, deployment, action_config)
        cfg = runtime.config
        self.runtime = runtime
        if reference_tokens is None:
            reference_tokens = runtime.reference_tokens or cfg.seq_len // 2
        if isinstance(reference_tokens, bool) or not isinstance(reference_tokens, (int, np.integer)) or reference_tokens < 0:
            raise ValueError(f"reference_tokens must be an integer >= 0, got {reference_tokens!r}")
        self.num_experts = cfg.num_experts
        if interval_tokens is None:
            interval_tokens = 128 if cfg.preset_name == "tiny" else 1024
        if launch_tokens is None:
            launch_tokens = cfg.seq_len * cfg.batch_size
        for name, value in (("interval_tokens", interval_tokens), ("launch_tokens", launch_tokens)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"need {name} a positive integer, got {value!r}")
        if not 0 < interval_s < math.inf or not 0 < demand < math.inf:
            raise ValueError(f"need interval_s and demand positive and finite, got {interval_s}, {demand}")
        self.interval_tokens, self.launch_tokens = int(interval_tokens), int(launch_tokens)
        self.interval_s, self.demand = float(interval_s), float(demand)
        if monitor is None:
            monitor = SimulatedGpu(gpu or "H100")
        self._owns_monitor = not isinstance(monitor, GpuSystemMonitor)  # closed with the router (`close`)
        if not self._owns_monitor:
            self.monitor = monitor
        else:  # an NVML source reads the GPU the runtime runs on (NVML numbers GPUs unlike CUDA)
            device = getattr(runtime, "device", None)
            cuda = None
            if getattr(device, "type", "") == "cuda":
                import torch

                cuda = device.index if device.index is not None else torch.cuda.current_device()
            self.monitor = GpuSystemMonitor(source=monitor, cuda_device=cuda)
        try:
            # A source that executes priced work is simulated; any other (NVML) measures the runtime running itself.
            self.gpu = self.monitor.source if callable(getattr(self.monitor.source, "execute", None)) else None
            gpu = gpu or ("H100" if self.gpu is not None else spec_name_for(self.monitor.device))
            self.gpu_spec = getattr(self.monitor.source, "spec", None) or get_gpu_spec(gpu)
            self.kcm = kernel_cost_model or KernelCostModel(gpu_type=gpu)
            # On NVML the deployment shape only weighs the experts' costs, at the runtime's d_model as the measured env.
            self.deployment = deployment or deployment_for(
                cfg, **({} if self.gpu is not None else {"d_model": cfg.d_model})
            )
            if self.deployment.num_experts != self.num_experts:
                raise ValueError(
                    f"deployment has {self.deployment.num_experts} experts; the runtime has {self.num_experts}"
                )
            self.action_config = action_config or ActionConfig()
            self.spec = ControlSpec(
                self.num_experts,
                float(self.gpu_spec.tdp_w),
                float(self.gpu_spec.slowdown_temp_c),
                self.interval_s,
                self.action_config,
                self.interval_tokens,
            )
            self.builder: ObservationBuilder = self.spec.builder
            self._controller = self._checked_controller(controller)
            cost = np.asarray(self.kcm.expert_energy_per_token_j(self.deployment), dtype=np.float64)
            self.expert_cost_ratio = cost / cost.mean()
            self.reference_loss = _checked_reference_loss(reference_loss)
            runtime.reference_tokens = int(reference_tokens)  # set once every check passed: a refusal changes nothing
            self.capacity_tokens_per_s: float | None = None if self.gpu is not None else self._runtime_capacity()
            self.reset()
        except BaseException:  # a bad argument found after the monitor opened: its NVML init and sampler go too
            self.close()
            raise

    @property
    def controller(self) -> Controller:
        """The controller that acts after each interval. Assigning one (a `Controller` or a `make_controller`
        name) checks it as the constructor does and resets it; the router keeps its backlog, loss history and the
        runtime's present action, so a swap takes effect from the next interval's action."""
        return self._controller

    @controller.setter
    def controller(self, controller: Controller | str) -> None:
        _check_types(controller, self.runtime, None, None, None, None)
        self._controller = self._checked_controller(controller)
        self._controller.reset()

    def _checked_controller(self, controller: Controller | str) -> Controller:
        built = make_controller(controller, self.spec) if isinstance(controller, str) else controller
        trained_on = getattr(getattr(built, "model", None), "observation_space", None)  # an SB3 policy's
        if trained_on is not None and tuple(trained_on.shape) != (self.builder.size,):
            trained_preset = (getattr(built, "train_env_config", None) or {}).get("preset")
            served = self.runtime.config.preset_name
            hint = ""
            if trained_preset and trained_preset != served:  # its run's config.yaml says which: name the runtime
                hint = f"; its run served the {trained_preset!r} preset, this runtime is {served!r}"
            raise ValueError(
                f"the controller was trained on observations of shape {tuple(trained_on.shape)}; this router's are "
                f"({self.builder.size},) for {self.num_experts} experts (a policy of another preset or expert "
                f"count?){hint}"
            )
        return built

    def close(self) -> None:
        """Stop the monitor this router made (its NVML sampler thread and NVML init); one passed in is the caller's."""
        if self._owns_monitor:
            self.monitor.close()

    def __enter__(self) -> AgentRouter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset(self) -> None:
        """Forget the backlog and loss history and reset the controller (the runtime keeps its state)."""
        self.backlog_tokens = 0.0
        self.interval = 0
        self._prev_loss: float | None = None
        self._loss_mean: float | None = None
        self._tokens_since_ttt = 0
        self.last_record: IntervalRecord | None = None
        self.controller.reset()

    def run(self, intervals: int) -> list[IntervalRecord]:
        """`intervals` steps; their records."""
        if isinstance(intervals, bool) or not isinstance(intervals, (int, np.integer)) or intervals < 0:
            raise ValueError(f"intervals must be an integer >= 0, got {intervals!r}")
        return [self.step() for _ in range(intervals)]

    def step(self) -> IntervalRecord:
        """Serve one interval with the present action, observe it, and apply the controller's next action.

        The interval's record is `last_record` as soon as it is served, and the runtime keeps its present action
        unless the controller's answer is applied: an action out of the space (NaN, wrong size) is a ValueError
        naming the interval; an error of the controller's own propagates as it is.
        """
        runtime, applied = self.runtime, self.runtime.action
        self.monitor.begin_window(_WINDOW)
        try:
            if self.gpu is not None:
                report = runtime.step(self.interval_tokens)
                due = self._due_tokens(report)
                busy_s, served = self._execute_simulated(report, due)
                launch_s, launches = busy_s, max(1, math.ceil(served / self.deployment.batch_tokens))
            else:  # the runtime serves the demand on the measured GPU itself
                due = self._due_tokens(None)
                out = serve_interval(runtime, self.launch_tokens, due, self.interval_s)
                report, busy_s, served = merge_reports(out.reports), out.busy_s, out.served_tokens(due)
                launch_s, launches = sum(out.launch_ms) / 1000.0, len(out.reports)
        except BaseException:  # an interrupted interval: its window closes unread, so the next step can open one
            self.monitor.end_window(_WINDOW)
            raise
        m = self.monitor.end_window(_WINDOW)
        stats = self.monitor.get_current_stats()
        self.backlog_tokens = max(0.0, due - served)
        latency_ms = interval_latency_ms(launch_s, launches, served, self.backlog_tokens)
        if self.gpu is not None:
            clock = stats.get("sm_clock_mhz") or None
            nxt = self.kcm.predict_step(
                report.work, scale=self.deployment, clock_mhz=clock, deploy_tokens=max(due, 1.0)
            )
            next_launches = 1
        else:  # as the measured env: one launch at the window's mean clock, times the launches the demand needed
            clock, temp_c = m.sm_clock_mhz or None, stats.get("temperature")
            nxt = self.kcm.predict_step(out.reports[-1].work, clock_mhz=clock, temp_c=temp_c)
            next_launches = math.ceil(max(due, 1.0) / self.launch_tokens)
        self._tokens_since_ttt = 0 if report.ttt_updates else self._tokens_since_ttt + report.tokens
        obs = self._observation(report, m, stats, nxt, busy_s, next_launches)
        self._prev_loss = report.loss
        self.interval += 1
        # The interval is served and paid for whatever the controller answers: it is recorded before the controller
        # is asked, so a controller that fails (a NaN action, say) loses no interval; the runtime then keeps its action.
        self.last_record = record = IntervalRecord(
            interval=self.interval - 1,
            source="simulated" if self.gpu is not None else "measured",
            tokens=report.tokens,
            served_tokens=float(served),
            loss=float(report.loss),
            domain=report.domain,
            energy_j=float(m.energy_j),
            power_w=float(m.power_w),
            temperature_c=float(stats["temperature"]),
            latency_ms=float(latency_ms),
            backlog_tokens=float(self.backlog_tokens),
            ttt_updates=int(report.ttt_updates),
            applied=applied,
            next_action=applied,
            observation=obs,
        )
        action = self.controller.act(obs)
        try:
            control = self.spec.codec.decode(action)
        except ValueError as err:
            raise ValueError(
                f"{err} (from the controller after interval {record.interval}, which was served and is in "
                f"router.last_record; the runtime keeps its action)"
            ) from err
        try:
            runtime.apply(control)
        except ValueError as err:  # e.g. TTT asked of a runtime without a TTT engine
            raise ValueError(f"{err} (the controller's action after interval {record.interval}, which was served and "
                             "is in router.last_record; the runtime keeps its action)") from err  # fmt: skip
        record.next_action = control
        return record

    def _runtime_capacity(self) -> float:
        """Runtime tokens/s at full clock (NVML source), KCM-predicted for one `interval_tokens` step with evenly
        routed tokens, as the measured env's calibration prices one `runtime_tokens` step."""
        cfg = self.runtime.config
        seq = min(cfg.seq_len, self.interval_tokens)
        batch = max(1, self.interval_tokens // seq)
        even = np.full((cfg.n_layers, cfg.num_experts), batch * seq * cfg.top_k / cfg.num_experts)
        cost = self.kcm.predict_step(forward_work(cfg, batch, seq, np.ceil(even)))
        return cost.tokens / cost.total.latency_s

    def _due_tokens(self, report) -> float:
        """This interval's demand plus the backlog; the simulated source's capacity is priced from the first report
        at deployment scale."""
        if self.capacity_tokens_per_s is None:
            forward = [c for c in report.work if c.phase == "forward"]
            tokens = float(self.deployment.batch_tokens)
            cost = self.kcm.predict_step(forward, scale=self.deployment, deploy_tokens=tokens)
            self.capacity_tokens_per_s = tokens / cost.total.latency_s
        return self.demand * self.capacity_tokens_per_s * self.interval_s + self.backlog_tokens

    def _execute_simulated(self, report, due_tokens: float) -> tuple[float, float]:
        """Run the interval's deployment-scale work on the simulated GPU; (busy s, tokens served)."""
        gpu = self.gpu
        full = self.kcm.predict_step(report.work, scale=self.deployment, deploy_tokens=max(due_tokens, 1.0))
        _, elapsed, share = execute_interval(gpu, full, self.interval_s if due_tokens > 0 else 0.0)
        if elapsed < self.interval_s:
            gpu.idle(self.interval_s - elapsed)
        return elapsed, due_tokens * share

    def _observation(self, report, m, stats: dict[str, Any], nxt, busy_s: float, next_launches: int) -> np.ndarray:
        counts = np.asarray(report.expert_token_counts, dtype=np.float64).sum(0)
        control = self.runtime.action
        loss = float(report.loss)
        if self.reference_loss and report.domain in self.reference_loss:
            reference = self.reference_loss[report.domain]
        else:
            reference = loss if self._loss_mean is None else self._loss_mean
            self._loss_mean = loss if self._loss_mean is None else 0.9 * self._loss_mean + 0.1 * loss
        prev = self._prev_loss if self._prev_loss is not None else reference
        freq = control.ttt_frequency_tokens
        duration = max(m.duration_s, 1e-9)
        utilization = busy_s / duration
        figures = {
            "power_w": m.power_w,
            "interval_energy_j": m.energy_j,
            "temperature_c": float(stats["temperature"]),
            "sm_clock_ratio": (m.sm_clock_mhz or stats.get("sm_clock_mhz") or 0.0) / self.gpu_spec.boost_sm_clock_mhz,
            "gpu_utilization": min(1.0, utilization),
            "memory_pressure": self._memory_pressure(),
            "throttled": float((m.throttled_share or 0.0) > 0.05),
            "pred_energy_j_e": np.asarray(nxt.experts.energy_j, dtype=np.float64) * next_launches,
            "pred_latency_ms_e": 1000.0 * np.asarray(nxt.experts.latency_s, dtype=np.float64) * next_launches,
            "expert_cost_ratio_e": self.expert_cost_ratio,
            "pred_total_energy_j": nxt.total.energy_j * next_launches,
            "pred_total_latency_ms": 1000.0 * nxt.total.latency_s * next_launches,
            "load_fraction_e": counts / max(1.0, counts.sum()),
            "loss": loss,
            "loss_delta": loss - prev,
            # Paired (served minus base model on the same tokens) when the runtime keeps a reference, as in the env.
            "loss_gap": report.served_reference_loss - report.reference_loss
            if np.isfinite(report.reference_loss)
            else loss - reference,
            "router_entropy": report.router_entropy,
            "tokens_since_ttt": self._tokens_since_ttt,
            "bias_e": control.biases(self.num_experts),
            "ttt_frequency": np.log2(freq) / 16 if freq > 0 else 0.0,
            "ttt_chunk": np.log2(control.ttt_chunk_tokens) / 16,
            "ttt_grad_norm": np.log1p(np.mean(report.ttt_grad_norms)) if report.ttt_grad_norms else 0.0,
            "ttt_activation_energy": np.log1p(np.mean(report.ttt_activation_energy))
            if report.ttt_activation_energy
            else 0.0,
            "demand": self.demand,
            "backlog": self.backlog_tokens / (self.capacity_tokens_per_s * self.interval_s),
            "energy_from_counter": float(m.energy_source == "energy_counter"),
            # Simulated readings are exact at the interval's end; a measured GPU's age with its sampler, as the env.
            "sample_staleness_s": 0.0 if self.gpu is not None else min(self.monitor.sample_age_s(), 10.0),
        }
        return self.builder.build(figures)

    def _memory_pressure(self) -> float:
        if self.gpu is not None:
            return deployment_memory_pressure(self.deployment, self.gpu_spec.memory_gb)
        return source_memory_pressure(self.monitor.source)  # the measured GPU's own memory, as the measured env
