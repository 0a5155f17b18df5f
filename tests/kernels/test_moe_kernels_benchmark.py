"""Smoke test of benchmarks/moe_kernels.py with a tiny budget, as a subprocess (main test run)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "moe_kernels.py"


def test_benchmark_runs_and_writes_json(tmp_path):
    out = tmp_path / "moe_kernels.json"
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--experts", "16", "--top-k", "2", "--tokens", "1024",
           "--d-model", "1024", "--base-width", "256", "--warmup-ms", "2", "--rep-ms", "5"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["figures"] == "measured" and result["device"]
    if torch.cuda.is_available():
        (case,) = result["cases"]
        assert case["swiglu_triton_ms"] > 0 and case["dense_tflops"] > 0 and "target_met" in case
    else:
        assert "needs CUDA" in proc.stdout
        assert {r["op"] for r in result["cpu_reference"]} == {"route_reference", "swiglu_loop"}
        assert all(r["median_ms"] > 0 for r in result["cpu_reference"])


def test_host_overhead_benchmark_runs_without_a_gpu(tmp_path):
    out = tmp_path / "host.json"
    script = SCRIPT.parent / "kernel_host_overhead.py"
    cmd = [sys.executable, str(script), "--out", str(out), "--number", "3", "--repeat", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["figures"].startswith("measured") and len(result["cases"]) == 4
    assert all(c["swiglu_host_us"] > 0 and c["route_host_us"] > 0 for c in result["cases"])
    assert [c["swiglu_launches"] for c in result["cases"]] == [5, 4, 5, 6]  # the case list's top-k and pass sizes


@pytest.fixture
def bench(monkeypatch):
    """benchmarks/moe_kernels.py as a module (as when run as a script: `from _cli import ...` resolves)."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("moe_kernels_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def grid_row(tokens, experts, fraction, graph_ms, floor_ms, *, triton_ms=1.0, speedup=2.0):
    """A grid row as the benchmark writes it, the Triton path at 100 TFLOP/s: dense_ms from the fraction of dense."""
    return dict(tokens=tokens, experts=experts, top_k=2, d_model=1024, swiglu_triton_ms=triton_ms,
                swiglu_triton_graph_ms=graph_ms, dense_ms=fraction * triton_ms, fraction_of_dense=fraction,
                speedup_vs_loop=speedup, floor_ms=floor_ms, flops=100e9 * triton_ms,
                dense_tflops=100 / fraction)  # fmt: skip


def test_judge_names_why_a_dense_target_was_missed(bench):
    met = grid_row(8192, 8, 0.7, 0.95, 0.3)
    # Ceiling = dense / floor = 0.45 ms / 1.0 ms: no kernel could reach 60% of dense at the datasheet peaks.
    roofline = grid_row(8192, 64, 0.45, 0.98, 1.0)
    launch = grid_row(16384, 16, 0.45, 0.7, 0.2)  # replayed from a graph: 0.45 / 0.7 = 64% of dense
    kernel = grid_row(8192, 16, 0.45, 0.9, 0.2)  # 50% even replayed, ceiling 225%
    small = grid_row(2048, 16, 0.1, 0.5, 0.1, speedup=1.2)
    no_graph = grid_row(8192, 16, 0.45, None, 0.2)
    noise = grid_row(8192, 16, 0.59, 0.98, 0.2)  # replayed at 60%, but only 2% faster: not host time
    # 4.5 GB of tiles at 6 TB/s take 0.75 ms where 60% of dense needs 0.45 / 0.6 = 0.75 ms: just short of it.
    operands = dict(grid_row(8192, 64, 0.45, 0.9, 0.2), operand_bytes=4.5e9 * 1.001, l2_read_bytes_per_s=6e12)
    operands_ok = dict(grid_row(8192, 64, 0.45, 0.9, 0.2), operand_bytes=4.5e9 * 0.99, l2_read_bytes_per_s=6e12)
    rows = [met, roofline, launch, kernel, small, no_graph, noise, operands, operands_ok]
    for row in rows:
        bench.judge(row)
    assert met["target_met"] and "miss_cause" not in met
    assert roofline["miss_cause"] == "roofline" and roofline["dense_ceiling"] == pytest.approx(0.45)
    assert roofline["floor_fraction_needed"] == pytest.approx(0.6 / 0.45)
    assert launch["miss_cause"] == "launch" and launch["graph_fraction_of_dense"] == pytest.approx(0.45 / 0.7)
    assert kernel["miss_cause"] == "kernel" and no_graph["miss_cause"] == "kernel"
    assert noise["graph_fraction_of_dense"] >= 0.6 and noise["miss_cause"] == "kernel"
    assert small["target"] == "speedup_vs_loop >= 1.5" and not small["target_met"] and "miss_cause" not in small
    assert operands["miss_cause"] == "operands" and operands["operand_ceiling"] == pytest.approx(0.6 / 1.001)
    assert operands_ok["miss_cause"] == "kernel" and "operand_ceiling" not in kernel
    summary = bench.summarise(rows)
    assert summary == {"targets_met": "1/9", "dense_misses": {"roofline": 1, "operands": 1, "launch": 1, "kernel": 4}}


