"""TraceRecorder (JSONL, CSV, TensorBoard; crash safety) and the telemetry scripts as subprocesses."""

from __future__ import annotations

import csv
import importlib.util
import json
import pathlib
import re
import subprocess
import sys

import pytest

import telemetry as tel
from telemetry.reference import find_reference_file

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_jsonl_rows_of_every_kind(tmp_path):
    gpu = tel.SimulatedGpu("H100")
    path = tmp_path / "trace.jsonl"
    with tel.TraceRecorder(path) as recorder:
        recorder.write(gpu.execute(0.5))
        recorder.write(gpu.sample())
        recorder.write({"step": 3, "energy_j": 1.5})
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 3 and rows[0]["source"] == "simulated" and rows[2] == {"step": 3, "energy_j": 1.5}
    assert rows[0]["clock_event_reasons"] == "sw_power_cap" and rows[1]["power_w"] > 100


def test_a_crash_loses_at_most_the_unflushed_rows(tmp_path):
    path = tmp_path / "trace.jsonl"
    recorder = tel.TraceRecorder(path, flush_rows=5, flush_interval_s=3600)
    for step in range(12):
        recorder.write({"step": step})
    assert len(path.read_text().splitlines()) == 10  # not closed, as after a crash: two rows pending
    recorder.close()
    assert len(path.read_text().splitlines()) == 12


def test_csv_appended_rows_go_under_the_saved_header(tmp_path):
    path = tmp_path / "trace.csv"
    with tel.TraceRecorder(path) as recorder:
        recorder.write({"power_w": 100.0, "temperature_c": 50.0})
    with tel.TraceRecorder(path) as recorder:  # reopened, keys in another order, one missing
        recorder.write({"temperature_c": 60.0, "power_w": 200.0})
        recorder.write({"power_w": 300.0})
    rows = list(csv.DictReader(path.open()))
    assert [(r["power_w"], r["temperature_c"]) for r in rows] == [("100.0", "50.0"), ("200.0", "60.0"), ("300.0", "")]
    headless = tmp_path / "headless.csv"
    headless.write_text("\n")
    with tel.TraceRecorder(headless) as recorder, pytest.raises(ValueError, match="has no CSV header"):
        recorder.write({"power_w": 1.0})


def test_csv_rows_keep_the_first_header(tmp_path):
    path = tmp_path / "trace.csv"
    with tel.TraceRecorder(path, fsync=True) as recorder:
        recorder.write({"t_s": 0.0, "power_w": 75.0})
        with pytest.warns(RuntimeWarning, match="not in the CSV header"):
            recorder.write({"t_s": 0.1, "power_w": 80.0, "extra": 1})
        recorder.write({"t_s": 0.2, "power_w": 85.0, "extra": 2})
    rows = list(csv.DictReader(path.open()))
    assert [r["power_w"] for r in rows] == ["75.0", "80.0", "85.0"] and "extra" not in rows[0]


def test_tensorboard_scalars_are_written(tmp_path):
    pytest.importorskip("tensorboard")
    with tel.TraceRecorder(tmp_path / "t.jsonl", tensorboard_dir=str(tmp_path / "tb")) as recorder:
        for step in range(3):
            recorder.write({"power_w": 100.0 + step, "phase": "idle"}, step=step)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    # tensorboard's own writer logs scalars as tensor summaries, torch's SummaryWriter as scalars: read either
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    scalars |= {tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]
                for tag in events.Tags()["tensors"]}  # fmt: skip
    assert scalars == {"telemetry/power_w": [(0, 100.0), (1, 101.0), (2, 102.0)]}  # numbers only, each at its step


def test_recorder_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="fmt"):
        tel.TraceRecorder(tmp_path / "x.txt", fmt="parquet")
    with tel.TraceRecorder(tmp_path / "x.jsonl") as recorder, pytest.raises(TypeError, match="dict or a dataclass"):
        recorder.write(42)


def run_script(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout_s)


def test_python_m_telemetry_prints_the_device_and_a_table():
    result = run_script("-m", "telemetry", "--source", "simulated", "--samples", "3", "--interval_s", "0.1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("device: simulated H100") and len(lines) == 6
    assert "sw_power_cap" in lines[-1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--samples", "0"], "--samples must be >= 1"),
        (["--source", "dcgm"], "--source 'dcgm' is not auto, nvml or simulated"),
        (["--source", "simulated", "--gpu", "H900"], "unknown GPU 'H900'"),
    ],
)
def test_python_m_telemetry_names_bad_arguments(args, message):
    result = run_script("-m", "telemetry", *args)
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


@pytest.mark.skipif(find_reference_file() is None, reason="shared/reference not found")
def test_sim_vs_h100_benchmark_ends_with_the_worst_error_line(tmp_path):
    png = tmp_path / "sim.png"
    result = run_script("benchmarks/sim_vs_h100.py", "--png", str(png))
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"worst steady error: temperature ([\d.]+) C, power ([\d.]+) %, clock ([\d.]+) %", last)
    assert match and float(match[1]) <= 3 and float(match[2]) <= 10 and float(match[3]) <= 10
    assert png.stat().st_size > 10_000
    figures = json.loads(png.with_suffix(".json").read_text())  # the printed figures, beside the plot
    assert figures["figures"] == "simulated vs measured" and figures["png"] == "sim.png"
    assert [row["phase"] for row in figures["phases"]][:2] == ["idle0", "duty25"]
    worst = figures["worst"]
    assert last == (f"worst steady error: temperature {worst['temp_error_c']:.1f} C, "
                    f"power {worst['power_error_pct']:.1f} %, clock {worst['clock_error_pct']:.1f} %")
    assert worst["temp_error_c"] == max(row["temp_error_c"] for row in figures["phases"])
    assert set(figures["steps"]) == {"heating (duty100)", "cooling (idle3)"}
    assert not list(tmp_path.glob("*.tmp"))


def test_overhead_benchmark_runs_with_a_tiny_budget(tmp_path):
    out = tmp_path / "overhead.json"
    result = run_script("benchmarks/telemetry_overhead.py", "--source", "simulated", "--repeats", "20",
                        "--sampler_s", "0.1", "--loop_s", "0.05", "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())
    assert summary["telemetry_source"] == "simulated" and summary["figures"].startswith("measured")
    assert summary["query_us"]["temperature_c"] > 0
    assert [row["rate_hz"] for row in summary["samplers"]] == [10.0, 100.0]


def test_sampler_achieved_rate_counts_intervals_not_reads(monkeypatch):
    """4 Hz for 0.625 s: reads at 0, 0.25 and 0.5 s are 4 Hz, not 3 reads / 0.625 s = 4.8 Hz (a fencepost)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # as when run as a script: `from _cli import ...`
    spec = importlib.util.spec_from_file_location("telemetry_overhead_bench", REPO / "benchmarks/telemetry_overhead.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    row = module.sampler_cost(tel.SimulatedGpu("H100"), rate_hz=4.0, seconds=0.625)
    assert row["reads"] == 3 and row["achieved_hz"] == pytest.approx(4.0, rel=0.05), row
    assert module.sampler_cost(tel.SimulatedGpu("H100"), rate_hz=1.0, seconds=0.2)["achieved_hz"] is None
