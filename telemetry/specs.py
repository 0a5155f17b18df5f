"""GPU specifications and the simulated GPU's constants, one frozen `GpuSpec` per model.

Datasheet figures cite their public source. Simulator constants say whether they were fitted to
`shared/reference/h100-step-response.csv` (and `h100-op-costs.csv`), measured there, or chosen. The GPUs other
than the H100 have no measurement here: their simulator constants are the H100's fitted shares scaled by their own
TDP, idle power and clocks (`_scaled`), which is a choice, said as such.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["GPU_SPECS", "GpuSpec", "get_gpu_spec", "known_gpu_names"]


@dataclass(frozen=True)
class GpuSpec:
    """One GPU model: datasheet figures and the simulator's constants, in SI units with the unit in each name.

    Power model (see `telemetry.power_model.board_power_w`), with r = clock / boost clock:
        P = idle_w + idle_clock_power_w * (clock - idle_clock) / (boost - idle_clock)
            + utilization * (active_power_w + dvfs_power_w * r ** dvfs_exponent)
            + memory_utilization * memory_power_w
    Thermal model: die --die_resistance--> heatsink --sink_resistance * cooling--> ambient, with heat capacities
    die_capacitance and sink_capacitance (see `telemetry.power_model.thermal_step`). The constants marked fitted
    are re-derived by `python benchmarks/sim_vs_h100.py --fit`.
    """

    name: str
    # Datasheet figures
    peak_bf16_flops: float  # dense bf16 tensor-core FLOP/s
    peak_fp32_flops: float  # FLOP/s, non-tensor fp32
    mem_bandwidth_bps: float  # bytes/s
    memory_gb: float  # GB of device memory
    tdp_w: float  # default power limit, W
    idle_w: float  # long-idle board power at the idle clock, W
    slowdown_temp_c: float  # thermal slowdown threshold, C
    shutdown_temp_c: float  # thermal shutdown threshold, C
    base_sm_clock_mhz: float
    boost_sm_clock_mhz: float
    min_sm_clock_mhz: float  # lowest supported SM clock
    # Power model
    idle_clock_mhz: float  # SM clock a long-idle GPU parks at
    idle_clock_power_w: float  # extra idle power with the SM clock held at boost (right after load), W
    active_power_w: float  # clock-independent power of compute-bound work at utilization 1 (L2, HBM traffic, ...), W
    dvfs_power_w: float  # clock-dependent power of compute-bound work at utilization 1 and boost clock, W
    dvfs_exponent: float  # power ~ clock ** exponent for the DVFS part (voltage rises with clock)
    memory_power_w: float  # power of memory-bound work at memory utilization 1 (clock-independent), W
    compute_memory_utilization: float  # memory-system busy share while compute-bound work runs (0..1)
    memory_clock_sensitivity: float  # share of memory-bound time that stretches with the SM clock
    achievable_flops_fraction: float  # share of peak bf16 FLOP/s a large GEMM reaches at boost clock
    achievable_bandwidth_fraction: float  # share of peak bandwidth a streaming kernel reaches
    # Power-cap governor
    power_filter_s: float  # time constant of the power the governor compares with the limit, s
    cap_target_share: float  # the governor holds its filtered power at this share of tdp_w
    cap_gain_mhz_per_ws: float  # clock correction per watt over the target per second, MHz/(W s)
    cap_recover_mhz_per_ws: float  # clock recovery per watt under the limit per second, MHz/(W s)
    power_avg_window_s: float  # averaging window of nvmlDeviceGetPowerUsage, s
    idle_downclock_s: float  # continuous idle after which the SM clock parks at idle_clock_mhz, s
    # Thermal model
    ambient_c: float  # coolant / inlet temperature the heatsink relaxes to, C
    die_resistance_c_per_w: float  # die -> heatsink, C/W
    sink_resistance_c_per_w: float  # heatsink -> ambient at cooling 1.0, C/W
    die_capacitance_j_per_c: float  # J/C
    sink_capacitance_j_per_c: float  # J/C
    thermal_step_c: float  # thermal slowdown lowers the clock one step per this many C past slowdown
    max_operating_temp_c: float  # "GPU max operating temperature" threshold, C

    @property
    def thermal_resistance_c_per_w(self) -> float:
        """Die-to-ambient thermal resistance at cooling 1.0, C/W."""
        return self.die_resistance_c_per_w + self.sink_resistance_c_per_w


# H100 SXM5 80 GB. Datasheet: https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet
# (989 TFLOP/s dense bf16, 67 TFLOP/s fp32, 3.35 TB/s, 80 GB, up to 700 W). Clocks: TechPowerUp GPU database
# "NVIDIA H100 SXM5 80 GB" (base 1590, boost 1980 MHz). Thresholds, idle clock and power: measured,
# shared/reference/h100-nvml-meta.json and h100-step-response.csv (slowdown 89 C, shutdown 95 C, max 87 C).
_H100 = GpuSpec(
    name="H100_SXM",
    peak_bf16_flops=989.4e12,  # datasheet (1979 with sparsity)
    peak_fp32_flops=66.9e12,  # datasheet
    mem_bandwidth_bps=3.35e12,  # datasheet
    memory_gb=80.0,  # datasheet
    tdp_w=700.0,  # datasheet; measured power limit 700 W
    idle_w=75.0,  # measured: idle0 phase of h100-step-response.csv, 75 W at 345 MHz
    slowdown_temp_c=89.0,  # measured NVML threshold (DESIGN.md)
    shutdown_temp_c=95.0,  # measured NVML threshold
    base_sm_clock_mhz=1590.0,  # TechPowerUp
    boost_sm_clock_mhz=1980.0,  # TechPowerUp; measured max clock in h100-step-response.csv
    min_sm_clock_mhz=345.0,  # measured: the idle clock, the lowest the reference shows; chosen as the floor
    idle_clock_mhz=345.0,  # measured
    idle_clock_power_w=57.0,  # measured: ~132 W idle at 1980 MHz after load minus 75 W long idle
    active_power_w=295.0,  # fitted to shared/reference/h100-step-response.csv (700 W at the capped 1,364 MHz)
    dvfs_power_w=470.0,  # fitted to shared/reference/h100-step-response.csv (25% and 50% duty power)
    dvfs_exponent=3.0,  # chosen: P ~ f V^2 with V ~ f in the DVFS range
    memory_power_w=422.0,  # fitted to shared/reference/h100-op-costs.csv: silu_mul 548 W at 1980 MHz vs 126 W idle
    compute_memory_utilization=0.33,  # measured: NVML memory utilisation 32-33% under the GEMM load
    memory_clock_sensitivity=0.05,  # chosen: HBM runs on its own clock; SM-side issue adds a little
    # fitted: h100-op-costs.csv large GEMMs normalised to full clock (1980 MHz) reach 903-977 TFLOP/s; the 989
    # TFLOP/s spec peak is quoted at 1830 MHz, so a big GEMM at boost gets ~0.92 of it.
    achievable_flops_fraction=0.92,
    achievable_bandwidth_fraction=0.85,  # chosen: typical streaming-copy share of HBM3 peak
    power_filter_s=0.03,  # fitted to shared/reference/h100-step-response.csv (duty-phase clocks)
    cap_target_share=0.997,  # measured: 698.4 W mean of the 700 W limit at full load (h100-step-response.csv)
    cap_gain_mhz_per_ws=50.0,  # fitted to shared/reference/h100-step-response.csv
    cap_recover_mhz_per_ws=5.0,  # fitted to shared/reference/h100-step-response.csv (1,350 -> 1,980 MHz in ~0.2 s)
    power_avg_window_s=1.0,  # measured: nvmlDeviceGetPowerUsage is a ~1 s average (reference README)
    idle_downclock_s=60.0,  # chosen: the reference holds 1980 MHz through 25 s of idle after load
    ambient_c=45.4,  # fitted to shared/reference/h100-step-response.csv (45.4 C + 0.055 C/W x P at steady state;
    # DESIGN.md's rounder 42.5 C + 0.057 C/W x P is within 3 C of it over 75-700 W)
    die_resistance_c_per_w=0.0309,  # fitted to shared/reference/h100-step-response.csv (~60% of a step is fast)
    sink_resistance_c_per_w=0.0240,  # fitted to shared/reference/h100-step-response.csv
    die_capacitance_j_per_c=4.0,  # fitted to shared/reference/h100-step-response.csv (duty ripple; die tau 0.12 s)
    sink_capacitance_j_per_c=661.0,  # fitted to shared/reference/h100-step-response.csv (sink tau ~16 s)
    thermal_step_c=1.0,  # chosen
    max_operating_temp_c=87.0,  # measured NVML threshold
)


def _scaled(
    base: GpuSpec,
    *,
    name: str,
    tdp_w: float,
    idle_w: float,
    boost_sm_clock_mhz: float,
    min_sm_clock_mhz: float,
    sink_resistance_c_per_w: float,
    **datasheet: float,
) -> GpuSpec:
    """Another GPU from the H100's fitted constants, scaled by its power envelope (a choice, no measurement).

    Powers scale with (TDP - idle), heat capacities with TDP, the die resistance inversely with TDP (a smaller die
    under less power), the governor's gains so that its loop keeps the H100's dynamics; the heatsink resistance
    is given per GPU (chosen from its cooling: the passive L4 is the poorest).
    """
    power_scale = (tdp_w - idle_w) / (base.tdp_w - base.idle_w)
    size_scale = tdp_w / base.tdp_w
    clock_scale = boost_sm_clock_mhz / base.boost_sm_clock_mhz
    return replace(
        base,
        name=name,
        tdp_w=tdp_w,
        idle_w=idle_w,
        boost_sm_clock_mhz=boost_sm_clock_mhz,
        min_sm_clock_mhz=min_sm_clock_mhz,
        idle_clock_mhz=min_sm_clock_mhz,
        idle_clock_power_w=base.idle_clock_power_w * power_scale,
        active_power_w=base.active_power_w * power_scale,
        dvfs_power_w=base.dvfs_power_w * power_scale,
        memory_power_w=base.memory_power_w * power_scale,
        cap_gain_mhz_per_ws=base.cap_gain_mhz_per_ws * clock_scale / power_scale,  # same loop dynamics
        cap_recover_mhz_per_ws=base.cap_recover_mhz_per_ws * clock_scale / power_scale,
        die_resistance_c_per_w=base.die_resistance_c_per_w / size_scale,
        sink_resistance_c_per_w=sink_resistance_c_per_w,
        die_capacitance_j_per_c=base.die_capacitance_j_per_c * size_scale,
        sink_capacitance_j_per_c=base.sink_capacitance_j_per_c * size_scale,
        ambient_c=35.0,  # chosen: a typical data-centre inlet plus chassis preheat, without a fitted figure
        **datasheet,
    )


# H200 SXM 141 GB: https://www.nvidia.com/en-us/data-center/h200/ (989 TFLOP/s dense bf16, 67 TFLOP/s fp32,
# 4.8 TB/s, 141 GB, up to 700 W). Same GH100 die and clocks as the H100 SXM (TechPowerUp "NVIDIA H200 SXM").
_H200 = replace(
    _scaled(
        _H100,
        name="H200",
        tdp_w=700.0,  # datasheet
        idle_w=80.0,  # chosen: H100 idle plus the extra HBM3e stacks
        boost_sm_clock_mhz=1980.0,  # TechPowerUp
        min_sm_clock_mhz=345.0,  # chosen: same die as H100
        sink_resistance_c_per_w=0.024,  # chosen: same SXM cooling as the measured H100
        peak_bf16_flops=989.4e12,  # datasheet
        peak_fp32_flops=66.9e12,  # datasheet
        mem_bandwidth_bps=4.8e12,  # datasheet
        memory_gb=141.0,  # datasheet
        base_sm_clock_mhz=1590.0,  # TechPowerUp
    ),
    ambient_c=45.4,  # chosen: same chassis as the measured H100
)

# A100 SXM4 80 GB: https://www.nvidia.com/en-us/data-center/a100/ (312 TFLOP/s dense bf16, 19.5 TFLOP/s fp32,
# 2,039 GB/s, 80 GB, 400 W). Clocks: TechPowerUp "NVIDIA A100 SXM4 80 GB" (base 1275, boost 1410 MHz); lowest
# supported clock 210 MHz (nvidia-smi -q -d SUPPORTED_CLOCKS on A100). Thresholds: nvidia-smi -q as commonly
# reported for A100 SXM4 (slowdown 89 C, shutdown 92 C).
_A100 = _scaled(
    _H100,
    name="A100_SXM",
    tdp_w=400.0,
    idle_w=55.0,  # chosen: typical A100 SXM4 idle reading (about 50-60 W)
    boost_sm_clock_mhz=1410.0,
    min_sm_clock_mhz=210.0,
    sink_resistance_c_per_w=0.04,  # chosen: ~75 C at 400 W from a 35 C inlet
    peak_bf16_flops=312e12,
    peak_fp32_flops=19.5e12,
    mem_bandwidth_bps=2.039e12,
    memory_gb=80.0,
    base_sm_clock_mhz=1275.0,
    slowdown_temp_c=89.0,
    shutdown_temp_c=92.0,
    max_operating_temp_c=85.0,  # nvidia-smi -q, A100 SXM4
)

# V100 SXM2 32 GB: https://images.nvidia.com/content/technologies/volta/pdf/volta-v100-datasheet-update-us-1165301-r5.pdf
# (125 TFLOP/s fp16 tensor, 15.7 TFLOP/s fp32, 900 GB/s, 32 GB, 300 W). Volta has no bf16 tensor cores: bf16 runs
# at the fp32 rate, so peak_bf16_flops is the fp32 figure. Clocks: TechPowerUp "Tesla V100 SXM2 32 GB" (base 1290,
# boost 1530 MHz); lowest supported clock 135 MHz (nvidia-smi). Thresholds: nvidia-smi -q on V100 (slowdown 87 C,
# shutdown 90 C, max operating 83 C).
_V100 = _scaled(
    _H100,
    name="V100",
    tdp_w=300.0,
    idle_w=40.0,  # chosen: typical V100 SXM2 idle reading
    boost_sm_clock_mhz=1530.0,
    min_sm_clock_mhz=135.0,
    sink_resistance_c_per_w=0.05,  # chosen: ~74 C at 300 W from a 35 C inlet
    peak_bf16_flops=15.7e12,
    peak_fp32_flops=15.7e12,
    mem_bandwidth_bps=0.9e12,
    memory_gb=32.0,
    base_sm_clock_mhz=1290.0,
    slowdown_temp_c=87.0,
    shutdown_temp_c=90.0,
    max_operating_temp_c=83.0,
)

# L4 24 GB: https://www.nvidia.com/en-us/data-center/l4/ (121 TFLOP/s dense bf16 (242 sparse), 30.3 TFLOP/s fp32,
# 300 GB/s, 24 GB, 72 W). Clocks: TechPowerUp "NVIDIA L4" (base 795, boost 2040 MHz); lowest clock 210 MHz
# (nvidia-smi). Thresholds: chosen near nvidia-smi -q reports for L4 (slowdown ~90 C, shutdown ~95 C; vary by VBIOS).
_L4 = _scaled(
    _H100,
    name="L4",
    tdp_w=72.0,
    idle_w=16.0,  # chosen: typical L4 idle reading
    boost_sm_clock_mhz=2040.0,
    min_sm_clock_mhz=210.0,
    sink_resistance_c_per_w=0.30,  # chosen: passive single-slot card, ~80 C at 72 W from a 35 C inlet
    peak_bf16_flops=121e12,
    peak_fp32_flops=30.3e12,
    mem_bandwidth_bps=0.3e12,
    memory_gb=24.0,
    base_sm_clock_mhz=795.0,
    slowdown_temp_c=90.0,
    shutdown_temp_c=95.0,
    max_operating_temp_c=87.0,
)

GPU_SPECS: dict[str, GpuSpec] = {spec.name: spec for spec in (_H100, _H200, _A100, _V100, _L4)}

_ALIASES = {"H100": "H100_SXM", "H100_SXM5": "H100_SXM", "A100": "A100_SXM", "A100_SXM4": "A100_SXM", "V100_SXM2": "V100"}


def known_gpu_names() -> list[str]:
    """Every name `get_gpu_spec` accepts (table keys and aliases), sorted."""
    return sorted(set(GPU_SPECS) | set(_ALIASES))


def get_gpu_spec(name: str) -> GpuSpec:
    """Look up a GPU model by name.

    Args:
        name: "H100" (the H100 SXM), "H100_SXM", "H200", "A100", "A100_SXM", "V100", "L4"; case-insensitive,
            "-" and " " read as "_".

    Returns:
        The `GpuSpec`.

    Raises:
        ValueError: unknown name; the message lists the known names.
        TypeError: name is not a string.
    """
    if not isinstance(name, str):
        raise TypeError(f"GPU name must be a string, got {type(name).__name__}")
    key = name.strip().upper().replace("-", "_").replace(" ", "_")
    key = _ALIASES.get(key, key)
    if key not in GPU_SPECS:
        raise ValueError(f"unknown GPU {name!r}; known: {', '.join(known_gpu_names())}")
    return GPU_SPECS[key]
