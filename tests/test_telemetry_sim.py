"""The simulated GPU (telemetry.simulated): heating and cooling, energy, power cap, throttling, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest

import telemetry as tel

SPEC_NAMES = sorted(tel.GPU_SPECS)


def full_load(gpu: tel.SimulatedGpu, seconds: float) -> tel.SimulatedInterval:
    """Compute-bound work for about `seconds` of wall time at the power-capped clock."""
    clock_mhz = tel.power_capped_clock_mhz(gpu.spec, 1.0, gpu.spec.compute_memory_utilization)
    return gpu.execute(compute_s=seconds * clock_mhz / gpu.spec.boost_sm_clock_mhz)


def test_sustained_load_heats_toward_steady_state_on_two_time_scales():
    gpu = tel.SimulatedGpu("H100")
    start_c = gpu.temperature_c()
    temps, times = [], []
    for _ in range(600):  # 60 s in 0.1 s bursts
        full_load(gpu, 0.1)
        temps.append(gpu.temperature_c())
        times.append(gpu.now_s())
    temps, times = np.array(temps), np.array(times)
    steady_c = tel.steady_temperature_c(gpu.spec, gpu.spec.tdp_w)
    assert temps[-1] == pytest.approx(steady_c, abs=1.0)
    assert np.all(np.diff(temps[10:]) > -0.05)  # still heating after the first second, never cooling
    rise_c = steady_c - start_c
    at_half_s = np.interp(0.5, times, temps)
    assert 0.45 < (at_half_s - start_c) / rise_c < 0.8  # die: ~60% within 0.5 s (measured)
    ninety_s = times[np.argmax(temps >= start_c + 0.9 * rise_c)]
    assert 8.0 < ninety_s < 25.0  # heatsink: the rest over 10-20 s (measured)


def test_idle_cools_toward_warm_idle_and_then_parks_the_clock():
    gpu = tel.SimulatedGpu("H100")
    full_load(gpu, 20.0)
    hot_c = gpu.temperature_c()
    record = gpu.idle(5.0)
    assert record.temperature_c < hot_c - 15 and record.peak_temperature_c == pytest.approx(hot_c, abs=0.5)
    assert record.power_w == pytest.approx(gpu.spec.idle_w + gpu.spec.idle_clock_power_w, rel=0.05)
    assert gpu.sm_clock_mhz() == gpu.spec.boost_sm_clock_mhz  # warm idle holds boost (measured)
    temps = [gpu.idle(10.0).temperature_c for _ in range(12)]
    assert all(a > b for a, b in zip(temps, temps[1:]))
    assert gpu.sm_clock_mhz() == gpu.spec.idle_clock_mhz and "gpu_idle" in gpu.clock_event_reasons()
    assert gpu.power_w() == pytest.approx(gpu.spec.idle_w)


def test_energy_is_the_integral_of_reported_power():
    gpu = tel.SimulatedGpu("H100")
    start_s, start_j = gpu.now_s(), gpu.energy_j()
    records = [gpu.execute(0.8, 0.3), gpu.idle(1.7), full_load(gpu, 2.0), gpu.idle(0.05)]
    samples = gpu.samples_between(start_s + 1e-12, gpu.now_s())
    times = np.array([start_s] + [s.t_s for s in samples])
    sampled_j = float(np.sum(np.diff(times) * np.array([s.power_w for s in samples])))
    assert gpu.energy_j() - start_j == pytest.approx(sampled_j, rel=1e-9)
    assert sum(r.energy_j for r in records) == pytest.approx(sampled_j, rel=1e-9)
    for record in records:
        assert record.energy_j == pytest.approx(record.power_w * record.duration_s, rel=1e-12)
        assert record.peak_power_w >= record.power_w


def test_power_cap_holds_and_is_reported():
    gpu = tel.SimulatedGpu("H100")
    record = full_load(gpu, 30.0)
    assert record.power_w <= gpu.spec.tdp_w
    samples = gpu.samples_between(1.0, gpu.now_s())
    powers = np.array([s.power_w for s in samples])
    one_s_avg = np.convolve(powers, np.ones(100) / 100, mode="valid")  # 10 ms sub-steps
    assert one_s_avg.max() <= gpu.spec.tdp_w * 1.01  # the limit holds over the board's ~1 s window
    assert powers.max() <= gpu.spec.tdp_w * 1.05  # instant power a few percent over at most (measured)
    assert "sw_power_cap" in record.clock_event_reasons and record.power_capped_share > 0.95
    assert record.sm_clock_mhz == pytest.approx(1364, rel=0.10)


def test_average_power_reading_is_a_one_second_window_as_an_exponential_filter():
    """`average_power_w` (NVML's ~1 s average, `power_avg_window_s`) is an exponential filter with the mean delay of a
    boxcar of that width W, time constant W / 2: after a step from idle to a constant load under the cap (memory-bound
    work at boost, 554 W on the H100) it has covered 1 - exp(-t / 0.5 s) of the step: 63% at 0.5 s, 86% at 1 s."""
    gpu = tel.SimulatedGpu("H100")
    spec = gpu.spec
    idle_w = gpu.average_power_w()
    assert idle_w == pytest.approx(tel.board_power_w(spec, 0.0, spec.idle_clock_mhz))
    load_w = tel.board_power_w(spec, 0.0, spec.boost_sm_clock_mhz, 1.0)
    assert load_w < spec.cap_target_share * spec.tdp_w and spec.power_avg_window_s == 1.0
    for elapsed_s in (0.5, 1.0):
        assert gpu.execute(0.0, 0.5).duration_s == pytest.approx(0.5)  # memory-bound time does not stretch at boost
        assert gpu.power_w() == pytest.approx(load_w)  # the instant reading is the load at once
        covered = (gpu.average_power_w() - idle_w) / (load_w - idle_w)
        assert covered == pytest.approx(1.0 - math.exp(-elapsed_s / 0.5), rel=1e-6)


def test_throttling_lowers_the_clock_and_stretches_the_duration():
    gpu = tel.SimulatedGpu("H100")
    record = gpu.execute(compute_s=10.0)
    assert record.sm_clock_mhz < 0.8 * gpu.spec.boost_sm_clock_mhz
    assert record.duration_s == pytest.approx(10.0 * gpu.spec.boost_sm_clock_mhz / record.sm_clock_mhz, rel=0.02)
    memory = tel.SimulatedGpu("H100").execute(compute_s=0.0, memory_s=10.0)
    assert memory.power_w < gpu.spec.tdp_w and memory.duration_s == pytest.approx(10.0)  # not capped


@pytest.mark.parametrize(("name", "cooling", "ambient_c"), [("H100", 2.0, 45.0), ("L4", 2.0, 40.0)])
def test_poor_cooling_reaches_thermal_slowdown(name, cooling, ambient_c):
    well = tel.SimulatedGpu(name)
    hot = tel.SimulatedGpu(name, cooling=cooling, ambient_c=ambient_c)
    well_rec, hot_rec = full_load(well, 90.0), full_load(hot, 90.0)
    assert "sw_thermal_slowdown" not in well_rec.clock_event_reasons
    assert "sw_thermal_slowdown" in hot_rec.clock_event_reasons and hot_rec.thermal_throttled_share > 0.1
    assert hot_rec.peak_temperature_c >= hot.spec.slowdown_temp_c
    assert hot_rec.peak_temperature_c < hot.spec.shutdown_temp_c  # slowdown holds it back
    assert hot_rec.sm_clock_mhz < well_rec.sm_clock_mhz and hot_rec.duration_s > well_rec.duration_s


def test_sub_stepping_does_not_change_the_result():
    one, many = tel.SimulatedGpu("H100"), tel.SimulatedGpu("H100")
    whole = one.execute(compute_s=5.0, memory_s=1.0)
    parts = [many.execute(compute_s=0.05, memory_s=0.01) for _ in range(100)]
    assert sum(p.energy_j for p in parts) == pytest.approx(whole.energy_j, rel=0.01)
    assert sum(p.duration_s for p in parts) == pytest.approx(whole.duration_s, rel=0.01)
    assert many.temperature_c() == pytest.approx(one.temperature_c(), abs=0.2)


def test_exact_thermal_step_composes():
    spec = tel.get_gpu_spec("H100")
    die_c, sink_c = tel.thermal_step(spec, 50.0, 48.0, 650.0, 10.0, spec.ambient_c)
    d, s = 50.0, 48.0
    for _ in range(1000):
        d, s = tel.thermal_step(spec, d, s, 650.0, 0.01, spec.ambient_c)
    assert (d, s) == pytest.approx((die_c, sink_c), abs=1e-9)
    forever = tel.thermal_step(spec, 50.0, 48.0, 650.0, 1e5, spec.ambient_c)
    assert forever[0] == pytest.approx(tel.steady_temperature_c(spec, 650.0))


def test_reading_the_sensors_does_not_change_a_seeded_run():
    def energies(reads: int) -> list[float]:
        gpu = tel.SimulatedGpu("H100", seed=1, noise_std=0.02)
        out = []
        for _ in range(4):
            out.append(gpu.execute(0.5, 0.2).energy_j)
            for _ in range(reads):  # a monitor polling between intervals
                gpu.temperature_c(), gpu.power_w(), gpu.sample()
        return out

    assert energies(0) == energies(3)


@pytest.mark.parametrize("noise_std", [0.0, 0.02])
def test_same_seed_gives_the_same_trace(noise_std):
    def trace(seed: int) -> list:
        gpu = tel.SimulatedGpu("A100", seed=seed, noise_std=noise_std)
        return [tuple(gpu.execute(0.3, 0.1).as_dict().values()) + tuple(gpu.idle(0.2).as_dict().values())
                for _ in range(5)]

    assert trace(3) == trace(3)
    assert (trace(3) != trace(4)) == (noise_std > 0)


def test_noise_is_on_the_readings_not_the_state():
    quiet, noisy = tel.SimulatedGpu("H100"), tel.SimulatedGpu("H100", seed=1, noise_std=0.05)
    quiet_rec, noisy_rec = quiet.execute(2.0), noisy.execute(2.0)
    assert noisy.energy_j() == quiet.energy_j()  # the counter is noise-free
    assert noisy_rec.energy_j != quiet_rec.energy_j
    assert noisy_rec.energy_j == pytest.approx(quiet_rec.energy_j, rel=0.25)


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_every_gpu_runs_within_its_limits(name):
    gpu = tel.SimulatedGpu(name)
    record = full_load(gpu, 20.0)
    assert math.isfinite(record.energy_j) and record.power_w <= gpu.spec.tdp_w * 1.01
    assert gpu.spec.min_sm_clock_mhz <= record.sm_clock_mhz <= gpu.spec.boost_sm_clock_mhz
    assert 0.99 < record.utilization <= 1.0 and gpu.idle(1.0).utilization == 0.0


REFERENCE_HEADER = (
    b"t_s,phase,power_avg_w,power_instant_w,energy_counter_j,temp_c,sm_clock_mhz,clock_event_reasons,"
    b"util_gpu_pct,util_mem_pct\n"
)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="cooling"):
        tel.SimulatedGpu("H100", cooling=0.0)
    with pytest.raises(ValueError, match="step_s"):
        tel.SimulatedGpu("H100", step_s=1.0)
    with pytest.raises(ValueError, match="noise_std"):
        tel.SimulatedGpu("H100", noise_std=-1.0)
    with pytest.raises(ValueError, match="unknown GPU"):
        tel.SimulatedGpu("B300")
    bad_kwargs = [  # NaN passed every `<` check: NaN energy and temperatures, or numpy's own error for the seed
        (dict(noise_std=math.nan), "noise_std must be a finite number >= 0"),
        (dict(ambient_c=math.nan), "ambient_c must be None or a temperature"),
        (dict(initial_temp_c=math.nan), "initial_temp_c must be None or a temperature"),
        (dict(cooling=math.inf), "cooling must be a finite number > 0"),
        (dict(seed=-1), "seed must be None or a non-negative integer, got -1"),
        (dict(seed=0.5), "seed must be None or a non-negative integer, got 0.5"),
    ]
    for kwargs, message in bad_kwargs:
        with pytest.raises(ValueError, match=message):
            tel.SimulatedGpu("H100", **kwargs)
    assert tel.SimulatedGpu("H100", seed=None).temperature_c() > 0  # unseeded, as the env's seed=None
    gpu = tel.SimulatedGpu("H100")
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="compute_s"):
            gpu.execute(bad)
        with pytest.raises(ValueError, match="seconds"):
            gpu.idle(bad)
    assert gpu.execute(0.0).duration_s == 0.0


def test_initial_temperature_and_readings():
    gpu = tel.SimulatedGpu("H100", initial_temp_c=70.0, ambient_c=30.0)
    assert gpu.temperature_c() == 70.0 and gpu.memory_temperature_c() < 70.0
    assert gpu.sample().temperature_c == 70.0 and gpu.power_limit_w() == 700.0
    assert gpu.idle(120.0).temperature_c < tel.steady_temperature_c(gpu.spec, gpu.spec.idle_w, 30.0) + 1.0


@pytest.mark.parametrize(
    "content, message",
    [
        (b"t_s,phase\n0.0,idle\n", "KeyError: 'power_avg_w'"),
        (b"\xff\xfe not text", "UnicodeDecodeError"),
        (REFERENCE_HEADER + b"0.0,idle,1,1,1,1,1,0,0,0\n", "has 1 rows"),
        (REFERENCE_HEADER + b"0.0,idle,hot,1,1,1,1,0,0,0\n0.1,idle,1,1,1,1,1,0,0,0\n", "ValueError"),
    ],
)
def test_a_damaged_step_response_trace_names_the_file(tmp_path, content, message):
    from telemetry.reference import load_reference_trace

    path = tmp_path / "trace.csv"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="trace.csv is not a step-response trace|trace.csv has 1 rows") as err:
        load_reference_trace(path)
    assert message in str(err.value)


@pytest.mark.parametrize("period_s", [0.0, -1.0, float("nan"), float("inf")])
def test_a_duty_period_that_never_advances_is_refused(period_s):
    from telemetry.reference import replay_reference

    # checked before the trace is read (an endless loop otherwise), so no measured trace is needed here
    with pytest.raises(ValueError, match="period_s must be a positive, finite duty-cycle period"):
        replay_reference(tel.SimulatedGpu("H100"), trace=None, period_s=period_s)
