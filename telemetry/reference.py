"""The measured H100 reference (shared/reference/h100-step-response.csv): loading it, replaying its load phases on a
`SimulatedGpu`, and comparing steady figures per phase. Used by benchmarks/sim_vs_h100.py and the tests."""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from telemetry.simulated import SimulatedGpu

__all__ = [
    "DUTY_PERIOD_S",
    "PHASE_DUTY",
    "STEP_RESPONSE_CSV",
    "PhaseComparison",
    "ReferenceTrace",
    "compare_phases",
    "find_reference_file",
    "load_reference_trace",
    "replay_reference",
    "step_response_shares",
]

STEP_RESPONSE_CSV = "h100-step-response.csv"
# Duty-cycle load of each phase: bf16 GEMM bursts on for duty x period, off for the rest (reference README).
PHASE_DUTY: dict[str, float] = {
    "idle0": 0.0, "duty25": 0.25, "idle1": 0.0, "duty50": 0.5, "idle2": 0.0, "duty100": 1.0, "idle3": 0.0,
}
# Period of the on/off bursts, s. The energy counter rises evenly tick by tick (100 ms) through the duty phases, so
# the bursts are shorter than a tick; the 10 Hz instant-power readings beat with them at 0.743 Hz (duty25) and
# 0.819 Hz (duty50), which a period of 1 / (10 Hz - 0.74..0.82 Hz) = 0.108-0.109 s explains (a 100 ms period plus
# loop overhead). Measured from shared/reference/h100-step-response.csv.
DUTY_PERIOD_S = 0.108
STEADY_WINDOW_S = 8.0  # "steady" = the mean over a phase's last 8 s (phases last 15-30 s); chosen
_EDGE_GUARD_S = 0.1  # drop the phase's last 0.1 s: the sampler sees the next phase's first reading there


def find_reference_file(name: str = STEP_RESPONSE_CSV) -> Path | None:
    """Locate a reference file: $MOE_REFERENCE_DIR, then ../shared/reference beside the repo, then telemetry/data.

    Returns:
        The path, or None when no copy exists (tests skip then).
    """
    repo = Path(__file__).resolve().parent.parent
    candidates = [repo.parent / "shared" / "reference", repo / "shared" / "reference", Path(__file__).parent / "data"]
    if os.environ.get("MOE_REFERENCE_DIR"):
        candidates.insert(0, Path(os.environ["MOE_REFERENCE_DIR"]))
    for folder in candidates:
        if (folder / name).is_file():
            return folder / name
    return None


@dataclass(frozen=True)
class ReferenceTrace:
    """Columns of h100-step-response.csv as arrays (one row per ~10 ms NVML sample)."""

    t_s: np.ndarray
    phase: np.ndarray  # str
    power_avg_w: np.ndarray  # nvmlDeviceGetPowerUsage (~1 s average)
    power_instant_w: np.ndarray  # NVML_FI_DEV_POWER_INSTANT
    energy_counter_j: np.ndarray
    temp_c: np.ndarray
    sm_clock_mhz: np.ndarray
    clock_event_reasons: np.ndarray  # int bitmask
    util_gpu_pct: np.ndarray
    util_mem_pct: np.ndarray

    def phase_spans(self) -> list[tuple[str, float, float]]:
        """(phase, start_s, end_s) in order; a phase ends where the next begins."""
        starts = [0] + [i for i in range(1, len(self.phase)) if self.phase[i] != self.phase[i - 1]]
        ends = starts[1:] + [len(self.phase) - 1]
        return [(str(self.phase[a]), float(self.t_s[a]), float(self.t_s[b])) for a, b in zip(starts, ends)]

    def rows(self) -> list[dict]:
        """The trace as CSV-like dicts (for the fake NVML replay)."""
        names = [n for n in self.__dataclass_fields__ if n != "phase"]
        return [{n: getattr(self, n)[i].item() for n in names} | {"phase": str(self.phase[i])} for i in
                range(len(self.t_s))]


