"""Simulated H100 vs the measured one: replays the load phases of shared/reference/h100-step-response.csv (idle,
25%, 50% and 100% duty bf16 GEMM bursts) on `SimulatedGpu("H100")`, prints steady power, temperature and SM clock
per phase and the shape of the full-load temperature step, writes a PNG of simulated vs measured traces and its
figures as JSON beside it, and ends with `worst steady error: temperature X C, power Y %, clock Z %`.

    python benchmarks/sim_vs_h100.py [--png results/telemetry/sim_vs_h100.png] [--fit]

`--fit` first re-derives the constants marked "fitted" in telemetry/specs.py (thermal: least squares against the
energy-counter power; power and power-cap governor: a grid search over the replay) and prints them.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import math
import pathlib
from dataclasses import dataclass

import numpy as np
from _cli import check_out_file, field_help, flags, write_atomic, write_json_atomic

from telemetry import GpuSpec, SimulatedGpu, board_power_w, get_gpu_spec
from telemetry.power_model import thermal_step
from telemetry.reference import (
    DUTY_PERIOD_S,
    STEP_RESPONSE_CSV,
    ReferenceTrace,
    compare_phases,
    find_reference_file,
    load_reference_trace,
    replay_reference,
    step_response_shares,
)

FULL_LOAD_STEP_S = 73.40  # duty100 starts (h100-nvml-meta.json phases_t_s)
FULL_LOAD_SETTLE_S = 30.0  # the duty100 phase lasts 30 s
COOLING_STEP_S = 103.43  # idle3 starts
COOLING_SETTLE_S = 25.0
RIPPLE_WINDOWS_S = [(15.0, 23.3), (50.0, 58.3)]  # late duty25 and duty50: the die's ripple under 108 ms bursts


@dataclass
class Args:
    png: str = "results/telemetry/sim_vs_h100.png"
    """where the trace plot goes; the figures go beside it as .json"""
    period_s: float = DUTY_PERIOD_S
    """on/off period of the duty-cycle load, s"""
    fit: bool = False
    """re-fit the H100's simulator constants first and print them"""


def parse_args() -> Args:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    helps = field_help(Args)
    for field in dataclasses.fields(Args):
        if field.type == "bool":
            parser.add_argument(*flags(field.name), action="store_true", help=helps[field.name])
        else:
            parser.add_argument(
                *flags(field.name), type=type(field.default), default=field.default, help=helps[field.name]
            )
    args = Args(**vars(parser.parse_args()))
    if not 0.0 < args.period_s < math.inf:
        parser.error(f"--period-s must be a positive, finite number of seconds, got {args.period_s}")
    check_out_file(parser, "--png", args.png, kind=".png")
    figures = pathlib.Path(args.png).with_suffix(".json")
    if figures == pathlib.Path(args.png):  # the figures would overwrite the plot
        parser.error(f"--png {args.png}: the figures go beside it as .json; give a .png file path")
    if figures.is_dir():
        parser.error(f"--png {args.png}: the JSON beside it, {figures}, is a directory; give another .png file path")
    if find_reference_file() is None:
        parser.error(f"the measured trace {STEP_RESPONSE_CSV} was not found: set MOE_REFERENCE_DIR to the folder "
                     "that holds it (shared/reference; ../shared/reference beside the repository is found without "
                     "it)")  # fmt: skip
    return args


def rise_90_s(t_s: np.ndarray, temp_c: np.ndarray, step_s: float, settle_s: float) -> float:
    """Seconds from step_s until 90% of the temperature change (to the last second's mean) is done."""
    start_c = temp_c[(t_s > step_s - 0.5) & (t_s < step_s)].mean()
    end_c = temp_c[(t_s > step_s + settle_s - 1.0) & (t_s < step_s + settle_s)].mean()
    done = (t_s > step_s) & ((temp_c - start_c) * np.sign(end_c - start_c) >= 0.9 * abs(end_c - start_c))
    return float(t_s[done][0] - step_s) if done.any() else math.nan


