"""Calibrate the kernel cost model: microbenchmarks, least-squares fits, held-out accuracy.

Commands (run from the project root):

    python -m kernels.profile --out cost_table.json          # benchmark this device's kernels, fit, write a table
    python -m kernels.profile --validate cost_table.json     # fresh measurements on held-out shapes: % errors
    python -m kernels.profile --fit-reference ../shared/reference/h100-op-costs.csv \\
        --out kernels/data/h100_cost_table.json              # fit the shipped H100 table to the measured rows

On CUDA each op runs back to back for about `--window-s` seconds inside a telemetry NVML energy window (CUDA events
for time; SM clock sampled); on the CPU, wall time of the PyTorch reference path (`kernels.dispatch`), latency only,
and the table says so. Fits are per op (`kernels.cost_table.fit_latency` / `fit_energy`); each table records the
device, driver, date, fit residuals and, for the reference fit, the held-out error of calibrated vs analytic.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kernels.cost_model import KernelCostModel
from kernels.cost_table import (
    CostTable,
    analytic_coefficients,
    fit_energy,
    fit_latency,
    load_table,
    percent_errors,
    save_table,
    split_seconds,
)
from kernels.deploy_work import OP_INDEX, call_flops_bytes, make_arrays
from kernels.microbench import Rows, device_info, grid, measure
from kernels.work import OPS
from telemetry import board_power_w, compute_time_factor, get_gpu_spec, memory_time_factor

log = logging.getLogger(__name__)

REFERENCE_DEVICE = {"name": "NVIDIA H100 80GB HBM3", "driver": "580.159.04", "kind": "cuda"}  # reference README
REFERENCE_DATE = "2026-11-23"  # when shared/reference/h100-op-costs.csv was measured
REFERENCE_COLUMNS = ("op", "tokens", "d_model", "d_ff", "experts", "busy_ms_per_op", "energy_j_per_op",
                     "sm_clock_mhz", "flops", "bytes")  # fmt: skip
HOLD_OUT_EVERY = 5  # the reference fit holds out every 5th grid shape (all its ops) and the middle attention/router row


@dataclass
class Args:
    """Command-line arguments."""

    out: str = ""  # write the fitted table here
    validate: str = ""  # validate this table on held-out shapes
    fit_reference: str = ""  # fit to a measured reference CSV instead of benchmarking
    gpu_type: str = "H100"  # GPU model for --fit-reference
    quick: bool = False  # a tiny grid (smoke tests)
    window_s: float = 1.0  # CUDA: seconds of back-to-back calls per shape (the energy counter needs ~1 s)
    threads: int = 1  # CPU: torch threads while measuring (one per env worker; more oversubscribe a shared CPU)


# --help of each `Args` field (argparse formats it: %% is a percent sign).
HELP = {
    "out": "benchmark this device's kernels, fit, and write the cost table (JSON) here; with --fit-reference, "
    "where the fitted table goes (default: cost_table.json)",
    "validate": "measure held-out shapes on this device and print the %% error of this cost table's latency (and, "
    "on CUDA, energy) predictions",
    "fit_reference": "fit to this measured CSV (../shared/reference/h100-op-costs.csv) instead of benchmarking, "
    "holding out every 5th shape, and print the held-out error",
    "gpu_type": "GPU model for --fit-reference: H100, H200, A100, V100 or L4 (default: H100)",
    "quick": "benchmark a tiny fit grid (smoke tests); --validate measures the same held-out shapes either way",
    "window_s": "CUDA: seconds of back-to-back calls per shape, inside one NVML energy window (the counter ticks "
    "about every 0.1 s); unused on the CPU (default: 1.0)",
    "threads": "CPU: torch threads while measuring, >= 1 (default: 1; one per env worker, more oversubscribe a "
    "shared CPU)",
}


# ----- measured rows -----
def read_reference(path: str | Path) -> tuple[Rows, np.ndarray]:
    """Rows of `h100-op-costs.csv` (busy_ms_per_op, energy_j_per_op, sm_clock_mhz) and the held-out mask.

    Raises:
        ValueError: a file without the table's columns or rows, a row that does not parse, or whose FLOPs or bytes
            disagree with the work vocabulary's formulas (names the row).
        OSError: the file cannot be read.
    """
    cols = {k: [] for k in ("op", "tokens", "d_model", "d_ff", "seq_len", "experts", "s", "j", "mhz")}
    keys, held, shapes, csv_counts = [], [], {}, []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not a text CSV table (not UTF-8: {exc.reason} at byte {exc.start})") from None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = [c for c in REFERENCE_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path} is not an op-cost table like h100-op-costs.csv: no column(s) {missing}")
        for i, r in enumerate(reader):
            try:
                op = r["op"]
                if op not in OP_INDEX:
                    raise ValueError(f"unknown op {op!r}; known: {sorted(OP_INDEX)}")
                if op == "sdpa_causal":
                    tokens, d, seq = int(r["batch"]) * int(r["seq"]), int(r["heads"]) * int(r["head_dim"]), int(r["seq"])
                else:
                    tokens, d, seq = int(r["tokens"]), int(r["d_model"]), 0
                values = (OP_INDEX[op], tokens, d, int(r["d_ff"] or 0), seq, int(r["experts"] or 0))
                values += (float(r["busy_ms_per_op"]) / 1e3, float(r["energy_j_per_op"]), float(r["sm_clock_mhz"]))
                counts = (i, float(r["flops"]), float(r["bytes"]))
                busy_s, energy_j, clock_mhz = values[-3:]
                if not (0 < busy_s < math.inf and 0 < energy_j < math.inf and 0 < clock_mhz < math.inf):
                    raise ValueError(  # a fit would fail on it naming no row, or take it in
                        f"busy_ms_per_op, energy_j_per_op and sm_clock_mhz must be finite and positive, got "
                        f"{r['busy_ms_per_op']}, {r['energy_j_per_op']}, {r['sm_clock_mhz']}"
                    )
            except (KeyError, TypeError, ValueError) as exc:  # TypeError: a short row reads None
                raise ValueError(f"{path} row {i + 2}: cannot read it ({type(exc).__name__}: {exc})") from None
            for key, value in zip(cols, values):
                cols[key].append(value)
            keys.append(f"{op}:T={tokens},d={d},f={r['d_ff'] or 0},S={seq},E={r['experts'] or 0}")
            csv_counts.append(counts)
            if op in ("gemm_up", "gemm_down", "silu_mul"):
                shape = shapes.setdefault((tokens, d, values[3]), len(shapes))
                held.append(shape % HOLD_OUT_EVERY == 2)
            else:
                held.append(sum(1 for k in keys if k.startswith(op)) == 2)
    except csv.Error as exc:
        raise ValueError(f"{path}: not a CSV table ({exc})") from None
    if not keys:
        raise ValueError(f"{path} has no rows")
    work = make_arrays(cols["op"], cols["tokens"], cols["d_model"], cols["d_ff"], cols["seq_len"], cols["experts"])
    flops, bytes_, _ = call_flops_bytes(work, 2)
    for (i, f, b), f2, b2 in zip(csv_counts, flops, bytes_):
        if abs(f2 - f) > 1e-9 * f or abs(b2 - b) > 1e-9 * b:
            raise ValueError(
                f"{path} row {i + 2}: flops/bytes {f:.0f}/{b:.0f} differ from the work vocabulary's {f2:.0f}/{b2:.0f}"
            )
    rows = Rows(work, np.array(cols["s"]), np.array(cols["j"]), np.array(cols["mhz"]), keys)
    return rows, np.array(held)


# ----- fitting and prediction -----
def fit_table(rows: Rows, spec, dtype: str = "bfloat16", prior: CostTable | None = None) -> CostTable:
    """Fit per-op coefficients to measured rows; ops without rows keep `prior` (GEMM-like ones copy gemm_down).

    With a `spec`, each row's time is brought to full clock with telemetry's time factors at its SM clock, and
    energies are fitted when present; without one (CPU) latency only, power scales stay 1.
    """
    table = (prior or analytic_coefficients(spec, dtype)).copy()
    dtype_bytes = {"float32": 4}.get(dtype, 2)
    flops, bytes_, launches = call_flops_bytes(rows.work, dtype_bytes)
    cs = np.array([compute_time_factor(spec, c) for c in rows.clock_mhz]) if spec else np.ones(len(rows.seconds))
    ms = np.array([memory_time_factor(spec, c) for c in rows.clock_mhz]) if spec else np.ones(len(rows.seconds))
    op_fit = {}
    for op in OPS:
        m = rows.work.op == OP_INDEX[op]
        if not np.any(m):
            continue
        c = table.op(op)
        prior_op = (c["flops_per_s"], c["bytes_per_s"], c["dispatch_s"], c["overhead_s"])
        rate, bw, dispatch, overhead = fit_latency(
            flops[m], bytes_[m], launches[m], rows.seconds[m], prior_op, cs[m], ms[m]
        )
        table.set_op(op, flops_per_s=rate, bytes_per_s=bw, dispatch_s=dispatch, overhead_s=overhead)
        table.origin[op] = "fitted"
        if spec is not None and np.all(np.isfinite(rows.energy_j[m])):
            parts = _row_parts(table, rows.select(m), spec, dtype_bytes)
            share = rows.seconds[m] / parts["latency_s"]  # measured time split in the model's proportions
            idle_w, compute_w, memory_w = _power_terms(spec, rows.clock_mhz[m])
            k_c, k_m = fit_energy(
                rows.energy_j[m],
                parts["lat_c"] * share * (compute_w + spec.compute_memory_utilization * memory_w),
                parts["lat_m"] * share * memory_w,
                rows.seconds[m] * idle_w,
            )
            table.set_op(op, compute_power_scale=k_c, memory_power_scale=k_m)
        op_fit[op] = {"rows": int(m.sum())}
    for op in ("embed_head",):
        if op not in op_fit and "gemm_down" in op_fit:
            table.set_op(op, **table.op("gemm_down"))
            table.origin[op] = "copied from gemm_down (a GEMM of the same form; not measured)"
    lat, energy = predict_rows(table, rows, spec, dtype_bytes)
    for op, entry in op_fit.items():
        m = rows.work.op == OP_INDEX[op]
        entry["residual_latency"] = percent_errors(lat[m], rows.seconds[m])
        if spec is not None and np.all(np.isfinite(rows.energy_j[m])):
            entry["residual_energy"] = percent_errors(energy[m], rows.energy_j[m])
    table.meta = {"dtype": dtype, "op_fit": op_fit}
    return table


def _power_terms(spec, clocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Idle, compute (u=1) and memory (m=1) power at each clock, from telemetry's (linear) power model."""
    idle = np.array([board_power_w(spec, 0.0, c, 0.0) for c in clocks])
    compute = np.array([board_power_w(spec, 1.0, c, 0.0) for c in clocks]) - idle
    memory = np.array([board_power_w(spec, 0.0, c, 1.0) for c in clocks]) - idle
    return idle, compute, memory


