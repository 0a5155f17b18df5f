"""Hardware backends: what one control interval costs on a simulated GPU or measures on a real one.

Both run the runtime for the interval and return an `IntervalResult` with the same fields; `source` says
`simulated` or `measured`.

Simulated (any machine): the runtime serves `runtime_tokens` real tokens on the CPU; the KCM prices its work at the
`DeploymentScale` for the deployment tokens due (demand plus backlog) at full clock; the `SimulatedGpu` executes
that (its power cap and thermal state stretch the compute-bound part) in slices until the interval is used up,
idles for the rest, and what does not fit becomes backlog.

Latency model (both backends): a token waits for the launch that serves it and for the backlog ahead of it:
`latency_ms = 1000 * (busy_s / launches + backlog_tokens / service_rate)`, with `service_rate` the tokens/s the GPU
served while busy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from envs.config import EnvConfig
from kernels import DeploymentScale, KernelCostModel
from moe_runtime import MoERuntime, StepReport
from telemetry import SimulatedGpu, board_power_w, get_gpu_spec

_SLICES = 8  # the interval's work is executed in this many slices, so a backlog is cut at slice granularity


@dataclass
class IntervalResult:
    """The hardware figures of one control interval (units in the names; shares in [0, 1])."""

    report: StepReport
    source: str
    demand_tokens: float
    tokens_served: float
    backlog_tokens: float
    energy_j: float
    energy_per_token_j: float
    power_w: float
    peak_power_w: float
    temperature_c: float
    peak_temperature_c: float
    sm_clock_mhz: float
    busy_sm_clock_mhz: float
    gpu_utilization: float
    memory_pressure: float
    throttled: bool
    throttle_reasons: tuple[str, ...]
    throttled_share: float
    latency_ms: float
    busy_s: float
    ttt_busy_share: float
    pred_energy_j: float  # KCM's prediction for this interval, at the state it started in
    pred_latency_ms: float
    next_pred_energy_j: float = 0.0  # KCM's prediction for the next interval at the present state
    next_pred_latency_ms: float = 0.0
    next_pred_expert_energy_j: np.ndarray = field(default_factory=lambda: np.zeros(0))
    next_pred_expert_latency_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    energy_from_counter: bool = False
    sample_staleness_s: float = 0.0


def execute_interval(gpu, cost, interval_s: float) -> tuple[list, float, float]:
    """Run a `kernels.StepCost` (full-clock seconds) on a `SimulatedGpu` in slices until `interval_s` is used up.

    Launch gaps (`overhead_s`) count as busy time at idle power. No piece of work is given more than half the time
    left, at the last slice's stretch (wall seconds per full-clock second), and pieces run until less than 0.1% of
    the interval is left: a backlogged interval ends within a sliver of `interval_s`, not a whole slice late (slices
    stretched by the power cap overran 1 s intervals by 5-14% at loads 0.95-2.0), and the halving absorbs a stretch
    that grows as the GPU heats. Returns (records, busy_s, share of the work served); the caller idles the GPU for
    the rest of the interval.
    """
    total_s = cost.total.compute_s + cost.total.memory_s + cost.total.overhead_s
    slices = max(_SLICES, math.ceil(_SLICES * total_s / interval_s)) if interval_s > 0 else _SLICES
    slice_s = total_s / slices  # full-clock seconds of one slice
    records, elapsed, done, stretch = [], 0.0, 0.0, 1.0
    while done < slices - 1e-9 and interval_s - elapsed > 1e-3 * interval_s:  # within 1 ms of a 1 s interval
        fit = (interval_s - elapsed) / (slice_s * stretch) if slice_s > 0 else math.inf
        part = min(1.0, slices - done, 0.5 * fit)  # never more than half the time left: the stretch may grow
        recs = [gpu.execute(part * cost.total.compute_s / slices, part * cost.total.memory_s / slices)]
        if cost.total.overhead_s > 0:
            recs.append(gpu.idle(part * cost.total.overhead_s / slices))
        records += recs
        took = sum(r.duration_s for r in recs)
        elapsed += took
        done += part
        if slice_s > 0 and took > 0:
            stretch = took / (part * slice_s)
    return records, elapsed, min(1.0, done / slices)


def interval_latency_ms(busy_s: float, launches: int, tokens_served: float, backlog_tokens: float) -> float:
    """Latency a token sees: its launch's duration plus the wait behind the backlog, ms."""
    launch_s = busy_s / max(1, launches)
    rate = tokens_served / busy_s if busy_s > 0 else math.inf
    return 1000.0 * (launch_s + (backlog_tokens / rate if rate > 0 else 0.0))


