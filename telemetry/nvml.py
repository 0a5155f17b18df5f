"""A real NVIDIA GPU through NVML (`nvidia-ml-py`, imported as `pynvml`).

One method per query, unit in the name. NVML availability is checked once and cached; importing this module never
needs NVML. Errors from NVML map to `NvmlUnavailableError` (no library, driver or GPU: raised when NVML was asked
for) and `NvmlQueryError` (a query failed), raised `from` the original. A query the GPU does not support (fan speed
on H100, say) degrades that field to None with one warning.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

from telemetry.samples import BackgroundSampler, Sample, SampleBuffer, decode_clock_event_reasons

__all__ = ["NvmlError", "NvmlQueryError", "NvmlSource", "NvmlUnavailableError", "nvml_available"]

logger = logging.getLogger(__name__)

_COUNTER_32_BIT = 2**32  # energy counters wrap at 2**32 or 2**64 mJ; see NvmlSource._unwrap_mj


class NvmlError(RuntimeError):
    """Base of the errors this module raises."""


class NvmlUnavailableError(NvmlError):
    """NVML cannot be used here: no nvidia-ml-py, no driver library, driver not loaded, or no such GPU."""


class NvmlQueryError(NvmlError):
    """An NVML query failed for a reason other than the field being unsupported."""


def _import_pynvml() -> Any:
    try:
        import pynvml
    except ImportError as error:
        raise NvmlUnavailableError("nvidia-ml-py is not installed: pip install nvidia-ml-py") from error
    return pynvml


def _unavailable_message(nvml: Any, error: Exception) -> str:
    code = getattr(error, "value", None)
    if code == getattr(nvml, "NVML_ERROR_LIBRARY_NOT_FOUND", -1):
        return "NVML library (libnvidia-ml.so) not found: no NVIDIA driver installed on this machine"
    if code == getattr(nvml, "NVML_ERROR_DRIVER_NOT_LOADED", -1):
        return "the NVIDIA driver is not loaded (nvidia-smi would fail too)"
    if code == getattr(nvml, "NVML_ERROR_NO_PERMISSION", -1):
        return "no permission to open NVML"
    return f"NVML failed to initialise: {error}"


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


@functools.lru_cache(maxsize=1)
def nvml_available() -> bool:
    """Whether NVML initialises and sees at least one GPU (checked once, cached)."""
    try:
        nvml = _import_pynvml()
        nvml.nvmlInit()
        count = nvml.nvmlDeviceGetCount()
        nvml.nvmlShutdown()
    except Exception as error:  # any failure means "not available"; the reason is logged
        logger.info("NVML not available: %s", error)
        return False
    return count > 0


class NvmlSource:
    """One GPU read through NVML, with an optional background sampler over its cheap fields.

    Args:
        device_index: NVML device index.
        nvml: the `pynvml` module (tests pass a fake); imported when None.
        clock: monotonic seconds for sample timestamps (tests pass the fake's clock).
        sample_rate_hz: background sampler rate (see `start_sampler`).
        buffer_capacity: samples kept in the ring buffer.

    Raises:
        NvmlUnavailableError: nvidia-ml-py, the driver library or the driver is missing, or no GPU has that index;
            the message names which.
    """

    source = "nvml"

    def __init__(
        self,
        device_index: int = 0,
        nvml: Any = None,
        clock: Callable[[], float] = time.monotonic,
        sample_rate_hz: float = 100.0,
        buffer_capacity: int = 100_000,
    ) -> None:
        self._nvml = nvml if nvml is not None else _import_pynvml()
        self._clock = clock
        self.device_index = device_index
        self.buffer = SampleBuffer(buffer_capacity)
        self._sampler = BackgroundSampler(self.sample, self.buffer, sample_rate_hz)
        self._unsupported: set[str] = set()
        self._lock = threading.Lock()
        try:
            self._nvml.nvmlInit()
        except self._nvml.NVMLError as error:
            raise NvmlUnavailableError(_unavailable_message(self._nvml, error)) from error
        count = self._nvml.nvmlDeviceGetCount()
        if not 0 <= device_index < count:
            self._nvml.nvmlShutdown()
            raise NvmlUnavailableError(f"no GPU with NVML index {device_index}: NVML sees {count} GPU(s)")
        self._handle = self._nvml.nvmlDeviceGetHandleByIndex(device_index)
        self._counter_mj: tuple[int, float] | None = None  # (last raw reading, unwrapped total), mJ
        self._first_mj = 0.0
        self._integrated_j = 0.0
        self._last_power: tuple[float, float] | None = None  # (t_s, power_w) for the integration fallback
        self.power_field = "instant" if self._probe("instant_power", self.instant_power_w) else "average"
        self.energy_source = "energy_counter" if self._probe("energy_counter", self._read_counter_mj) else (
            "power_integration")
        logger.info("GPU %d: power from the %s reading, energy from the %s", device_index, self.power_field,
                    self.energy_source.replace("_", " "))

    def __reduce__(self):
        """A copy of a live NVML reader would share its device, energy counter and sampler thread: refused by name."""
        raise TypeError(
            f"an NVML GPU source (GPU {self.device_index}) cannot be pickled or copied: it reads the one real GPU; "
            "build another where it is needed, or copy an env on telemetry='simulated'"
        )

    # ----- lifecycle -----
    def close(self) -> None:
        """Stop the sampler and shut NVML down."""
        self.stop_sampler()
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as error:
            logger.debug("nvmlShutdown failed: %s", error)

    def __enter__(self) -> NvmlSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start_sampler(self, rate_hz: float | None = None) -> None:
        """Start the background sampler over the cheap fields (never the ~4 ms energy counter)."""
        if rate_hz is not None:
            self.stop_sampler()
            self._sampler = BackgroundSampler(self.sample, self.buffer, rate_hz)
        self._sampler.start()

    def stop_sampler(self) -> None:
        self._sampler.stop()

    @property
    def sampler_running(self) -> bool:
        return self._sampler.running

    # ----- queries -----
    def now_s(self) -> float:
        """The clock sample timestamps use, s."""
        return self._clock()

    def name(self) -> str:
        name = self._query("name", self._nvml.nvmlDeviceGetName, self._handle)
        return name.decode() if isinstance(name, bytes) else str(name)

    def driver_version(self) -> str | None:
        version = self._optional("driver_version", self._nvml.nvmlSystemGetDriverVersion)
        return version.decode() if isinstance(version, bytes) else version

    def instant_power_w(self) -> float | None:
        """`NVML_FI_DEV_POWER_INSTANT` (Hopper and newer drivers), W; None where not offered."""
        if "instant_power" in self._unsupported:
            return None
        values = self._optional("instant_power", self._nvml.nvmlDeviceGetFieldValues, self._handle,
                                [self._nvml.NVML_FI_DEV_POWER_INSTANT])
        if values is None:
            return None
        if values[0].nvmlReturn != self._nvml.NVML_SUCCESS:
            self._degrade("instant_power", f"NVML return code {values[0].nvmlReturn}")
            return None
        return values[0].value.uiVal / 1000.0

    def average_power_w(self) -> float | None:
        """`nvmlDeviceGetPowerUsage`: on H100 a ~1 s average, W."""
        milliwatts = self._optional("power", self._nvml.nvmlDeviceGetPowerUsage, self._handle)
        return None if milliwatts is None else milliwatts / 1000.0

    def power_w(self) -> float | None:
        """Instant power where offered, else the averaged reading (`self.power_field` says which), W."""
        power_w = self.instant_power_w() if self.power_field == "instant" else self.average_power_w()
        if power_w is not None and self.energy_source == "power_integration":
            self._integrate(power_w)
        return power_w

    def energy_j(self) -> float | None:
        """Energy since this source opened, J: the total-energy counter (Volta and newer; ~4 ms per query on H100,
        ticks every ~100 ms and lags about one tick), unwrapped; else power integrated between readings (start the
        sampler for a fine integration)."""
        if self.energy_source == "power_integration":
            self.power_w()
            return self._integrated_j
        total_mj = self._read_counter_mj()
        return None if total_mj is None else (total_mj - self._first_mj) / 1000.0

    def temperature_c(self) -> float | None:
        return _float(self._optional("temperature", self._nvml.nvmlDeviceGetTemperature, self._handle,
                                     self._nvml.NVML_TEMPERATURE_GPU))

    def memory_temperature_c(self) -> float | None:
        """HBM temperature (`NVML_FI_DEV_MEMORY_TEMP`), C."""
        if "memory_temperature" in self._unsupported:
            return None
        values = self._optional("memory_temperature", self._nvml.nvmlDeviceGetFieldValues, self._handle,
                                [self._nvml.NVML_FI_DEV_MEMORY_TEMP])
        if values is None or values[0].nvmlReturn != self._nvml.NVML_SUCCESS:
            if values is not None:
                self._degrade("memory_temperature", f"NVML return code {values[0].nvmlReturn}")
            return None
        return float(values[0].value.uiVal)

    def sm_clock_mhz(self) -> float | None:
        return _float(self._optional("sm_clock", self._nvml.nvmlDeviceGetClockInfo, self._handle,
                                     self._nvml.NVML_CLOCK_SM))

    def memory_clock_mhz(self) -> float | None:
        return _float(self._optional("memory_clock", self._nvml.nvmlDeviceGetClockInfo, self._handle,
                                     self._nvml.NVML_CLOCK_MEM))

    def utilization_percent(self) -> float | None:
        rates = self._optional("utilization", self._nvml.nvmlDeviceGetUtilizationRates, self._handle)
        return None if rates is None else float(rates.gpu)

    def memory_utilization_percent(self) -> float | None:
        rates = self._optional("utilization", self._nvml.nvmlDeviceGetUtilizationRates, self._handle)
        return None if rates is None else float(rates.memory)

    def memory_used_mb(self) -> float | None:
        info = self._optional("memory_info", self._nvml.nvmlDeviceGetMemoryInfo, self._handle)
        return None if info is None else info.used / 2**20

    def memory_total_mb(self) -> float | None:
        info = self._optional("memory_info", self._nvml.nvmlDeviceGetMemoryInfo, self._handle)
        return None if info is None else info.total / 2**20

    def clock_event_reasons(self) -> tuple[str, ...] | None:
        """Active clock-event (throttle) reasons, decoded into names ("sw_power_cap", "sw_thermal_slowdown", ...)."""
        query = getattr(self._nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
        if query is None:  # nvidia-ml-py before 12.535 names it "throttle reasons"
            query = self._nvml.nvmlDeviceGetCurrentClocksThrottleReasons
        mask = self._optional("clock_event_reasons", query, self._handle)
        return None if mask is None else decode_clock_event_reasons(int(mask))

    def power_limit_w(self) -> float | None:
        milliwatts = self._optional("power_limit", self._nvml.nvmlDeviceGetEnforcedPowerLimit, self._handle)
        return None if milliwatts is None else milliwatts / 1000.0

    def fan_speed_percent(self) -> float | None:
        return _float(self._optional("fan_speed", self._nvml.nvmlDeviceGetFanSpeed, self._handle))

    def temperature_thresholds_c(self) -> dict[str, float | None]:
        """Slowdown, shutdown and GPU-max temperatures, C (None where not reported)."""
        nvml = self._nvml
        names = {"slowdown": "NVML_TEMPERATURE_THRESHOLD_SLOWDOWN", "shutdown": "NVML_TEMPERATURE_THRESHOLD_SHUTDOWN",
                 "gpu_max": "NVML_TEMPERATURE_THRESHOLD_GPU_MAX"}
        return {key: self._optional(f"threshold_{key}", nvml.nvmlDeviceGetTemperatureThreshold, self._handle,
                                    getattr(nvml, const)) for key, const in names.items()}

    def sample(self) -> Sample:
        """The cheap fields now (power, temperature, SM clock, utilisation, reasons), timestamped."""
        rates = self._optional("utilization", self._nvml.nvmlDeviceGetUtilizationRates, self._handle)
        return Sample(
            t_s=self._clock(),
            power_w=self.power_w(),
            temperature_c=self.temperature_c(),
            sm_clock_mhz=self.sm_clock_mhz(),
            utilization_pct=None if rates is None else float(rates.gpu),
            memory_utilization_pct=None if rates is None else float(rates.memory),
            clock_event_reasons=self.clock_event_reasons() or (),
        )

    def samples_between(self, start_s: float, end_s: float) -> list[Sample]:
        """Sampler readings between two `now_s()` times (empty unless the sampler ran)."""
        return self.buffer.between(start_s, end_s)

    def synchronize(self) -> None:
        """Wait for queued CUDA work (only if torch is already imported and CUDA is up)."""
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize(self.device_index)

    # ----- internals -----
    def _probe(self, field: str, read: Callable[[], Any]) -> bool:
        """Whether an optional field works, deciding quietly (the fallback is said in `power_field` and
        `energy_source`, not warned about)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            works = read() is not None
        if not works:
            self._unsupported.add(field)
        return works

    def _query(self, field: str, function: Callable, *args: Any) -> Any:
        try:
            return function(*args)
        except self._nvml.NVMLError as error:
            raise NvmlQueryError(f"NVML query {field} on GPU {self.device_index} failed: {error}") from error

    def _optional(self, field: str, function: Callable, *args: Any) -> Any:
        """A query that degrades to None, with one warning, when the GPU does not support it."""
        if field in self._unsupported:
            return None
        try:
            return function(*args)
        except self._nvml.NVMLError as error:
            degradable = {getattr(self._nvml, name, None) for name in
                          ("NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_NO_PERMISSION", "NVML_ERROR_FUNCTION_NOT_FOUND")}
            if getattr(error, "value", None) not in degradable:
                raise NvmlQueryError(f"NVML query {field} on GPU {self.device_index} failed: {error}") from error
            self._degrade(field, str(error))
            return None

    def _degrade(self, field: str, why: str) -> None:
        with self._lock:
            if field in self._unsupported:
                return
            self._unsupported.add(field)
        warnings.warn(f"GPU {self.device_index}: NVML field {field} unavailable ({why}); reporting None",
                      RuntimeWarning, stacklevel=3)

    def _read_counter_mj(self) -> float | None:
        raw = self._optional("energy_counter", self._nvml.nvmlDeviceGetTotalEnergyConsumption, self._handle)
        if raw is None:
            return None
        with self._lock:
            if self._counter_mj is None:
                self._counter_mj = (int(raw), float(raw))
                self._first_mj = float(raw)
            else:
                self._counter_mj = self._unwrap_mj(self._counter_mj, int(raw))
            return self._counter_mj[1]

    @staticmethod
    def _unwrap_mj(previous: tuple[int, float], raw_mj: int) -> tuple[int, float]:
        """Add a counter reading to the running total, across a wrap: a reading below the last one means the
        counter went past its width (2**32 mJ if the last reading fitted in 32 bits, else 2**64)."""
        last_raw, total_mj = previous
        delta = raw_mj - last_raw
        if delta < 0:
            delta += _COUNTER_32_BIT if last_raw < _COUNTER_32_BIT else 2**64
        return raw_mj, total_mj + delta

    def _integrate(self, power_w: float) -> None:
        now_s = self._clock()
        with self._lock:
            if self._last_power is not None:
                last_s, last_w = self._last_power
                self._integrated_j += 0.5 * (power_w + last_w) * max(now_s - last_s, 0.0)
            self._last_power = (now_s, power_w)
