"""A fake `pynvml` for the telemetry tests: replays rows of shared/reference/h100-step-response.csv.

Every function the telemetry code calls is `mock.create_autospec` of the real pynvml function (so a wrong
signature fails and calls are counted), backed by a replay of the measured rows: the row shown is the last one at or
before the fake's clock. The energy counter is 64-bit mJ since "driver load", as NVML's, started past 2**32 mJ (an
H100 passes that in ~17 h idle). NVML counts inits: queries after the last shutdown fail with UNINITIALIZED, as the
real library's do. Where the reference file is absent (a fresh clone without ../shared), rows come from a simulated
H100 instead.
"""

from __future__ import annotations

import time
import types
from unittest import mock

import numpy as np
import pynvml

from telemetry.reference import find_reference_file, load_reference_trace
from telemetry.simulated import SimulatedGpu

COUNTER_START_MJ = 2**32 + 123_456_789  # the counter's reading at energy 0
FULL_LOAD_S = (73.4, 103.4)  # the reference's full-load phase


def reference_rows() -> list[dict]:
    """Rows of h100-step-response.csv, or of a simulated H100 over idle, 30 s full load, idle when it is absent."""
    if find_reference_file() is not None:
        return load_reference_trace().rows()
    gpu = SimulatedGpu("H100", initial_temp_c=49.0)
    rows, counter_j = [], 0.0
    for t_s in np.arange(0.0, 130.0, 0.01):
        if FULL_LOAD_S[0] <= t_s < FULL_LOAD_S[1]:
            gpu.execute(compute_s=0.01 * gpu.sm_clock_mhz() / gpu.spec.boost_sm_clock_mhz)
        else:
            gpu.idle(max(t_s - gpu.now_s(), 0.0))
        if int(t_s * 100) % 10 == 0:
            counter_j = gpu.energy_j()  # ticks every 100 ms, like the H100's counter
        rows.append({"t_s": gpu.now_s(), "phase": "load" if FULL_LOAD_S[0] <= t_s < FULL_LOAD_S[1] else "idle",
                     "power_avg_w": gpu.average_power_w(), "power_instant_w": gpu.power_w(),
                     "energy_counter_j": counter_j, "temp_c": round(gpu.temperature_c()),
                     "sm_clock_mhz": gpu.sm_clock_mhz(), "clock_event_reasons": 4 * ("sw_power_cap" in
                     gpu.clock_event_reasons()), "util_gpu_pct": gpu.utilization_percent(),
                     "util_mem_pct": gpu.memory_utilization_percent()})
    return rows


