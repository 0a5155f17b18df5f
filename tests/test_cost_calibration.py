"""The kernel cost model's calibration: fitting cost tables (kernels.cost_table, kernels.profile) to known and measured
costs, their files and the profile CLI; CPU only, a few seconds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kernels import KernelCostModel
from kernels.cost_model import BUILTIN_TABLES
from kernels.cost_table import fit_energy, fit_latency, load_table, percent_errors, save_table
from kernels.profile import fit_reference, fit_table, read_reference
from kernels.profile import main as profile_main
from telemetry import get_gpu_spec
from telemetry.reference import find_reference_file

# $MOE_REFERENCE_DIR, then ../shared/reference beside the repo, as the telemetry tests find theirs
REFERENCE_CSV = find_reference_file("h100-op-costs.csv")  # None without a copy
NO_REFERENCE = "h100-op-costs.csv not found: set MOE_REFERENCE_DIR to shared/reference"
SYNTHETIC = [  # (flops_per_s, bytes_per_s, dispatch_s, overhead_s) to recover
    (8.0e14, 3.0e12, 12e-6, 4e-6),
    (5.0e14, 1.5e12, 20e-6, 2e-6),
]


# ----- calibration -----
@pytest.mark.parametrize("truth", SYNTHETIC)
def test_fit_recovers_known_coefficients(truth):
    rng = np.random.default_rng(1)
    t, d, f = (
        g.ravel() for g in np.meshgrid([16, 64, 256, 1024, 4096, 16384], [512, 1024, 4096], [256, 1024, 4096, 8192])
    )
    flops, bytes_, launches = 4.0 * t * d * f, 2.0 * (t * d + 2 * d * f + 2 * t * f), np.ones(t.size)
    stretch = rng.uniform(1.0, 1.4, t.size)  # rows measured at lower clocks, as under the power cap
    kernel = np.maximum(flops * stretch / truth[0], bytes_ / truth[1])
    seconds = (np.maximum(kernel, truth[2]) + truth[3]) * rng.normal(1.0, 0.03, t.size)
    prior = (6e14, 2.5e12, 8e-6, 3e-6)
    fitted = fit_latency(flops, bytes_, launches, seconds, prior, compute_stretch=stretch)
    np.testing.assert_allclose(fitted[:3], truth[:3], rtol=0.06)
    assert fitted[3] == pytest.approx(truth[3], abs=1e-6)  # a few us under 3% noise on much longer launches
    compute_bound = flops * stretch / truth[0] >= bytes_ / truth[1]
    static, compute_j, memory_j = 130.0 * seconds, 800.0 * seconds * compute_bound, 420.0 * seconds * ~compute_bound
    energy = (static + 0.9 * compute_j + 1.2 * memory_j) * rng.normal(1.0, 0.03, t.size)
    np.testing.assert_allclose(fit_energy(energy, compute_j, memory_j, static), (0.9, 1.2), rtol=0.05)


def test_shipped_table_is_current_and_beats_analytic(tmp_path):
    """The shipped table equals a fresh fit of the reference (refit with its `command` after a telemetry change)."""
    if REFERENCE_CSV is None:
        pytest.skip(NO_REFERENCE)
    report = fit_reference(str(REFERENCE_CSV), "H100", str(tmp_path / "h100.json"))
    fresh = load_table(tmp_path / "h100.json", KernelCostModel("H100").table or _analytic())
    shipped = load_table(BUILTIN_TABLES["H100_SXM"], _analytic())
    for name in ("flops_per_s", "bytes_per_s", "dispatch_s", "overhead_s", "compute_power_scale", "memory_power_scale"):
        np.testing.assert_allclose(
            getattr(shipped, name), getattr(fresh, name), rtol=1e-6, err_msg=shipped.meta["command"]
        )
    for what in ("latency", "energy"):
        assert report["calibrated"][what]["median_pct"] < report["analytic"][what]["median_pct"]
    assert report["calibrated"]["latency"]["median_pct"] < 10.0 and report["rows_held_out"] > 20


def _analytic():
    from kernels.cost_table import analytic_coefficients

    return analytic_coefficients(get_gpu_spec("H100"))


def test_table_json_round_trip(tmp_path):
    rows, held = read_reference(REFERENCE_CSV) if REFERENCE_CSV is not None else pytest.skip(NO_REFERENCE)
    table = fit_table(rows.select(~held), get_gpu_spec("H100"))
    table.meta.update(gpu_type="H100_SXM", device={"name": "test"}, date="2026-01-01")
    save_table(table, tmp_path / "t.json")
    back = load_table(tmp_path / "t.json", _analytic())
    for name in ("flops_per_s", "bytes_per_s", "dispatch_s", "overhead_s", "compute_power_scale", "memory_power_scale"):
        np.testing.assert_array_equal(getattr(back, name), getattr(table, name))
    kcm = KernelCostModel("H100", data_path=tmp_path / "t.json")
    assert kcm.source == "calibrated" and kcm.get_cost("gemm_up", 512)["source"] == "calibrated"


BAD_TABLES = [  # (file content or edit, message fragment)
    ("{not json", "not valid JSON"),
    ("folder", "is a folder"),
    (lambda d: d.update(version=99), "version 99"),
    (lambda d: d.update(gpu_type="A100_SXM"), "not H100_SXM"),
    (lambda d: d.update(format="something"), "not a kernel cost table"),
    (lambda d: d["ops"].update(gemm_sideways={}), "gemm_sideways"),
    (lambda d: d["ops"]["gemm_up"].update(flops_per_s=-1.0), "flops_per_s"),
    (lambda d: d["ops"].update(gemm_up=5), "op 'gemm_up' is 5, not a mapping"),  # was an AttributeError
    (lambda d: d["ops"]["gemm_up"].update(dispatch_s=float("inf")), "bad dispatch_s"),  # failed later, as NaN
    (lambda d: d["ops"]["gemm_up"].update(dispatch_s=True), "bad dispatch_s"),
    (lambda d: d.update(dtype="int8"), "has dtype 'int8'; it must be one of"),  # was priced as bfloat16
    (lambda d: d["ops"]["gemm_up"].pop("bytes_per_s"), r"op 'gemm_up' lacks \['bytes_per_s'\]"),  # was unbounded
]


@pytest.mark.parametrize("content, message", BAD_TABLES)
def test_bad_tables_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad_table.json"
    if content == "folder":
        path.mkdir()
    elif isinstance(content, str):
        path.write_text(content)
    else:
        doc = json.loads(BUILTIN_TABLES["H100_SXM"].read_text())
        content(doc)
        path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=message) as err:
        KernelCostModel("H100", data_path=path)
    assert "bad_table.json" in str(err.value)


def test_missing_and_foreign_tables():
    with pytest.raises(ValueError, match="nowhere.json"):
        KernelCostModel("H100", data_path="/nowhere.json")
    with pytest.raises(ValueError, match="h100_cost_table.json"):
        KernelCostModel("A100", data_path=BUILTIN_TABLES["H100_SXM"])
    with pytest.raises(ValueError, match="no shipped cost table"):
        KernelCostModel.calibrated("L4")


def test_profile_cli_on_cpu(tmp_path, capsys):
    """`python -m kernels.profile --out/--validate --quick` on the CPU (in-process: a subprocess re-imports torch)."""
    table = tmp_path / "cpu_table.json"
    profile_main(["--out", str(table), "--quick"])
    doc = json.loads(table.read_text())
    assert doc["gpu_type"] == "CPU" and doc["device"]["kind"] == "cpu" and doc["ops"]["gemm_up"]["origin"] == "fitted"
    assert doc["ops"]["gemm_up"]["residual_latency"]["rows"] == 2
    profile_main(["--validate", str(table), "--quick"])
    out = capsys.readouterr().out
    assert "latency only" in out and "median" in out
    with pytest.raises(ValueError, match="cpu_table.json was measured on the CPU: .* the KCM prices GPUs"):
        KernelCostModel("H100", data_path=table)


HEADER = (
    "op,tokens,d_model,d_ff,busy_ms_per_op,energy_j_per_op,sm_clock_mhz,flops,bytes,experts,batch,heads,seq,head_dim\n"
)
BAD_REFERENCES = [  # (CSV text, message fragment): each a usage error naming the file, not a traceback
    ("{not a csv", "no column(s) ['op'"),
    (HEADER, "has no rows"),
    (HEADER + "gemm_sideways,64,1024,512,0.01,0.002,1980,1,1,,,,,\n", "row 2: cannot read it (ValueError: unknown op"),
    (HEADER + "gemm_up,64,1024\n", "row 2: cannot read it (TypeError"),
    (HEADER + "gemm_up,64,1024,512,fast,0.002,1980,1,1,,,,,\n", "row 2: cannot read it (ValueError"),
    (HEADER + "gemm_up,64,1024,512,0.01,0.002,1980,1,1,,,,,\n", "differ from the work vocabulary"),
    *((HEADER + f"gemm_up,64,1024,512,{busy},{energy},1980,1,1,,,,,\n", "must be finite and positive")
      for busy, energy in (("nan", "0.002"), ("0", "0.002"), ("inf", "0.002"), ("-0.01", "0.002"), ("0.01", "nan"))),
]


@pytest.mark.parametrize("text, message", BAD_REFERENCES)
def test_fit_reference_cli_rejects_bad_csvs(tmp_path, capsys, text, message):
    csv_path, out = tmp_path / "ref.csv", tmp_path / "table.json"
    csv_path.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        profile_main(["--fit-reference", str(csv_path), "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "ref.csv" in err, err
    assert not out.exists()


def test_a_reference_table_that_is_not_text_names_the_file(tmp_path):
    csv_path = tmp_path / "ref.csv"
    csv_path.write_bytes(HEADER.encode() + b"gemm_up,\xff\xfe,1024\n")
    with pytest.raises(ValueError, match=r"ref.csv is not a text CSV table \(not UTF-8"):
        read_reference(csv_path)


def test_profile_cli_names_a_missing_file_or_mode(capsys):
    for argv, message in ((["--fit-reference", "/no/such.csv"], "/no/such.csv"), ([], "give --out, --validate")):
        with pytest.raises(SystemExit) as exit_info:
            profile_main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_percent_errors():
    e = percent_errors([1.1, 0.8, 1.0], [1.0, 1.0, 1.0])
    assert e["median_pct"] == pytest.approx(10.0) and e["rows"] == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--window-s", "0"], "--window-s must be a positive, finite number of seconds, got 0.0"),
        (["--window-s", "nan"], "--window-s must be a positive, finite number of seconds, got nan"),
        (["--threads", "0"], "--threads must be >= 1, got 0"),
    ],
)
def test_profile_cli_refuses_a_window_or_thread_count_that_cannot_measure(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        profile_main(["--out", str(tmp_path / "table.json"), *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "table.json").exists()


def test_a_foreign_table_with_a_device_name_string_is_refused_by_name(tmp_path):
    """A table whose `device` is a plain name (written by hand, not by kernels.profile) was an AttributeError."""
    doc = json.loads(BUILTIN_TABLES["H100_SXM"].read_text())
    path = tmp_path / "a100.json"
    path.write_text(json.dumps({**doc, "gpu_type": "A100_SXM", "device": "our A100 box"}))
    with pytest.raises(ValueError, match=r"measured on A100_SXM \(our A100 box\), not H100_SXM"):
        KernelCostModel("H100", data_path=path)


def test_profile_cli_refuses_a_folder_as_out_before_any_work(tmp_path, capsys):
    """It fitted (or benchmarked, minutes) first, then failed renaming `/.tmp.PID.tmp` onto the folder."""
    with pytest.raises(SystemExit) as exit_info:
        profile_main(["--out", str(tmp_path), "--quick"])
    assert exit_info.value.code == 2 and f"--out {tmp_path} is a folder" in capsys.readouterr().err