def temp_spread_c(t_s: np.ndarray, temp_c: np.ndarray, lo_s: float, hi_s: float) -> float:
    """5th-95th percentile spread of temperature in a time window, C."""
    window = temp_c[(t_s >= lo_s) & (t_s <= hi_s)]
    return float(np.percentile(window, 95) - np.percentile(window, 5))


def counter_power_w(trace: ReferenceTrace, grid_s: np.ndarray, lag_s: float = 0.1) -> np.ndarray:
    """Board power on a grid from the energy counter (ticks every ~100 ms, lags ~one tick), W."""
    ticks = np.nonzero(np.diff(trace.energy_counter_j))[0] + 1
    energy_j = np.interp(grid_s + lag_s, np.r_[0.0, trace.t_s[ticks]], np.r_[0.0, trace.energy_counter_j[ticks]])
    return np.diff(energy_j, prepend=energy_j[0]) / np.diff(grid_s, prepend=grid_s[0] - (grid_s[1] - grid_s[0]))


def fit_thermal(trace: ReferenceTrace, spec: GpuSpec, dt_s: float = 0.01) -> GpuSpec:
    """Least squares (Levenberg-Marquardt, numeric Jacobian) of ambient, die/sink resistances and capacitances:
    the RC model driven by the energy-counter power should reproduce the measured die temperature."""
    grid_s = np.arange(0.0, trace.phase_spans()[-2][2], dt_s)
    power_w = counter_power_w(trace, grid_s)
    measured_c = np.interp(grid_s, trace.t_s, trace.temp_c)
    names = ["ambient_c", "die_resistance_c_per_w", "sink_resistance_c_per_w", "die_capacitance_j_per_c",
             "sink_capacitance_j_per_c"]

    def residual(x: np.ndarray) -> np.ndarray:
        trial = dataclasses.replace(spec, **dict(zip(names, x)))
        die_c = float(measured_c[0])
        sink_c = die_c - spec.idle_w * trial.die_resistance_c_per_w
        simulated = np.empty_like(power_w)
        for i, p in enumerate(power_w):
            die_c, sink_c = thermal_step(trial, die_c, sink_c, float(p), dt_s, trial.ambient_c)
            simulated[i] = die_c
        return simulated - measured_c

    x = np.array([getattr(spec, n) for n in names], dtype=float)
    for _ in range(20):
        r = residual(x)
        jac = np.stack([(residual(x * np.where(np.arange(5) == j, 1.001, 1.0)) - r) / (0.001 * x[j]) for j in range(5)], 1)
        a = jac.T @ jac
        step = -np.linalg.solve(a + 1e-3 * np.diag(np.diag(a)), jac.T @ r)
        candidate = np.maximum(x + step, 0.3 * x)
        if np.sum(residual(candidate) ** 2) >= np.sum(r**2):
            break
        x = candidate
    rmse_c = math.sqrt(np.mean(residual(x) ** 2))
    print(f"thermal fit: rmse {rmse_c:.2f} C; " + ", ".join(f"{n}={v:.4g}" for n, v in zip(names, x)))
    return dataclasses.replace(spec, **dict(zip(names, x)))


