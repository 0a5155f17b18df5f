"""The measured backend: the runtime serves the demand on a CUDA GPU inside an NVML energy window.

Each interval: launches of `seq_len x batch_size` tokens run back to back until the demand (plus backlog) is served
or the interval is used up (CUDA events time each launch); the GPU then idles for the rest of the interval, so
power and temperature fall as they would in serving. Energy comes from the NVML energy counter over the window
(an interval of 1 s or more is long enough for the ~100 ms counter, see `telemetry.GpuSystemMonitor.end_window`);
temperature, clocks and clock-event reasons from the background sampler. Every figure is labelled `measured`, the
KCM's predictions `predicted`.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from envs.backends import IntervalResult, idle_energy_j, interval_latency_ms
from envs.config import EnvConfig
from kernels import KernelCostModel
from moe_runtime import MoERuntime, StepReport
from telemetry import GPU_SPECS, GpuSystemMonitor, get_gpu_spec, nvml_available


def spec_name_for(device_name: str) -> str:
    """The `GpuSpec` name that matches an NVML/CUDA device name ("NVIDIA H100 80GB HBM3" -> "H100")."""
    upper = device_name.upper()
    for key in sorted(GPU_SPECS, key=len, reverse=True):
        if key.split("_")[0].upper() in upper:
            return key
    return "H100"


def merge_reports(reports: list[StepReport]) -> StepReport:
    """One `StepReport` for several runtime steps (token-weighted loss and entropy, summed counts and work, the mean
    paired reference losses)."""
    if len(reports) == 1:
        return reports[0]
    tokens = sum(r.tokens for r in reports)
    weights = np.array([r.tokens for r in reports], dtype=np.float64) / tokens
    last_ttt = next((r for r in reversed(reports) if r.ttt_updates), reports[-1])
    domains = Counter()
    for r in reports:
        domains.update(r.domain_tokens)
    return StepReport(
        tokens=tokens,
        loss=float(np.dot(weights, [r.loss for r in reports])),
        expert_token_counts=np.sum([r.expert_token_counts for r in reports], axis=0).tolist(),
        router_entropy=float(np.dot(weights, [r.router_entropy for r in reports])),
        router_entropy_per_layer=np.average(
            [r.router_entropy_per_layer for r in reports], axis=0, weights=weights
        ).tolist(),
        flops_per_expert=np.sum([r.flops_per_expert for r in reports], axis=0).tolist(),
        flops_total=float(sum(r.flops_total for r in reports)),
        wall_time_s=float(sum(r.wall_time_s for r in reports)),
        work=[c for r in reports for c in r.work],
        domain=domains.most_common(1)[0][0],
        domain_tokens=dict(domains),
        ttt_updates=sum(r.ttt_updates for r in reports),
        ttt_tokens_trained=sum(r.ttt_tokens_trained for r in reports),
        ttt_wall_time_s=float(sum(r.ttt_wall_time_s for r in reports)),
        ttt_skipped_updates=sum(r.ttt_skipped_updates for r in reports),
        ttt_loss_before=last_ttt.ttt_loss_before,
        ttt_loss_after=last_ttt.ttt_loss_after,
        ttt_grad_norms=list(last_ttt.ttt_grad_norms),
        ttt_activation_energy=list(last_ttt.ttt_activation_energy),
        # Each launch scores its first reference_tokens with the base model too: the mean over the launches that did.
        reference_loss=_mean_finite([r.reference_loss for r in reports]),
        served_reference_loss=_mean_finite([r.served_reference_loss for r in reports]),
    )


def _mean_finite(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


@dataclass
class ServedInterval:
    """What `serve_interval` did: the runtime's reports and the time its launches took."""

    reports: list[StepReport]  # one per launch, at least one
    launch_ms: list[float]  # each launch's time: CUDA events on CUDA, the wall clock elsewhere
    busy_s: float  # wall time from the first launch to the end of the last
    launched_tokens: float  # launches x launch_tokens (the last launch may go past the demand)

    def served_tokens(self, due_tokens: float) -> float:
        """Tokens that count as served: the demand at most (all launched tokens when nothing was due)."""
        return min(self.launched_tokens, due_tokens) if due_tokens > 0 else self.launched_tokens


