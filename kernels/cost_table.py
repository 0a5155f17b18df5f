"""Per-op cost coefficients of the kernel cost model: analytic defaults, least-squares fits and the JSON table.

Each op of the work vocabulary (`kernels.work.OPS`) has six coefficients, all at full (boost) SM clock:

| coefficient            | unit    | role                                                                       |
|------------------------|---------|----------------------------------------------------------------------------|
| `flops_per_s`          | FLOP/s  | achievable compute rate: compute-bound time = FLOPs / rate                 |
| `bytes_per_s`          | B/s     | achievable bandwidth: memory-bound time = bytes / bandwidth                |
| `dispatch_s`           | s       | host dispatch interval: launches issued back to back start no faster      |
| `overhead_s`           | s       | GPU-side launch latency and tail per launch                                |
| `compute_power_scale`  | 1       | multiplies the dynamic power of compute-bound time (1 = telemetry's model) |
| `memory_power_scale`   | 1       | multiplies the dynamic power of memory-bound time (1 = telemetry's model)  |

Time of one launch (`split_seconds`): the roofline kernel time k = max(F / flops_per_s, B / bytes_per_s), then

    latency = max(k, dispatch_s) + overhead_s

i.e. roofline plus launch overhead, where the host's dispatch of the next launch overlaps the current kernel (a
tiny kernel waits for the host; a large one hides it). Fitted to the measured H100 rows this form halves the
held-out error of the plain `k + overhead` (5% vs 11% median). The gap max(dispatch_s - k, 0) + overhead_s is
clock-independent and spent at idle power. The analytic values come from the `GpuSpec` (`analytic_coefficients`);
a calibrated table replaces them per op (`fit_latency`, `fit_energy`, `save_table`, `load_table`).

Fits are linear least squares in relative error with a weak ridge toward the analytic values (`PRIOR_WEIGHT`), so
a coefficient that no row constrains (the compute rate of the memory-bound `silu_mul`, say) keeps its analytic value.
The max() terms are handled by alternating: assign each row to its regime (compute, memory or dispatch), solve,
reassign, until the assignment is stable.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kernels._files import write_text_atomic
from kernels.work import DTYPE_BYTES, OPS

TABLE_FORMAT = "moe-energy-rl/kcm-cost-table"
TABLE_VERSION = 1
COEFFICIENTS = ("flops_per_s", "bytes_per_s", "dispatch_s", "overhead_s", "compute_power_scale", "memory_power_scale")

# Analytic constants (chosen, not fitted; the calibrated table replaces them).
DISPATCH_S = 10e-6  # eager PyTorch issues about one launch per 10 us from Python (H100 reference: 14-20 us/op)
LAUNCH_OVERHEAD_S = 3e-6  # GPU-side launch latency and tail per kernel, a few us
OP_LAUNCHES = {"silu_mul": 2, "router_topk": 4}  # eager kernels per op: silu + mul; gate GEMM, softmax, top-k, norm
OP_COMPUTE_EFFICIENCY = {"sdpa_causal": 0.6}  # causal flash attention vs a large GEMM (FlashAttention-2/3: 50-70%)
CUDA_CORE_OPS = ("silu_mul",)  # elementwise ops run on CUDA cores at the fp32 rate, not on tensor cores
PRIOR_WEIGHT = 0.05  # ridge toward the analytic coefficient, in relative-error units per unit of log-free ratio
_MAX_REGIME_ITERATIONS = 30


@dataclass
class CostTable:
    """Per-op coefficients (arrays indexed like `OPS`) and the provenance of a table.

    Attributes:
        flops_per_s, bytes_per_s, dispatch_s, overhead_s, compute_power_scale, memory_power_scale: float64
            [len(OPS)].
        origin: op -> `analytic`, `fitted` or `copied from <op>`.
        meta: device, driver, date, dtype, fit residuals and held-out errors as written to JSON.
    """

    flops_per_s: np.ndarray
    bytes_per_s: np.ndarray
    dispatch_s: np.ndarray
    overhead_s: np.ndarray
    compute_power_scale: np.ndarray
    memory_power_scale: np.ndarray
    origin: dict[str, str] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def op(self, name: str) -> dict[str, float]:
        """The six coefficients of one op (`COEFFICIENTS`)."""
        i = OPS.index(name)
        return {c: float(getattr(self, c)[i]) for c in COEFFICIENTS}

    def set_op(self, name: str, **values: float) -> None:
        i = OPS.index(name)
        for key, value in values.items():
            getattr(self, key)[i] = float(value)

    def copy(self) -> CostTable:
        return CostTable(
            *(getattr(self, c).copy() for c in COEFFICIENTS), dict(self.origin), json.loads(json.dumps(self.meta))
        )


def analytic_coefficients(spec, dtype: str = "bfloat16") -> CostTable:
    """Roofline coefficients from a `telemetry.GpuSpec`.

    Compute rate = `spec.achievable_flops_fraction` x peak (bf16/fp16 tensor-core peak, or the fp32 peak for fp32
    and for `CUDA_CORE_OPS`) x `OP_COMPUTE_EFFICIENCY`; bandwidth = `spec.achievable_bandwidth_fraction` x peak HBM
    bandwidth; dispatch and overhead = `DISPATCH_S`, `LAUNCH_OVERHEAD_S` x `OP_LAUNCHES`; power scales 1
    (telemetry's power model as is).
    """
    tensor_peak = spec.peak_fp32_flops if dtype == "float32" else spec.peak_bf16_flops
    n = len(OPS)
    table = CostTable(np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n), np.ones(n), np.ones(n))
    for i, op in enumerate(OPS):
        peak = spec.peak_fp32_flops if op in CUDA_CORE_OPS else tensor_peak
        table.flops_per_s[i] = spec.achievable_flops_fraction * peak * OP_COMPUTE_EFFICIENCY.get(op, 1.0)
        table.bytes_per_s[i] = spec.achievable_bandwidth_fraction * spec.mem_bandwidth_bps
        table.dispatch_s[i] = DISPATCH_S * OP_LAUNCHES.get(op, 1)
        table.overhead_s[i] = LAUNCH_OVERHEAD_S * OP_LAUNCHES.get(op, 1)
        table.origin[op] = "analytic"
    table.meta = {"dtype": dtype, "gpu_type": spec.name, "source": "analytic"}
    return table


def _nonneg_lstsq(design: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least squares with x >= 0 for a few unknowns: the best feasible solution over all sets of free unknowns."""
    n = design.shape[1]
    best, best_cost = np.zeros(n), float(np.sum(target**2))
    for mask in range(1, 2**n):
        free = [j for j in range(n) if mask >> j & 1]
        sol, *_ = np.linalg.lstsq(design[:, free], target, rcond=None)
        if np.any(sol < 0):
            continue
        x = np.zeros(n)
        x[free] = sol
        cost = float(np.sum((design @ x - target) ** 2))
        if cost < best_cost:
            best, best_cost = x, cost
    return best


def split_seconds(flops, bytes_, launches, coefficients, compute_stretch=1.0, memory_stretch=1.0, pressure=1.0):
    """Compute-bound, memory-bound and gap seconds of launches (module docstring; arrays broadcast).

    The regime is decided at full clock (compute-bound when F / flops_per_s >= B / bytes_per_s); the kernel part
    is then stretched by its clock factor (and memory time by `pressure`); the gap is
    max(launches dispatch_s - kernel, 0) + launches overhead_s. The launch time is the sum of the three.

    Args:
        flops, bytes_, launches: [N] per launch shape.
        coefficients: (flops_per_s, bytes_per_s, dispatch_s, overhead_s), each [N] or scalar.
    """
    flops_per_s, bytes_per_s, dispatch_s, overhead_s = coefficients
    tc = np.asarray(flops, float) / flops_per_s
    tm = np.asarray(bytes_, float) / bytes_per_s
    compute_bound = tc >= tm
    compute_s = np.where(compute_bound, tc, 0.0) * compute_stretch
    memory_s = np.where(compute_bound, 0.0, tm) * (memory_stretch * pressure)
    gap_s = np.maximum(launches * dispatch_s - compute_s - memory_s, 0.0) + launches * overhead_s
    return compute_s, memory_s, gap_s


def fit_latency(
    flops,
    bytes_,
    launches,
    seconds,
    prior: tuple[float, float, float, float],
    compute_stretch=1.0,
    memory_stretch=1.0,
    prior_weight: float = PRIOR_WEIGHT,
) -> tuple[float, float, float, float]:
    """Fit (flops_per_s, bytes_per_s, dispatch_s, overhead_s) of one op to measured launch times.

    Minimises sum_i ((t_model_i - t_i) / t_i)^2 + prior_weight^2 sum_j (x_j / prior_j - 1)^2 over x >= 0, where
    t_model_i = max(F_i cs_i / flops_per_s, B_i ms_i / bytes_per_s, n_i dispatch_s) + n_i overhead_s. The stretches
    cs, ms (telemetry's compute and memory time factors at each row's SM clock) bring a row measured under the
    power cap to full clock: the same least-squares problem as normalising each row's time before fitting.

    Args:
        flops, bytes_, launches, seconds: [N] per measured row.
        prior: the analytic (flops_per_s, bytes_per_s, dispatch_s, overhead_s).
        compute_stretch, memory_stretch: [N] or scalars, >= 1.

    Returns:
        (flops_per_s, bytes_per_s, dispatch_s, overhead_s) at full clock.
    """
    t = np.asarray(seconds, float)
    n = len(t)
    scale = np.array([1.0 / prior[0], 1.0 / prior[1], prior[2], prior[3]])
    fc = np.asarray(flops, float) * scale[0] * np.broadcast_to(compute_stretch, (n,))
    bm = np.asarray(bytes_, float) * scale[1] * np.broadcast_to(memory_stretch, (n,))
    launches = np.asarray(launches, float)
    dh, og = launches * scale[2], launches * scale[3]
    prior_rows = prior_weight * np.eye(4)

    def regimes(theta: np.ndarray) -> np.ndarray:
        return np.argmax(np.column_stack([theta[0] * fc, theta[1] * bm, theta[2] * dh]), axis=1)

    def objective(theta: np.ndarray) -> float:
        model = np.maximum(np.maximum(theta[0] * fc, theta[1] * bm), theta[2] * dh) + theta[3] * og
        return float(np.sum(((model - t) / t) ** 2) + np.sum((prior_weight * (theta - 1.0)) ** 2))

    best, best_cost = np.ones(4), objective(np.ones(4))
    for start in (regimes(np.ones(4)), np.zeros(n, int), np.ones(n, int), np.full(n, 2)):
        regime = start
        for _ in range(_MAX_REGIME_ITERATIONS):
            design = np.column_stack([fc * (regime == 0), bm * (regime == 1), dh * (regime == 2), og]) / t[:, None]
            theta = _nonneg_lstsq(
                np.vstack([design, prior_rows]), np.concatenate([np.ones(n), prior_weight * np.ones(4)])
            )
            new_regime = regimes(theta)
            if np.array_equal(new_regime, regime):
                break
            regime = new_regime
        cost = objective(theta)
        if cost < best_cost:
            best, best_cost = theta, cost
    x = best * scale
    rate = 1.0 / x[0] if x[0] > 0 else math.inf
    bandwidth = 1.0 / x[1] if x[1] > 0 else math.inf
    return rate, bandwidth, float(x[2]), float(x[3])


def fit_energy(energy_j, compute_j, memory_j, static_j, prior_weight: float = PRIOR_WEIGHT) -> tuple[float, float]:
    """Fit (compute_power_scale, memory_power_scale) of one op to measured energies.

    Model: E_i = static_i + k_c compute_i + k_m memory_i, where static_i is the clock-dependent idle power times the
    launch time and compute_i, memory_i are the dynamic energies telemetry's power model gives the compute- and
    memory-bound parts. Relative-error least squares with a ridge toward k = 1, k >= 0.

    Returns:
        (compute_power_scale, memory_power_scale).
    """
    e = np.asarray(energy_j, float)
    design = np.column_stack([np.asarray(compute_j, float), np.asarray(memory_j, float)]) / e[:, None]
    target = (e - np.asarray(static_j, float)) / e
    design = np.vstack([design, prior_weight * np.eye(2)])
    target = np.concatenate([target, prior_weight * np.ones(2)])
    k = _nonneg_lstsq(design, target)
    return float(k[0]), float(k[1])


def percent_errors(predicted, measured) -> dict[str, float]:
    """Median and p90 of |predicted - measured| / measured, in percent, and the row count."""
    err = 100.0 * np.abs(np.asarray(predicted, float) - np.asarray(measured, float)) / np.asarray(measured, float)
    if err.size == 0:
        return {"median_pct": math.nan, "p90_pct": math.nan, "rows": 0}
    return {"median_pct": float(np.median(err)), "p90_pct": float(np.percentile(err, 90)), "rows": int(err.size)}


def save_table(table: CostTable, path: str | Path) -> None:
    """Write a versioned JSON table (format, version, device, date, per-op coefficients, residuals)."""
    ops = {}
    for op in OPS:
        entry = {k: (None if not math.isfinite(v) else v) for k, v in table.op(op).items()}
        entry["origin"] = table.origin.get(op, "analytic")
        entry.update(table.meta.get("op_fit", {}).get(op, {}))
        ops[op] = entry
    meta = {k: v for k, v in table.meta.items() if k not in ("op_fit", "path")}
    doc = {"format": TABLE_FORMAT, "version": TABLE_VERSION, **meta, "ops": ops}
    write_text_atomic(path, json.dumps(doc, indent=1, sort_keys=False) + "\n")  # the env reads it: never half of one


def load_table(path: str | Path, fallback: CostTable) -> CostTable:
    """Read a table written by `save_table`; ops it lacks keep `fallback`'s coefficients.

    Raises:
        ValueError: the file is missing, not JSON, not a cost table, of another version, or has a bad coefficient;
            the message names the file.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise ValueError(f"cost table {path} does not exist") from err
    except IsADirectoryError as err:
        raise ValueError(f"cost table {path} is a folder; give the table's JSON file") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"cost table {path} is not valid JSON ({err}); regenerate it with python -m kernels.profile"
        ) from err
    if not isinstance(doc, dict) or doc.get("format") != TABLE_FORMAT:
        raise ValueError(f"{path} is not a kernel cost table (format {TABLE_FORMAT!r} expected)")
    if doc.get("version") != TABLE_VERSION:
        raise ValueError(
            f"cost table {path} has version {doc.get('version')!r}; this code reads version {TABLE_VERSION}. "
            "Regenerate it with python -m kernels.profile"
        )
    if doc.get("dtype", "bfloat16") not in DTYPE_BYTES:
        raise ValueError(f"cost table {path} has dtype {doc.get('dtype')!r}; it must be one of {tuple(DTYPE_BYTES)}")
    ops = doc.get("ops")
    if not isinstance(ops, dict) or not ops:
        raise ValueError(f"cost table {path} has no 'ops' section")
    table = fallback.copy()
    op_fit = {}
    for op, entry in ops.items():
        if op not in OPS:
            raise ValueError(f"cost table {path} names unknown op {op!r}; ops are {OPS}")
        if not isinstance(entry, dict):
            raise ValueError(f"cost table {path}: op {op!r} is {entry!r}, not a mapping of coefficients")
        missing = [key for key in COEFFICIENTS if key not in entry]  # null, not absence, marks an unbounded rate
        if missing:
            raise ValueError(f"cost table {path}: op {op!r} lacks {missing}; regenerate it with python -m kernels.profile")
        for key in COEFFICIENTS:
            value = entry.get(key)
            rate = key in ("flops_per_s", "bytes_per_s")  # an unbounded rate (null) is allowed: no such limit
            value = math.inf if value is None and rate else value
            zero_ok = key in ("dispatch_s", "overhead_s", "compute_power_scale", "memory_power_scale")
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or math.isnan(value)
                or value < 0
                or (value == 0 and not zero_ok)
                or (math.isinf(value) and not rate)
            ):
                raise ValueError(f"cost table {path}: op {op!r} has a bad {key} ({value!r})")
            table.set_op(op, **{key: value})
        table.origin[op] = str(entry.get("origin", "fitted"))
        op_fit[op] = {k: v for k, v in entry.items() if k not in COEFFICIENTS and k != "origin"}
    table.meta = {k: v for k, v in doc.items() if k not in ("format", "version", "ops")}
    table.meta["op_fit"] = op_fit
    table.meta["path"] = str(path)
    return table