def fit_power(trace: ReferenceTrace, spec: GpuSpec, period_s: float) -> GpuSpec:
    """Grid search of the DVFS power, governor filter and gains, and die capacitance over the replay: steady errors
    per phase, the share of the full-load step done at 0.5 s, and the temperature ripple under duty bursts. The
    clock-independent active power follows from the measured full-load point (698 W at 1,364 MHz)."""
    full = next(c for c in compare_phases(trace, {"t_s": trace.t_s, "power_w": trace.power_avg_w,
                                                  "temp_c": trace.temp_c, "sm_clock_mhz": trace.sm_clock_mhz})
                if c.phase == "duty100")
    best = (math.inf, spec)
    for dvfs_w, filter_s, gain, recover, die_cap in itertools.product(
            [420, 470, 520], [0.03, 0.05], [30, 50, 100], [1, 5], [4, 5]):
        trial = dataclasses.replace(spec, dvfs_power_w=dvfs_w, active_power_w=0.0, power_filter_s=filter_s,
                                    cap_gain_mhz_per_ws=gain, cap_recover_mhz_per_ws=recover,
                                    die_capacitance_j_per_c=die_cap)
        rest_w = full.measured_power_w - board_power_w(trial, 1.0, full.measured_clock_mhz,
                                                       spec.compute_memory_utilization)
        trial = dataclasses.replace(trial, active_power_w=rest_w)
        sim = replay_reference(SimulatedGpu(trial, initial_temp_c=float(trace.temp_c[0])), trace, period_s)
        rows = compare_phases(trace, sim)
        fast = step_response_shares(sim["t_s"], sim["temp_c"], FULL_LOAD_STEP_S, FULL_LOAD_SETTLE_S)["fast_share"]
        cost = sum(c.power_error_pct**2 + c.clock_error_pct**2 + c.temp_error_c**2 for c in rows if c.phase != "idle0")
        cost += 100.0 * (fast - 0.6) ** 2
        cost += sum((temp_spread_c(sim["t_s"], sim["temp_c"], lo, hi) - temp_spread_c(trace.t_s, trace.temp_c, lo, hi))
                    ** 2 / 4.0 for lo, hi in RIPPLE_WINDOWS_S)  # the die capacitance shows in the duty ripple
        best = min(best, (cost, trial), key=lambda item: item[0])
    spec = best[1]
    print(f"power fit: active_power_w={spec.active_power_w:.1f} dvfs_power_w={spec.dvfs_power_w} "
          f"power_filter_s={spec.power_filter_s} cap_gain_mhz_per_ws={spec.cap_gain_mhz_per_ws} "
          f"cap_recover_mhz_per_ws={spec.cap_recover_mhz_per_ws} die_capacitance_j_per_c={spec.die_capacitance_j_per_c}")
    return spec