def _row_parts(table: CostTable, rows: Rows, spec, dtype_bytes: int) -> dict[str, np.ndarray]:
    """Latency parts of each row at its own SM clock."""
    flops, bytes_, launches = call_flops_bytes(rows.work, dtype_bytes)
    op = rows.work.op
    coefficients = (table.flops_per_s[op], table.bytes_per_s[op], table.dispatch_s[op], table.overhead_s[op])
    cs = np.array([compute_time_factor(spec, c) for c in rows.clock_mhz]) if spec else 1.0
    ms = np.array([memory_time_factor(spec, c) for c in rows.clock_mhz]) if spec else 1.0
    lat_c, lat_m, lat_o = split_seconds(flops, bytes_, launches, coefficients, cs, ms)
    return {"lat_c": lat_c, "lat_m": lat_m, "lat_o": lat_o, "latency_s": lat_c + lat_m + lat_o}


def predict_rows(table: CostTable, rows: Rows, spec, dtype_bytes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Predicted latency (s) and energy (J) of each measured row at its own SM clock (energy NaN without a spec)."""
    p = _row_parts(table, rows, spec, dtype_bytes)
    if spec is None:
        return p["latency_s"], np.full(len(rows.seconds), np.nan)
    idle_w, compute_w, memory_w = _power_terms(spec, rows.clock_mhz)
    k_c, k_m = table.compute_power_scale[rows.work.op], table.memory_power_scale[rows.work.op]
    energy = (
        p["lat_c"] * (idle_w + k_c * (compute_w + spec.compute_memory_utilization * memory_w))
        + p["lat_m"] * (idle_w + k_m * memory_w)
        + p["lat_o"] * idle_w
    )
    return p["latency_s"], energy


def accuracy(table: CostTable, rows: Rows, spec, dtype_bytes: int = 2) -> dict:
    """Median and p90 absolute % error of latency (and energy when measured) over `rows`."""
    lat, energy = predict_rows(table, rows, spec, dtype_bytes)
    out = {"latency": percent_errors(lat, rows.seconds)}
    if spec is not None and np.all(np.isfinite(rows.energy_j)):
        out["energy"] = percent_errors(energy, rows.energy_j)
    return out


def fit_reference(csv_path: str, gpu_type: str, out: str) -> dict:
    """Fit the shipped table to a measured reference CSV with rows held out; write it; return the held-out report."""
    spec = get_gpu_spec(gpu_type)
    rows, held = read_reference(csv_path)
    table = fit_table(rows.select(~held), spec)
    analytic = analytic_coefficients(spec)
    report = {
        "rows_fitted": int((~held).sum()),
        "rows_held_out": int(held.sum()),
        "held_out_keys": [k for k, h in zip(rows.keys, held) if h],
        "calibrated": accuracy(table, rows.select(held), spec),
        "analytic": accuracy(analytic, rows.select(held), spec),
        "measure": "busy_ms_per_op and energy_j_per_op at each row's SM clock",
    }
    table.meta.update(
        gpu_type=spec.name,
        device=REFERENCE_DEVICE,
        date=REFERENCE_DATE,
        created=dt.date.today().isoformat(),
        full_clock_mhz=spec.boost_sm_clock_mhz,
        source=f"{Path(csv_path).name}: busy_ms_per_op brought to full clock with telemetry's time factors at "
        "sm_clock_mhz; energy_j_per_op",
        command=f"python -m kernels.profile --fit-reference {csv_path} --gpu-type {gpu_type} --out {out}",
        held_out=report,
    )
    save_table(table, out)
    return report


def profile(out: str, quick: bool, window_s: float, threads: int = 1) -> CostTable:
    """Benchmark the fit grid on this device, fit, write the table."""
    device, info, spec = device_info()
    if device == "cpu":
        info["torch_threads"] = threads
    rows = measure(grid(quick, held_out=False, device=device), device, window_s, threads)
    dtype = "bfloat16" if device == "cuda" else "float32"
    prior = analytic_coefficients(spec, dtype) if spec else _cpu_prior(rows)
    table = fit_table(rows, spec, dtype, prior)
    table.meta.update(
        gpu_type=spec.name if spec else "CPU",
        device=info,
        date=dt.date.today().isoformat(),
        full_clock_mhz=spec.boost_sm_clock_mhz if spec else None,
        energy="fitted to NVML energy windows" if spec else "not measured on the CPU (power scales left at 1)",
        source=f"python -m kernels.profile on {info['name']}" + (" (--quick)" if quick else ""),
    )
    save_table(table, out)
    return table


def _cpu_prior(rows: Rows) -> CostTable:
    """A CPU prior from the data: best observed FLOP rate and bandwidth; dispatch and overhead from the fastest launch."""
    flops, bytes_, _ = call_flops_bytes(rows.work, 4)
    n = len(OPS)
    rate, bw = np.max(flops / rows.seconds), np.max(bytes_ / rows.seconds)
    fastest = rows.seconds.min()
    table = CostTable(
        np.full(n, rate), np.full(n, bw), np.full(n, 0.5 * fastest), np.full(n, 0.2 * fastest), np.ones(n), np.ones(n)
    )
    table.origin = dict.fromkeys(OPS, "prior")
    return table


def validate(path: str, quick: bool, window_s: float, threads: int = 1) -> dict:
    """Fresh measurements on held-out shapes vs the table's predictions: median/p90 abs % error."""
    device, info, spec = device_info()
    table = load_table(path, fallback=analytic_coefficients(spec) if spec else _cpu_prior_stub())
    if spec is not None:
        KernelCostModel(spec.name, data_path=path)  # foreign-device check
    elif table.meta.get("gpu_type") != "CPU":
        raise ValueError(
            f"cost table {path} is for {table.meta.get('gpu_type')}; on the CPU only a CPU table validates"
        )
    rows = measure(grid(quick, held_out=True, device=device), device, window_s, threads)
    result = accuracy(table, rows, spec, 2 if device == "cuda" else 4)
    result["device"] = info
    result["note"] = "latency and energy" if spec else "CPU: latency only (no energy counter)"
    return result


def _cpu_prior_stub() -> CostTable:
    n = len(OPS)
    return CostTable(
        np.full(n, 1e10),
        np.full(n, 1e10),
        np.zeros(n),
        np.full(n, 1e-5),
        np.ones(n),
        np.ones(n),
        dict.fromkeys(OPS, "prior"),
    )


def _print_accuracy(name: str, acc: dict) -> None:
    for what, e in acc.items():
        if isinstance(e, dict) and "median_pct" in e:
            print(
                f"  {name:<10} {what:<8} median {e['median_pct']:6.1f} %   p90 {e['p90_pct']:6.1f} %   ({e['rows']} rows)"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kernels.profile", description=__doc__.split("\n")[0])
    for name, default in Args().__dict__.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=HELP[name])
        else:
            parser.add_argument(flag, type=type(default), default=default, help=HELP[name])
    args = Args(**vars(parser.parse_args(argv)))
    if not (args.fit_reference or args.validate or args.out):
        parser.error("give --out, --validate or --fit-reference")
    if not 0 < args.window_s < math.inf:
        parser.error(f"--window-s must be a positive, finite number of seconds, got {args.window_s}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.out and Path(args.out).is_dir():  # found now, not after minutes of benchmarks (and a rename's errno)
        parser.error(f"--out {args.out} is a folder; give the table's file path, e.g. {Path(args.out) / 'cost_table.json'}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        _run(args)
    except (ValueError, OSError) as exc:  # a missing or malformed file, a table for another device or GPU
        parser.error(str(exc))


def _run(args: Args) -> None:
    """The mode `args` names (main has checked that one is given)."""
    if args.fit_reference:
        out = args.out or "cost_table.json"
        report = fit_reference(args.fit_reference, args.gpu_type, out)
        print(f"fitted {report['rows_fitted']} rows, held out {report['rows_held_out']}; wrote {out}")
        print("held-out absolute error (predicted vs measured, at each row's SM clock):")
        _print_accuracy("calibrated", report["calibrated"])
        _print_accuracy("analytic", report["analytic"])
    elif args.validate:
        result = validate(args.validate, args.quick, args.window_s, args.threads)
        print(f"validation of {args.validate} on {result['device']['name']} ({result['note']}):")
        _print_accuracy("table", {k: v for k, v in result.items() if k in ("latency", "energy")})
    elif args.out:
        table = profile(args.out, args.quick, args.window_s, args.threads)
        print(f"wrote {args.out} ({table.meta['device']['name']}); fit residuals (median % latency):")
        for op, fit in table.meta["op_fit"].items():
            print(f"  {op:<12} {fit['rows']:3d} rows  {fit['residual_latency']['median_pct']:6.1f} %")


if __name__ == "__main__":
    main()
