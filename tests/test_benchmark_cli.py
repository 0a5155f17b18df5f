"""Bad arguments to the benchmark scripts: exit code 2 and one line naming the flag and the value, before any work
(no traceback, nothing written). The scripts run as subprocesses; ttt_shift's many checks also in-process."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# (script, arguments, what stderr's last line holds); each runs in a fresh folder holding `adir/` and the file `afile`.
# One case per script and kind of check: the scripts that import torch take ~3 s each (ttt_shift's own checks are
# run in-process below).
CASES = [
    ("kernel_host_overhead", ["--number", "0"], "argument --number: must be a positive integer, got '0'"),
    ("runtime_step", ["--repeats", "-1"], "argument --repeats: must be a positive integer, got '-1'"),
    ("runtime_step", ["--threads", "10000"], "argument --threads: must be 1..256, got '10000'"),
    ("runtime_profile", ["--tokens", "0"], "argument --tokens: must be a positive integer, got '0'"),
    ("env_step", ["--out", "adir"], "--out adir is a directory; give a .json file path"),
    ("ttt_shift", ["--eval-every-tokens", "0"], "argument --eval-every-tokens: must be a positive integer, got '0'"),
    ("moe_kernels", ["--out", "adir"], "--out adir is a directory; give a .json file path"),
    ("telemetry_overhead", ["--repeats", "0"], "argument --repeats: must be a positive integer, got '0'"),
    ("telemetry_overhead", ["--sampler-s", "0"], "argument --sampler-s/--sampler_s: must be a positive, finite number, got '0'"),
    ("telemetry_overhead", ["--loop-s", "-1"], "argument --loop-s/--loop_s: must be a positive, finite number, got '-1'"),
    ("telemetry_overhead", ["--rates-hz", "abc"], "--rates-hz 'abc': give positive rates in Hz, comma-separated"),
    # the old spelling still works
    ("telemetry_overhead", ["--rates_hz", "10,0"], "--rates-hz '10,0': give positive rates in Hz, comma-separated"),
    ("telemetry_overhead", ["--out", "afile/x.json"], "--out afile/x.json: afile is a file, not a directory"),
    ("sim_vs_h100", ["--png", "adir"], "--png adir is a directory; give a .png file path"),
    ("sim_vs_h100", ["--png", "plot.json"], "--png plot.json: the figures go beside it as .json; give a .png file"),
]


def run_script(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(BENCHMARKS / f"{script}.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd)


def fresh_folder(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("run")
    (cwd / "adir").mkdir()
    (cwd / "afile").write_text("saved\n")
    return cwd


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory) -> list[tuple[Path, subprocess.CompletedProcess]]:
    """Every case run once, as many at a time as there are cores: most of each run is the import of torch."""
    folders = [fresh_folder(tmp_path_factory) for _ in CASES]
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        runs = list(pool.map(run_script, [c[0] for c in CASES], [c[1] for c in CASES], folders))
    return list(zip(folders, runs))


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{s} {' '.join(a)}" for s, a, _ in CASES])
def test_bad_argument_is_one_line_naming_it(bad_runs, case):
    *_, message = CASES[case]
    cwd, proc = bad_runs[case]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert message in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]
    assert sorted(p.name for p in cwd.iterdir()) == ["adir", "afile"]  # refused before anything was written
    assert (cwd / "afile").read_text() == "saved\n" and not any((cwd / "adir").iterdir())


def test_a_good_run_replaces_the_saved_json_and_leaves_no_temporary_file(tmp_path_factory):
    cwd = fresh_folder(tmp_path_factory)
    out = cwd / "adir" / "overhead.json"
    out.write_text("a previous run\n")
    args = ["--source", "simulated", "--repeats", "5", "--sampler-s", "0.05", "--rates-hz", "100"]
    proc = run_script("telemetry_overhead", [*args, "--loop-s", "0.02", "--out", str(out)], cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["telemetry_source"] == "simulated"
    assert [p.name for p in out.parent.iterdir()] == ["overhead.json"]


@pytest.fixture
def ttt_shift(monkeypatch, tmp_path):
    """benchmarks/ttt_shift.py as a module, in a folder holding the directories `adir/` and `adir.png/`."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adir").mkdir()
    (tmp_path / "adir.png").mkdir()
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as when run as a script: `from _cli import ...`
    spec = importlib.util.spec_from_file_location("ttt_shift_bench", BENCHMARKS / "ttt_shift.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--interval-tokens", "0"], "argument --interval-tokens: must be a positive integer, got '0'"),
        (["--lead-in-tokens", "-5"], "argument --lead-in-tokens: must be a positive integer, got '-5'"),
        (["--timing-rounds", "0"], "argument --timing-rounds: must be a positive integer, got '0'"),
        (["--threads", "0"], "argument --threads: must be a positive integer, got '0'"),
        (["--threads", "99999999999"], "argument --threads: must be 1..256, got '99999999999'"),
        (
            ["--heldout-tokens", "16"],
            "--heldout-tokens must be at least the default preset's sequence length (128), got 16",
        ),
        (["--interval-tokens", "64"], "--interval-tokens must be at least the default preset's sequence length (128)"),
        (["--seed", "-1"], "--seed must be a non-negative integer, got -1"),
        (["--method", "sgd"], "argument --method: invalid choice: 'sgd'"),
        (["--adapt-tokens", "3000"], "--adapt-tokens (3000) must be a multiple of --eval-every-tokens (2048)"),
        (["--out", "adir"], "--out adir is a directory; give a .json file path"),
        (["--out", "adir.json"], "--out adir.json: the plot beside it, adir.png, is a directory"),
    ],
)
def test_ttt_shift_names_bad_arguments(ttt_shift, monkeypatch, capsys, args, message):
    monkeypatch.setattr(sys, "argv", ["ttt_shift.py", *args])
    with pytest.raises(SystemExit) as stop:
        ttt_shift.parse_args()
    assert stop.value.code == 2 and message in capsys.readouterr().err.strip().splitlines()[-1]


