"""GpuSystemMonitor: source choice, the seeds' stats keys, and named energy windows (NVML replay and simulated)."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from telemetry_fakes import FULL_LOAD_S, FakeNvml, reference_rows

import telemetry as tel
import telemetry.monitor as monitor_module
from telemetry.samples import THROTTLE_REASONS

SEED_KEYS = {"temperature", "power_watt", "memory_utilization_percent", "gpu_utilization_percent", "source"}


@pytest.fixture(scope="module")
def rows():
    return reference_rows()


def nvml_monitor(rows, start_s=80.0, **fake_kwargs):
    fake = FakeNvml(rows, start_s=start_s, **fake_kwargs)
    source = tel.NvmlSource(0, nvml=fake, clock=fake.clock)
    return tel.GpuSystemMonitor(source=source, start_sampler=False), fake


def instant_integral_j(rows, start_s, end_s):
    t = np.array([r["t_s"] for r in rows])
    power = np.array([r["power_instant_w"] for r in rows])
    grid = np.arange(start_s, end_s, 0.001)
    return float(np.interp(grid, t, power).sum() * 0.001)


def test_simulated_source_answers_with_the_seed_keys():
    monitor = tel.GpuSystemMonitor(device_id=0, source="simulated")
    stats = monitor.get_current_stats()
    assert SEED_KEYS <= set(stats) and stats["source"] == "simulated"
    assert stats["temperature"] > 30 and stats["power_watt"] > 0 and stats["clock_event_reasons"] == ["gpu_idle"]


def test_nvml_source_answers_with_the_seed_keys(rows):
    monitor, fake = nvml_monitor(rows, start_s=90.0)
    stats = monitor.get_current_stats()
    assert SEED_KEYS <= set(stats) and stats["source"] == "nvml"
    assert stats["power_watt"] == pytest.approx(float(fake.row()["power_instant_w"]), abs=1e-3)
    assert stats["gpu_utilization_percent"] > 90 and stats["throttled"] is True


def test_a_given_source_object_is_read_as_it_is():
    gpu = tel.SimulatedGpu("L4", initial_temp_c=66.0)
    monitor = tel.GpuSystemMonitor(source=gpu)
    assert monitor.source is gpu and monitor.get_current_stats()["temperature"] == 66.0
    gpu.execute(2.0)
    assert monitor.get_current_stats()["temperature"] > 66.0


def test_auto_picks_the_simulator_without_nvml_and_says_so(monkeypatch):
    monkeypatch.setattr(monitor_module, "nvml_available", lambda: False)
    monitor = tel.GpuSystemMonitor(source="auto")
    assert monitor.source_kind == "simulated" and "no NVML" in monitor.reason


def test_asking_for_nvml_without_it_is_a_clear_error(monkeypatch):
    def no_driver(device_index):
        raise tel.NvmlUnavailableError("NVML library (libnvidia-ml.so) not found")

    monkeypatch.setattr(monitor_module, "NvmlSource", no_driver)
    with pytest.raises(tel.NvmlUnavailableError, match="libnvidia-ml"):
        tel.GpuSystemMonitor(source="nvml")


def test_bad_sources_are_rejected():
    with pytest.raises(ValueError, match="'auto', 'nvml', 'simulated'"):
        tel.GpuSystemMonitor(source="cuda")
    with pytest.raises(TypeError, match="lacks"):
        tel.GpuSystemMonitor(source=object())


def test_windows_nest_and_overlap_by_name_on_the_simulator():
    monitor = tel.GpuSystemMonitor(source="simulated")
    gpu = monitor.source
    monitor.begin_window("outer")
    first = gpu.execute(1.0)
    monitor.begin_window("inner")
    rest = gpu.idle(0.5)
    monitor.begin_window("overlap")
    inner = monitor.end_window("inner")
    second = gpu.execute(0.3)
    outer = monitor.end_window("outer")
    last = gpu.idle(0.2)
    overlap = monitor.end_window("overlap")
    assert monitor.open_windows == []
    assert inner.duration_s == pytest.approx(0.5) and inner.energy_j == pytest.approx(rest.energy_j)
    assert outer.duration_s == pytest.approx(first.duration_s + 0.5 + second.duration_s)
    assert outer.energy_j == pytest.approx(first.energy_j + rest.energy_j + second.energy_j)
    assert overlap.duration_s == pytest.approx(second.duration_s + 0.2)
    assert overlap.energy_j == pytest.approx(second.energy_j + last.energy_j)
    assert inner.energy_source == "simulated" and inner.accurate and inner.energy_uncertainty_j == 0.0
    assert outer.peak_power_w == pytest.approx(max(first.peak_power_w, second.peak_power_w))
    assert outer.throttled_share > 0.3 and outer.peak_temperature_c > 60
    assert inner.power_w == pytest.approx(inner.energy_j / inner.duration_s)
    assert outer.sm_clock_mhz < gpu.spec.boost_sm_clock_mhz and outer.temperature_source == "samples"


def test_a_simulated_window_sees_simulated_time_only():
    """Host time does not move the simulator (as the docstrings say): a window around a sleep alone is empty."""
    monitor = tel.GpuSystemMonitor(source="simulated")
    with monitor.window("sleep") as slept:
        time.sleep(0.05)
    with monitor.window("idle") as idled:
        monitor.source.idle(0.5)
    assert (slept.measurement.duration_s, slept.measurement.energy_j, slept.measurement.accurate) == (0.0, 0.0, True)
    assert idled.measurement.duration_s == pytest.approx(0.5) and idled.measurement.energy_j > 0


def test_window_names_are_checked():
    monitor = tel.GpuSystemMonitor(source="simulated")
    monitor.begin_window("step")
    with pytest.raises(ValueError, match="already open"):
        monitor.begin_window("step")
    with pytest.raises(ValueError, match="no open window 'other'.*'step'"):
        monitor.end_window("other")
    with monitor.window("ctx") as window:
        monitor.source.execute(0.2)
    assert window.measurement.energy_j > 0 and window.measurement.name == "ctx"
    with pytest.raises(RuntimeError, match="boom"), tel.EnergyWindow(monitor, "failing") as failing:
        raise RuntimeError("boom")
    assert failing.measurement is not None and "failing" not in monitor.open_windows


@pytest.mark.parametrize("start_s", [80.0, 95.0, 120.0])
def test_long_nvml_windows_use_the_counter_and_agree_with_instant_power(rows, start_s):
    monitor, fake = nvml_monitor(rows, start_s=start_s)
    monitor.begin_window("w")
    fake.advance(2.0)
    m = monitor.end_window("w")
    assert m.energy_source == "energy_counter" and m.accurate and m.source == "nvml"
    assert m.energy_j == pytest.approx(fake.counter_j_at(start_s + 2.0) - fake.counter_j_at(start_s), abs=1e-3)
    true_j = instant_integral_j(rows, start_s, start_s + 2.0)
    assert abs(m.energy_j - true_j) <= max(m.energy_uncertainty_j, 0.03 * true_j)  # measured: within ~2%


def test_short_nvml_window_without_samples_is_flagged(rows):
    monitor, fake = nvml_monitor(rows, start_s=85.0)
    monitor.begin_window("short")
    fake.advance(0.25)
    with pytest.warns(RuntimeWarning, match="under 1.0 s"):
        m = monitor.end_window("short")
    assert not m.accurate and m.energy_source == "energy_counter" and "under" in m.note


def test_short_nvml_window_with_samples_integrates_power(rows):
    monitor, fake = nvml_monitor(rows, start_s=85.0)
    monitor.begin_window("short")
    for _ in range(25):  # the sampler's work, driven by hand: 100 Hz for 0.25 s
        fake.advance(0.01)
        monitor.source.buffer.append(monitor.source.sample())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = monitor.end_window("short")
    assert m.accurate and m.energy_source == "power_integration" and m.samples == 25
    assert m.energy_j == pytest.approx(instant_integral_j(rows, 85.0, 85.25), rel=0.05)
    assert m.power_source == "nvml_instant" and m.peak_temperature_c >= 70 and m.throttled_share == 1.0


@pytest.mark.parametrize("energy_counter", [True, False])
def test_a_short_window_integrated_from_averaged_power_is_flagged(rows, energy_counter):
    """Without the instant field, power is NVML's ~1 s average: integrated over 0.25 s it lags a load step, so the
    window says it is not accurate (it read 47 J for 133 J at the reference's step, marked accurate)."""
    monitor, fake = nvml_monitor(rows, start_s=FULL_LOAD_S[0] - 0.1, instant=False, energy_counter=energy_counter)
    monitor.begin_window("short")
    for _ in range(25):
        fake.advance(0.01)
        monitor.source.buffer.append(monitor.source.sample())
    m = monitor.end_window("short")
    assert m.energy_source == "power_integration" and not m.accurate and "average power" in m.note


def test_a_window_reports_every_clock_event_reason_its_samples_saw(rows):
    # From the end of the full-load phase into idle: the power cap held while the work ran, not at the window's end.
    start_s = FULL_LOAD_S[1] - 1.0
    monitor, fake = nvml_monitor(rows, start_s=start_s)
    monitor.begin_window("load_then_idle")
    for _ in range(40):
        fake.advance(0.1)
        monitor.source.buffer.append(monitor.source.sample())
    m = monitor.end_window("load_then_idle")
    under_load = {r for s in monitor.source.samples_between(start_s, start_s + 0.95) for r in s.clock_event_reasons}
    assert THROTTLE_REASONS & under_load  # the replay throttles under load
    seen = {r for s in monitor.source.samples_between(start_s, start_s + 4.0) for r in s.clock_event_reasons}
    assert set(m.clock_event_reasons) == seen and under_load <= seen
    assert not THROTTLE_REASONS & set(monitor.get_current_stats()["clock_event_reasons"])  # idle by the end
    assert 0.0 < m.throttled_share < 1.0


def test_sample_age_is_the_time_since_the_newest_sample(rows):
    monitor, fake = nvml_monitor(rows, start_s=85.0)
    assert monitor.sample_age_s() == float("inf")  # the sampler never ran
    monitor.source.buffer.append(monitor.source.sample())
    fake.advance(0.25)
    assert monitor.sample_age_s() == pytest.approx(0.25)
    fake.advance(11.0)
    assert monitor.sample_age_s() == float("inf")  # older than the horizon
    sim = tel.GpuSystemMonitor(source="simulated")
    sim.source.execute(compute_s=0.05)
    assert sim.sample_age_s() == pytest.approx(0.0, abs=1e-6)


def test_a_counter_that_does_not_tick_is_warned_about(rows):
    monitor, fake = nvml_monitor(rows, start_s=85.0)
    stuck_mj = fake.nvmlDeviceGetTotalEnergyConsumption("handle0")
    fake.nvmlDeviceGetTotalEnergyConsumption.side_effect = lambda handle: stuck_mj
    monitor.begin_window("stuck")
    fake.advance(1.5)
    with pytest.warns(RuntimeWarning, match=r"window 'stuck': the energy counter did not tick in 1\.500 s"):
        m = monitor.end_window("stuck")
    assert m.energy_j == 0.0 and m.energy_source == "energy_counter" and m.duration_s == pytest.approx(1.5)


INTERFACE = ["now_s", "power_w", "instant_power_w", "average_power_w", "energy_j", "temperature_c",
             "memory_temperature_c", "sm_clock_mhz", "utilization_percent", "memory_utilization_percent",
             "power_limit_w", "memory_total_mb", "name"]


@pytest.mark.parametrize("kind", ["nvml", "simulated"])
def test_both_sources_offer_one_interface(rows, kind):
    if kind == "nvml":
        fake = FakeNvml(rows, start_s=90.0)
        source = tel.NvmlSource(0, nvml=fake, clock=fake.clock)
    else:
        source = tel.SimulatedGpu("H100")
        source.execute(1.0)
    for method in INTERFACE:
        value = getattr(source, method)()
        assert isinstance(value, str if method == "name" else float), (kind, method, value)
    sample = source.sample()
    assert isinstance(sample, tel.Sample) and sample.power_w > 0 and sample.clock_event_reasons
    assert all(isinstance(reason, str) for reason in source.clock_event_reasons())
    assert source.source == kind
    source.synchronize()


@pytest.mark.parametrize("rate", [0, -10.0, float("nan"), "100"])
def test_a_bad_sample_rate_is_refused_whatever_the_source(rate):
    """It was accepted with a simulated source, and with NVML refused only when the sampler started."""
    with pytest.raises(ValueError, match="sample_rate_hz must be a positive, finite number"):
        tel.GpuSystemMonitor(source="simulated", sample_rate_hz=rate)