def serve_interval(runtime: MoERuntime, launch_tokens: int, due_tokens: float, interval_s: float) -> ServedInterval:
    """Serve one control interval on the runtime's own device, as a deployment would.

    Launches of `launch_tokens` run back to back until `due_tokens` are served or `interval_s` is used up (at least
    one launch, so every interval observes the model); then the host sleeps for the rest of the interval, so the
    GPU idles and its power and temperature fall as they would between requests. Call it inside an energy window.
    """
    reports, launch_ms = [], []
    cuda = runtime.device.type == "cuda"
    t0 = time.perf_counter()
    launched = 0.0
    while launched < due_tokens or not reports:
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            reports.append(runtime.step(launch_tokens))
            end.record()
            end.synchronize()
            launch_ms.append(start.elapsed_time(end))
        else:
            launch_t0 = time.perf_counter()
            reports.append(runtime.step(launch_tokens))
            launch_ms.append(1000.0 * (time.perf_counter() - launch_t0))
        launched += launch_tokens
        if time.perf_counter() - t0 >= interval_s:
            break
    busy_s = time.perf_counter() - t0
    if busy_s < interval_s:
        time.sleep(interval_s - busy_s)
    return ServedInterval(reports, launch_ms, busy_s, launched)


def source_memory_pressure(source) -> float:
    """Used over total device memory of a measured GPU source; 0 where it cannot say (no such readings)."""
    used, total = (getattr(source, name, lambda: None)() for name in ("memory_used_mb", "memory_total_mb"))
    return float(used / total) if used is not None and total else 0.0


CUDA_MISSING = (
    "telemetry='nvml' needs an NVIDIA GPU with CUDA, and torch.cuda.is_available() is False here; "
    "use telemetry='simulated' (or 'auto') on this machine"
)


def measured_backend_unavailable() -> str | None:
    """Why `telemetry='nvml'` cannot run on this machine (no CUDA, or no NVML), or None when it can: a cheap check
    for a CLI to make before it starts work that an env built later would only then refuse."""
    if not torch.cuda.is_available():
        return CUDA_MISSING
    if not nvml_available():
        return ("telemetry='nvml' needs NVML (the NVIDIA driver and nvidia-ml-py), which this machine lacks; "
                "use telemetry='simulated' (or 'auto')")
    return None


