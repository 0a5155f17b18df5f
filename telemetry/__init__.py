"""telemetry: GPU specs, the power and clock model, NVML and simulated GPUs, energy windows and trace recording.

Importing this package never needs NVML or a GPU.
"""

from telemetry.monitor import EnergyWindow, GpuSystemMonitor, Measurement, open_source
from telemetry.nvml import (
    NvmlError,
    NvmlQueryError,
    NvmlSource,
    NvmlUnavailableError,
    nvml_available,
    nvml_index_of_cuda_device,
)
from telemetry.power_model import (
    board_power_w,
    compute_time_factor,
    effective_clock_mhz,
    memory_time_factor,
    power_capped_clock_mhz,
    steady_temperature_c,
    thermal_clock_mhz,
    thermal_step,
)
from telemetry.recorder import TraceRecorder
from telemetry.samples import (
    CLOCK_EVENT_REASONS,
    BackgroundSampler,
    Sample,
    SampleBuffer,
    decode_clock_event_reasons,
    encode_clock_event_reasons,
)
from telemetry.simulated import SimulatedGpu, SimulatedInterval
from telemetry.specs import GPU_SPECS, GpuSpec, get_gpu_spec, known_gpu_names

__all__ = [
    "CLOCK_EVENT_REASONS",
    "GPU_SPECS",
    "BackgroundSampler",
    "EnergyWindow",
    "GpuSpec",
    "GpuSystemMonitor",
    "Measurement",
    "NvmlError",
    "NvmlQueryError",
    "NvmlSource",
    "NvmlUnavailableError",
    "Sample",
    "SampleBuffer",
    "SimulatedGpu",
    "SimulatedInterval",
    "TraceRecorder",
    "board_power_w",
    "compute_time_factor",
    "decode_clock_event_reasons",
    "effective_clock_mhz",
    "encode_clock_event_reasons",
    "get_gpu_spec",
    "known_gpu_names",
    "memory_time_factor",
    "nvml_available",
    "nvml_index_of_cuda_device",
    "open_source",
    "power_capped_clock_mhz",
    "steady_temperature_c",
    "thermal_clock_mhz",
    "thermal_step",
]
