"""NvmlSource against a fake pynvml replaying the measured H100 (tests/telemetry_fakes.py): fields, fallbacks,
errors, the wrapping energy counter, and the background sampler."""

from __future__ import annotations

import copy
import pickle
import time
import warnings

import pynvml
import pytest
from telemetry_fakes import FULL_LOAD_S, FakeNvml, reference_rows

import telemetry as tel


@pytest.fixture(scope="module")
def rows():
    return reference_rows()


def make_source(rows, start_s=80.0, **fake_kwargs):
    fake = FakeNvml(rows, start_s=start_s, **fake_kwargs)
    return tel.NvmlSource(0, nvml=fake, clock=fake.clock), fake


def test_fields_follow_the_replayed_row(rows):
    source, fake = make_source(rows, start_s=90.0)
    row = fake.row()
    assert source.power_field == "instant" and source.energy_source == "energy_counter"
    assert source.power_w() == pytest.approx(float(row["power_instant_w"]), abs=1e-3)
    assert source.average_power_w() == pytest.approx(float(row["power_avg_w"]), abs=1e-3)
    assert source.temperature_c() == int(float(row["temp_c"]))
    assert source.memory_temperature_c() == int(float(row["temp_c"])) - 4
    assert source.sm_clock_mhz() == int(float(row["sm_clock_mhz"])) and source.memory_clock_mhz() == 2619
    assert source.utilization_percent() == int(float(row["util_gpu_pct"]))
    assert source.memory_utilization_percent() == int(float(row["util_mem_pct"]))
    assert source.memory_total_mb() == 80 * 1024 and source.power_limit_w() == 700.0
    assert source.temperature_thresholds_c() == {"slowdown": 89, "shutdown": 95, "gpu_max": 87}
    assert "sw_power_cap" in source.clock_event_reasons()  # the reference's full load: reason 0x4
    assert source.driver_version() == "580.159.04" and "H100" in source.name()


def test_without_instant_power_the_averaged_reading_is_used_and_said(rows):
    source, fake = make_source(rows, instant=False)
    assert source.power_field == "average"
    assert source.power_w() == pytest.approx(float(fake.row()["power_avg_w"]), abs=1e-3)
    assert source.instant_power_w() is None


def test_an_unsupported_field_degrades_to_none_with_one_warning(rows):
    source, fake = make_source(rows)
    with pytest.warns(RuntimeWarning, match="fan_speed") as record:
        assert source.fan_speed_percent() is None
        assert source.fan_speed_percent() is None
    assert len([w for w in record if "fan_speed" in str(w.message)]) == 1
    assert fake.nvmlDeviceGetFanSpeed.call_count == 1  # not asked again


@pytest.mark.parametrize(("code", "words"), [
    (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "libnvidia-ml"),
    (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "driver is not loaded"),
])
def test_missing_driver_is_a_clear_error(rows, code, words):
    with pytest.raises(tel.NvmlUnavailableError, match=words) as info:
        make_source(rows, init_error=code)
    assert isinstance(info.value.__cause__, pynvml.NVMLError)


def test_missing_gpu_index_is_a_clear_error(rows):
    fake = FakeNvml(rows)
    with pytest.raises(tel.NvmlUnavailableError, match="no GPU with NVML index 3: NVML sees 1"):
        tel.NvmlSource(3, nvml=fake, clock=fake.clock)


def test_a_failing_query_raises_our_error_from_nvmls(rows):
    source, fake = make_source(rows)
    fake.nvmlDeviceGetTemperature.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
    with pytest.raises(tel.NvmlQueryError, match="temperature") as info:
        source.temperature_c()
    assert isinstance(info.value.__cause__, pynvml.NVMLError)


def test_energy_counter_counts_across_a_restart_and_ignores_a_step_back(rows):
    """NVML's counter is 64-bit mJ since driver load and does not wrap: a reading far below the last is a restart
    (the energy since is the reading), a small step back a glitch (nothing); each warns. (It used to add 2**64 mJ,
    1.8e16 J, for a 10 mJ step back past 2**32 mJ.)"""
    source, fake = make_source(rows, start_s=80.0)
    start_j = source.energy_j()
    fake.advance(5.0)
    expected_j = fake.counter_j_at(85.0) - fake.counter_j_at(80.0)
    assert source.energy_j() - start_j == pytest.approx(expected_j, abs=1e-3)
    fake.counter_offset_mj -= 10_000  # a 10 J glitch back
    with pytest.warns(RuntimeWarning, match="a glitch: ignored"):
        assert source.energy_j() - start_j == pytest.approx(expected_j, abs=1e-3)
    fake.counter_offset_mj += 10_000  # and back: the dip is not counted on the way up either
    assert source.energy_j() - start_j == pytest.approx(expected_j, abs=1e-3)
    fake.counter_offset_mj = -int(fake.counter_j_at(85.0) * 1000)  # the driver reloaded: the counter reads 0 now
    with pytest.warns(RuntimeWarning, match="a restart"):
        assert source.energy_j() - start_j == pytest.approx(expected_j, abs=1e-3)
    fake.advance(5.0)  # and counts up from there
    assert source.energy_j() - start_j == pytest.approx(fake.counter_j_at(90.0) - fake.counter_j_at(80.0), abs=0.02)