def test_ttt_shift_takes_seed_0_and_a_preset_s_own_sequence_length(ttt_shift, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["ttt_shift.py", "--preset", "tiny", "--seed", "0", "--heldout-tokens", "32"])
    assert ttt_shift.parse_args() == ttt_shift.Args(preset="tiny", seed=0, heldout_tokens=32)


def test_help_shows_each_field_s_docstring_and_default(ttt_shift, monkeypatch, capsys):
    from _cli import field_help

    monkeypatch.setattr(sys, "argv", ["ttt_shift.py", "--help"])
    with pytest.raises(SystemExit) as stop:
        ttt_shift.parse_args()
    shown = "".join(capsys.readouterr().out.split())  # argparse wraps the lines
    helps = field_help(ttt_shift.Args)
    assert stop.value.code == 0 and set(helps) == {f.name for f in dataclasses.fields(ttt_shift.Args)}
    for name, text in helps.items():
        assert "".join(text.replace("%%", "%").split()) in shown, name
    assert "TTTConfig.method: fast_weights, lora or tent. (default: 'fast_weights')" in helps["method"]

    @dataclasses.dataclass
    class Odd:
        plain: int = 3
        share: float = 0.5
        """a share, in %
        of the whole"""

    assert field_help(Odd) == {"plain": "(default: 3)", "share": "a share, in %% of the whole (default: 0.5)"}


def test_sim_vs_h100_without_the_measured_trace_says_where_to_point(monkeypatch, capsys, tmp_path):
    """A clone without ../shared/reference: one line naming the file and MOE_REFERENCE_DIR, not a traceback."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("sim_vs_h100_bench", BENCHMARKS / "sim_vs_h100.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "find_reference_file", lambda *a: None)
    monkeypatch.setattr(sys, "argv", ["sim_vs_h100.py"])
    with pytest.raises(SystemExit) as stop:
        module.parse_args()
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and "h100-step-response.csv was not found: set MOE_REFERENCE_DIR" in last


def load_benchmark(name: str, monkeypatch):
    """benchmarks/`name`.py as a module, imported the way the script runs (`from _cli import ...`)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"{name}_bench", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("script", "entry"), [("telemetry_overhead", "parse_args"), ("runtime_step", "main"),
                                               ("sim_vs_h100", "parse_args")])  # fmt: skip