def test_launch_breakdown_gives_each_gemm_launch_its_fraction_of_dense(bench, capsys):
    # 100 GFLOP in 1 ms at 45% of dense (dense 222 TFLOP/s): gate/up's 2/3 of them in 0.6 ms and down's 1/3 in 0.3 ms: each at 50%.
    row = dict(grid_row(8192, 64, 0.45, 0.9, 0.2),
               kernel_ms={"up_kernel": 0.6, "down_kernel": 0.3, "align_kernel": 0.06, "Memset (Device)": 0.04})
    bench.judge(row)
    fractions = row["gemm_fraction_of_dense"]
    assert fractions["up_kernel"] == pytest.approx(100e9 * 2 / 3 / 0.6e-3 / 1e12 / (100 / 0.45))
    assert fractions["down_kernel"] == pytest.approx(100e9 / 3 / 0.3e-3 / 1e12 / (100 / 0.45))
    assert row["other_kernels_ms"] == pytest.approx(0.1) and row["kernels_ms"] == pytest.approx(1.0)
    bench.print_summary([row], bench.summarise([row]))
    assert "gate/up 50%, down 50% of dense, other kernels 0.100 ms -> kernel" in capsys.readouterr().out
    row["kernel_ms"] = {"down_kernel": 0.3}  # re-judged with other times: nothing of the old breakdown stays
    bench.judge(row)
    assert list(row["gemm_fraction_of_dense"]) == ["down_kernel"] and row["other_kernels_ms"] == 0
    del row["kernel_ms"]
    bench.judge(row)
    assert not {"gemm_fraction_of_dense", "other_kernels_ms", "kernels_ms"} & row.keys() and bench.launches(row) == ""


def test_kernel_totals_sums_the_profiled_events_by_name_per_call(bench):
    import _timing
    from torch.profiler import ProfilerActivity, profile

    a = torch.randn(64, 64)
    with profile(activities=[ProfilerActivity.CPU]) as prof:  # real events, as CUDA ones would come on a GPU
        for _ in range(4):
            a @ a
            torch.relu(a)
    events = prof.events()
    totals = _timing.kernel_totals(events, 4, torch.autograd.DeviceType.CPU)
    mm = [e.time_range.elapsed_us() for e in events if e.name == "aten::mm"]
    assert len(mm) == 4 and totals["aten::mm"] == pytest.approx(sum(mm) / 1e3 / 4)
    assert "aten::relu" in totals and list(totals.values()) == sorted(totals.values(), reverse=True)
    assert _timing.kernel_totals(events, 4, torch.autograd.DeviceType.CUDA) == {}  # no CUDA events on the CPU


def test_paired_figures_judge_each_round_s_own_ratio(bench):
    """fraction_of_dense is the median of the rounds' ratios (0.7, 0.5, 0.6), not the ratio of the median times
    (1.0 / 2.0): a round's dense time is compared with the Triton time taken beside it."""
    fig = bench.paired_figures(1e12, 1e12, triton_ms=[1.0, 2.0, 4.0], dense_ms=[0.7, 1.0, 2.4])
    assert fig["fraction_of_dense"] == pytest.approx(0.6)
    assert fig["fraction_of_dense_range"] == pytest.approx([0.5, 0.7]) and fig["pair_rounds"] == 3
    assert fig["dense_ms_rounds"] == [0.7, 1.0, 2.4] and fig["swiglu_triton_ms_rounds"] == [1.0, 2.0, 4.0]
    # The row divides out: the median Triton time and the dense time the fraction implies beside it.
    assert fig["swiglu_triton_ms"] == 2.0 and fig["dense_ms"] == pytest.approx(1.2)
    triton_tflops = 1e12 / fig["swiglu_triton_ms"] / 1e9
    assert triton_tflops / fig["dense_tflops"] == pytest.approx(fig["fraction_of_dense"])
    row = dict(tokens=8192, experts=16, top_k=2, d_model=1024, speedup_vs_loop=2.0, flops=1e12, floor_ms=0.5,
               swiglu_triton_graph_ms=None, **fig)  # fmt: skip
    bench.judge(row)  # the ceiling against the same dense rate as the fraction: 0.5 ms floor -> 2000 TF/s
    assert row["dense_ceiling"] == pytest.approx(2000 / fig["dense_tflops"]) and row["target_met"]  # 60% of dense
    with pytest.raises(ValueError, match="as many Triton as dense rounds"):
        bench.paired_figures(1e12, 1e12, triton_ms=[1.0], dense_ms=[1.0, 2.0])