class FakeNvml(types.ModuleType):
    """A pynvml stand-in replaying rows.

    Args:
        rows: CSV-like dicts (see `reference_rows`).
        start_s: replay time at the start.
        follow_wall_clock: the replay time advances with `time.monotonic()` (for sampler threads); otherwise it
            moves only through `advance`.
        unsupported: function names that raise NVML_ERROR_NOT_SUPPORTED (fan speed, as on H100, by default).
        instant: whether the instant-power field is offered.
        energy_counter: whether the total-energy counter is offered (False: a pre-Volta GPU).
        init_error: an NVML error code nvmlInit raises (e.g. NVML_ERROR_LIBRARY_NOT_FOUND).
        counter_offset_mj: raw counter value at energy 0.
    """

    def __init__(self, rows: list[dict], start_s: float = 0.0, follow_wall_clock: bool = False,
                 unsupported: tuple[str, ...] = ("nvmlDeviceGetFanSpeed",), instant: bool = True,
                 energy_counter: bool = True, init_error: int | None = None,
                 counter_offset_mj: int = COUNTER_START_MJ) -> None:
        super().__init__("fake_pynvml")
        for name in dir(pynvml):
            if name.startswith(("NVML", "nvmlClocks")) and not callable(getattr(pynvml, name)):
                setattr(self, name, getattr(pynvml, name))
        self.NVMLError = pynvml.NVMLError
        self._t = np.array([float(r["t_s"]) for r in rows])
        self._rows = rows
        self._start_s, self._wall0 = start_s, time.monotonic()
        self.replay_s = start_s
        self.follow_wall_clock = follow_wall_clock
        self.instant, self.energy_counter, self.init_error = instant, energy_counter, init_error
        self.counter_offset_mj = counter_offset_mj
        self.inits = 0  # NVML's init count
        impls = {name: getattr(self, "_" + name) for name in _FUNCTIONS}
        for name, impl in impls.items():
            if name in unsupported:
                impl = self._raiser(pynvml.NVML_ERROR_NOT_SUPPORTED)
            if name not in ("nvmlInit", "nvmlShutdown"):
                impl = self._initialised(impl)
            setattr(self, name, mock.create_autospec(getattr(pynvml, name), side_effect=impl))

    def _initialised(self, impl):
        def query(*args, **kwargs):
            if self.inits <= 0:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
            return impl(*args, **kwargs)
        return query

    # ----- replay clock -----
    def clock(self) -> float:
        if self.follow_wall_clock:
            return self._start_s + time.monotonic() - self._wall0
        return self.replay_s

    def advance(self, seconds: float) -> None:
        self.replay_s += seconds

    def row(self) -> dict:
        index = max(int(np.searchsorted(self._t, self.clock(), side="right")) - 1, 0)
        return self._rows[index]

    def counter_j_at(self, t_s: float) -> float:
        """The reference's relative counter at a replay time, J (no wrap)."""
        index = max(int(np.searchsorted(self._t, t_s, side="right")) - 1, 0)
        return float(self._rows[index]["energy_counter_j"])

    @staticmethod
    def _raiser(code: int):
        def raise_error(*args, **kwargs):
            raise pynvml.NVMLError(code)
        return raise_error

    # ----- the pynvml functions the telemetry code uses -----
    def _nvmlInit(self):
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.inits += 1

    def _nvmlShutdown(self):
        if self.inits <= 0:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        self.inits -= 1

    def _nvmlDeviceGetCount(self):
        return 1

    def _nvmlDeviceGetHandleByIndex(self, index):
        if index != 0:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return "handle0"

    def _nvmlDeviceGetHandleByUUID(self, uuid):
        return "handle0"

    def _nvmlDeviceGetIndex(self, handle):
        return 0

    def _nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, migDevice):
        return "handle0"

    def _nvmlDeviceGetName(self, handle):
        return "NVIDIA H100 80GB HBM3 (replay)"

    def _nvmlSystemGetDriverVersion(self):
        return "580.159.04"

    def _nvmlDeviceGetPowerUsage(self, handle):
        return int(round(float(self.row()["power_avg_w"]) * 1000))

    def _nvmlDeviceGetFieldValues(self, handle, fieldIds):
        out = []
        for field_id in fieldIds:
            if field_id == pynvml.NVML_FI_DEV_POWER_INSTANT:
                ok, value = self.instant, int(round(float(self.row()["power_instant_w"]) * 1000))
            elif field_id == pynvml.NVML_FI_DEV_MEMORY_TEMP:
                ok, value = True, int(float(self.row()["temp_c"])) - 4
            else:
                ok, value = False, 0
            code = pynvml.NVML_SUCCESS if ok else pynvml.NVML_ERROR_NOT_SUPPORTED
            out.append(types.SimpleNamespace(fieldId=field_id, nvmlReturn=code,
                                             value=types.SimpleNamespace(uiVal=value)))
        return out

    def _nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.energy_counter:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self.counter_offset_mj + int(round(float(self.row()["energy_counter_j"]) * 1000))

    def _nvmlDeviceGetTemperature(self, handle, sensor):
        return int(float(self.row()["temp_c"]))

    def _nvmlDeviceGetClockInfo(self, handle, type):
        return int(float(self.row()["sm_clock_mhz"])) if type == pynvml.NVML_CLOCK_SM else 2619

    def _nvmlDeviceGetUtilizationRates(self, handle):
        row = self.row()
        return types.SimpleNamespace(gpu=int(float(row["util_gpu_pct"])), memory=int(float(row["util_mem_pct"])))

    def _nvmlDeviceGetMemoryInfo(self, handle):
        return types.SimpleNamespace(total=80 * 2**30, used=20 * 2**30, free=60 * 2**30)

    def _nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        return int(self.row()["clock_event_reasons"])

    def _nvmlDeviceGetEnforcedPowerLimit(self, handle):
        return 700_000

    def _nvmlDeviceGetFanSpeed(self, handle):
        return 30

    def _nvmlDeviceGetTemperatureThreshold(self, handle, thresholdType):
        return {pynvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN: 95, pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN: 89,
                pynvml.NVML_TEMPERATURE_THRESHOLD_GPU_MAX: 87}.get(thresholdType, 0)


_FUNCTIONS = [name[1:] for name in vars(FakeNvml) if name.startswith("_nvml")]