def plot(trace: ReferenceTrace, sim: dict, path: pathlib.Path) -> None:
    """Three panels (power, temperature, SM clock), measured vs simulated, with the phases shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end_s = trace.phase_spans()[-2][2]
    measured = trace.t_s <= end_s
    t_s = trace.t_s[measured]
    fig, axes = plt.subplots(3, 1, figsize=(12, 8.5), sharex=True)
    # The simulator's sub-steps are uneven: read it the way the sensors did, at the measured sample times, with
    # power as a 1 s average from the cumulative energy (nvmlDeviceGetPowerUsage).
    sim_t = np.r_[0.0, sim["t_s"]]
    energy_j = np.r_[0.0, np.cumsum(sim["power_w"] * np.diff(sim["t_s"], prepend=0.0))]
    window_s = np.clip(t_s, 0.01, 1.0)
    avg_w = (np.interp(t_s, sim_t, energy_j) - np.interp(t_s - window_s, sim_t, energy_j)) / window_s
    avg_w = np.where(t_s < sim["t_s"][0], sim["power_w"][0], avg_w)  # before the first sub-step ends
    panels = [
        ("power (W)", trace.power_avg_w, avg_w, "measured (~1 s avg)", "simulated (1 s avg)"),
        ("temperature (C)", trace.temp_c, np.interp(t_s, sim["t_s"], sim["temp_c"]), "measured", "simulated"),
        ("SM clock (MHz)", trace.sm_clock_mhz, np.interp(t_s, sim["t_s"], sim["sm_clock_mhz"]), "measured",
         "simulated"),
    ]
    axes[0].plot(t_s, trace.power_instant_w[measured], color="0.8", lw=0.5, label="measured instant")
    for ax, (label, meas, simulated, meas_label, sim_label) in zip(axes, panels):
        ax.plot(t_s, meas[measured], color="tab:blue", lw=0.8, label=meas_label)
        ax.plot(t_s, simulated, color="tab:red", lw=0.8, alpha=0.8, label=sim_label)
        ax.set_ylabel(label)
        for i, (phase, start_s, stop_s) in enumerate(trace.phase_spans()[:-1]):
            if i % 2:
                ax.axvspan(start_s, stop_s, color="0.93", zorder=0)
            if ax is axes[0] and stop_s - start_s > 4.0:  # idle0 (3.4 s) would collide with duty25
                ax.text(start_s + 0.5, 0.93, phase, fontsize=8, transform=ax.get_xaxis_transform())
        ax.legend(loc="lower right", fontsize=8)
    axes[-1].set_xlabel("time (s)")
    axes[0].set_title("SimulatedGpu('H100') vs measured H100 80GB HBM3 (shared/reference/h100-step-response.csv);\n"
                      "simulation read at the measured sample times", fontsize=10)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


if __name__ == "__main__":
    args = parse_args()
    trace = load_reference_trace()
    spec = get_gpu_spec("H100")
    if args.fit:
        spec = fit_power(trace, fit_thermal(trace, spec), args.period_s)
    gpu = SimulatedGpu(spec, seed=0, initial_temp_c=float(trace.temp_c[0]))
    sim = replay_reference(gpu, trace, args.period_s)
    rows = compare_phases(trace, sim)
    print(f"device: simulated {spec.name} vs measured NVIDIA H100 80GB HBM3 (driver 580.159.04), "
          f"steady = mean of each phase's last 8 s; duty period {args.period_s} s")
    print(f"{'phase':<8} {'power W meas':>12} {'sim':>7} {'err %':>6} {'temp C meas':>12} {'sim':>6} {'err C':>6} "
          f"{'clock MHz meas':>14} {'sim':>6} {'err %':>6}")
    for c in rows:
        print(f"{c.phase:<8} {c.measured_power_w:>12.1f} {c.simulated_power_w:>7.1f} {c.power_error_pct:>6.1f} "
              f"{c.measured_temp_c:>12.1f} {c.simulated_temp_c:>6.1f} {c.temp_error_c:>6.1f} "
              f"{c.measured_clock_mhz:>14.0f} {c.simulated_clock_mhz:>6.0f} {c.clock_error_pct:>6.1f}")
    steps = {}
    for name, step_s, settle_s in (("heating (duty100)", FULL_LOAD_STEP_S, FULL_LOAD_SETTLE_S),
                                   ("cooling (idle3)", COOLING_STEP_S, COOLING_SETTLE_S)):
        meas = step_response_shares(trace.t_s, trace.temp_c, step_s, settle_s)
        simd = step_response_shares(sim["t_s"], sim["temp_c"], step_s, settle_s)
        steps[name] = {"measured": {**meas, "rise_90_s": rise_90_s(trace.t_s, trace.temp_c, step_s, settle_s)},
                       "simulated": {**simd, "rise_90_s": rise_90_s(sim["t_s"], sim["temp_c"], step_s, settle_s)}}
        print(f"step {name:<18} share done at 0.5 s: measured {meas['fast_share']:.2f}, simulated "
              f"{simd['fast_share']:.2f}; 90% done after: measured {steps[name]['measured']['rise_90_s']:.1f} s, "
              f"simulated {steps[name]['simulated']['rise_90_s']:.1f} s")
    worst = {"temp_error_c": max(c.temp_error_c for c in rows), "power_error_pct": max(c.power_error_pct for c in rows),
             "clock_error_pct": max(c.clock_error_pct for c in rows)}
    png = pathlib.Path(args.png)
    plot(trace, sim, png)
    # Each figure pairs the simulator's with the measured trace's (h100-step-response.csv, NVML on a real H100).
    summary = {"benchmark": "sim_vs_h100", "figures": "simulated vs measured",
               "device": f"simulated {spec.name} vs measured NVIDIA H100 80GB HBM3 (driver 580.159.04)",
               "date": str(datetime.date.today()), "measured_trace": STEP_RESPONSE_CSV, "period_s": args.period_s,
               "fitted": args.fit, "steady": "mean of each phase's last 8 s",
               "phases": [{**dataclasses.asdict(c), "power_error_pct": c.power_error_pct,
                           "temp_error_c": c.temp_error_c, "clock_error_pct": c.clock_error_pct} for c in rows],
               "steps": steps, "worst": worst, "png": png.name}
    figures = png.with_suffix(".json")
    write_json_atomic(figures, summary)
    print(f"wrote {png} and {figures}")
    print(f"worst steady error: temperature {worst['temp_error_c']:.1f} C, power {worst['power_error_pct']:.1f} %, "
          f"clock {worst['clock_error_pct']:.1f} %")
