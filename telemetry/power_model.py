"""The one power, clock and thermal model: used by `SimulatedGpu` and imported by the cost model.

Plain functions of a `GpuSpec`; constants and their sources live in `telemetry.specs`. Power (W), with
r = sm_clock / boost clock and u, m the SM and memory busy shares:

    P = idle_w + idle_clock_power_w * (clock - idle_clock) / (boost - idle_clock)
        + u * (active_power_w + dvfs_power_w * r ** dvfs_exponent) + m * memory_power_w

The DVFS part grows about cubically with clock (P ~ f V^2, V rising with f); the rest of the active power (L2,
HBM traffic, interconnect) does not follow the SM clock. Fitted to the measured H100 in shared/reference/.
"""

from __future__ import annotations

import math

from telemetry.specs import GpuSpec

__all__ = [
    "board_power_w",
    "compute_time_factor",
    "effective_clock_mhz",
    "memory_time_factor",
    "power_capped_clock_mhz",
    "steady_temperature_c",
    "thermal_clock_mhz",
    "thermal_step",
]

_BISECTION_STEPS = 40  # clock resolution (boost - min) / 2**40: far below 1 MHz


def _check_share(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ValueError(f"{name} must be a share in [0, 1], got {value}")
    return float(value)


def _idle_clock_share(spec: GpuSpec, sm_clock_mhz: float) -> float:
    span_mhz = spec.boost_sm_clock_mhz - spec.idle_clock_mhz
    if span_mhz <= 0.0:
        return 1.0
    return min(max((sm_clock_mhz - spec.idle_clock_mhz) / span_mhz, 0.0), 1.0)


def board_power_w(spec: GpuSpec, utilization: float, sm_clock_mhz: float, memory_utilization: float = 0.0) -> float:
    """Board power at a steady load and SM clock (no limit applied: see `power_capped_clock_mhz`).

    Args:
        spec: the GPU.
        utilization: SM busy share of compute-bound work, 0..1.
        sm_clock_mhz: SM clock, MHz (clamped to [min, boost]).
        memory_utilization: memory-system busy share, 0..1 (a GEMM keeps it near
            `spec.compute_memory_utilization`; a streaming kernel near 1).

    Returns:
        Board power, W.

    Raises:
        ValueError: a share outside [0, 1].
    """
    utilization = _check_share("utilization", utilization)
    memory_utilization = _check_share("memory_utilization", memory_utilization)
    clock_mhz = min(max(sm_clock_mhz, spec.min_sm_clock_mhz), spec.boost_sm_clock_mhz)
    clock_ratio = clock_mhz / spec.boost_sm_clock_mhz
    idle_power_w = spec.idle_w + spec.idle_clock_power_w * _idle_clock_share(spec, clock_mhz)
    compute_power_w = spec.active_power_w + spec.dvfs_power_w * clock_ratio**spec.dvfs_exponent
    return idle_power_w + utilization * compute_power_w + memory_utilization * spec.memory_power_w


def power_capped_clock_mhz(spec: GpuSpec, utilization: float, memory_utilization: float = 0.0) -> float:
    """Highest SM clock in [min, boost] at which a steady load stays within the power limit.

    Board power rises monotonically with the clock, so this bisects `board_power_w(...) <= spec.tdp_w`. If even the
    lowest clock exceeds the limit, the lowest clock is returned.

    Args:
        spec: the GPU.
        utilization: SM busy share, 0..1.
        memory_utilization: memory busy share, 0..1.

    Returns:
        SM clock, MHz.
    """
    if board_power_w(spec, utilization, spec.boost_sm_clock_mhz, memory_utilization) <= spec.tdp_w:
        return spec.boost_sm_clock_mhz
    low_mhz, high_mhz = spec.min_sm_clock_mhz, spec.boost_sm_clock_mhz
    if board_power_w(spec, utilization, low_mhz, memory_utilization) > spec.tdp_w:
        return low_mhz
    for _ in range(_BISECTION_STEPS):
        mid_mhz = 0.5 * (low_mhz + high_mhz)
        if board_power_w(spec, utilization, mid_mhz, memory_utilization) <= spec.tdp_w:
            low_mhz = mid_mhz
        else:
            high_mhz = mid_mhz
    return low_mhz


def thermal_clock_mhz(spec: GpuSpec, temp_c: float) -> float:
    """Clock allowed by thermal slowdown: boost below the slowdown temperature, stepping down past it.

    From the slowdown temperature on, each `spec.thermal_step_c` removes an equal step of the (boost - min) range,
    so the clock reaches the minimum at the shutdown temperature. Monotone non-increasing in temperature.

    Args:
        spec: the GPU.
        temp_c: GPU (die) temperature, C.

    Returns:
        SM clock, MHz.
    """
    if temp_c < spec.slowdown_temp_c:
        return spec.boost_sm_clock_mhz
    steps_to_shutdown = max(math.ceil((spec.shutdown_temp_c - spec.slowdown_temp_c) / spec.thermal_step_c), 1)
    steps = math.floor((temp_c - spec.slowdown_temp_c) / spec.thermal_step_c) + 1
    share = min(steps / steps_to_shutdown, 1.0)
    return spec.boost_sm_clock_mhz - share * (spec.boost_sm_clock_mhz - spec.min_sm_clock_mhz)


def effective_clock_mhz(spec: GpuSpec, utilization: float, temp_c: float, memory_utilization: float = 0.0) -> float:
    """Steady SM clock under both limits: min(power-capped clock, thermal clock).

    Args:
        spec: the GPU.
        utilization: SM busy share, 0..1.
        temp_c: die temperature, C.
        memory_utilization: memory busy share, 0..1.

    Returns:
        SM clock, MHz.
    """
    return min(power_capped_clock_mhz(spec, utilization, memory_utilization), thermal_clock_mhz(spec, temp_c))


def compute_time_factor(spec: GpuSpec, sm_clock_mhz: float) -> float:
    """How much compute-bound time stretches at this clock: boost / clock (>= 1).

    Memory-bound time barely changes (HBM has its own clock): see `memory_time_factor`, which stretches only the
    `spec.memory_clock_sensitivity` share (5% on the H100), e.g. 1.02x at the power-capped 1,365 MHz against 1.45x
    for compute-bound time.

    Args:
        spec: the GPU.
        sm_clock_mhz: SM clock, MHz (clamped to [min, boost]).

    Returns:
        Time multiplier, dimensionless.
    """
    clock_mhz = min(max(sm_clock_mhz, spec.min_sm_clock_mhz), spec.boost_sm_clock_mhz)
    return spec.boost_sm_clock_mhz / clock_mhz


def memory_time_factor(spec: GpuSpec, sm_clock_mhz: float) -> float:
    """How much memory-bound time stretches at this clock: 1 + sensitivity * (boost / clock - 1).

    Args:
        spec: the GPU.
        sm_clock_mhz: SM clock, MHz.

    Returns:
        Time multiplier, dimensionless.
    """
    return 1.0 + spec.memory_clock_sensitivity * (compute_time_factor(spec, sm_clock_mhz) - 1.0)


def steady_temperature_c(
    spec: GpuSpec, power_w: float, ambient_c: float | None = None, cooling: float = 1.0
) -> float:
    """Die temperature a constant power settles to: ambient + power * (R_die + R_sink * cooling).

    Args:
        spec: the GPU.
        power_w: constant board power, W.
        ambient_c: coolant / inlet temperature, C; `spec.ambient_c` when None.
        cooling: heatsink thermal-resistance multiplier (1 = as fitted; 2 = twice as poorly cooled).

    Returns:
        Temperature, C.

    Raises:
        ValueError: cooling not positive.
    """
    if not cooling > 0.0:
        raise ValueError(f"cooling must be > 0 (a thermal-resistance multiplier), got {cooling}")
    ambient = spec.ambient_c if ambient_c is None else ambient_c
    return ambient + power_w * (spec.die_resistance_c_per_w + spec.sink_resistance_c_per_w * cooling)


def thermal_step(
    spec: GpuSpec, die_c: float, sink_c: float, power_w: float, dt_s: float, ambient_c: float, cooling: float = 1.0
) -> tuple[float, float]:
    """Advance the two-node (die, heatsink) RC model exactly over dt_s at constant power.

    C_die dT_die/dt = P - (T_die - T_sink) / R_die;  C_sink dT_sink/dt = (T_die - T_sink) / R_die - (T_sink - T_amb) /
    (R_sink * cooling). With y = temperatures - ambient: y(t) = y* + exp(A t) (y0 - y*), the 2x2 exponential in
    closed form from A's two real eigenvalues (no Euler step, so any dt_s is exact).

    Args:
        spec: the GPU (resistances in C/W, capacitances in J/C).
        die_c, sink_c: temperatures now, C.
        power_w: board power held over the step, W.
        dt_s: step, s.
        ambient_c: coolant / inlet temperature, C.
        cooling: heatsink resistance multiplier.

    Returns:
        (die_c, sink_c) after dt_s.
    """
    r_die, r_sink = spec.die_resistance_c_per_w, spec.sink_resistance_c_per_w * cooling
    c_die, c_sink = spec.die_capacitance_j_per_c, spec.sink_capacitance_j_per_c
    a11, a12 = -1.0 / (r_die * c_die), 1.0 / (r_die * c_die)
    a21, a22 = 1.0 / (r_die * c_sink), -(1.0 / r_die + 1.0 / r_sink) / c_sink
    trace, det = a11 + a22, a11 * a22 - a12 * a21
    root = math.sqrt(max(trace * trace / 4.0 - det, 0.0))
    lam1, lam2 = trace / 2.0 + root, trace / 2.0 - root  # real, negative, distinct for an RC ladder
    e1, e2, k = math.exp(lam1 * dt_s), math.exp(lam2 * dt_s), 1.0 / (lam1 - lam2)
    m11 = k * (e1 * (a11 - lam2) - e2 * (a11 - lam1))
    m12 = k * (e1 - e2) * a12
    m21 = k * (e1 - e2) * a21
    m22 = k * (e1 * (a22 - lam2) - e2 * (a22 - lam1))
    sink_ss = power_w * r_sink
    die_ss = sink_ss + power_w * r_die
    d0, s0 = die_c - ambient_c - die_ss, sink_c - ambient_c - sink_ss
    return ambient_c + die_ss + m11 * d0 + m12 * s0, ambient_c + sink_ss + m21 * d0 + m22 * s0