def test_paired_ms_alternates_the_calls_round_by_round(bench, monkeypatch):
    """The dense GEMM and the Triton path are timed turn about, so each round's ratio shares that round's clocks,
    first one then the other first."""
    import _timing

    calls = []

    def fake_bench_ms(fn, args):
        calls.append((fn(), args.rep_ms, args.warmup_ms))
        return float(len(calls))

    monkeypatch.setattr(_timing, "bench_ms", fake_bench_ms)
    args = bench.Args(rep_ms=30, warmup_ms=7)
    times = _timing.paired_ms({"triton": lambda: "t", "dense": lambda: "d"}, args, rounds=3)
    assert [c[0] for c in calls] == ["t", "d", "d", "t", "t", "d"]  # every other round reversed
    assert all(rep == 10 and warmup == 7 for _, rep, warmup in calls)  # the budget split over the rounds
    assert times == {"triton": [1.0, 4.0, 5.0], "dense": [2.0, 3.0, 6.0]}
    with pytest.raises(ValueError, match="rounds must be >= 1, got 0"):
        _timing.paired_ms({"triton": lambda: None}, args, rounds=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the profiler's kernel records of the Triton path")
def test_kernel_ms_names_the_triton_paths_launches_on_a_gpu(bench):
    import _moe_targets
    import _timing

    from kernels.swiglu import grouped_swiglu_triton

    g = torch.Generator("cuda").manual_seed(0)
    widths = bench.expert_widths(8, 512)
    x, _, ids, w, w_up, w_down = bench.make_case(4096, 8, 2, 1024, widths, torch.bfloat16, "cuda", g)
    with torch.inference_mode():
        fn = lambda: grouped_swiglu_triton(x, ids, w, w_up, w_down, widths)  # noqa: E731
        times = _timing.kernel_ms(fn)
        graph, err = _timing.graph_ms(fn, bench.Args(warmup_ms=5, rep_ms=20))
    # Both GEMMs, the combine and the alignment's launches; together about the replayed call (no launch gaps in either).
    assert set(_moe_targets.GEMM_FLOP_SHARES) | {"combine_kernel"} <= times.keys() and len(times) >= 4, times
    assert all(ms > 0 for ms in times.values())
    assert not err and 0.5 * graph < sum(times.values()) < 1.5 * graph, (times, graph)


def test_summarise_rejudges_a_saved_grid_without_a_gpu(tmp_path):
    rows = [grid_row(8192, 64, 0.45, 0.98, 1.0), grid_row(8192, 8, 0.7, 0.95, 0.3)]
    rows[0].update(target_met=True, miss_cause="stale")  # an older judgement is replaced, not kept
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"device": "NVIDIA H100 80GB HBM3", "cases": rows}))
    out = tmp_path / "rejudged.json"
    cmd = [sys.executable, str(SCRIPT), "--summarise", str(grid), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "targets met: 1/2" in proc.stdout and "-> roofline" in proc.stdout
    result = json.loads(out.read_text())
    assert result["dense_misses"] == {"roofline": 1, "operands": 0, "launch": 0, "kernel": 0}
    assert result["cases"][0]["miss_cause"] == "roofline" and not result["cases"][0]["target_met"]
    assert result["rejudged"]["source"] == str(grid)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read it"),
        ("{not json", "not a JSON file"),
        ('{"cases": [{"tokens": 8192}]}', "not a grid of benchmarks/moe_kernels.py"),
    ],
)
def test_summarise_names_a_bad_file(tmp_path, content, message):
    grid = tmp_path / "grid.json"
    if content is not None:
        grid.write_text(content)
    cmd = [sys.executable, str(SCRIPT), "--summarise", str(grid)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"--summarise {grid}: {message}" in proc.stderr.strip().splitlines()[-1]
