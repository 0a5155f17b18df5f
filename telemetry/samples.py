"""Timestamped samples of the cheap GPU fields, a thread-safe ring buffer of them, a background sampler, and the
NVML clock-event (throttle) reason names shared by the NVML and simulated sources."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

__all__ = [
    "CLOCK_EVENT_REASONS",
    "THROTTLE_REASONS",
    "BackgroundSampler",
    "Sample",
    "SampleBuffer",
    "decode_clock_event_reasons",
    "encode_clock_event_reasons",
]

logger = logging.getLogger(__name__)

# NVML clock-event reason bits (nvml.h, nvmlClocksEventReason*), named the way NVML names them.
CLOCK_EVENT_REASONS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
    0x200: "board_limit",  # nvmlClocksEventReasonBoardLimit (pynvml: nvmlClocksThrottleReasonBoardLimit)
    0x400: "reliability",  # nvmlClocksEventReasonReliability
}
# Reasons that mean the clock was held below what the work asked for (counted in throttle time shares).
THROTTLE_REASONS = frozenset(
    {"sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown",
     "board_limit", "reliability"}
)


def decode_clock_event_reasons(mask: int) -> tuple[str, ...]:
    """Names of the set bits of an NVML clock-event reasons bitmask, lowest bit first.

    Unknown bits come out as "unknown_0x...". Example: 0x24 -> ("sw_power_cap", "sw_thermal_slowdown").
    """
    names = [name for bit, name in CLOCK_EVENT_REASONS.items() if mask & bit]
    unknown = mask & ~sum(CLOCK_EVENT_REASONS)
    if unknown:
        names.append(f"unknown_{unknown:#x}")
    return tuple(names)


def encode_clock_event_reasons(names: tuple[str, ...] | list[str]) -> int:
    """Bitmask of reason names (inverse of `decode_clock_event_reasons`).

    Raises:
        ValueError: a name NVML does not define.
    """
    bits = {name: bit for bit, name in CLOCK_EVENT_REASONS.items()}
    unknown = [name for name in names if name not in bits]
    if unknown:
        raise ValueError(f"unknown clock-event reasons {unknown}; known: {sorted(bits)}")
    return sum(bits[name] for name in set(names))


@dataclass(frozen=True)
class Sample:
    """One reading of the cheap fields. None where the source cannot read a field.

    t_s is on the source's own clock (`time.monotonic()` for NVML, simulated seconds for the simulator).
    """

    t_s: float
    power_w: float | None  # instant power where offered, else the averaged reading
    temperature_c: float | None
    sm_clock_mhz: float | None
    utilization_pct: float | None
    memory_utilization_pct: float | None
    clock_event_reasons: tuple[str, ...] = ()

    @property
    def throttled(self) -> bool:
        """Whether any throttling reason (power cap, slowdown) was active."""
        return any(reason in THROTTLE_REASONS for reason in self.clock_event_reasons)

    def as_dict(self) -> dict:
        """Plain dict (reasons joined with '|'), for recorders."""
        row = asdict(self)
        row["clock_event_reasons"] = "|".join(self.clock_event_reasons)
        return row


class SampleBuffer:
    """Thread-safe ring buffer of `Sample`s, oldest dropped first."""

    def __init__(self, capacity: int = 100_000) -> None:
        """Args: capacity: samples kept (100,000 is ~17 min at 100 Hz)."""
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._samples: deque[Sample] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        """Pickled (and deep-copied, as with an env) without its lock, which cannot be; a copy gets a fresh one."""
        with self._lock:
            return {"samples": list(self._samples), "capacity": self._samples.maxlen}

    def __setstate__(self, state: dict) -> None:
        self._samples = deque(state["samples"], maxlen=state["capacity"])
        self._lock = threading.Lock()

    def append(self, sample: Sample) -> None:
        with self._lock:
            self._samples.append(sample)

    def between(self, start_s: float, end_s: float) -> list[Sample]:
        """Samples with start_s <= t_s <= end_s, oldest first."""
        with self._lock:
            return [s for s in self._samples if start_s <= s.t_s <= end_s]

    def latest(self) -> Sample | None:
        with self._lock:
            return self._samples[-1] if self._samples else None

    def snapshot(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)

    def clear(self) -> None:
        with self._lock:
            self._samples.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._samples)


class BackgroundSampler:
    """A daemon thread calling `read()` at a fixed rate into a `SampleBuffer`.

    `read` must be cheap (NVML power, temperature, clock, utilisation, reasons: 2-11 us each on H100); the energy
    counter (~4 ms per query) is never read here. A failing read is logged once and the thread keeps going.
    """

    def __init__(self, read: Callable[[], Sample], buffer: SampleBuffer, rate_hz: float = 100.0) -> None:
        """Args: read: returns one sample; buffer: where samples go; rate_hz: samples per second (> 0)."""
        if not rate_hz > 0.0:
            raise ValueError(f"rate_hz must be > 0, got {rate_hz}")
        self._read = read
        self.buffer = buffer
        self.period_s = 1.0 / rate_hz
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed = False

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread (a second start while running is a no-op)."""
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="telemetry-sampler", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the thread and wait for it (at most timeout_s)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                logger.warning("telemetry sampler did not stop within %.1f s", timeout_s)
        self._thread = None

    def _loop(self) -> None:
        next_s = time.monotonic()
        while not self._stop.is_set():
            try:
                self.buffer.append(self._read())
            except Exception as error:  # keep sampling; say it once
                if not self._failed:
                    logger.warning("telemetry sampler read failed (%s); continuing", error)
                    self._failed = True
            next_s += self.period_s
            delay_s = next_s - time.monotonic()
            if delay_s < 0.0:  # fell behind: do not burst to catch up
                next_s = time.monotonic()
                delay_s = 0.0
            self._stop.wait(delay_s)
