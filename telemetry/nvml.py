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

__all__ = ["NvmlError", "NvmlQueryError", "NvmlSource", "NvmlUnavailableError", "nvml_available",
           "nvml_index_of_cuda_device"]

logger = logging.getLogger(__name__)


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
    except Exception as error:  # any failure means "not available"; the reason is logged
        logger.info("NVML not available: %s", error)
        return False
    try:
        return nvml.nvmlDeviceGetCount() > 0
    except Exception as error:
        logger.info("NVML not available: %s", error)
        return False
    finally:
        _shutdown(nvml)  # NVML counts inits: each one is matched, or another user's shutdown would not shut it


def _shutdown(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception as error:  # nothing to give back, or the driver went: not worth failing a query over
        logger.debug("nvmlShutdown failed: %s", error)


def nvml_index_of_cuda_device(cuda_device: int | None = None, nvml: Any = None) -> int:
    """The NVML index of a CUDA device (torch's ordinal; the current device when None).

    CUDA numbers the GPUs that `CUDA_VISIBLE_DEVICES` leaves, in its own order; NVML numbers every GPU by PCI bus
    ("The NVML index may not correlate with other APIs, such as the CUDA device index"): `cuda:0` under
    `CUDA_VISIBLE_DEVICES=2` is NVML's GPU 2. The two are matched by UUID. Without torch imported or CUDA up, or where
    NVML does not know the UUID, the ordinal itself, with a warning; a MIG instance maps to its card, with a warning
    that NVML's figures are the whole card's.
    """
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return 0 if cuda_device is None else int(cuda_device)
    ordinal = torch.cuda.current_device() if cuda_device is None else int(cuda_device)
    uuid = str(getattr(torch.cuda.get_device_properties(ordinal), "uuid", "") or "").removeprefix("GPU-")
    if not uuid:
        return ordinal
    nvml = nvml if nvml is not None else _import_pynvml()
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as error:
        raise NvmlUnavailableError(_unavailable_message(nvml, error)) from error
    try:
        try:
            handle = nvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        except nvml.NVMLError:  # torch gives the bare UUID; a MIG instance's is NVML's "MIG-..."
            handle = nvml.nvmlDeviceGetHandleByUUID(f"MIG-{uuid}")
            handle = nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle)
            warnings.warn(f"cuda:{ordinal} is a MIG instance: NVML's power, energy and temperature are its whole "
                          "card's, other instances' work included", RuntimeWarning, stacklevel=2)
        return int(nvml.nvmlDeviceGetIndex(handle))
    except nvml.NVMLError as error:
        warnings.warn(f"cuda:{ordinal} (UUID {uuid}) not found by NVML ({error}); reading NVML GPU {ordinal}, which "
                      "may be another card", RuntimeWarning, stacklevel=2)
        return ordinal
    finally:
        _shutdown(nvml)


