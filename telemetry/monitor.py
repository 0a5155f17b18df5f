"""`GpuSystemMonitor`: one GPU source (NVML or simulated) behind the seeds' `get_current_stats()` and named energy
windows (`begin_window` / `end_window`, as in Zeus) that return a `Measurement`."""

from __future__ import annotations

import logging
import math
import numbers
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from telemetry.nvml import NvmlSource, nvml_available, nvml_index_of_cuda_device
from telemetry.samples import Sample
from telemetry.simulated import SimulatedGpu

__all__ = ["EnergyWindow", "GpuSystemMonitor", "Measurement", "open_source"]

logger = logging.getLogger(__name__)

COUNTER_TICK_S = 0.1  # the H100 energy counter ticks every ~100 ms (h100-step-response.csv)
MIN_COUNTER_WINDOW_S = 1.0  # counter windows >= 1 s agreed with integrated instant power within ~2% (measured)
MIN_SAMPLE_COVERAGE = 0.8  # power integration needs samples over >= 80% of the window; chosen
AVERAGE_POWER_WINDOW_S = 1.0  # nvmlDeviceGetPowerUsage averages over ~1 s on Ampere (but GA100) and newer (NVML docs)
_SOURCE_METHODS = ("now_s", "energy_j", "power_w", "temperature_c", "sample", "samples_between", "synchronize")


@dataclass(frozen=True)
class Measurement:
    """What one energy window measured. `*_source` fields say where each figure came from.

    energy_source: "energy_counter" (difference of the counter read at the edges), "power_integration"
    (integral of the sampled power), or "simulated" (the simulator's exact counter). accurate is False when the
    window was too short for the source to measure well (see `GpuSystemMonitor.end_window`); note says why.
    """

    name: str
    duration_s: float
    energy_j: float
    power_w: float  # energy / duration
    energy_uncertainty_j: float  # about one counter tick of energy for counter windows; 0 when exact
    peak_power_w: float | None
    peak_temperature_c: float | None
    sm_clock_mhz: float | None  # mean over the samples
    throttled_share: float | None  # time share of samples with a throttle reason active
    energy_source: str
    power_source: str  # where peak power came from: "nvml_instant", "nvml_average", "simulated", "edges"
    temperature_source: str  # "samples" or "edges" (begin and end readings only)
    accurate: bool
    samples: int
    source: str  # "nvml" or "simulated"
    device: str
    note: str = ""
    # Every clock-event reason seen in the window's samples (in the order first seen); a reading at the window's
    # end alone misses a power cap that held during the work and lifted in the idle time after it.
    clock_event_reasons: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _OpenWindow:
    start_s: float
    start_energy_j: float | None
    start_power_w: float | None
    start_temperature_c: float | None


def open_source(source: Any = "auto", device_id: int = 0, gpu: str = "H100", seed: int = 0,
                cuda_device: int | None = None) -> tuple[Any, str]:
    """Pick a GPU source and say why.

    Args:
        source: "auto" (NVML when a GPU and driver are present, else the simulator), "nvml", "simulated", or a
            source object (an `NvmlSource`, `SimulatedGpu`, or anything with their methods), used as it is.
        device_id: NVML device index, where `cuda_device` is None.
        gpu: GPU model the simulator plays (a `get_gpu_spec` name).
        seed: simulator seed.
        cuda_device: the CUDA ordinal of the GPU the work runs on: an NVML source then reads that GPU (found by
            UUID, `nvml_index_of_cuda_device`: NVML's numbering differs under `CUDA_VISIBLE_DEVICES`) and synchronizes
            it. Only an NVML source looks it up.

    Returns:
        (source object, reason).

    Raises:
        NvmlUnavailableError: "nvml" asked for and NVML cannot be used; the message names what is missing.
        ValueError: an unknown source name. TypeError: an object lacking the source methods.
    """
    def nvml_source() -> NvmlSource:
        if cuda_device is None:
            return NvmlSource(device_id)
        return NvmlSource(nvml_index_of_cuda_device(cuda_device), cuda_device=cuda_device)

    if isinstance(source, str):
        if source == "nvml":
            return nvml_source(), "NVML asked for"
        if source == "simulated":
            return SimulatedGpu(gpu, seed=seed), f"simulated {gpu} asked for"
        if source == "auto":
            if nvml_available():
                return nvml_source(), "auto: NVML sees a GPU"
            return SimulatedGpu(gpu, seed=seed), f"auto: no NVML GPU here, simulating {gpu}"
        raise ValueError(f"source must be 'auto', 'nvml', 'simulated' or a source object, got {source!r}")
    missing = [name for name in _SOURCE_METHODS if not callable(getattr(source, name, None))]
    if missing:
        raise TypeError(f"{type(source).__name__} is not a GPU source: it lacks {missing}")
    return source, f"given {type(source).__name__}"


