"""The GPU parts of benchmarks/moe_kernels.py (the tuning driver, one grid case), run on the CPU with their timing
replaced.

`tune()` needs CUDA to time; here the timing is a made-up function of the candidate and the case, so the driver's own
logic is checked where it cannot otherwise run: token keys (a count tuned as the passes it runs as, which depend on
top-k), tables for every top-k and per top-k, a token count where no candidate ran everywhere, the report.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from kernels import configs
from kernels import swiglu as mk_swiglu
from kernels.configs import MoeKernelConfig, load_configs

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "moe_kernels.py"


def load_benchmark():
    if str(SCRIPT.parent) not in sys.path:  # as when run as a script: `from _cli import ...`
        sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("moe_kernels_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake_gpu(monkeypatch):
    """(the benchmark module, the token counts its cases were made for): an H100's shared memory and compute
    capability and a made-up device name, and every case made as small CPU inputs (16 tokens, d_model 32, fp32)."""
    mk = load_benchmark()
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(
        shared_memory_per_block_optin=232448, major=9, minor=0))  # fmt: skip
    monkeypatch.setattr(mk.configs, "device_name", lambda d: "FAKE_GPU")
    real_make_case, tokens_asked = mk.make_case, []

    def make_case(num_tokens, num_experts, top_k, d_model, widths, dtype, device, gen):
        tokens_asked.append(num_tokens)
        return real_make_case(16, num_experts, top_k, 32, widths, torch.float32, "cpu", torch.Generator())

    monkeypatch.setattr(mk, "make_case", make_case)
    yield mk, tokens_asked
    configs.clear_cache()  # the faked device's facts are cached


def test_tune_writes_tables_per_top_k_and_reports(tmp_path, monkeypatch, fake_gpu):
    mk, tuning_tokens = fake_gpu
    refused = configs.MoeKernelConfig(16, 128, 64, 8, 4, 3)
    monkeypatch.setattr(mk.tuning, "precompile", lambda space, shapes, dtype, device, workers: {refused: "OutOfResources"})
    seen_cases = []

    def fake_ms(args, cfg, inputs, widths):
        # top-1 cases favour 32-row tiles, top-2 cases 64-row tiles; at 32768 tokens nothing runs top-2.
        top_k = inputs[1].shape[1]
        seen_cases.append((cfg, top_k, tuning_tokens[-1]))
        if tuning_tokens[-1] == 32768 and top_k == 2:
            return None
        best_m = 32 if top_k == 1 else 64
        return 1.0 + abs(cfg.block_size_m - best_m) / 64 + cfg.num_stages / 100 + cfg.num_warps / 1000

    monkeypatch.setattr(mk, "time_config", fake_ms)
    monkeypatch.setattr(mk_swiglu, "SLOTS_PER_PASS", 65536)  # passes: 65536 tokens at top-1, 32768 at top-2
    args = mk.Args(experts=(8,), top_k=(1, 2), d_model=(1024, 4096), tune=True, tune_tokens=(2048, 32768, 65536),
                   tune_out=str(tmp_path / "configs"))  # fmt: skip
    result = {"benchmark": "moe_kernels_tune"}
    mk.tune(args, torch.bfloat16, None, result, tmp_path / "tune.json")

    assert all(cfg != refused for cfg, _, _ in seen_cases)  # a candidate Triton refused is never timed
    tune = result["tune"]
    assert tune["token_keys"] == [2048, 32768, 65536]
    # 65536 tokens at top-2 runs as two 32768-token passes, so 65536 is timed at top-1 alone
    assert {(t, k) for _, k, t in seen_cases} == {(2048, 1), (2048, 2), (32768, 1), (32768, 2), (65536, 1)}
    (table,) = tune["tables"]
    names = {"E=8,N=2048,device_name=FAKE_GPU.json", "E=8,N=2048,k=1,device_name=FAKE_GPU.json",
             "E=8,N=2048,k=2,device_name=FAKE_GPU.json"}  # fmt: skip
    assert set(table["written"]) == names == {p.name for p in (tmp_path / "configs").iterdir()}
    configs.clear_cache()
    per_k1 = load_configs(8, 2048, "FAKE_GPU", torch.bfloat16, tmp_path / "configs", 1)
    per_k2 = load_configs(8, 2048, "FAKE_GPU", torch.bfloat16, tmp_path / "configs", 2)
    assert {m: c.block_size_m for m, c in per_k1.items()} == {2048: 32, 32768: 32, 65536: 32}
    assert {m: c.block_size_m for m, c in per_k2.items()} == {2048: 64}  # no complete candidate at 32768: left out
    left_out = [p for p in table["picks"] if "error" in p]
    assert {(p["tokens"], p["top_k"]) for p in left_out} == {(32768, None), (32768, 2)}
    every_k = next(p for p in table["picks"] if p["tokens"] == 2048 and p["top_k"] is None)
    assert set(every_k["slowdowns"]) == {"k=1,d=1024", "k=1,d=4096", "k=2,d=1024", "k=2,d=4096"}
    assert {p["top_k"] for p in table["picks"] if p["tokens"] == 65536} == {None, 1}
    every_k_large = next(p for p in table["picks"] if p["tokens"] == 65536 and p["top_k"] is None)
    assert set(every_k_large["slowdowns"]) == {"k=1,d=1024", "k=1,d=4096"}
    assert json.loads((tmp_path / "tune.json").read_text())["partial"] is True  # written as it went


def test_tune_keeps_the_token_counts_it_finished_when_stopped(tmp_path, monkeypatch, fake_gpu):
    """A tuning run cut short (the device's time limit) keeps the tables of the token counts it finished."""
    mk, tokens_now = fake_gpu

    def fake_ms(args, cfg, inputs, widths):
        if tokens_now[-1] == 32768:
            raise KeyboardInterrupt  # stands in for the kill at the time limit
        return 1.0 + cfg.block_size_m / 64

    monkeypatch.setattr(mk.tuning, "precompile", lambda space, shapes, dtype, device, workers: {})
    monkeypatch.setattr(mk, "time_config", fake_ms)
    args = mk.Args(experts=(8,), top_k=(1, 2), d_model=(1024,), tune=True, tune_tokens=(2048, 8192, 32768),
                   tune_out=str(tmp_path / "configs"))  # fmt: skip
    try:
        mk.tune(args, torch.bfloat16, None, {"benchmark": "moe_kernels_tune"}, tmp_path / "tune.json")
    except KeyboardInterrupt:
        pass
    configs.clear_cache()
    for top_k in (None, 1, 2):
        table = load_configs(8, 2048, "FAKE_GPU", torch.bfloat16, tmp_path / "configs", top_k)
        assert sorted(table) == [2048, 8192]
    assert not list((tmp_path / "configs").glob("*.tmp"))  # every write whole


def _tuned_report(mk, monkeypatch, tmp_path, stop_at: int | None = None) -> Path:
    """Run the tuning driver with made-up timings (top-1 favours 32-row tiles, top-2 64-row tiles), writing its
    tables to tmp_path/device and its report, as `main` would, to tmp_path/tune.json; stopped at `stop_at` tokens."""
    tokens_now = []
    real_make_case = mk.make_case

    def make_case(num_tokens, *rest):
        tokens_now.append(num_tokens)
        return real_make_case(num_tokens, *rest)

    def fake_ms(args, cfg, inputs, widths):
        if tokens_now[-1] == stop_at:
            raise KeyboardInterrupt  # stands in for the kill at the time limit
        top_k = inputs[1].shape[1]
        return 1.0 + abs(cfg.block_size_m - (32 if top_k == 1 else 64)) / 64 + cfg.num_stages / 100

    monkeypatch.setattr(mk, "make_case", make_case)
    monkeypatch.setattr(mk.tuning, "precompile", lambda space, shapes, dtype, device, workers: {})
    monkeypatch.setattr(mk, "time_config", fake_ms)
    args = mk.Args(experts=(8, 16), top_k=(1, 2), d_model=(1024,), tune=True, tune_tokens=(2048, 8192, 32768),
                   tune_out=str(tmp_path / "device"))  # fmt: skip
    result = dict(benchmark="moe_kernels_tune", device="FAKE_GPU", args=dataclasses.asdict(args))
    try:
        mk.tune(args, torch.bfloat16, None, result, tmp_path / "tune.json")
        mk.write_json_atomic(tmp_path / "tune.json", result)
    except KeyboardInterrupt:
        pass
    return tmp_path / "tune.json"


@pytest.mark.parametrize("stop_at", [None, 32768], ids=["finished", "stopped"])
def test_tables_rebuilt_from_the_report_are_the_tables_the_tuner_wrote(tmp_path, monkeypatch, fake_gpu, stop_at):
    """The device tool brings back the report but not the tables (their names hold '=' and ','): installing the
    report here gives byte for byte the files the tuner wrote on the GPU, also for a run stopped at a time limit."""
    from kernels.configs import tuning

    mk, _ = fake_gpu
    report = _tuned_report(mk, monkeypatch, tmp_path, stop_at)
    written = tuning.install_report(report, tmp_path / "installed")
    on_device = {p.name: p.read_bytes() for p in (tmp_path / "device").glob("*.json")}
    assert {p.name: p.read_bytes() for p in written} == on_device
    assert len(on_device) == (6 if stop_at is None else 3)  # E=8, 16 x (every k, k=1, k=2); stopped within E=8
    configs.clear_cache()
    keys = sorted(load_configs(8, 2048, "FAKE_GPU", torch.bfloat16, tmp_path / "installed", 1))
    assert keys == ([2048, 8192, 32768] if stop_at is None else [2048, 8192])


def test_install_report_refuses_what_is_not_a_tuning_report(tmp_path, monkeypatch, fake_gpu):
    from kernels.configs import tuning

    mk, _ = fake_gpu
    report = json.loads(_tuned_report(mk, monkeypatch, tmp_path).read_text())
    bad = tmp_path / "bad.json"
    for change, message in [
        (dict(benchmark="moe_kernels"), "not a tuning report (benchmark 'moe_kernels_tune'), got 'moe_kernels'"),
        (dict(device="cpu"), "names the GPU it ran on (no path separators), got device 'cpu'"),
        (dict(device="../NVIDIA_H100"), "got device '../NVIDIA_H100'"),
        (dict(args={"dtype": "int8"}), "args.dtype must be one of ['bfloat16', 'float16', 'float32'], got 'int8'"),
    ]:
        bad.write_text(json.dumps({**report, **change}))
        with pytest.raises(ValueError, match=re.escape(message)):
            tuning.install_report(bad, tmp_path / "out")
    report["tune"]["tables"][0]["written"].pop()
    bad.write_text(json.dumps(report))
    with pytest.raises(ValueError, match="but it says it wrote"):
        tuning.install_report(bad, tmp_path / "out")
    for field, value, message in [("experts", 0, "experts 0 and widths"), ("tokens", -5, "tokens -5 (>= 1)"),
                                  ("top_k", -1, "top_k -1 (1..8 or null)"), ("top_k", 9, "top_k 9")]:  # fmt: skip
        changed = json.loads(json.dumps(report))
        entry = changed["tune"]["tables"][0]
        (entry if field == "experts" else entry["picks"][0])[field] = value
        bad.write_text(json.dumps(changed))
        with pytest.raises(ValueError, match=re.escape(message)):
            tuning.install_report(bad, tmp_path / "out")
    report["tune"]["tables"][0]["picks"][0]["config"] = {"BLOCK_SIZE_M": 24}
    bad.write_text(json.dumps(report))
    with pytest.raises(ValueError, match="bad table entry in the tuning report"):
        tuning.install_report(bad, tmp_path / "out")
    bad.write_text('{"benchmark": "moe_kernels_tune", ')
    with pytest.raises(ValueError, match="is not JSON"):
        tuning.install_report(bad, tmp_path / "out")
    with pytest.raises(ValueError, match="cannot read the tuning report .*missing.json"):
        tuning.install_report(tmp_path / "missing.json", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written from a bad report


def test_install_command_checks_every_report_before_writing(tmp_path, monkeypatch, fake_gpu, capsys):
    from kernels.configs import tuning

    mk, _ = fake_gpu
    good = _tuned_report(mk, monkeypatch, tmp_path)
    (tmp_path / "grid.json").write_text(json.dumps({"benchmark": "moe_kernels", "cases": []}))
    with pytest.raises(SystemExit) as stop:
        tuning.main([str(good), str(tmp_path / "grid.json"), "--config-dir", str(tmp_path / "out")])
    assert stop.value.code == 2
    assert "grid.json: not a tuning report" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # the good report's tables wait for the bad one to be fixed
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit) as stop:
        tuning.main([str(good), "--config-dir", str(tmp_path / "a_file")])
    assert stop.value.code == 2 and "tables into " in capsys.readouterr().err
    tuning.main([str(good), "--config-dir", str(tmp_path / "out")])
    assert "wrote 6 tables" in capsys.readouterr().out
    assert len(list((tmp_path / "out").glob("E=*.json"))) == 6


def test_install_merges_a_retune_of_some_token_counts_into_the_full_tables(tmp_path, monkeypatch, fake_gpu, capsys):
    """A later report that retuned one token count replaces that entry and keeps the others of the earlier one."""
    from kernels.configs import tuning

    mk, _ = fake_gpu
    full = _tuned_report(mk, monkeypatch, tmp_path)
    report = json.loads(full.read_text())
    retuned = MoeKernelConfig(16, 32, 64, 1, num_warps=4, num_stages=3)
    e8 = next(t for t in report["tune"]["tables"] if t["experts"] == 8)
    e8["picks"] = [dict(p, config=retuned.to_json()) for p in e8["picks"] if p["tokens"] == 8192]
    report["tune"]["tables"] = [e8]
    (tmp_path / "retune.json").write_text(json.dumps(report))
    tuning.main([str(full), str(tmp_path / "retune.json"), "--config-dir", str(tmp_path / "out")])
    assert "wrote 6 tables" in capsys.readouterr().out
    configs.clear_cache()
    for top_k in (None, 1, 2):
        table = load_configs(8, 2048, "FAKE_GPU", torch.bfloat16, tmp_path / "out", top_k)
        assert sorted(table) == [2048, 8192, 32768] and table[8192] == retuned
        assert table[2048] != retuned and table[32768] != retuned
    assert sorted(load_configs(16, 2048, "FAKE_GPU", torch.bfloat16, tmp_path / "out", 1)) == [2048, 8192, 32768]

    # The retune alone, over installed tables: they keep the token counts it did not tune (a retune installed by
    # itself had cut each table it named down to its own token counts); --replace writes its entries alone.
    tuning.main([str(full), "--config-dir", str(tmp_path / "again")])
    tuning.main([str(tmp_path / "retune.json"), "--config-dir", str(tmp_path / "again")])
    assert "token counts [2048, 8192, 32768] (kept from the installed table: [2048, 32768])" in capsys.readouterr().out
    configs.clear_cache()
    table = load_configs(8, 2048, "FAKE_GPU", torch.bfloat16, tmp_path / "again")
    assert sorted(table) == [2048, 8192, 32768] and table[8192] == retuned
    tuning.main([str(tmp_path / "retune.json"), "--config-dir", str(tmp_path / "again"), "--replace"])
    configs.clear_cache()
    assert sorted(load_configs(8, 2048, "FAKE_GPU", torch.bfloat16, tmp_path / "again")) == [8192]
    broken = next((tmp_path / "again").glob("E=8,N=2048,device_name=*.json"))
    broken.write_text("{")
    with pytest.raises(SystemExit) as stop:
        tuning.main([str(tmp_path / "retune.json"), "--config-dir", str(tmp_path / "again")])
    assert stop.value.code == 2 and "give --replace to write the reports' entries alone" in capsys.readouterr().err
    assert broken.read_text() == "{"  # nothing written


def test_grid_case_records_its_tiles_and_where_they_came_from(monkeypatch, fake_gpu):
    """A grid row says which block sizes the Triton path ran with and whether a tuned table or the default gave them
    (the first H100 grid was read as tuned when it ran on default tiles)."""
    mk, _ = fake_gpu
    monkeypatch.setattr(mk, "bench_ms", lambda fn, args: 1.0)
    monkeypatch.setattr(mk, "graph_ms", lambda fn, args: (0.5, ""))
    monkeypatch.setattr(mk, "host_ms", lambda fn: 0.25)
    monkeypatch.setattr(mk, "kernel_ms", lambda fn: {"up_kernel": 0.3, "down_kernel": 0.15, "combine_kernel": 0.05})
    dense_call = lambda: None  # noqa: E731
    dense_call.dense = True
    monkeypatch.setattr(mk, "dense_gemm", lambda rows, d, flops, dtype: ([rows, d, 64], dense_call))
    # paired_ms's own bench_ms: the Triton call 1 ms and the dense GEMM 0.5 ms in every round
    monkeypatch.setattr(sys.modules["_timing"], "bench_ms", lambda fn, args: 0.5 if getattr(fn, "dense", 0) else 1.0)
    configs.clear_cache()
    row = mk.run_case(mk.Args(), 4096, 8, 2, 64, torch.float32, None, None)
    assert row["swiglu_triton_host_ms"] == 0.25 and row["swiglu_triton_ms"] == 1.0 and row["dense_ms"] == 0.5
    assert row["pair_rounds"] == 5 and row["fraction_of_dense_range"] == [row["fraction_of_dense"]] * 2
    assert row["fraction_of_dense"] == pytest.approx(row["flops"] / (2 * 4096 * 2 * 64 * 64) / 2)
    # The call took 1 ms; gate/up did 2/3 of its FLOPs in 0.3 ms and down 1/3 in 0.15 ms: each 20/9 of its rate.
    fractions = row["gemm_fraction_of_dense"]
    assert fractions["up_kernel"] == pytest.approx(row["fraction_of_dense"] * 20 / 9)
    assert fractions["down_kernel"] == pytest.approx(row["fraction_of_dense"] * 20 / 9)
    assert row["other_kernels_ms"] == 0.05 and row["kernels_ms"] == pytest.approx(0.5)
    assert "kernel_ms" not in mk.run_case(mk.Args(kernel_breakdown=False), 4096, 8, 2, 64, torch.float32, None, None)
    assert row["operand_bytes"] > 0 and row["operand_bytes_per_s_graph"] == pytest.approx(row["operand_bytes"] / 5e-4)
    assert row["config_source"] == "default"
    assert row["config"] == configs.default_config(4096, 8, 2, torch.float32, 232448).to_json()
    assert row["fraction_of_dense"] > 0 and "target" not in row  # 4k tokens over 8 experts: neither target
    assert row["atomic_top2"] and not row["tma_weights"]  # the policies on an H100: 8192 slots is below TMA's
    assert not mk.run_case(mk.Args(), 4096, 8, 1, 64, torch.float32, None, None)["atomic_top2"]  # k = 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dtype", "fp8"], "argument --dtype: invalid choice: 'fp8'"),
        (["--experts", "8", "0"], "argument --experts: must be a positive integer, got '0'"),
        (["--tokens", "2k"], "argument --tokens: must be a positive integer, got '2k'"),
        (["--rep-ms", "-1"], "argument --rep-ms: must be a positive integer, got '-1'"),
        (["--tune-space", "huge"], "argument --tune-space: invalid choice: 'huge'"),
        (["--atomic-top2", "yes"], "argument --atomic-top2: invalid choice: 'yes' (choose from 'auto', 'off', 'on')"),
        (["--experts", "512"], "--experts must be at most 256, got 512"),
    ],
)
def test_bad_arguments_name_the_value_and_what_is_allowed(capsys, argv, message):
    mk = load_benchmark()
    with pytest.raises(SystemExit) as stop:
        mk.parse_args(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert mk.parse_args(["--experts", "16", "--seed", "-3"]) == mk.Args(experts=(16,), seed=-3)