class SimulatedBackend:
    """Prices the runtime's decisions at deployment scale and runs them on a `SimulatedGpu`."""

    source = "simulated"

    def __init__(self, cfg: EnvConfig):
        self.cfg = cfg
        self.spec = get_gpu_spec(cfg.gpu)
        self.kcm = KernelCostModel(gpu_type=cfg.gpu, data_path=cfg.cost_table)
        self.gpu = SimulatedGpu(self.spec, seed=cfg.seed)

    # -- cost-model views used by the env and its calibration ------------------------------------------------------
    def capacity_tokens_per_s(self, report: StepReport) -> float:
        """Deployment tokens/s at full clock for this report's routing (TTT excluded)."""
        tokens = float(self.cfg.deployment.batch_tokens)
        cost = self.kcm.predict_step(_forward_only(report.work), scale=self.cfg.deployment, deploy_tokens=tokens)
        return tokens / cost.total.latency_s

    def expert_energy_per_token_j(self, report: StepReport) -> np.ndarray:
        """[E] energy each expert spends per routed deployment token (KCM, full clock)."""
        return np.asarray(self.kcm.expert_energy_per_token_j(self.cfg.deployment), dtype=np.float64)

    def _predict(self, report: StepReport, tokens: float, clock_mhz: float | None, temp_c: float | None):
        return self.kcm.predict_step(
            report.work, scale=self.cfg.deployment, deploy_tokens=max(tokens, 1.0), clock_mhz=clock_mhz, temp_c=temp_c
        )

    # -- episode ------------------------------------------------------------------------------------------------------
    def reset(
        self, rng: np.random.Generator, runtime: MoERuntime, demand_tokens_per_s: float, randomize: bool | None = None
    ) -> IntervalResult:
        """A fresh GPU (ambient, cooling, initial temperature from `rng` when randomised) and one uncontrolled
        interval served on it, whose result is the first observation's."""
        cfg = self.cfg
        randomize = cfg.randomize if randomize is None else randomize
        if randomize:
            ambient = float(rng.uniform(*cfg.ambient_range_c))
            cooling = float(rng.uniform(*cfg.cooling_range))
            initial = ambient + float(rng.uniform(5.0, 30.0))
        else:
            ambient, cooling = float(np.mean(cfg.ambient_range_c)), float(np.mean(cfg.cooling_range))
            initial = ambient + 15.0
        self.gpu = SimulatedGpu(
            self.spec,
            seed=int(rng.integers(2**31)),
            ambient_c=ambient,
            cooling=cooling,
            noise_std=cfg.noise_std,
            initial_temp_c=initial,
        )
        return self.run_interval(runtime, cfg.runtime_tokens, demand_tokens_per_s * cfg.interval_s, 0.0)

    def run_interval(
        self, runtime: MoERuntime, runtime_tokens: int, demand_tokens: float, backlog_tokens: float
    ) -> IntervalResult:
        cfg, gpu = self.cfg, self.gpu
        report = runtime.step(runtime_tokens)
        due = demand_tokens + backlog_tokens
        start_clock, start_temp = gpu.sm_clock_mhz(), gpu.temperature_c()
        # A parked GPU (a fresh one, at reset) leaves its parked clock as soon as work arrives: predicting its work at
        # that clock doubled the reset interval's predicted energy. After the work it idles at the clock it worked at.
        work_clock = start_clock if start_clock > self.spec.idle_clock_mhz + 1.0 else None
        idle_clock = (work_clock or self.spec.boost_sm_clock_mhz) if due > 0 else start_clock
        full = self._predict(report, due, None, None)
        predicted = self._predict(report, due, work_clock, start_temp)
        records, busy_s, served_share = execute_interval(gpu, full, cfg.interval_s if due > 0 else 0.0)
        if busy_s < cfg.interval_s:
            records.append(gpu.idle(cfg.interval_s - busy_s))
        served = due * served_share
        backlog = due - served
        duration = sum(r.duration_s for r in records)
        energy = sum(r.energy_j for r in records)
        launches = max(1, math.ceil(served / cfg.deployment.batch_tokens))
        nxt = self._predict(report, due, gpu.sm_clock_mhz(), gpu.temperature_c())
        reasons = tuple(sorted({x for r in records for x in r.clock_event_reasons}))
        throttled_share = sum(r.throttled_share * r.duration_s for r in records) / max(duration, 1e-9)
        return IntervalResult(
            report=report,
            source=self.source,
            demand_tokens=demand_tokens,
            tokens_served=served,
            backlog_tokens=backlog,
            energy_j=energy,
            energy_per_token_j=energy / max(served, 1.0),
            power_w=energy / max(duration, 1e-9),
            peak_power_w=max(r.peak_power_w for r in records),
            temperature_c=records[-1].temperature_c,
            peak_temperature_c=max(r.peak_temperature_c for r in records),
            sm_clock_mhz=sum(r.sm_clock_mhz * r.duration_s for r in records) / max(duration, 1e-9),
            busy_sm_clock_mhz=_busy_clock(records, gpu.sm_clock_mhz()),
            gpu_utilization=sum(r.utilization * r.duration_s for r in records) / max(duration, 1e-9),
            memory_pressure=deployment_memory_pressure(cfg.deployment, self.spec.memory_gb),
            throttled=throttled_share > 0.05,
            throttle_reasons=reasons,
            throttled_share=throttled_share,
            latency_ms=interval_latency_ms(busy_s, launches, served, backlog),
            busy_s=busy_s,
            ttt_busy_share=full.ttt.latency_s / max(full.total.latency_s, 1e-12),
            pred_energy_j=predicted.total.energy_j * served_share
            + idle_energy_j(self.spec, cfg.interval_s - busy_s, idle_clock),
            pred_latency_ms=1000.0 * predicted.total.latency_s * served_share,
            next_pred_energy_j=nxt.total.energy_j,
            next_pred_latency_ms=1000.0 * nxt.total.latency_s,
            next_pred_expert_energy_j=np.asarray(nxt.experts.energy_j, dtype=np.float64),
            next_pred_expert_latency_ms=1000.0 * np.asarray(nxt.experts.latency_s, dtype=np.float64),
            energy_from_counter=False,
            sample_staleness_s=0.0,
        )

    def close(self) -> None:
        pass