class GpuSystemMonitor:
    """One GPU's telemetry: current stats with the seeds' keys, and named energy windows.

    Args:
        device_id: NVML device index, where `cuda_device` is None.
        source: "auto", "nvml", "simulated", or a source object (e.g. an env's own `SimulatedGpu`); see
            `open_source`.
        sample_rate_hz: background sampler rate for NVML sources, samples/s > 0 (window peaks, throttle share);
            simulated sources record every sub-step and ignore it.
        start_sampler: start the NVML sampler now (simulated sources record every sub-step themselves).
        gpu: GPU model the simulator plays when it is chosen.
        seed: simulator seed.
        cuda_device: the CUDA ordinal the work runs on; an NVML source reads and synchronizes that GPU (see
            `open_source`).
    """

    def __init__(self, device_id: int = 0, source: Any = "auto", sample_rate_hz: float = 100.0,
                 start_sampler: bool = True, gpu: str = "H100", seed: int = 0, cuda_device: int | None = None) -> None:
        rate = sample_rate_hz  # checked whatever the source: an NVML sampler refused it only when it started
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 < rate < math.inf:
            raise ValueError(f"sample_rate_hz must be a positive, finite number of samples per second, got {rate!r}")
        self.device_id = device_id
        self._owns_source = isinstance(source, str)
        self.source, self.reason = open_source(source, device_id, gpu, seed, cuda_device)
        self.source_kind = getattr(self.source, "source", "custom")
        try:
            self.device = (self.source.name() if callable(getattr(self.source, "name", None))
                           else type(self.source).__name__)
        except BaseException:  # a GPU lost between opening and naming: the NVML init this opened is given back
            if self._owns_source and isinstance(self.source, NvmlSource):
                self.source.close()
            raise
        logger.info("telemetry source: %s (%s)", self.device, self.reason)
        if isinstance(self.source, NvmlSource) and start_sampler:
            self.source.start_sampler(sample_rate_hz)
        self._windows: dict[str, _OpenWindow] = {}

    # ----- lifecycle -----
    def close(self) -> None:
        """Stop the sampler; close the source if this monitor opened it."""
        if isinstance(self.source, NvmlSource):
            self.source.stop_sampler()
            if self._owns_source:
                self.source.close()

    def __enter__(self) -> GpuSystemMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- current stats -----
    def get_current_stats(self) -> dict[str, Any]:
        """Current readings under the original system's key names, plus `source` and `device`.

        Keys: temperature (C), power_watt (W), memory_utilization_percent, gpu_utilization_percent,
        memory_temperature (C), sm_clock_mhz, power_limit_watt, clock_event_reasons (list of names), throttled,
        source ("nvml" or "simulated"), device. A field the GPU cannot report is None. The energy counter is not
        read here (it costs ~4 ms on H100): use a window.
        """
        src = self.source
        reasons = _call(src, "clock_event_reasons") or ()
        return {
            "temperature": src.temperature_c(),
            "power_watt": src.power_w(),
            "memory_utilization_percent": _call(src, "memory_utilization_percent"),
            "gpu_utilization_percent": _call(src, "utilization_percent"),
            "memory_temperature": _call(src, "memory_temperature_c"),
            "sm_clock_mhz": _call(src, "sm_clock_mhz"),
            "power_limit_watt": _call(src, "power_limit_w"),
            "clock_event_reasons": list(reasons),
            "throttled": Sample(0.0, None, None, None, None, None, tuple(reasons)).throttled,
            "source": self.source_kind,
            "device": self.device,
        }

    def sample_age_s(self, horizon_s: float = 10.0) -> float:
        """Seconds since the newest recorded sample (the sampler's for NVML, the simulation's own otherwise); inf
        when none lies within `horizon_s` of now, e.g. a sampler that stopped or was never started."""
        now = self.source.now_s()
        recent = self.source.samples_between(now - horizon_s, now)
        return max(0.0, now - recent[-1].t_s) if recent else math.inf

    # ----- energy windows -----
    def begin_window(self, name: str, sync: bool = True) -> None:
        """Open a named window (windows nest and overlap by name).

        A simulated source's clock advances only through its `execute` and `idle`, not with wall time: a window
        around host work or a `time.sleep` alone reads duration_s = 0.0, energy_j = 0.0, accurate=True.

        Args:
            name: window name; must not be open already.
            sync: wait for queued CUDA work first, so the window starts after it.

        Raises:
            ValueError: a window of that name is open.
        """
        if name in self._windows:
            raise ValueError(f"window {name!r} is already open; end it first or pick another name")
        if sync:
            self.source.synchronize()
        self._windows[name] = _OpenWindow(
            start_s=self.source.now_s(),
            start_energy_j=self.source.energy_j(),
            start_power_w=self.source.power_w(),
            start_temperature_c=self.source.temperature_c(),
        )

    def end_window(self, name: str, sync: bool = True) -> Measurement:
        """Close a named window and measure it.

        Energy: the total-energy counter is read at both edges. It ticks every ~100 ms, so each reading is up to one
        tick stale; the two edges are stale alike on average, so the difference is unbiased but uncertain by about
        one tick of energy (70 J at 700 W: `energy_uncertainty_j`). The measured H100 (shared/reference) shows no
        further lag to correct at power steps (the instant-power field, not the counter, trails by ~50-100 ms). So:
        windows of 1 s or more use the counter (within ~2% of integrated instant power, measured); shorter ones use
        the integral of the sampled power when the sampler covered >= 80% of the window (energy_source
        "power_integration"), and otherwise keep the counter, flagged accurate=False with a warning. A counter that
        did not tick at all over a non-empty window is warned about. Simulated sources are exact at any length.

        Raises:
            ValueError: no open window of that name.
        """
        if name not in self._windows:
            raise ValueError(f"no open window {name!r}; open windows: {sorted(self._windows)}")
        start = self._windows.pop(name)
        if sync:
            self.source.synchronize()
        end_s, end_energy_j = self.source.now_s(), self.source.energy_j()
        end_power_w, end_temp_c = self.source.power_w(), self.source.temperature_c()
        duration_s = max(end_s - start.start_s, 0.0)
        samples = self.source.samples_between(start.start_s, end_s)
        energy_j, energy_source, accurate, note = self._window_energy(
            name, start, duration_s, end_energy_j, samples)
        powers = [s.power_w for s in samples if s.power_w is not None]
        temps = [s.temperature_c for s in samples if s.temperature_c is not None]
        edge_powers = [p for p in (start.start_power_w, end_power_w) if p is not None]
        edge_temps = [t for t in (start.start_temperature_c, end_temp_c) if t is not None]
        return Measurement(
            name=name,
            duration_s=duration_s,
            energy_j=energy_j,
            power_w=energy_j / duration_s if duration_s > 0.0 else (end_power_w or 0.0),
            energy_uncertainty_j=self._uncertainty_j(energy_source, energy_j, duration_s),
            peak_power_w=max(powers + edge_powers) if powers + edge_powers else None,
            peak_temperature_c=max(temps + edge_temps) if temps + edge_temps else None,
            sm_clock_mhz=_time_mean(samples, start.start_s, lambda s: s.sm_clock_mhz),
            throttled_share=_time_mean(samples, start.start_s, lambda s: float(s.throttled)),
            energy_source=energy_source,
            power_source=self._power_source() if powers else "edges",
            temperature_source="samples" if temps else "edges",
            accurate=accurate,
            samples=len(samples),
            source=self.source_kind,
            device=self.device,
            note=note,
            clock_event_reasons=tuple(dict.fromkeys(r for s in samples for r in s.clock_event_reasons)),
        )

    def window(self, name: str, sync: bool = True) -> EnergyWindow:
        """`with monitor.window("step") as w: ...`; afterwards `w.measurement` holds the result.

        A simulated source's window spans only its `execute` and `idle` calls: around a `time.sleep(0.5)` alone it
        reads duration_s = 0.0, energy_j = 0.0, accurate=True (see `begin_window`).
        """
        return EnergyWindow(self, name, sync)

    @property
    def open_windows(self) -> list[str]:
        return sorted(self._windows)

    # ----- internals -----
    @staticmethod
    def _uncertainty_j(energy_source: str, energy_j: float, duration_s: float) -> float:
        if energy_source != "energy_counter" or duration_s <= 0.0:
            return 0.0
        return energy_j / duration_s * COUNTER_TICK_S

    def _power_source(self) -> str:
        if self.source_kind == "simulated":
            return "simulated"
        return f"nvml_{getattr(self.source, 'power_field', 'average')}"

    def _window_energy(self, name: str, start: _OpenWindow, duration_s: float, end_energy_j: float | None,
                       samples: list[Sample]) -> tuple[float, str, bool, str]:
        integrated_j, coverage = _integrate_samples(samples, start.start_s, duration_s)
        if self.source_kind == "simulated":
            return end_energy_j - start.start_energy_j, "simulated", True, ""
        counter_kind = getattr(self.source, "energy_source", "energy_counter")
        if start.start_energy_j is None or end_energy_j is None:
            return integrated_j, "power_integration", coverage >= MIN_SAMPLE_COVERAGE, "no energy reading"
        counter_j = end_energy_j - start.start_energy_j
        # NVML's averaged power (where the instant field is not offered) is a ~1 s mean: integrated over a shorter
        # window it lags a load step by up to a second (0.25 s at a step: 47 J read for 133 J spent).
        lagging = getattr(self.source, "power_field", "instant") == "average" and duration_s < AVERAGE_POWER_WINDOW_S
        lag_note = f"integrated from NVML's ~{AVERAGE_POWER_WINDOW_S:g} s average power over {duration_s:.3f} s"
        if counter_kind != "energy_counter":
            ok = coverage >= MIN_SAMPLE_COVERAGE and not lagging
            note = "" if ok else (lag_note if lagging else "sampler did not cover the window")
            return counter_j, "power_integration", ok, note
        if duration_s >= MIN_COUNTER_WINDOW_S:
            if counter_j == 0.0:
                warnings.warn(f"window {name!r}: the energy counter did not tick in {duration_s:.3f} s",
                              RuntimeWarning, stacklevel=3)
            return counter_j, "energy_counter", True, ""
        if coverage >= MIN_SAMPLE_COVERAGE:
            if lagging:
                return integrated_j, "power_integration", False, lag_note
            return integrated_j, "power_integration", True, f"{duration_s:.3f} s < {MIN_COUNTER_WINDOW_S} s: sampled"
        note = f"{duration_s:.3f} s window is under {MIN_COUNTER_WINDOW_S} s of ~{COUNTER_TICK_S} s counter ticks"
        if counter_j == 0.0:
            note += " and the counter did not tick"
        warnings.warn(f"window {name!r}: {note}; energy may be off by up to one tick (start the sampler to "
                      "integrate power instead)", RuntimeWarning, stacklevel=3)
        return counter_j, "energy_counter", False, note