class MeasuredBackend:
    """Runs the runtime on the CUDA GPU and measures it through NVML.

    Raises:
        RuntimeError: CUDA is not available.
        telemetry.NvmlUnavailableError: NVML, the driver or the GPU is missing (the message names which).
    """

    source = "measured"

    def __init__(self, cfg: EnvConfig):
        if not torch.cuda.is_available():
            raise RuntimeError(CUDA_MISSING)
        self.cfg = cfg
        # The GPU the runtime runs on (torch's current device), found in NVML by UUID: NVML's index 0 is another
        # card when CUDA_VISIBLE_DEVICES reorders or hides GPUs.
        self.monitor = GpuSystemMonitor(source="nvml", cuda_device=torch.cuda.current_device())
        self.spec = get_gpu_spec(spec_name_for(self.monitor.device))
        self.kcm = KernelCostModel(gpu_type=self.spec.name, data_path=cfg.cost_table)
        self.launch_tokens = cfg.model.seq_len * cfg.model.batch_size

    def capacity_tokens_per_s(self, report: StepReport) -> float:
        """Tokens/s at full clock for this routing, predicted by the KCM for the runtime's own shape."""
        forward = [c for c in report.work if c.phase == "forward"]
        cost = self.kcm.predict_step(forward)
        return cost.tokens / cost.total.latency_s

    def expert_energy_per_token_j(self, report: StepReport) -> np.ndarray:
        from envs.config import deployment_for

        scale = deployment_for(self.cfg.model, d_model=self.cfg.model.d_model)
        return np.asarray(self.kcm.expert_energy_per_token_j(scale), dtype=np.float64)

    def reset(
        self, rng: np.random.Generator, runtime: MoERuntime, demand_tokens_per_s: float, randomize: bool | None = None
    ) -> IntervalResult:
        """Real hardware cannot be randomised: serve one uncontrolled interval and report it."""
        return self.run_interval(runtime, self.launch_tokens, demand_tokens_per_s * self.cfg.interval_s, 0.0)

    def run_interval(
        self, runtime: MoERuntime, runtime_tokens: int, demand_tokens: float, backlog_tokens: float
    ) -> IntervalResult:
        cfg, mon = self.cfg, self.monitor
        due = demand_tokens + backlog_tokens
        start_stats = mon.get_current_stats()
        mon.begin_window("interval")
        out = serve_interval(runtime, self.launch_tokens, due, cfg.interval_s)
        m = mon.end_window("interval")
        reports, launch_ms, busy_s = out.reports, out.launch_ms, out.busy_s
        served = out.served_tokens(due)
        backlog = max(0.0, due - served)
        report = merge_reports(reports)
        stats = mon.get_current_stats()
        predicted = self.kcm.predict_step(reports[0].work, temp_c=start_stats.get("temperature"))
        nxt = self.kcm.predict_step(reports[-1].work, clock_mhz=m.sm_clock_mhz or None, temp_c=stats.get("temperature"))
        launches = len(reports)
        next_launches = math.ceil(max(due, 1.0) / self.launch_tokens)  # nxt prices one launch; all are per interval
        return IntervalResult(
            report=report,
            source=self.source,
            demand_tokens=demand_tokens,
            tokens_served=served,
            backlog_tokens=backlog,
            energy_j=m.energy_j,
            energy_per_token_j=m.energy_j / max(served, 1.0),
            power_w=m.power_w,
            peak_power_w=m.peak_power_w or m.power_w,
            temperature_c=float(stats.get("temperature") or 0.0),
            peak_temperature_c=float(m.peak_temperature_c or stats.get("temperature") or 0.0),
            sm_clock_mhz=float(m.sm_clock_mhz or 0.0),
            busy_sm_clock_mhz=float(m.sm_clock_mhz or 0.0),
            gpu_utilization=min(1.0, busy_s / cfg.interval_s),
            memory_pressure=source_memory_pressure(self.monitor.source),
            throttled=bool((m.throttled_share or 0.0) > 0.05),
            # The union over the interval's samples, as the simulated backend reports; the end reading when the
            # sampler saw nothing.
            throttle_reasons=m.clock_event_reasons or tuple(stats.get("clock_event_reasons") or ()),
            throttled_share=float(m.throttled_share or 0.0),
            latency_ms=interval_latency_ms(sum(launch_ms) / 1000.0, launches, served, backlog),
            busy_s=busy_s,
            ttt_busy_share=report.ttt_wall_time_s / max(report.wall_time_s, 1e-9),
            # The KCM prices busy time only; the rest of the interval idles (as the simulated backend counts it).
            pred_energy_j=predicted.total.energy_j * launches
            + idle_energy_j(self.spec, cfg.interval_s - launches * predicted.total.latency_s,
                            start_stats.get("sm_clock_mhz")),  # fmt: skip
            pred_latency_ms=1000.0 * predicted.total.latency_s * launches,
            next_pred_energy_j=nxt.total.energy_j * next_launches,
            next_pred_latency_ms=1000.0 * nxt.total.latency_s * next_launches,
            next_pred_expert_energy_j=np.asarray(nxt.experts.energy_j, dtype=np.float64) * next_launches,
            next_pred_expert_latency_ms=1000.0 * np.asarray(nxt.experts.latency_s, dtype=np.float64) * next_launches,
            energy_from_counter=m.energy_source == "energy_counter",
            # A stalled sampler ages the window figures that rest on it (peaks, throttle share, clock); capped at
            # the observation's bound.
            sample_staleness_s=min(self.monitor.sample_age_s(), 10.0),
        )

    def close(self) -> None:
        self.monitor.close()