class NvmlSource:
    """One GPU read through NVML, with an optional background sampler over its cheap fields.

    Args:
        device_index: NVML device index (`nvml_index_of_cuda_device` gives a CUDA device's: the two numberings
            differ under `CUDA_VISIBLE_DEVICES`).
        nvml: the `pynvml` module (tests pass a fake); imported when None.
        clock: monotonic seconds for sample timestamps (tests pass the fake's clock).
        sample_rate_hz: background sampler rate (see `start_sampler`).
        buffer_capacity: samples kept in the ring buffer.
        cuda_device: the CUDA ordinal `synchronize` waits for (the current device when None).

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
        cuda_device: int | None = None,
    ) -> None:
        self._nvml = nvml if nvml is not None else _import_pynvml()
        self._clock = clock
        self.device_index = device_index
        self.cuda_device = cuda_device
        self.buffer = SampleBuffer(buffer_capacity)
        self._sampler = BackgroundSampler(self.sample, self.buffer, sample_rate_hz)
        self._unsupported: set[str] = set()
        self._failed_codes: set[tuple[str, int]] = set()
        self._lock = threading.RLock()  # reentrant: a degrade inside a locked read takes it again
        self._closed = True  # until NVML is initialised: nothing to shut down
        try:
            self._nvml.nvmlInit()
        except self._nvml.NVMLError as error:
            raise NvmlUnavailableError(_unavailable_message(self._nvml, error)) from error
        self._closed = False
        try:  # from here on every failure shuts NVML down again: NVML counts inits
            count = self._nvml.nvmlDeviceGetCount()
            if not 0 <= device_index < count:
                raise NvmlUnavailableError(f"no GPU with NVML index {device_index}: NVML sees {count} GPU(s)")
            try:
                self._handle = self._nvml.nvmlDeviceGetHandleByIndex(device_index)
            except self._nvml.NVMLError as error:  # NO_PERMISSION for a GPU the count includes, say
                raise NvmlUnavailableError(f"NVML GPU {device_index} cannot be opened: {error}") from error
            self._counter_mj: tuple[int, float] | None = None  # (last raw reading, total since opening), mJ
            self._first_mj = 0.0
            self._integrated_j = 0.0
            self._last_power: tuple[float, float] | None = None  # (t_s, power_w) for the integration fallback
            self.power_field = "instant" if self._probe("instant_power", self.instant_power_w) else "average"
            self.energy_source = "energy_counter" if self._probe("energy_counter", self._read_counter_mj) else (
                "power_integration")
        except BaseException:
            self.close()
            raise
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
        """Stop the sampler and shut NVML down, once: NVML counts inits, and a second shutdown would take the init of
        another user in this process (another monitor, torch)."""
        self.stop_sampler()
        if self._closed:
            return
        self._closed = True
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
            self._field_failed("instant_power", values[0].nvmlReturn)
            return None
        return values[0].value.uiVal / 1000.0

    def average_power_w(self) -> float | None:
        """`nvmlDeviceGetPowerUsage`: on H100 a ~1 s average, W."""
        milliwatts = self._optional("power", self._nvml.nvmlDeviceGetPowerUsage, self._handle)
        return None if milliwatts is None else milliwatts / 1000.0

    def power_w(self) -> float | None:
        """Instant power where offered, else the averaged reading (`self.power_field` says which, and turns to
        "average" if the instant field stops being offered), W."""
        power_w = self.instant_power_w() if self.power_field == "instant" else None
        if power_w is None:
            if self.power_field == "instant" and "instant_power" in self._unsupported:
                self.power_field = "average"
            power_w = self.average_power_w()
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
                self._field_failed("memory_temperature", values[0].nvmlReturn)
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
            torch.cuda.synchronize(self.cuda_device)  # a CUDA ordinal, not the NVML index (they may differ)

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

    def _field_failed(self, field: str, code: int) -> None:
        """A field value's own return code: NOT_SUPPORTED (or NO_PERMISSION) degrades the field for good; any other
        code loses this reading only (None; the power falls back to the averaged reading), warned once per code."""
        if code in {getattr(self._nvml, "NVML_ERROR_NOT_SUPPORTED", None),
                    getattr(self._nvml, "NVML_ERROR_NO_PERMISSION", None)}:
            self._degrade(field, f"NVML return code {code}")
            return
        with self._lock:
            first = (field, code) not in self._failed_codes
            self._failed_codes.add((field, code))
        if first:
            warnings.warn(f"GPU {self.device_index}: NVML field {field} returned code {code}; that reading is lost "
                          "(warned once per code)", RuntimeWarning, stacklevel=3)

    def _degrade(self, field: str, why: str) -> None:
        with self._lock:
            if field in self._unsupported:
                return
            self._unsupported.add(field)
        warnings.warn(f"GPU {self.device_index}: NVML field {field} unavailable ({why}); reporting None",
                      RuntimeWarning, stacklevel=3)

    def _read_counter_mj(self) -> float | None:
        # Read under the lock: two threads' readings applied out of order would look like the counter going back.
        with self._lock:
            raw = self._optional("energy_counter", self._nvml.nvmlDeviceGetTotalEnergyConsumption, self._handle)
            if raw is None:
                return None
            if self._counter_mj is None:
                self._counter_mj = (int(raw), float(raw))
                self._first_mj = float(raw)
            else:
                self._counter_mj = self._add_reading_mj(self._counter_mj, int(raw))
            return self._counter_mj[1]

    def _add_reading_mj(self, previous: tuple[int, float], raw_mj: int) -> tuple[int, float]:
        """Add a counter reading to the running total. NVML's counter is 64-bit mJ since the driver was loaded: it
        does not wrap, so a reading below the last one means it restarted (a driver reload), and the energy since
        is the reading itself; a small step back is a glitch, ignored. Either way, with a warning."""
        last_raw, total_mj = previous
        delta = raw_mj - last_raw
        if delta < 0:
            restarted = raw_mj < last_raw // 2
            warnings.warn(f"GPU {self.device_index}: the NVML energy counter went back from {last_raw} to {raw_mj} mJ"
                          f" ({'a restart: counting from 0' if restarted else 'a glitch: ignored'})",
                          RuntimeWarning, stacklevel=3)
            if not restarted:  # the next reading counts from the last good one, not from the dip
                return last_raw, total_mj
            delta = raw_mj
        return raw_mj, total_mj + delta

    def _integrate(self, power_w: float) -> None:
        with self._lock:  # the clock too: a sampler thread and a caller must not interleave their (time, power)
            now_s = self._clock()
            if self._last_power is not None:
                last_s, last_w = self._last_power
                if now_s <= last_s:
                    return
                self._integrated_j += 0.5 * (power_w + last_w) * (now_s - last_s)
            self._last_power = (now_s, power_w)