def load_reference_trace(path: str | Path | None = None) -> ReferenceTrace:
    """Read h100-step-response.csv.

    Raises:
        FileNotFoundError: no path given and no copy found (see `find_reference_file`), or no file at `path`.
        ValueError: a file that is not such a trace (a missing column, a value that does not parse); names the file.
    """
    path = Path(path) if path is not None else find_reference_file()
    if path is None:
        raise FileNotFoundError(f"{STEP_RESPONSE_CSV} not found; set MOE_REFERENCE_DIR to shared/reference")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        column = lambda name, dtype=float: np.array([row[name] for row in rows], dtype=dtype)  # noqa: E731
        trace = ReferenceTrace(
            t_s=column("t_s"), phase=column("phase", str), power_avg_w=column("power_avg_w"),
            power_instant_w=column("power_instant_w"), energy_counter_j=column("energy_counter_j"),
            temp_c=column("temp_c"), sm_clock_mhz=column("sm_clock_mhz"),
            clock_event_reasons=column("clock_event_reasons", int), util_gpu_pct=column("util_gpu_pct"),
            util_mem_pct=column("util_mem_pct"),
        )
    except (UnicodeDecodeError, csv.Error, KeyError, TypeError, ValueError) as exc:  # TypeError: a short row's None
        kind = f"a step-response trace like {STEP_RESPONSE_CSV}"
        raise ValueError(f"{path} is not {kind} ({type(exc).__name__}: {exc})") from None
    if len(trace.t_s) < 2:
        raise ValueError(f"{path} has {len(trace.t_s)} rows; a step-response trace needs at least 2")
    return trace


def _run_busy(gpu: SimulatedGpu, wall_s: float) -> None:
    """Keep the GPU busy with compute-bound work for `wall_s` wall seconds (as the GEMM loop did)."""
    end_s = gpu.now_s() + wall_s
    while end_s - gpu.now_s() > 1e-9:
        left_s = end_s - gpu.now_s()
        full_clock_s = min(left_s, gpu.step_s) * gpu.sm_clock_mhz() / gpu.spec.boost_sm_clock_mhz
        gpu.execute(compute_s=max(full_clock_s, 1e-6))


def replay_reference(gpu: SimulatedGpu, trace: ReferenceTrace, period_s: float = DUTY_PERIOD_S) -> dict:
    """Replay the trace's load phases (idle, 25/50/100% duty bf16 GEMM bursts) on `gpu`, from t = 0.

    Returns:
        Arrays sampled on the simulator's own sub-steps: t_s, power_w (instant), power_avg_w, temp_c,
        sm_clock_mhz, power_capped (bool).

    Raises:
        ValueError: `period_s` not a positive finite number of seconds (the duty cycle would never advance).
    """
    if not 0.0 < period_s < math.inf:
        raise ValueError(f"period_s must be a positive, finite duty-cycle period in seconds, got {period_s!r}")
    spans = [span for span in trace.phase_spans() if span[0] in PHASE_DUTY]
    for phase, start_s, end_s in spans:
        duty = PHASE_DUTY[phase]
        if gpu.now_s() < start_s:
            gpu.idle(start_s - gpu.now_s())
        while end_s - gpu.now_s() > 1e-9:
            cycle_s = min(period_s, end_s - gpu.now_s())
            _run_busy(gpu, duty * cycle_s)
            gpu.idle(max(min(cycle_s * (1.0 - duty), end_s - gpu.now_s()), 0.0))
    samples = gpu.buffer.snapshot()
    return {
        "t_s": np.array([s.t_s for s in samples]),
        "power_w": np.array([s.power_w for s in samples]),
        "temp_c": np.array([s.temperature_c for s in samples]),
        "sm_clock_mhz": np.array([s.sm_clock_mhz for s in samples]),
        "power_capped": np.array(["sw_power_cap" in s.clock_event_reasons for s in samples]),
    }