def _busy_clock(records, fallback_mhz: float) -> float:
    """Time-weighted mean SM clock over the records with work in them, MHz."""
    busy = [(r.sm_clock_mhz, r.duration_s * r.utilization) for r in records if r.utilization > 0]
    weight = sum(w for _, w in busy)
    return sum(c * w for c, w in busy) / weight if weight > 0 else fallback_mhz


def idle_energy_j(spec, seconds: float, clock_mhz: float | None) -> float:
    """Energy of idling `seconds` with the SM clock at `clock_mhz` (the KCM prices busy time only), J.

    A GPU keeps its clock up for a while after work (the H100 ~60 s, `GpuSpec.idle_downclock_s`), so between an
    interval's bursts it idles at the clock it worked at, not at the parked clock's `spec.idle_w`: 131 W against
    75 W on the simulated H100. None or 0 (no reading) prices the parked clock.
    """
    clock = clock_mhz if clock_mhz and clock_mhz > 0 else spec.idle_clock_mhz
    return max(0.0, seconds) * board_power_w(spec, 0.0, clock)


def _forward_only(work):
    return [c for c in work if c.phase == "forward"]


def deployment_memory_pressure(s: DeploymentScale, memory_gb: float) -> float:
    """Weights plus activations of the deployment model over the GPU's memory, 0..1."""
    activations = s.batch_tokens * s.d_model * s.layers * 8
    return min(1.0, (s.weight_count + activations) * s.dtype_bytes / (memory_gb * 1e9))


def make_backend(cfg: EnvConfig):
    """The backend `cfg.telemetry` asks for (`auto`: NVML when a GPU and driver are present, else simulated)."""
    source = cfg.telemetry
    if source == "auto":
        from telemetry import nvml_available

        source = "nvml" if nvml_available() else "simulated"
    if source == "simulated":
        return SimulatedBackend(cfg)
    from envs.measured import MeasuredBackend

    return MeasuredBackend(cfg)