def test_nvml_inits_are_matched_by_shutdowns_once(rows):
    """NVML counts inits: a source closed twice, or one that fails to open, must not take another user's init."""
    fake = FakeNvml(rows, start_s=80.0)
    a = tel.NvmlSource(0, nvml=fake, clock=fake.clock)
    b = tel.NvmlSource(0, nvml=fake, clock=fake.clock)
    a.close()
    a.close()
    assert fake.inits == 1 and b.temperature_c() > 0  # b still reads
    with pytest.raises(tel.NvmlUnavailableError, match="no GPU with NVML index 3"):
        tel.NvmlSource(3, nvml=fake, clock=fake.clock)
    fake.nvmlDeviceGetHandleByIndex.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)
    with pytest.raises(tel.NvmlUnavailableError, match="cannot be opened"):
        tel.NvmlSource(0, nvml=fake, clock=fake.clock)
    assert fake.inits == 1
    b.close()
    assert fake.inits == 0


def test_a_failed_field_reading_is_lost_and_only_not_supported_degrades(rows):
    source, fake = make_source(rows, start_s=80.0)
    real = fake._nvmlDeviceGetFieldValues  # the fake's own reply

    def failing(code):
        def values(handle, field_ids):
            out = real(handle, field_ids)
            out[0].nvmlReturn = code
            return out
        return values

    fake.nvmlDeviceGetFieldValues.side_effect = failing(pynvml.NVML_ERROR_UNKNOWN)
    with pytest.warns(RuntimeWarning, match="instant_power returned code"):
        assert source.power_w() == pytest.approx(source.average_power_w())  # that reading: the averaged one
    fake.nvmlDeviceGetFieldValues.side_effect = real
    assert source.power_field == "instant"  # one bad reading: the field is kept
    assert source.power_w() == pytest.approx(float(fake.row()["power_instant_w"]), abs=1e-3)
    fake.nvmlDeviceGetFieldValues.side_effect = failing(pynvml.NVML_ERROR_NOT_SUPPORTED)
    with pytest.warns(RuntimeWarning, match="instant_power unavailable"):
        power_w = source.power_w()
    assert power_w == pytest.approx(source.average_power_w()) and source.power_field == "average"
    fresh = FakeNvml(rows, start_s=80.0)
    fresh.nvmlDeviceGetFieldValues.side_effect = failing(pynvml.NVML_ERROR_UNKNOWN)
    assert tel.NvmlSource(0, nvml=fresh, clock=fresh.clock).power_field == "average"  # failing from the start: unoffered


def test_a_cuda_device_is_found_in_nvml_by_uuid(rows, monkeypatch):
    """Under CUDA_VISIBLE_DEVICES=2,0, cuda:0 is NVML's GPU 2: the index comes from the device's UUID."""
    import sys
    import types

    fake = FakeNvml(rows)
    uuids = {"GPU-aaaa": 2, "GPU-bbbb": 0}
    fake.nvmlDeviceGetHandleByUUID.side_effect = lambda uuid: f"handle-{uuid}"
    fake.nvmlDeviceGetIndex.side_effect = lambda handle: uuids[handle.removeprefix("handle-")]
    visible = ["aaaa", "bbbb"]  # CUDA's order
    cuda = types.SimpleNamespace(is_available=lambda: True, current_device=lambda: 1,
                                 get_device_properties=lambda i: types.SimpleNamespace(uuid=visible[i]))
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    assert tel.nvml_index_of_cuda_device(0, nvml=fake) == 2
    assert tel.nvml_index_of_cuda_device(nvml=fake) == 0  # the current device, cuda:1
    def by_uuid(uuid):  # a MIG instance: torch gives its bare UUID, NVML knows it as "MIG-..."
        if uuid != "MIG-aaaa":
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return "mig-handle"

    fake.nvmlDeviceGetHandleByUUID.side_effect = by_uuid
    fake.nvmlDeviceGetDeviceHandleFromMigDeviceHandle.side_effect = lambda handle: "handle-GPU-aaaa"
    with pytest.warns(RuntimeWarning, match="MIG instance"):
        assert tel.nvml_index_of_cuda_device(0, nvml=fake) == 2  # its card's index
    fake.nvmlDeviceGetHandleByUUID.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
    with pytest.warns(RuntimeWarning, match="not found by NVML"):
        assert tel.nvml_index_of_cuda_device(0, nvml=fake) == 0
    assert fake.inits == 0
    # the lookup happens only where an NVML source opens: a simulated monitor never asks NVML
    monkeypatch.setattr("telemetry.monitor.nvml_index_of_cuda_device", lambda *a: pytest.fail("NVML asked"))
    assert tel.GpuSystemMonitor(source="simulated", cuda_device=0).source_kind == "simulated"