@dataclass(frozen=True)
class PhaseComparison:
    """Steady (last 8 s) figures of one phase, measured vs simulated."""

    phase: str
    measured_power_w: float
    simulated_power_w: float
    measured_temp_c: float
    simulated_temp_c: float
    measured_clock_mhz: float
    simulated_clock_mhz: float

    @property
    def power_error_pct(self) -> float:
        return 100.0 * abs(self.simulated_power_w - self.measured_power_w) / self.measured_power_w

    @property
    def temp_error_c(self) -> float:
        return abs(self.simulated_temp_c - self.measured_temp_c)

    @property
    def clock_error_pct(self) -> float:
        return 100.0 * abs(self.simulated_clock_mhz - self.measured_clock_mhz) / self.measured_clock_mhz


def _window_mean(t_s: np.ndarray, values: np.ndarray, start_s: float, end_s: float, weights=None) -> float:
    mask = (t_s >= start_s) & (t_s <= end_s)
    if not mask.any():
        raise ValueError(f"no samples between {start_s:.2f} and {end_s:.2f} s")
    return float(np.average(values[mask], weights=None if weights is None else weights[mask]))


def compare_phases(trace: ReferenceTrace, simulated: dict) -> list[PhaseComparison]:
    """Steady power (the ~1 s averaged reading, which the energy counter agrees with), temperature and SM clock
    per phase: the mean over each phase's last 8 s (less its last 0.1 s), measured vs simulated (time-weighted)."""
    sim_t = simulated["t_s"]
    sim_dt = np.diff(sim_t, prepend=0.0)
    out = []
    for phase, start_s, end_s in trace.phase_spans():
        if phase not in PHASE_DUTY:
            continue
        lo, hi = max(start_s, end_s - STEADY_WINDOW_S), end_s - _EDGE_GUARD_S
        out.append(PhaseComparison(
            phase=phase,
            measured_power_w=_window_mean(trace.t_s, trace.power_avg_w, lo, hi),
            simulated_power_w=_window_mean(sim_t, simulated["power_w"], lo, hi, sim_dt),
            measured_temp_c=_window_mean(trace.t_s, trace.temp_c, lo, hi),
            simulated_temp_c=_window_mean(sim_t, simulated["temp_c"], lo, hi, sim_dt),
            measured_clock_mhz=_window_mean(trace.t_s, trace.sm_clock_mhz, lo, hi),
            simulated_clock_mhz=_window_mean(sim_t, simulated["sm_clock_mhz"], lo, hi, sim_dt),
        ))
    return out


def step_response_shares(t_s: np.ndarray, temp_c: np.ndarray, step_s: float, settle_s: float) -> dict[str, float]:
    """Shape of a temperature step starting at step_s: share of the rise done 0.5 s in, and the slow time constant.

    The rise is measured against the mean of the last second before step_s + settle_s. The slow time constant is
    the time from 0.5 s to where 1 - 1/e of the remaining rise is done.

    Returns:
        {"fast_share": share at 0.5 s, "slow_tau_s": seconds, "rise_c": total rise}.
    """
    start_c = _window_mean(t_s, temp_c, step_s - 0.5, step_s)
    end_c = _window_mean(t_s, temp_c, step_s + settle_s - 1.0, step_s + settle_s)
    rise_c = end_c - start_c
    at_half_c = _window_mean(t_s, temp_c, step_s + 0.45, step_s + 0.55)
    fast_share = (at_half_c - start_c) / rise_c
    target_c = at_half_c + (1.0 - np.exp(-1.0)) * (end_c - at_half_c)
    after = (t_s > step_s + 0.5) & (t_s < step_s + settle_s)
    crossed = np.nonzero((temp_c[after] - target_c) * np.sign(rise_c) >= 0.0)[0]
    slow_tau_s = float(t_s[after][crossed[0]] - (step_s + 0.5)) if len(crossed) else float("nan")
    return {"fast_share": float(fast_share), "slow_tau_s": slow_tau_s, "rise_c": float(rise_c)}