def test_help_shows_the_whole_first_paragraph(script, entry, monkeypatch, capsys):
    """--help describes the script in full sentences: the docstring's first paragraph, not its first line."""
    module = load_benchmark(script, monkeypatch)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--help"])
    with pytest.raises(SystemExit) as stop:
        getattr(module, entry)()
    shown = "".join(capsys.readouterr().out.split())  # argparse wraps the lines (and breaks them at hyphens)
    assert stop.value.code == 0 and "".join(module.__doc__.split("\n\n")[0].split()) in shown


def test_kernels_profile_help_describes_every_option(capsys):
    from kernels import profile

    with pytest.raises(SystemExit) as stop:
        profile.main(["--help"])
    shown = "".join(capsys.readouterr().out.split())  # argparse wraps the lines (and breaks them at hyphens)
    assert stop.value.code == 0 and set(profile.HELP) == set(vars(profile.Args()))
    for name, text in profile.HELP.items():
        assert f"--{name.replace('_', '-')}" in shown and "".join(text.replace("%%", "%").split()) in shown, name


@pytest.mark.parametrize("script", ["agent_router_nvml", "profile_small_moe"])
def test_gpu_only_scripts_say_in_one_line_what_they_need(script, tmp_path):
    """Without CUDA the GPU-only scripts exit 2 naming what they need; with it they write to $OUT (skipped here)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is here: the script would measure the GPU")
    path = BENCHMARKS.parent / "scripts" / f"{script}.py"
    proc = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "OUT": str(tmp_path)})  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "this script measures a GPU: it needs CUDA" in proc.stderr.strip().splitlines()[-1]
    assert not list(tmp_path.iterdir())


def test_out_dir_json_writes_atomically_under_out(tmp_path, monkeypatch):
    sys.path.insert(0, str(BENCHMARKS))
    from _cli import out_dir_json

    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    path = out_dir_json("facts.json", {"figures": "measured"})
    assert path == tmp_path / "out" / "facts.json" and json.loads(path.read_text()) == {"figures": "measured"}
    assert [p.name for p in path.parent.iterdir()] == ["facts.json"]


def test_out_file_in_a_read_only_folder_is_refused_before_the_run(tmp_path, monkeypatch, capsys):
    """A folder the run could not write its result into (a read-only mount: root's permission bits say nothing, so
    `os.access` is asked, and stubbed here) is an error before any work, not a lost run at the end."""
    import argparse

    from _cli import check_out_file

    parser = argparse.ArgumentParser(prog="bench")
    check_out_file(parser, "--out", str(tmp_path / "new" / "x.json"))  # writable: no error
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != tmp_path and real(p, mode))
    with pytest.raises(SystemExit) as stop:
        check_out_file(parser, "--out", str(tmp_path / "new" / "x.json"))
    assert stop.value.code == 2
    assert f"--out {tmp_path}/new/x.json: {tmp_path} is not writable" in capsys.readouterr().err


def test_every_flag_says_what_it_is_in_help(tmp_path):
    """These flags had no help text: --help showed `--tokens TOKENS` and nothing about it."""
    helps = {
        "env_step": ["MoEConfig preset", "where the JSON goes"],
        "kernel_host_overhead": ["where the JSON goes"],
        "runtime_profile": ["tokens per launch", "timed launches", "where the JSON goes"],
    }
    for script, texts in helps.items():
        proc = run_script(script, ["--help"], tmp_path)
        out = " ".join(proc.stdout.split())
        assert proc.returncode == 0 and all(text in out for text in texts), (script, out)
