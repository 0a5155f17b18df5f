"""GPU specs and the power / clock / steady-temperature model (telemetry.specs, telemetry.power_model)."""

from __future__ import annotations

import math

import pytest

import telemetry as tel

GPU_NAMES = ["H100", "H100_SXM", "h200", "A100", "A100_SXM", "V100", "l4"]
SPEC_NAMES = sorted(tel.GPU_SPECS)


@pytest.mark.parametrize("name", GPU_NAMES)
def test_get_gpu_spec_accepts_names_and_aliases(name):
    spec = tel.get_gpu_spec(name)
    assert spec is tel.GPU_SPECS[spec.name]
    assert tel.get_gpu_spec(name.lower()) is spec


def test_h100_is_the_sxm_part_and_unknown_names_list_the_known_ones():
    assert tel.get_gpu_spec("H100").name == "H100_SXM"
    with pytest.raises(ValueError, match="known: .*H100.*L4"):
        tel.get_gpu_spec("RTX9090")
    with pytest.raises(TypeError, match="GPU name must be a string, got int"):
        tel.get_gpu_spec(100)


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_spec_figures_are_consistent(name):
    spec = tel.GPU_SPECS[name]
    assert spec.peak_bf16_flops >= spec.peak_fp32_flops > 0
    assert spec.mem_bandwidth_bps > 0 and spec.memory_gb > 0
    assert 0 < spec.idle_w < spec.tdp_w
    assert spec.min_sm_clock_mhz < spec.base_sm_clock_mhz <= spec.boost_sm_clock_mhz
    assert spec.max_operating_temp_c <= spec.slowdown_temp_c < spec.shutdown_temp_c
    # Unconstrained full load must exceed the limit, or the power cap could never act.
    full_w = tel.board_power_w(spec, 1.0, spec.boost_sm_clock_mhz, spec.compute_memory_utilization)
    assert full_w > spec.tdp_w
    # A well-cooled card at its TDP stays below thermal slowdown (it needs poor cooling to get there).
    assert tel.steady_temperature_c(spec, spec.tdp_w) < spec.slowdown_temp_c


def test_h100_datasheet_and_measured_figures():
    spec = tel.get_gpu_spec("H100")
    assert spec.peak_bf16_flops == pytest.approx(989.4e12)
    assert spec.tdp_w == 700 and spec.boost_sm_clock_mhz == 1980 and spec.slowdown_temp_c == 89


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_power_rises_with_utilization_and_clock(name):
    spec = tel.GPU_SPECS[name]
    clocks = [spec.min_sm_clock_mhz, spec.base_sm_clock_mhz, spec.boost_sm_clock_mhz]
    for clock in clocks:
        powers = [tel.board_power_w(spec, u, clock) for u in (0.0, 0.5, 1.0)]
        assert powers == sorted(powers) and powers[0] < powers[-1]
    powers = [tel.board_power_w(spec, 1.0, clock) for clock in clocks]
    assert powers == sorted(powers) and powers[0] < powers[-1]
    assert tel.board_power_w(spec, 0.0, spec.idle_clock_mhz) == pytest.approx(spec.idle_w)


def test_dvfs_part_is_cubic_in_clock():
    spec = tel.get_gpu_spec("H100")
    half_mhz = spec.boost_sm_clock_mhz / 2
    dvfs = lambda mhz: tel.board_power_w(spec, 1.0, mhz) - tel.board_power_w(spec, 0.0, mhz)  # noqa: E731
    active_w = spec.active_power_w
    assert (dvfs(half_mhz) - active_w) / (dvfs(spec.boost_sm_clock_mhz) - active_w) == pytest.approx(1 / 8)


