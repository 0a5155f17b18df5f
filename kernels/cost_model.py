"""The kernel cost model (KCM): time and energy of each op of the work vocabulary on a GPU, in its present state.

Model (all per launch; F = FLOPs, B = bytes, coefficients per op from `kernels.cost_table`, at full clock):

    compute_s = F / flops_per_s  if F / flops_per_s >= B / bytes_per_s  else 0    (roofline: the larger part)
    memory_s  = B / bytes_per_s  otherwise                                          (0 when compute-bound)
    kernel    = compute_s * compute_time_factor(clock) + memory_s * memory_time_factor(clock) * pressure
    gap       = max(launches * dispatch_s - kernel, 0) + launches * overhead_s       (launch overhead)
    latency   = kernel + gap
    energy    = compute time x (P0 + k_c (C + m_c M)) + memory time x (P0 + k_m M) + gap x P0

where P0 + u C + m M = `telemetry.board_power_w(spec, u, clock, m)` (P0 the idle power at that clock, C the
compute and M the memory power; m_c = `spec.compute_memory_utilization`), exactly the power `SimulatedGpu.execute`
draws for compute-bound time (u=1, m=m_c) and memory-bound time (u=0, m=1); launch gaps draw idle power. The power
scales k_c, k_m are 1 in the analytic model and fitted in a calibrated table. Time factors, power-capped clock
(`power_capped_clock_mhz`) and thermal clock (`thermal_clock_mhz`) are telemetry's, imported, never copied.

Memory pressure stretches memory-bound time (`kernels.seed_ops.pressure_factor`, monotone). The seeds' op names
(`ffn_up`, `expert_swiglu`, `ttt_update`, ...) are aliases and composites of the work vocabulary
(`kernels.seed_ops.COMPOSITES`).

Analytic by default; `KernelCostModel.calibrated("H100")` (or `data_path="builtin"`) loads the shipped table fitted
to the measured H100 rows in `shared/reference/h100-op-costs.csv` (`kernels/data/`), and `data_path=<file>` a table
written by `python -m kernels.profile`.

`python -m kernels.cost_model` prints the seeds' KCM test report and writes it as JSON.
"""

from __future__ import annotations

import math
import numbers
import operator
from pathlib import Path

import numpy as np

from kernels.cost_table import CostTable, analytic_coefficients, load_table, split_seconds
from kernels.deploy_work import (
    EMBED,
    FORWARD,
    OP_INDEX,
    WorkArrays,
    call_flops_bytes,
    deployment_arrays,
    make_arrays,
    work_arrays,
)
from kernels.seed_ops import COMPOSITES, DEFAULT_SHAPE, SHAPE_KEYWORDS, pressure_factor
from kernels.step_cost import CostParts, StepCost
from kernels.work import DTYPE_BYTES, PHASES, DeploymentScale, KernelCall
from telemetry import (
    board_power_w,
    compute_time_factor,
    effective_clock_mhz,
    get_gpu_spec,
    memory_time_factor,
    power_capped_clock_mhz,
    steady_temperature_c,
)

DATA_DIR = Path(__file__).parent / "data"
BUILTIN_TABLES = {"H100_SXM": DATA_DIR / "h100_cost_table.json"}
_CLOCK_ITERATIONS = 4  # fixed point of clock <-> utilisation; converges to < 0.5 MHz in 2-3 rounds


