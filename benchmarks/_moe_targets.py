"""The issue-6 targets of `benchmarks/moe_kernels.py` and why a missed one missed: judging a grid row, counting the
misses by cause, printing them, and reading a saved grid back (`--summarise`). No torch, no GPU."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

DENSE_TARGET = 0.6  # fraction of dense-GEMM TFLOP/s at >= 8k tokens (issue 6)
LOOP_TARGET = 1.5  # speedup over the per-expert loop at <= 2k tokens with >= 16 experts
MISS_CAUSES = ("roofline", "operands", "launch", "kernel")
LAUNCH_MARGIN = 0.05  # a miss is host-bound only where the eager call is this much slower than its graph replay


def operand_bytes(expert_blocks: list[int], widths: list[int], d_model: int, config: dict, itemsize: int) -> int:
    """Bytes of A and B tiles that the programs of both GEMM launches load into their SMs for one pass, expert e
    owning `expert_blocks[e]` aligned blocks; `config` is a row's `config` (block sizes). A gate/up program loads a
    [BLOCK_M, d] slab of x and two [d, BLOCK_N] slabs of W (gate and up), a down program a [BLOCK_M, f_e] slab of h
    and a [f_e, BLOCK_N_DOWN] slab of W_down: traffic from L2 (mostly) whatever the launch order."""
    bm, bn = config["BLOCK_SIZE_M"], config["BLOCK_SIZE_N"]
    bn_down = config.get("BLOCK_SIZE_N_DOWN") or bn
    up = sum(n * math.ceil(f / bn) * (bm * d_model + 2 * d_model * bn) for n, f in zip(expert_blocks, widths))
    down = sum(n * math.ceil(d_model / bn_down) * (bm * f + f * bn_down) for n, f in zip(expert_blocks, widths))
    return (up + down) * itemsize


# The Triton path's GEMM launches (kernels/_triton_swiglu.py), as the profiler names them, and their shares of a call's
# FLOPs: gate and up take 4 d f a slot, down 2 d f.
GEMM_FLOP_SHARES = {"up_kernel": 2 / 3, "down_kernel": 1 / 3}


def launch_breakdown(row: dict) -> None:
    """From a row's per-kernel times (`kernel_ms`, the profiler's): each GEMM launch's fraction of the dense GEMM's
    TFLOP/s (its share of the FLOPs over its own time: `gemm_fraction_of_dense`), the time of the other kernels
    (alignment, combine, memsets: `other_kernels_ms`) and of all of them (`kernels_ms`). Which launch holds a
    miss back."""
    times = row.get("kernel_ms")
    if not times or not row.get("flops") or not row.get("dense_tflops"):
        return
    row["gemm_fraction_of_dense"] = {
        name: share * row["flops"] / times[name] / 1e9 / row["dense_tflops"]
        for name, share in GEMM_FLOP_SHARES.items() if times.get(name)
    }  # fmt: skip
    row["other_kernels_ms"] = sum(ms for name, ms in times.items() if name not in GEMM_FLOP_SHARES)
    row["kernels_ms"] = sum(times.values())


def paired_figures(flops: float, dense_flops: float, triton_ms: list[float], dense_ms: list[float]) -> dict:
    """A row's Triton and dense-GEMM figures from rounds timed turn about (`_timing.paired_ms`).

    `fraction_of_dense` is the median of the rounds' own ratios (the Triton path's TFLOP/s over the dense GEMM's of
    the same round), with their range; `swiglu_triton_ms` the median Triton time, and `dense_ms` (so `dense_tflops`)
    the dense time that fraction implies beside it, so that the row's figures divide out (`triton_tflops /
    dense_tflops` is the fraction, and `judge` measures its ceilings and each launch against the same dense rate).
    Every round's times are kept (`*_rounds`).
    """
    if not triton_ms or len(triton_ms) != len(dense_ms):
        raise ValueError(f"need as many Triton as dense rounds, at least one; got {len(triton_ms)} and {len(dense_ms)}")
    ratios = [(flops / t) / (dense_flops / d) for t, d in zip(triton_ms, dense_ms)]
    fraction, triton_median = statistics.median(ratios), statistics.median(triton_ms)
    dense_implied_ms = fraction * triton_median * dense_flops / flops
    return dict(
        swiglu_triton_ms=triton_median,
        dense_ms=dense_implied_ms,
        dense_tflops=dense_flops / dense_implied_ms / 1e9,
        fraction_of_dense=fraction,
        fraction_of_dense_range=[min(ratios), max(ratios)],
        pair_rounds=len(ratios),
        swiglu_triton_ms_rounds=list(triton_ms),
        dense_ms_rounds=list(dense_ms),
    )


def read_grid(path: str) -> dict:
    """A grid JSON of this benchmark; a ValueError saying what is wrong with it."""
    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read it ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a JSON file ({exc})") from None
    needed = {"tokens", "experts", "top_k", "d_model", "fraction_of_dense", "speedup_vs_loop", "dense_ms",
              "swiglu_triton_ms"}  # fmt: skip
    cases = result.get("cases") if isinstance(result, dict) else None
    if not isinstance(cases, list) or not all(isinstance(c, dict) and needed <= c.keys() for c in cases):
        raise ValueError(f"not a grid of benchmarks/moe_kernels.py: give a JSON whose 'cases' have {sorted(needed)}")
    return result


def judge(row: dict) -> None:
    """Set the row's target and whether it is met and, for a missed dense target, why (`miss_cause`).

    The dense GEMM of equal FLOPs reads one [d, n] weight; the experts' GEMMs read every used expert's weights, so
    with few slots per expert they are memory-bound where the dense GEMM is not. `dense_ceiling` (the experts'
    TFLOP/s at the floor over the dense GEMM's) is the largest fraction of dense that any implementation could reach
    at the datasheet peaks (the floor is a lower bound on its time), and `floor_fraction_needed` what share of that
    floor the target asks for. Where the row has its programs' operand bytes and the L2 read rate measured in the
    same run, `operand_ceiling` is the fraction of dense the call would reach if those bytes moved at that rate: the
    most these kernels, at these tiles, could do.

    A miss is `roofline` where the dense ceiling is under the target, `operands` where the operand ceiling is (more
    reuse per SM is needed: larger tiles, or operands shared between SMs), `launch` where the CUDA-graph replay of
    the same call meets it and the eager call is at least `LAUNCH_MARGIN` slower (host time, not run-to-run noise),
    and `kernel` otherwise (the programs move their bytes slower than L2 can: short launches, tails, latency).
    Where the row has per-kernel times, each GEMM launch's own fraction of dense too (`launch_breakdown`).
    """
    for key in ("target", "target_met", "miss_cause", "dense_ceiling", "floor_fraction_needed", "operand_ceiling",
                "gemm_fraction_of_dense", "other_kernels_ms", "kernels_ms"):
        row.pop(key, None)  # a re-judged row
    launch_breakdown(row)
    graph_ms = row.get("swiglu_triton_graph_ms")
    # The same FLOPs in less time: the fraction scales with the inverse of the time.
    graph_fraction = None if not graph_ms else row["fraction_of_dense"] * row["swiglu_triton_ms"] / graph_ms
    row["graph_fraction_of_dense"] = graph_fraction
    host_bound = bool(graph_ms) and row["swiglu_triton_ms"] >= (1 + LAUNCH_MARGIN) * graph_ms
    if row.get("floor_ms") and row.get("flops"):
        # The dense GEMM's n is rounded to 64 columns, so its FLOPs differ from the experts' by up to ~1%.
        row["dense_ceiling"] = row["flops"] / row["floor_ms"] / 1e9 / row["dense_tflops"]
        row["floor_fraction_needed"] = DENSE_TARGET / row["dense_ceiling"]
    if row.get("operand_bytes") and row.get("l2_read_bytes_per_s"):
        row["operand_ceiling"] = row["dense_ms"] / (row["operand_bytes"] / row["l2_read_bytes_per_s"] * 1e3)
    if row["tokens"] >= 8192:
        row["target"] = f"fraction_of_dense >= {DENSE_TARGET}"
        row["target_met"] = row["fraction_of_dense"] >= DENSE_TARGET
        if not row["target_met"]:
            if row.get("dense_ceiling", math.inf) < DENSE_TARGET:
                row["miss_cause"] = "roofline"
            elif row.get("operand_ceiling", math.inf) < DENSE_TARGET:
                row["miss_cause"] = "operands"
            elif graph_fraction is not None and graph_fraction >= DENSE_TARGET and host_bound:
                row["miss_cause"] = "launch"
            else:
                row["miss_cause"] = "kernel"
    elif row["tokens"] <= 2048 and row["experts"] >= 16:
        row["target"] = f"speedup_vs_loop >= {LOOP_TARGET}"
        row["target_met"] = row["speedup_vs_loop"] >= LOOP_TARGET


def summarise(rows: list[dict]) -> dict:
    """Targets met over the judged rows, and the missed dense targets counted by cause (`judge`)."""
    judged = [r for r in rows if "target" in r]
    causes = [r["miss_cause"] for r in judged if "miss_cause" in r]
    return dict(
        targets_met=f"{sum(r['target_met'] for r in judged)}/{len(judged)}",
        dense_misses={cause: causes.count(cause) for cause in MISS_CAUSES},
    )


def print_summary(rows: list[dict], summary: dict) -> None:
    print(f"targets met: {summary['targets_met']}")
    misses = [r for r in rows if "miss_cause" in r]
    if not misses:
        return
    print("missed dense targets (ceiling: the most any kernel could reach at the datasheet peaks; needs: the share of "
          "that floor the target asks for; at the L2 rate: what these tiles' bytes would allow):")  # fmt: skip
    for r in misses:
        gf, ceiling, needs = (r.get(k) for k in ("graph_fraction_of_dense", "dense_ceiling", "floor_fraction_needed"))
        pct = lambda v: "-" if v is None else f"{v:.0%}"  # noqa: E731
        operands = "" if r.get("operand_ceiling") is None else f", at the L2 rate {pct(r['operand_ceiling'])}"
        print(f"  E={r['experts']:>2} k={r['top_k']} d={r['d_model']} T={r['tokens']:>5}: "
              f"{r['fraction_of_dense']:.0%} of dense, graph {pct(gf)}, ceiling {pct(ceiling)}, needs {pct(needs)} "
              f"of the floor{operands}{launches(r)} -> {r['miss_cause']}")  # fmt: skip
    print("  by cause: " + ", ".join(f"{c} {n}" for c, n in summary["dense_misses"].items()))


def launches(row: dict) -> str:
    """', gate/up 55%, down 70% of dense, other kernels 0.012 ms' from a row's `launch_breakdown`, or ''."""
    fractions = row.get("gemm_fraction_of_dense")
    if not fractions:
        return ""
    names = {"up_kernel": "gate/up", "down_kernel": "down"}
    parts = [f"{names[name]} {fraction:.0%}" for name, fraction in fractions.items()]
    return f"; {', '.join(parts)} of dense, other kernels {row['other_kernels_ms']:.3f} ms"