@pytest.mark.parametrize("share", [-0.1, 1.5, math.nan])
def test_shares_outside_unit_interval_are_rejected(share):
    spec = tel.get_gpu_spec("H100")
    with pytest.raises(ValueError, match="utilization"):
        tel.board_power_w(spec, share, 1500.0)
    with pytest.raises(ValueError, match="memory_utilization"):
        tel.board_power_w(spec, 0.5, 1500.0, share)


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_power_capped_clock_is_the_highest_clock_within_the_limit(name):
    spec = tel.GPU_SPECS[name]
    mem = spec.compute_memory_utilization
    clock_mhz = tel.power_capped_clock_mhz(spec, 1.0, mem)
    assert spec.min_sm_clock_mhz <= clock_mhz < spec.boost_sm_clock_mhz
    assert tel.board_power_w(spec, 1.0, clock_mhz, mem) <= spec.tdp_w
    assert tel.board_power_w(spec, 1.0, clock_mhz + 1.0, mem) > spec.tdp_w
    assert tel.power_capped_clock_mhz(spec, 0.2) == spec.boost_sm_clock_mhz  # light load: no cap


def test_h100_full_load_clock_matches_the_measured_power_cap():
    spec = tel.get_gpu_spec("H100")
    clock_mhz = tel.power_capped_clock_mhz(spec, 1.0, spec.compute_memory_utilization)
    assert clock_mhz == pytest.approx(1364, rel=0.10)  # measured: 1,364 MHz at 700 W (h100-step-response.csv)


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_thermal_clock_steps_down_past_slowdown(name):
    spec = tel.GPU_SPECS[name]
    temps = [spec.slowdown_temp_c - 20 + 0.25 * i for i in range(140)]
    clocks = [tel.thermal_clock_mhz(spec, t) for t in temps]
    assert all(a >= b for a, b in zip(clocks, clocks[1:]))
    assert tel.thermal_clock_mhz(spec, spec.slowdown_temp_c - 0.1) == spec.boost_sm_clock_mhz
    assert tel.thermal_clock_mhz(spec, spec.slowdown_temp_c) < spec.boost_sm_clock_mhz
    assert tel.thermal_clock_mhz(spec, spec.shutdown_temp_c) == spec.min_sm_clock_mhz
    assert len(set(clocks)) > 3  # steps, not a single cliff


def test_effective_clock_is_the_lower_limit():
    spec = tel.get_gpu_spec("H100")
    mem = spec.compute_memory_utilization
    cool = tel.effective_clock_mhz(spec, 1.0, 60.0, mem)
    assert cool == tel.power_capped_clock_mhz(spec, 1.0, mem)
    hot = tel.effective_clock_mhz(spec, 0.1, spec.slowdown_temp_c + 3, mem)
    assert hot == tel.thermal_clock_mhz(spec, spec.slowdown_temp_c + 3) < spec.boost_sm_clock_mhz


def test_time_factors():
    spec = tel.get_gpu_spec("H100")
    assert tel.compute_time_factor(spec, spec.boost_sm_clock_mhz) == 1.0
    assert tel.compute_time_factor(spec, 990.0) == pytest.approx(2.0)
    assert tel.compute_time_factor(spec, 10.0) == spec.boost_sm_clock_mhz / spec.min_sm_clock_mhz  # clamped
    assert 1.0 < tel.memory_time_factor(spec, 1364.0) < 1.05 < tel.compute_time_factor(spec, 1364.0)


def test_steady_temperature_matches_the_measured_line():
    spec = tel.get_gpu_spec("H100")
    for power_w in (75, 350, 540, 700):  # measured: about 42.5 C + 0.057 C/W x P (DESIGN.md)
        assert tel.steady_temperature_c(spec, power_w) == pytest.approx(42.5 + 0.057 * power_w, abs=3.0)
    assert tel.steady_temperature_c(spec, 700, ambient_c=30.0) < tel.steady_temperature_c(spec, 700)
    assert tel.steady_temperature_c(spec, 700, cooling=2.0) > tel.steady_temperature_c(spec, 700)
    with pytest.raises(ValueError, match="cooling"):
        tel.steady_temperature_c(spec, 700, cooling=0.0)