class EnergyWindow:
    """A named window as a context manager: begins on enter, ends on exit (also on an exception).

    Args:
        monitor: the `GpuSystemMonitor` to measure with.
        name: window name (unique among the monitor's open windows).
        sync: synchronise CUDA at both edges.
    """

    def __init__(self, monitor: GpuSystemMonitor, name: str, sync: bool = True) -> None:
        self.monitor, self.name, self.sync = monitor, name, sync
        self.measurement: Measurement | None = None

    def __enter__(self) -> EnergyWindow:
        self.monitor.begin_window(self.name, self.sync)
        return self

    def __exit__(self, *exc: object) -> None:
        self.measurement = self.monitor.end_window(self.name, self.sync)


def _call(source: Any, method: str) -> Any:
    function = getattr(source, method, None)
    return function() if callable(function) else None


def _integrate_samples(samples: list[Sample], start_s: float, duration_s: float) -> tuple[float, float]:
    """(energy J, share of the window covered) from sampled power: each sample's power held back to the previous
    sample (or the window start), the way the simulator records each sub-step at its end."""
    energy_j, covered_s, last_s = 0.0, 0.0, start_s
    for sample in samples:
        if sample.power_w is not None:
            gap_s = max(sample.t_s - last_s, 0.0)
            energy_j += sample.power_w * gap_s
            covered_s += gap_s
        last_s = sample.t_s
    coverage = covered_s / duration_s if duration_s > 0.0 else 0.0
    return energy_j, coverage if math.isfinite(coverage) else 0.0


def _time_mean(samples: list[Sample], start_s: float, value: Callable[[Sample], float | None]) -> float | None:
    """Time-weighted mean of a sample field, each sample standing for the time since the previous one (plain mean
    when all samples share one time stamp); None without readings."""
    pairs, last_s = [], start_s
    for sample in samples:
        reading = value(sample)
        if reading is not None:
            pairs.append((reading, max(sample.t_s - last_s, 0.0)))
        last_s = sample.t_s
    if not pairs:
        return None
    total_s = sum(gap for _, gap in pairs)
    if total_s == 0.0:
        return sum(reading for reading, _ in pairs) / len(pairs)
    return sum(reading * gap for reading, gap in pairs) / total_s