class KernelCostModel:
    """Predicts latency and energy of kernels and of whole runtime steps on one GPU model.

    Args:
        gpu_type: a `telemetry.get_gpu_spec` name ("H100", "A100", "H200", "V100", "L4").
        data_path: None for the analytic model; "builtin" for the shipped calibrated table of this GPU (also
            `KernelCostModel.calibrated(gpu_type)`); or a table file from `python -m kernels.profile`.
        dtype: element type priced by `get_cost` and by `predict_step` without a `DeploymentScale`.

    Raises:
        ValueError: unknown GPU or dtype; a missing, corrupt, wrong-version or foreign-device table (names the file).
    """

    def __init__(self, gpu_type: str = "H100", data_path: str | Path | None = None, dtype: str = "bfloat16"):
        self.spec = get_gpu_spec(gpu_type)
        if dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype {dtype!r} is not one of {tuple(DTYPE_BYTES)}")
        self.gpu_type, self.dtype = self.spec.name, dtype
        self.table: CostTable | None = None
        if data_path is not None:
            self.table = self._load(data_path)
        self.source = "analytic" if self.table is None else "calibrated"
        self._coefficient_cache: dict[str, tuple[np.ndarray, ...]] = {}
        self._last_work: tuple | None = None  # (key, calls, priced arrays) of the last predict_step

    @classmethod
    def calibrated(cls, gpu_type: str = "H100", dtype: str = "bfloat16") -> KernelCostModel:
        """The model with the shipped calibrated table of `gpu_type` (`kernels/data/`)."""
        return cls(gpu_type, data_path="builtin", dtype=dtype)

    def _load(self, data_path: str | Path) -> CostTable:
        if str(data_path) == "builtin":
            if self.spec.name not in BUILTIN_TABLES:
                raise ValueError(f"no shipped cost table for {self.spec.name}; shipped: {sorted(BUILTIN_TABLES)}")
            data_path = BUILTIN_TABLES[self.spec.name]
        table = load_table(data_path, fallback=analytic_coefficients(self.spec))
        table_gpu = str(table.meta.get("gpu_type", ""))
        try:
            same = get_gpu_spec(table_gpu).name == self.spec.name
        except ValueError:
            same = False
        if not same and table_gpu == "CPU":
            raise ValueError(
                f"cost table {data_path} was measured on the CPU: such a table checks the fit on this machine "
                "(python -m kernels.profile --validate), but the KCM prices GPUs; use the shipped table "
                "(data_path='builtin'), the analytic model (None), or a table profiled on the GPU"
            )
        if not same:
            device = table.meta.get("device")  # a mapping in our tables; a hand-written one may give a name
            device = device.get("name", "?") if isinstance(device, dict) else str(device or "?")
            raise ValueError(
                f"cost table {data_path} was measured on {table_gpu or '?'} ({device}), not {self.spec.name}; "
                "profile this GPU with python -m kernels.profile or use the analytic model (data_path=None)"
            )
        return table

    # ----- coefficients and pricing -----
    def _coefficients(self, dtype: str) -> tuple[np.ndarray, ...]:
        """(flops_per_s, bytes_per_s, dispatch_s, overhead_s, k_c, k_m) [len(OPS)] for `dtype` (cached)."""
        if dtype not in self._coefficient_cache:
            analytic = analytic_coefficients(self.spec, dtype)
            table = self.table or analytic
            flops_per_s = table.flops_per_s.copy()
            if self.table is not None and table.meta.get("dtype", "bfloat16") != dtype:
                # The table was measured in another dtype: move its compute rates by the analytic peak ratio.
                flops_per_s *= analytic.flops_per_s / analytic_coefficients(self.spec, table.meta["dtype"]).flops_per_s
            self._coefficient_cache[dtype] = (flops_per_s,) + tuple(
                getattr(table, c)
                for c in ("bytes_per_s", "dispatch_s", "overhead_s", "compute_power_scale", "memory_power_scale")
            )
        return self._coefficient_cache[dtype]

    def _full_clock_parts(self, w: WorkArrays, dtype: str) -> dict[str, np.ndarray]:
        """Per-row full-clock seconds (times count; `kernels.cost_table.split_seconds`), FLOPs, bytes, power scales."""
        flops_per_s, bytes_per_s, dispatch_s, overhead_s, k_c, k_m = self._coefficients(dtype)
        flops, bytes_, launches = call_flops_bytes(w, DTYPE_BYTES[dtype])
        n = launches * w.count
        coefficients = (flops_per_s[w.op], bytes_per_s[w.op], dispatch_s[w.op], overhead_s[w.op])
        compute_s, memory_s, gap_s = split_seconds(flops * w.count, bytes_ * w.count, n, coefficients)
        return {
            "compute_s": compute_s,
            "memory_s": memory_s,
            "overhead_s": gap_s,
            "dispatch_s": n * dispatch_s[w.op],
            "launch_s": n * overhead_s[w.op],
            "flops": flops * w.count,
            "bytes": bytes_ * w.count,
            "k_c": k_c[w.op],
            "k_m": k_m[w.op],
        }

    def _at_clock(self, parts: dict, clock_mhz: float, pressure: float = 1.0) -> dict[str, np.ndarray]:
        """Per-row latency parts and energy at an SM clock (module docstring formulas)."""
        spec = self.spec
        idle_w = board_power_w(spec, 0.0, clock_mhz, 0.0)
        compute_w = board_power_w(spec, 1.0, clock_mhz, 0.0) - idle_w
        memory_w = board_power_w(spec, 0.0, clock_mhz, 1.0) - idle_w
        lat_c = parts["compute_s"] * compute_time_factor(spec, clock_mhz)
        lat_m = parts["memory_s"] * (memory_time_factor(spec, clock_mhz) * pressure)
        lat_o = np.maximum(parts["dispatch_s"] - lat_c - lat_m, 0.0) + parts["launch_s"]
        energy = (
            lat_c * (idle_w + parts["k_c"] * (compute_w + spec.compute_memory_utilization * memory_w))
            + lat_m * (idle_w + parts["k_m"] * memory_w)
            + lat_o * idle_w
        )
        return {"lat_c": lat_c, "lat_m": lat_m, "lat_o": lat_o, "latency_s": lat_c + lat_m + lat_o, "energy_j": energy}

    def _shares(self, parts: dict, timed: dict) -> tuple[float, float]:
        """SM and memory busy shares (power-weighted by k_c, k_m) of priced rows: what the power cap sees."""
        total = float(np.sum(timed["latency_s"]))
        if total <= 0:
            return 0.0, 0.0
        u = float(np.sum(parts["k_c"] * timed["lat_c"])) / total
        m = float(np.sum(parts["k_m"] * timed["lat_m"]) + self.spec.compute_memory_utilization * u * total) / total
        return min(max(u, 0.0), 1.0), min(max(m, 0.0), 1.0)

    def _steady_clock(self, parts: dict, temp_c: float | None, pressure: float = 1.0) -> tuple[float, dict]:
        """The clock this work runs at sustained (power cap, and thermal slowdown when temp_c is given)."""
        clock = self.spec.boost_sm_clock_mhz
        timed = self._at_clock(parts, clock, pressure)
        for _ in range(_CLOCK_ITERATIONS):
            u, m = self._shares(parts, timed)
            if temp_c is None:
                new_clock = power_capped_clock_mhz(self.spec, u, m)
            else:
                new_clock = effective_clock_mhz(self.spec, u, float(temp_c), m)
            if abs(new_clock - clock) < 0.5:
                break
            clock = new_clock
            timed = self._at_clock(parts, clock, pressure)
        return clock, timed

    def _temp_rise_c(self, power_w: float, clock_mhz: float, seconds: float) -> float:
        """Die temperature rise from running at `power_w` for `seconds` (above idle at that clock).

        The steady rise (telemetry's `steady_temperature_c`) split over the die and heatsink resistances, each part
        approached with its own RC time constant (the two-node model without coupling: a documented approximation).
        """
        spec = self.spec
        idle_w = board_power_w(spec, 0.0, clock_mhz, 0.0)
        rise = steady_temperature_c(spec, power_w) - steady_temperature_c(spec, idle_w)
        r_die, r_sink = spec.die_resistance_c_per_w, spec.sink_resistance_c_per_w
        tau_die, tau_sink = r_die * spec.die_capacitance_j_per_c, r_sink * spec.sink_capacitance_j_per_c
        die = r_die / (r_die + r_sink) * -math.expm1(-seconds / tau_die)
        sink = r_sink / (r_die + r_sink) * -math.expm1(-seconds / tau_sink)
        return max(rise * (die + sink), 0.0)

    # ----- the seeds' API -----
    def _op_rows(self, op: str, batch_size: int, shape: dict) -> tuple[WorkArrays, str]:
        if op not in COMPOSITES:
            raise ValueError(f"unknown op {op!r}; known ops: {', '.join(COMPOSITES)}")
        unknown = sorted(set(shape) - set(SHAPE_KEYWORDS))
        if unknown:
            raise ValueError(f"unknown keyword(s) {unknown} for op {op!r}; shape keywords are {SHAPE_KEYWORDS}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer number of tokens, got {batch_size!r}")
        s = {**DEFAULT_SHAPE, "dtype": self.dtype, **shape}
        for key in DEFAULT_SHAPE:  # inf was "utilization must be a share in [0, 1], got nan"; "4096" a TypeError
            if isinstance(s[key], bool) or not isinstance(s[key], numbers.Real) or not 0 < s[key] < math.inf:
                raise ValueError(f"{key} must be a positive, finite number, got {s[key]!r}")
        if s["dtype"] not in DTYPE_BYTES:
            raise ValueError(f"dtype {s['dtype']!r} is not one of {tuple(DTYPE_BYTES)}")
        comps = COMPOSITES[op]
        rows = make_arrays(
            [OP_INDEX[c[0]] for c in comps],
            batch_size,
            s["d_model"],
            [s["d_ff"] * c[1] for c in comps],
            s["seq_len"],
            s["experts"],
            phase=[PHASES.index(c[2]) for c in comps],
            count=[c[3] for c in comps],
        )
        return rows, s["dtype"]

    def get_cost(
        self, op: str, batch_size: int, current_temp: float | None = None, memory_pressure: float | None = None, **shape
    ) -> dict:
        """Cost of one `op` over `batch_size` tokens, sustained at the clock the GPU would hold for it.

        The clock is the power-capped clock for this op's utilisation, lowered by thermal slowdown at
        `current_temp` (telemetry's `effective_clock_mhz`); a large GEMM therefore runs under the cap, as measured.

        Args:
            op: a work-vocabulary op (`gemm_up`, `gemm_down`, `silu_mul`, `sdpa_causal`, `router_topk`,
                `embed_head`) or a seed op (`ffn_gate`, `ffn_up` = one projection x[T, d] @ W[d, d_ff], `ffn_down`,
                `attention_qk`/`attention_av` = half of causal attention each, `moe_router`, `expert_swiglu` = a
                whole expert, `ttt_update` = an expert's forward and backward over the chunk).
            batch_size: tokens (rows); for attention, query tokens, each over up to `seq_len` keys.
            current_temp: die temperature, C; None ignores thermal slowdown.
            memory_pressure: share of memory bandwidth used by other work, 0..1; None for none.
            **shape: `d_model`, `d_ff`, `heads`, `seq_len`, `experts`, `dtype` (defaults: `DEFAULT_SHAPE`).

        Returns:
            dict: energy_joules, latency_ms, temp_impact (C the die rises over this call), memory_gb (operands,
            GB), flops, bytes, bound (`compute`, or `memory` for time that does not follow the SM clock: memory-
            or launch-bound), source (`analytic`/`calibrated`), power_w, sm_clock_mhz, compute_ms, memory_ms,
            overhead_ms.

        Raises:
            ValueError: unknown op or keyword, bad batch size, shape, temperature or pressure.
        """
        rows, dtype = self._op_rows(op, batch_size, shape)
        pressure = pressure_factor(memory_pressure)
        if current_temp is not None and (isinstance(current_temp, bool) or not isinstance(current_temp, numbers.Real)):
            raise ValueError(f"current_temp must be the die temperature in C (a number) or None, got {current_temp!r}")
        if current_temp is not None and not -273.15 < current_temp < math.inf:
            raise ValueError(f"current_temp must be a finite temperature in C above absolute zero, got {current_temp}")
        parts = self._full_clock_parts(rows, dtype)
        clock, timed = self._steady_clock(parts, current_temp, pressure)
        latency_s, energy_j = float(timed["latency_s"].sum()), float(timed["energy_j"].sum())
        lat_c, lat_m, lat_o = (float(timed[k].sum()) for k in ("lat_c", "lat_m", "lat_o"))
        power_w = energy_j / latency_s if latency_s > 0 else 0.0
        return {
            "op": op,
            "batch_size": int(batch_size),
            "energy_joules": energy_j,
            "latency_ms": latency_s * 1e3,
            "temp_impact": self._temp_rise_c(power_w, clock, latency_s),
            "memory_gb": float(parts["bytes"].sum()) / 1e9,
            "flops": float(parts["flops"].sum()),
            "bytes": float(parts["bytes"].sum()),
            "bound": "compute" if lat_c > lat_m + lat_o else "memory",
            "source": self.source,
            "power_w": power_w,
            "sm_clock_mhz": clock,
            "compute_ms": lat_c * 1e3,
            "memory_ms": lat_m * 1e3,
            "overhead_ms": lat_o * 1e3,
        }

    def get_cost_breakdown(
        self, op: str, batch_size: int, current_temp: float | None = None, memory_pressure: float | None = None, **shape
    ) -> dict:
        """`get_cost` of `op` and of each work-vocabulary launch it is made of (priced at the op's clock).

        Returns:
            dict: op, batch_size, total (the `get_cost` dict), components (list of dicts: op, phase, share,
            flops, bytes, latency_ms, energy_joules, compute_ms, memory_ms, overhead_ms, bound).
        """
        total = self.get_cost(op, batch_size, current_temp, memory_pressure, **shape)
        rows, dtype = self._op_rows(op, batch_size, shape)
        parts = self._full_clock_parts(rows, dtype)
        timed = self._at_clock(parts, total["sm_clock_mhz"], pressure_factor(memory_pressure))
        components = []
        for i, (name, _, phase, share) in enumerate(COMPOSITES[op]):
            lat_c, lat_m, lat_o = (float(timed[k][i]) for k in ("lat_c", "lat_m", "lat_o"))
            components.append(
                {
                    "op": name,
                    "phase": phase,
                    "share": share,
                    "flops": float(parts["flops"][i]),
                    "bytes": float(parts["bytes"][i]),
                    "latency_ms": float(timed["latency_s"][i]) * 1e3,
                    "energy_joules": float(timed["energy_j"][i]),
                    "compute_ms": lat_c * 1e3,
                    "memory_ms": lat_m * 1e3,
                    "overhead_ms": lat_o * 1e3,
                    "bound": "compute" if lat_c > lat_m + lat_o else "memory",
                }
            )
        return {"op": op, "batch_size": int(batch_size), "total": total, "components": components}

    def get_thermal_safe_batch_size(self, op: str, current_temp: float, max_temp_increase: float, **shape) -> int:
        """Largest power-of-two token batch (1 .. 2^20) whose call heats the die by at most `max_temp_increase` C
        and stays below the slowdown temperature, from `current_temp`; 1 when none does.
        """
        if not max_temp_increase >= 0:
            raise ValueError(f"max_temp_increase must be >= 0 C, got {max_temp_increase}")
        if isinstance(current_temp, bool) or not isinstance(current_temp, numbers.Real):
            raise ValueError(f"current_temp must be the die temperature in C, got {current_temp!r}")
        best = 1
        for batch in (2**i for i in range(21)):
            rise = self.get_cost(op, batch, current_temp=current_temp, **shape)["temp_impact"]
            if rise > max_temp_increase or current_temp + rise >= self.spec.slowdown_temp_c:
                break
            best = batch
        return best

    def _priced_work(self, work: list[KernelCall], scale: DeploymentScale | None, deploy_tokens: float | None):
        """(WorkArrays, tokens, full-clock parts, [N, E + 2] expert/shared/TTT one-hot) of a work list.

        The last answer is kept: pricing the same calls (the same `KernelCall` objects) again at another clock, as
        the env does for the simulator and for the observations, skips the array building.
        """
        if not isinstance(work, (list, tuple)):
            raise TypeError(f"work must be a list of kernels.KernelCall (a StepReport's .work), got {type(work).__name__}")
        key = (scale, deploy_tokens, self.dtype)
        last = self._last_work
        if last is not None and last[0] == key and len(last[1]) == len(work) and all(map(operator.is_, last[1], work)):
            return last[2]
        stranger = next((call for call in work if not isinstance(call, KernelCall)), None)
        if stranger is not None:  # was an AttributeError from the array building
            raise TypeError(f"work must hold kernels.KernelCall objects only, got a {type(stranger).__name__}")
        if scale is not None:
            w, tokens = deployment_arrays(work, scale, deploy_tokens)
            dtype, n_experts = scale.dtype, scale.num_experts
        else:
            w = work_arrays(work)
            dtype = self.dtype
            embed = (w.op == EMBED) & (w.phase == FORWARD)
            tokens = float(np.sum(w.tokens[embed] * w.count[embed]))
            n_experts = int(max(w.expert.max(initial=-1) + 1, w.experts.max(initial=0)))
        expert = w.expert
        groups = np.zeros((len(expert), n_experts + 2))  # one-hot: experts, then shared, then TTT
        in_expert = expert >= 0
        groups[np.flatnonzero(in_expert), expert[in_expert]] = 1.0
        groups[:, n_experts] = ~in_expert
        groups[:, n_experts + 1] = w.phase != FORWARD
        result = (w, tokens, self._full_clock_parts(w, dtype), groups)
        self._last_work = (key, tuple(work), result)
        return result

    # ----- steps -----
    def predict_step(
        self,
        work: list[KernelCall],
        scale: DeploymentScale | None = None,
        clock_mhz: float | None = None,
        temp_c: float | None = None,
        *,
        deploy_tokens: float | None = None,
    ) -> StepCost:
        """Price a runtime step's `work` (a `StepReport.work` list of `KernelCall`s).

        Args:
            work: the calls of one control interval (forward passes, TTT forward and backward).
            scale: None prices the calls as they are (dtype `self.dtype`); a `DeploymentScale` prices the same
                routing decisions at that shape and token volume (`kernels.deploy_work`).
            clock_mhz: SM clock to report latency and energy at (an observed clock; used as is).
            temp_c: with no clock, the clock is the sustained one for this work at this temperature (power cap and
                thermal slowdown, telemetry's `effective_clock_mhz`). With neither: full (boost) clock, which is
                what `SimulatedGpu.execute` takes (it applies the clock itself).
            deploy_tokens: deployment tokens in the interval (only with `scale`); `scale.batch_tokens` when None.
                The env passes demand (tokens/s) x interval_s: see `interval_cost`.

        Returns:
            `StepCost`: full-clock compute/memory/overhead seconds (the simulator's inputs) and latency and energy
            at the clock, in total, per expert, for shared (non-expert) work and for TTT.
        """
        if scale is None and deploy_tokens is not None:
            raise ValueError("deploy_tokens needs a DeploymentScale (scale=...)")
        if deploy_tokens is not None and not 0 <= deploy_tokens < math.inf:
            raise ValueError(f"deploy_tokens must be a finite number >= 0, got {deploy_tokens}")
        if clock_mhz is not None and not 0 < clock_mhz < math.inf:
            raise ValueError(f"clock_mhz must be a finite number > 0 MHz, got {clock_mhz}")
        if temp_c is not None and not -273.15 < temp_c < math.inf:
            raise ValueError(f"temp_c must be None or a finite temperature in C, got {temp_c}")
        _, tokens, parts, groups = self._priced_work(work, scale, deploy_tokens)
        if clock_mhz is not None:
            clock, timed = float(clock_mhz), self._at_clock(parts, float(clock_mhz))
        elif temp_c is not None:
            clock, timed = self._steady_clock(parts, temp_c)
        else:
            clock = self.spec.boost_sm_clock_mhz
            timed = self._at_clock(parts, clock)
        names = ("compute_s", "memory_s", "overhead_s", "flops", "bytes")
        columns = np.stack([parts[k] for k in names] + [timed["energy_j"], timed["latency_s"]])  # (7, N)
        n_experts = groups.shape[1] - 2
        sums = columns @ groups  # (7, E + 2)
        total = columns.sum(axis=1)
        return StepCost(
            total=CostParts(*(float(x) for x in total)),
            experts=CostParts(*sums[:, :n_experts]),
            shared=CostParts(*(float(x) for x in sums[:, n_experts])),
            ttt=CostParts(*(float(x) for x in sums[:, n_experts + 1])),
            clock_mhz=clock,
            tokens=tokens,
            source=self.source,
        )

    def expert_energy_per_token_j(self, scale: DeploymentScale, tokens: int | None = None) -> np.ndarray:
        """[E] energy of one token routed to each expert in one layer (gemm_up, silu_mul, gemm_down), full clock, J.

        Args:
            scale: the deployment shape (d_model, expert widths, dtype).
            tokens: tokens each expert's launch processes; an even share of a launch (`batch_tokens / E`) when None.
        """
        if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, numbers.Integral) or tokens < 1):
            raise ValueError(f"tokens must be a positive integer (or None for an even share), got {tokens!r}")
        n = int(tokens) if tokens is not None else max(scale.batch_tokens // scale.num_experts, 1)
        ops = [OP_INDEX[o] for o in ("gemm_up", "silu_mul", "gemm_down")]
        widths = np.repeat(np.asarray(scale.expert_widths, float), 3)
        rows = make_arrays(
            np.tile(ops, scale.num_experts), n, scale.d_model, widths, expert=np.repeat(np.arange(scale.num_experts), 3)
        )
        timed = self._at_clock(self._full_clock_parts(rows, scale.dtype), self.spec.boost_sm_clock_mhz)
        return np.bincount(rows.expert, timed["energy_j"], scale.num_experts) / n

    def interval_cost(
        self,
        work: list[KernelCall],
        scale: DeploymentScale,
        demand_tokens_per_s: float,
        interval_s: float,
        clock_mhz: float | None = None,
        temp_c: float | None = None,
    ) -> StepCost:
        """The env's helper: one control interval's work served at `demand_tokens_per_s` for `interval_s` seconds
        at deployment scale (`predict_step` with deploy_tokens = demand x interval)."""
        if not (0 <= demand_tokens_per_s < math.inf and 0 < interval_s < math.inf):
            raise ValueError(
                f"need a finite demand >= 0 tokens/s and a finite interval > 0 s, "
                f"got {demand_tokens_per_s}, {interval_s}"
            )
        return self.predict_step(work, scale, clock_mhz, temp_c, deploy_tokens=demand_tokens_per_s * interval_s)


if __name__ == "__main__":
    from kernels.kcm_report import main

    main()