def test_without_energy_counter_power_is_integrated(rows):
    source, fake = make_source(rows, start_s=80.0, energy_counter=False)
    assert source.energy_source == "power_integration"
    start_j = source.energy_j()
    for _ in range(500):  # 5 s of 100 Hz readings
        fake.advance(0.01)
        source.sample()
    expected_j = fake.counter_j_at(85.0) - fake.counter_j_at(80.0)
    assert source.energy_j() - start_j == pytest.approx(expected_j, rel=0.03)


def test_background_sampler_fills_the_ring_buffer_and_stops(rows):
    source, fake = make_source(rows, start_s=FULL_LOAD_S[0], follow_wall_clock=True)
    counter_calls = fake.nvmlDeviceGetTotalEnergyConsumption.call_count
    source.start_sampler(rate_hz=200.0)
    time.sleep(0.3)
    source.stop_sampler()
    assert not source.sampler_running
    samples = source.buffer.snapshot()
    assert 20 <= len(samples) <= 80
    assert all(a.t_s < b.t_s for a, b in zip(samples, samples[1:]))
    assert all(s.power_w is not None and s.temperature_c is not None for s in samples)
    assert fake.nvmlDeviceGetTotalEnergyConsumption.call_count == counter_calls  # never the ~4 ms counter
    time.sleep(0.05)
    assert len(source.buffer) == len(samples)  # nothing after stop


def test_sampler_survives_a_failing_read(rows, caplog):
    source, fake = make_source(rows, follow_wall_clock=True)
    fake.nvmlDeviceGetTemperature.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
    source.start_sampler(rate_hz=100.0)
    time.sleep(0.1)
    source.stop_sampler()
    assert len(source.buffer) == 0 and "sampler read failed" in caplog.text


def test_ring_buffer_drops_the_oldest():
    buffer = tel.SampleBuffer(capacity=3)
    for t_s in range(5):
        buffer.append(tel.Sample(float(t_s), 1.0, 50.0, 1000.0, 0.0, 0.0))
    assert [s.t_s for s in buffer.snapshot()] == [2.0, 3.0, 4.0]
    assert [s.t_s for s in buffer.between(2.5, 10.0)] == [3.0, 4.0]


def test_an_nvml_source_refuses_to_be_copied_by_name(rows):
    source, _ = make_source(rows)
    for copy_of in (copy.deepcopy, copy.copy, pickle.dumps):
        with pytest.raises(TypeError, match="NVML GPU source .GPU 0. cannot be pickled or copied"):
            copy_of(source)


def test_ring_buffer_pickles_and_copies_with_a_lock_of_its_own():
    buffer = tel.SampleBuffer(capacity=3)
    for t_s in range(4):
        buffer.append(tel.Sample(float(t_s), 1.0, 50.0, 1000.0, 0.0, 0.0))
    for copy_of in (copy.deepcopy, lambda b: pickle.loads(pickle.dumps(b))):
        other = copy_of(buffer)
        other.append(tel.Sample(9.0, 1.0, 50.0, 1000.0, 0.0, 0.0))  # its lock works; still 3 kept
        assert [s.t_s for s in other.snapshot()] == [2.0, 3.0, 9.0]
        assert [s.t_s for s in buffer.snapshot()] == [1.0, 2.0, 3.0] and other._lock is not buffer._lock


def test_clock_event_reasons_decode_both_ways():
    assert tel.decode_clock_event_reasons(0x4) == ("sw_power_cap",)
    assert tel.decode_clock_event_reasons(0x21) == ("gpu_idle", "sw_thermal_slowdown")
    assert tel.decode_clock_event_reasons(0x10000) == ("unknown_0x10000",)
    assert tel.encode_clock_event_reasons(["sw_power_cap", "hw_thermal_slowdown"]) == 0x44
    with pytest.raises(ValueError, match="unknown clock-event"):
        tel.encode_clock_event_reasons(["too_hot"])


def test_import_never_needs_nvml():
    """With pynvml impossible to import, the packages still import, NVML reads as unavailable and `auto` simulates."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; sys.modules['pynvml'] = None\n"  # `import pynvml` now raises ImportError
            "import telemetry, envs, agents\n"
            "print(telemetry.nvml_available(), telemetry.GpuSystemMonitor(source='auto').source_kind)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "simulated"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(tel.nvml_available(), bool)
