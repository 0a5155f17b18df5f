"""A simulated GPU: the power model of `telemetry.power_model`, a power-cap governor, thermal slowdown and a
two-node (die + heatsink) RC thermal model integrated exactly, fitted to the measured H100 in shared/reference/."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from numbers import Real

import numpy as np

from telemetry.power_model import (
    board_power_w,
    compute_time_factor,
    memory_time_factor,
    thermal_clock_mhz,
    thermal_step,
)
from telemetry.samples import THROTTLE_REASONS, Sample, SampleBuffer
from telemetry.specs import GpuSpec, get_gpu_spec

__all__ = ["SimulatedGpu", "SimulatedInterval"]

_IDLE_CHUNK_S = 0.1  # idle at a constant power is integrated exactly in chunks this long (one sample each); chosen
_MAX_STEP_S = 0.05  # longer sub-steps make the fitted power-cap loop (30 ms filter) oscillate
_MEMORY_TEMP_SHARE = 0.5  # HBM temperature = heatsink + this share of (die - heatsink); chosen


@dataclass(frozen=True)
class SimulatedInterval:
    """What a measurement of one `execute` or `idle` call would have said.

    Power, energy and temperature figures carry the sensor noise when the GPU has `noise_std > 0`.
    """

    duration_s: float
    energy_j: float
    power_w: float  # mean over the interval
    peak_power_w: float
    temperature_c: float  # die temperature at the end
    peak_temperature_c: float
    sm_clock_mhz: float  # time-weighted mean
    utilization: float  # busy share of the interval (NVML "GPU utilization" / 100)
    memory_utilization: float  # memory-system busy share
    clock_event_reasons: tuple[str, ...]  # every reason active at some time in the interval
    throttled_share: float  # share of the interval with the clock held down (power cap or thermal)
    power_capped_share: float
    thermal_throttled_share: float
    compute_s: float = 0.0  # the compute-bound seconds asked for, at full clock
    memory_s: float = 0.0  # the memory-bound seconds asked for, at full clock
    source: str = "simulated"

    def as_dict(self) -> dict:
        """Plain dict of floats, strings and a tuple of reason names."""
        return asdict(self)


@dataclass
class _Tally:
    """Running sums over the sub-steps of one interval."""

    duration_s: float = 0.0
    energy_j: float = 0.0
    peak_power_w: float = 0.0
    peak_temperature_c: float = -math.inf
    clock_mhz_s: float = 0.0
    busy_s: float = 0.0
    memory_busy_s: float = 0.0
    capped_s: float = 0.0
    thermal_s: float = 0.0
    throttled_s: float = 0.0
    reasons: set[str] = field(default_factory=set)


def _check_args(
    seed: int | None,
    ambient_c: float | None,
    cooling: float,
    noise_std: float,
    initial_temp_c: float | None,
    step_s: float,
) -> None:
    # NaN fails every comparison, so each check is written to let only the allowed values through.
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"seed must be None or a non-negative integer, got {seed!r}")
    if not (isinstance(cooling, Real) and 0.0 < cooling < math.inf):
        raise ValueError(f"cooling must be a finite number > 0 (a thermal-resistance multiplier), got {cooling!r}")
    if not (isinstance(step_s, Real) and 0.0 < step_s <= _MAX_STEP_S):
        raise ValueError(
            f"step_s must be in (0, {_MAX_STEP_S}] s (the power-cap loop needs short steps), got {step_s!r}"
        )
    if not (isinstance(noise_std, Real) and 0.0 <= noise_std < math.inf):
        raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
    for name, value in (("ambient_c", ambient_c), ("initial_temp_c", initial_temp_c)):
        if value is not None and not (isinstance(value, Real) and -273.15 < value < 1000.0):
            raise ValueError(f"{name} must be None or a temperature in (-273.15, 1000) C, got {value!r}")


class SimulatedGpu:
    """A GPU that executes work priced at full clock and reports what NVML would.

    Model, per sub-step of `step_s` (exact within it, since power is held constant over it):
      - clock = min(governor clock, thermal clock); after `spec.idle_downclock_s` of continuous idle it parks at
        `spec.idle_clock_mhz` ("gpu_idle").
      - power = `board_power_w` for the load and clock.
      - governor: a power filtered with `spec.power_filter_s`; above `spec.cap_target_share` x the limit the
        clock falls by `spec.cap_gain_mhz_per_ws` per watt over per second, below it recovers by
        `spec.cap_recover_mhz_per_ws` per watt of headroom per second ("sw_power_cap" while held below boost).
        Under sustained load it settles where power = limit (`power_capped_clock_mhz`); short bursts overshoot it
        for a few tens of ms, as the measured H100's instant power does.
      - thermal: die and heatsink nodes, advanced with the exact 2x2 matrix exponential; past the slowdown
        temperature the clock steps down ("sw_thermal_slowdown"; "hw_thermal_slowdown" at shutdown temperature).

    Time is simulated: it advances only through `execute` and `idle`, never with the wall clock. Host time spent
    elsewhere (a `time.sleep`, real work) is invisible to it: a `GpuSystemMonitor` window around it measures
    duration_s = 0.0 and energy_j = 0.0, still accurate=True. Call `idle(seconds)` for time the GPU sits idle.

    Args:
        spec_or_name: a `GpuSpec` or a name for `get_gpu_spec` ("H100", "L4", ...).
        seed: seeds the sensor noise (None: unseeded); with noise_std = 0 the GPU is deterministic anyway.
        ambient_c: coolant / inlet temperature, C (domain randomisation); `spec.ambient_c` when None.
        cooling: heatsink thermal-resistance multiplier (1 = as fitted; 2 = poorly cooled: hotter, slower).
        noise_std: relative std of Gaussian sensor noise on reported power, energy and temperature rise.
        initial_temp_c: starting die temperature, C; None starts at the long-idle steady state.
        step_s: sub-step, s (10 ms: the reference's sampling period; at most 50 ms).

    Raises:
        ValueError: a negative or non-integer seed; cooling not finite and positive; step_s outside (0, 0.05];
            noise_std negative or not finite; a NaN or impossible ambient or initial temperature.
    """

    source = "simulated"

    def __init__(
        self,
        spec_or_name: GpuSpec | str,
        seed: int | None = 0,
        ambient_c: float | None = None,
        cooling: float = 1.0,
        noise_std: float = 0.0,
        initial_temp_c: float | None = None,
        step_s: float = 0.01,
        buffer_capacity: int = 100_000,
    ) -> None:
        self.spec = spec_or_name if isinstance(spec_or_name, GpuSpec) else get_gpu_spec(spec_or_name)
        _check_args(seed, ambient_c, cooling, noise_std, initial_temp_c, step_s)
        self.ambient_c = self.spec.ambient_c if ambient_c is None else float(ambient_c)
        self.cooling = float(cooling)
        self.noise_std = float(noise_std)
        self.step_s = float(step_s)
        self.buffer = SampleBuffer(buffer_capacity)
        # Sensor noise on the results of `execute` and on instantaneous readings come from streams of their own, so
        # that polling the sensors (a monitor, a log) does not change a seeded run's measured energies.
        self._rng, self._read_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
        self._sink_r = self.spec.sink_resistance_c_per_w * self.cooling
        self._time_s = 0.0
        self._energy_j = 0.0
        self._idle_s = self.spec.idle_downclock_s  # starts long idle: parked clock
        self._cap_clock_mhz = self.spec.boost_sm_clock_mhz
        self._power_w = board_power_w(self.spec, 0.0, self.spec.idle_clock_mhz)
        self._filtered_power_w = self._power_w
        self._average_power_w = self._power_w
        self._clock_mhz = self.spec.idle_clock_mhz
        self._utilization = 0.0
        self._memory_utilization = 0.0
        self._reasons: tuple[str, ...] = ("gpu_idle",)
        self._die_c, self._sink_c = self._initial_temperatures(initial_temp_c)

    # ----- work -----
    def execute(self, compute_s: float, memory_s: float = 0.0) -> SimulatedInterval:
        """Run a burst of work priced at full (boost) clock, at the present clock, and report it.

        The compute-bound seconds stretch by `compute_time_factor`, the memory-bound ones by `memory_time_factor`
        at the clock of each sub-step (the clock moves within a long burst as the cap and temperature act). The
        two parts are interleaved evenly over the burst: compute time runs at SM utilisation 1 and memory
        utilisation `spec.compute_memory_utilization`, memory-bound time at SM utilisation 0 and memory 1.

        Args:
            compute_s: compute-bound seconds at full clock (>= 0).
            memory_s: memory-bound seconds at full clock (>= 0).

        Returns:
            The interval's `SimulatedInterval`.

        Raises:
            ValueError: a negative or non-finite amount of work.
        """
        for name, value in (("compute_s", compute_s), ("memory_s", memory_s)):
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value}")
        tally = _Tally()
        work_s = compute_s + memory_s
        compute_share = compute_s / work_s if work_s > 0.0 else 0.0
        while work_s > 1e-12:
            clock_mhz = self._busy_clock_mhz()
            compute_wall = compute_share * compute_time_factor(self.spec, clock_mhz)
            wall_per_work = compute_wall + (1.0 - compute_share) * memory_time_factor(self.spec, clock_mhz)
            dt_s = min(self.step_s, work_s * wall_per_work)
            sm_share = compute_wall / wall_per_work
            memory_share = sm_share * self.spec.compute_memory_utilization + (1.0 - sm_share)
            self._advance(dt_s, sm_share, memory_share, clock_mhz, busy=True, tally=tally)
            work_s -= dt_s / wall_per_work
        return self._report(tally, compute_s, memory_s)

    def idle(self, seconds: float) -> SimulatedInterval:
        """Idle for `seconds`: the GPU cools and its clock recovers (then parks after long idle).

        Constant-power stretches are integrated exactly in chunks of 0.1 s; while the governor or thermal slowdown
        is still acting, in sub-steps.

        Raises:
            ValueError: negative or non-finite seconds.
        """
        if not (math.isfinite(seconds) and seconds >= 0.0):
            raise ValueError(f"seconds must be finite and >= 0, got {seconds}")
        tally = _Tally()
        left_s = float(seconds)
        while left_s > 1e-12:
            settled = (
                self._cap_clock_mhz >= self.spec.boost_sm_clock_mhz
                and self._filtered_power_w <= self.spec.cap_target_share * self.spec.tdp_w
                and self._die_c < self.spec.slowdown_temp_c
            )
            dt_s = min(left_s, _IDLE_CHUNK_S if settled else self.step_s)
            if settled and self._idle_s < self.spec.idle_downclock_s:
                dt_s = min(dt_s, max(self.spec.idle_downclock_s - self._idle_s, 1e-9))
            self._advance(dt_s, 0.0, 0.0, self._idle_clock_mhz(), busy=False, tally=tally)
            left_s -= dt_s
        return self._report(tally, 0.0, 0.0)

    # ----- readings (the same names as NvmlSource) -----
    def now_s(self) -> float:
        """Simulated time since construction, s."""
        return self._time_s

    def power_w(self) -> float:
        """Power over the last sub-step (the "instant" reading), W."""
        return self._noisy_power(self._power_w, self._read_rng)

    def instant_power_w(self) -> float:
        """Same as `power_w` (the simulator's power is instantaneous), W."""
        return self.power_w()

    def average_power_w(self) -> float:
        """Power averaged like `nvmlDeviceGetPowerUsage` (~1 s window, as an exponential filter), W."""
        return self._noisy_power(self._average_power_w, self._read_rng)

    def energy_j(self) -> float:
        """Energy counter since construction, J (exact; noise-free like NVML's counter)."""
        return self._energy_j

    def temperature_c(self) -> float:
        """Die (GPU) temperature, C."""
        return self._noisy_temperature(self._die_c, self._read_rng)

    def memory_temperature_c(self) -> float:
        """HBM temperature, C (between heatsink and die; a chosen share)."""
        return self._noisy_temperature(self._sink_c + _MEMORY_TEMP_SHARE * (self._die_c - self._sink_c), self._read_rng)

    def sm_clock_mhz(self) -> float:
        return self._clock_mhz

    def utilization_percent(self) -> float:
        """Busy share over the last sub-step, %."""
        return 100.0 * self._utilization

    def memory_utilization_percent(self) -> float:
        return 100.0 * self._memory_utilization

    def clock_event_reasons(self) -> tuple[str, ...]:
        return self._reasons

    def power_limit_w(self) -> float:
        return self.spec.tdp_w

    def memory_total_mb(self) -> float:
        return self.spec.memory_gb * 1024.0

    def memory_used_mb(self) -> None:
        """None: the simulator does not model memory use."""
        return None

    def fan_speed_percent(self) -> None:
        """None: the simulated cards have no fan reading (as the measured H100)."""
        return None

    def name(self) -> str:
        return f"simulated {self.spec.name}"

    def sample(self) -> Sample:
        """The cheap fields now, as one `Sample` (t_s in simulated seconds)."""
        return self._make_sample()

    def samples_between(self, start_s: float, end_s: float) -> list[Sample]:
        """Samples recorded by the simulation between two simulated times (one per sub-step or idle chunk)."""
        return self.buffer.between(start_s, end_s)

    def synchronize(self) -> None:
        """Nothing to wait for: simulated work completes inside `execute`."""

    # ----- internals -----
    def _initial_temperatures(self, initial_temp_c: float | None) -> tuple[float, float]:
        if initial_temp_c is None:
            sink_c = self.ambient_c + self._power_w * self._sink_r
            return sink_c + self._power_w * self.spec.die_resistance_c_per_w, sink_c
        return float(initial_temp_c), float(initial_temp_c) - self._power_w * self.spec.die_resistance_c_per_w

    def _busy_clock_mhz(self) -> float:
        return min(self._cap_clock_mhz, thermal_clock_mhz(self.spec, self._die_c))

    def _idle_clock_mhz(self) -> float:
        if self._idle_s >= self.spec.idle_downclock_s:
            return self.spec.idle_clock_mhz
        return self._busy_clock_mhz()

    def _advance(self, dt_s: float, sm_share: float, memory_share: float, clock_mhz: float, *, busy: bool,
                 tally: _Tally) -> None:
        power_w = board_power_w(self.spec, sm_share, clock_mhz, memory_share)
        start_die_c = self._die_c
        self._die_c, self._sink_c = self._thermal_step(power_w, dt_s)
        self._governor_step(power_w, dt_s)
        self._time_s += dt_s
        self._energy_j += power_w * dt_s
        self._idle_s = 0.0 if busy else self._idle_s + dt_s
        self._power_w, self._clock_mhz = power_w, clock_mhz
        self._utilization = 1.0 if busy else 0.0
        self._memory_utilization = memory_share
        self._reasons = self._reasons_now(clock_mhz, busy)
        self.buffer.append(self._make_sample())
        self._tally(tally, dt_s, power_w, max(start_die_c, self._die_c), clock_mhz, busy, memory_share)

    def _thermal_step(self, power_w: float, dt_s: float) -> tuple[float, float]:
        return thermal_step(self.spec, self._die_c, self._sink_c, power_w, dt_s, self.ambient_c, self.cooling)

    def _governor_step(self, power_w: float, dt_s: float) -> None:
        spec = self.spec
        decay = math.exp(-dt_s / spec.power_filter_s)
        self._filtered_power_w = power_w + (self._filtered_power_w - power_w) * decay
        avg_decay = math.exp(-dt_s / (0.5 * spec.power_avg_window_s))  # boxcar of width W ~ exp. filter of W/2
        self._average_power_w = power_w + (self._average_power_w - power_w) * avg_decay
        over_w = self._filtered_power_w - spec.cap_target_share * spec.tdp_w
        gain = spec.cap_gain_mhz_per_ws if over_w > 0.0 else spec.cap_recover_mhz_per_ws
        self._cap_clock_mhz -= gain * over_w * dt_s
        self._cap_clock_mhz = min(max(self._cap_clock_mhz, spec.min_sm_clock_mhz), spec.boost_sm_clock_mhz)

    def _reasons_now(self, clock_mhz: float, busy: bool) -> tuple[str, ...]:
        reasons = []
        if not busy and clock_mhz <= self.spec.idle_clock_mhz:
            reasons.append("gpu_idle")
        if self._cap_clock_mhz < self.spec.boost_sm_clock_mhz - 1e-6:
            reasons.append("sw_power_cap")
        if self._die_c >= self.spec.shutdown_temp_c:
            reasons.append("hw_thermal_slowdown")
        elif thermal_clock_mhz(self.spec, self._die_c) < self._cap_clock_mhz:  # thermal is the binding limit
            reasons.append("sw_thermal_slowdown")
        return tuple(reasons)

    def _tally(self, tally: _Tally, dt_s: float, power_w: float, peak_c: float, clock_mhz: float, busy: bool,
               memory_share: float) -> None:
        tally.duration_s += dt_s
        tally.energy_j += power_w * dt_s
        tally.peak_power_w = max(tally.peak_power_w, power_w)
        tally.peak_temperature_c = max(tally.peak_temperature_c, peak_c)
        tally.clock_mhz_s += clock_mhz * dt_s
        tally.busy_s += dt_s if busy else 0.0
        tally.memory_busy_s += memory_share * dt_s
        tally.reasons.update(self._reasons)
        capped = "sw_power_cap" in self._reasons
        thermal = "sw_thermal_slowdown" in self._reasons or "hw_thermal_slowdown" in self._reasons
        tally.capped_s += dt_s if capped else 0.0
        tally.thermal_s += dt_s if thermal else 0.0
        tally.throttled_s += dt_s if any(r in THROTTLE_REASONS for r in self._reasons) else 0.0

    def _report(self, tally: _Tally, compute_s: float, memory_s: float) -> SimulatedInterval:
        duration_s = tally.duration_s
        share = (lambda x: x / duration_s) if duration_s > 0.0 else (lambda x: 0.0)
        energy_j = self._noisy_power(tally.energy_j)
        return SimulatedInterval(
            duration_s=duration_s,
            energy_j=energy_j,
            power_w=energy_j / duration_s if duration_s > 0.0 else self.power_w(),
            peak_power_w=self._noisy_power(tally.peak_power_w) if duration_s > 0.0 else self.power_w(),
            temperature_c=self.temperature_c(),
            peak_temperature_c=(
                self._noisy_temperature(tally.peak_temperature_c) if duration_s > 0.0 else self.temperature_c()
            ),
            sm_clock_mhz=share(tally.clock_mhz_s) if duration_s > 0.0 else self._clock_mhz,
            utilization=share(tally.busy_s),
            memory_utilization=share(tally.memory_busy_s),
            clock_event_reasons=tuple(sorted(tally.reasons)),
            throttled_share=share(tally.throttled_s),
            power_capped_share=share(tally.capped_s),
            thermal_throttled_share=share(tally.thermal_s),
            compute_s=float(compute_s),
            memory_s=float(memory_s),
        )

    def _make_sample(self) -> Sample:
        return Sample(
            t_s=self._time_s,
            power_w=self.power_w(),
            temperature_c=self.temperature_c(),
            sm_clock_mhz=self._clock_mhz,
            utilization_pct=100.0 * self._utilization,
            memory_utilization_pct=100.0 * self._memory_utilization,
            clock_event_reasons=self._reasons,
        )

    def _noisy_power(self, value_w: float, rng: np.random.Generator | None = None) -> float:
        if self.noise_std == 0.0:
            return value_w
        return value_w * (1.0 + self.noise_std * float((rng or self._rng).standard_normal()))

    def _noisy_temperature(self, temp_c: float, rng: np.random.Generator | None = None) -> float:
        if self.noise_std == 0.0:
            return temp_c
        return temp_c + (temp_c - self.ambient_c) * self.noise_std * float((rng or self._rng).standard_normal())
