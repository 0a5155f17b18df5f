"""A list-scheduling model of the grouped SwiGLU's two GEMM launches: how long each takes against a perfectly
balanced launch, with the experts' segments in expert order or widest first (`kernels.swiglu.widest_first`), and
with the gate/up launch over a grid of every block times the widest expert's column tiles or over the live tiles
only (`kernels._triton_swiglu._live_tile`, its idle programs at the end of the launch).

    python scripts/schedule_model.py results/gpu/kernels/2026-11-24/grid.json   # table, JSON beside it

For each case of a benchmark grid at 8k tokens or more (its shapes, and the tiles it ran with), a routing of the
benchmark's kind is drawn (random logits, no biases: alike in distribution, not the benchmark's own draw), the slots
of one pass aligned with both segment orders, and every program of both launches listed in launch order with a
cost of BLOCK_M x BLOCK_N x (its reduction length + 2 K steps for the prologue and epilogue). A program with no work
(past its expert's width in the full grid, past the last live tile in the compact one) costs `--idle-k-steps` K
steps: it still takes an SM for its few loads. The programs go, in order, to whichever SM frees first, as many at a
time on an SM as the shared memory of their pipeline stages allows (132 SMs of 228 KB: an H100 SXM). The figures
are `predicted`: the model knows no memory traffic, no L2, no clock, only the order and sizes of the programs; a GPU
run (`benchmarks/moe_kernels.py`, and `--segment-order expert`) measures what they buy.

Beside the model, each case's operand traffic: the bytes every program of both launches loads into its SM (its A and
B tiles over the whole reduction; `tile_bytes`, one call: `benchmarks/_moe_targets.operand_bytes`), whatever the
order, and that over the grid's CUDA-graph time (`tile_bytes_per_s`: modelled bytes over a measured time). On the
2026-11-24 grid it is 5.2-7.1 TB/s where the kernels meet their dense targets and 3.8-6.5 TB/s where they miss,
about twice the HBM bandwidth for 2-124x the bytes the call needs from HBM: the tiles come mostly from L2, and at
these tile shapes that traffic looks to be what bounds the kernels, not HBM or the tensor cores.

Variants, each launch's makespan over its balanced time: `expert` (expert order, full grid: the kernels timed on the
H100 on 2026-11-24), `widest_first` (widest first, full grid), `widest_first_compact` (widest first, live tiles: the
kernels now); `call_time_ratio` is the last over the first for the whole call.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import sys
from pathlib import Path

import torch

from kernels.align import moe_align_block_size_reference
from kernels.configs import MoeKernelConfig
from kernels.routing import fused_route_reference
from kernels.swiglu import tokens_per_pass, widest_first

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from _cli import write_json_atomic  # noqa: E402
from _moe_targets import operand_bytes  # noqa: E402

NUM_SMS, SMEM_BYTES, ITEMSIZE = 132, 228 * 1024, 2
OVERHEAD_K_STEPS = 2


def tile_order(num_pid_m: int, num_pid_n: int, group_m: int) -> list[tuple[int, int]]:
    """(pid_m, pid_n) of each program in launch order: the kernels' `_tile_ids`."""
    out = []
    for pid in range(num_pid_m * num_pid_n):
        in_group = group_m * num_pid_n
        first_m = pid // in_group * group_m
        size_m = min(num_pid_m - first_m, group_m)
        out.append((first_m + (pid % in_group) % size_m, (pid % in_group) // size_m))
    return out


def makespan(costs: list[float], slots: int) -> float:
    """Finish time of programs taken in order by whichever of `slots` places frees first."""
    free = [0.0] * slots
    for cost in costs:
        heapq.heapreplace(free, free[0] + cost)
    return max(free)


def compact_order(block_experts: list[int], widths: list[int], block_n: int, group_m: int) -> list[tuple[int, int]]:
    """(pid_m, pid_n) of each live gate/up tile in launch order (`_live_tile`): segment by segment as the blocks lie,
    in the grouped order within a segment."""
    out, start = [], 0
    while start < len(block_experts):
        end = start
        while end < len(block_experts) and block_experts[end] == block_experts[start]:
            end += 1
        num_cols = math.ceil(widths[block_experts[start]] / block_n)
        out += [(start + m, n) for m, n in tile_order(end - start, num_cols, group_m)]
        start = end
    return out


def launch_ratios(
    block_experts: list[int],
    widths: list[int],
    d_model: int,
    cfg: MoeKernelConfig,
    compact: bool,
    idle_k_steps: float,
    num_slots: int,
) -> dict:
    """Each launch's makespan over its balanced time (live work / places), for blocks owned by `block_experts`
    aligned from `num_slots` token-expert slots (the compact launch's size depends on it)."""
    bm, bk = cfg.block_size_m, cfg.block_size_k
    out = {}
    for name, bn, num_pid_n in (
        ("up", cfg.block_size_n, math.ceil(max(widths) / cfg.block_size_n)),
        ("down", cfg.down_block_size_n, math.ceil(d_model / cfg.down_block_size_n)),
    ):
        stage_bytes = (bm * bk + (2 if name == "up" else 1) * bk * bn) * ITEMSIZE
        per_sm = max(1, SMEM_BYTES // (cfg.num_stages * stage_bytes))
        # Live programs' costs by expert (the gate/up reduction runs over d for both halves, down's over f_e).
        live_cost = [bm * bn * ((2 * d_model if name == "up" else f) + OVERHEAD_K_STEPS * bk) / 1e9 for f in widths]
        idle = bm * bn * idle_k_steps * bk / 1e9
        if name == "up" and compact:
            live = [live_cost[block_experts[m]] for m, _ in compact_order(block_experts, widths, bn, cfg.group_size_m)]
            # The launch's size, as `kernels.swiglu` sizes it without the counts (`_LaunchPlan.up_programs`).
            num_programs = num_pid_n * (num_slots // bm) + sum(math.ceil(f / bn) for f in widths)
            costs = live + [idle] * (num_programs - len(live))
        else:
            live, costs = [], []
            for pid_m, pid_n in tile_order(len(block_experts), num_pid_n, cfg.group_size_m):
                e = block_experts[pid_m]
                if name == "down" or pid_n * bn < widths[e]:
                    live.append(live_cost[e])
                    costs.append(live_cost[e])
                else:
                    costs.append(idle)  # an idle program, in place
        balanced = sum(live) / (NUM_SMS * per_sm)
        out[name] = makespan(costs, NUM_SMS * per_sm) / balanced
    return out


VARIANTS = (("expert", False, False), ("widest_first", True, False), ("widest_first_compact", True, True))


def model_case(case: dict, seed: int, idle_k_steps: float) -> dict:
    tokens, experts, top_k, d_model = case["tokens"], case["experts"], case["top_k"], case["d_model"]
    widths, cfg = case["widths"], MoeKernelConfig.from_json(case["config"])
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(tokens_per_pass(tokens, top_k), experts, generator=gen)
    ids = fused_route_reference(logits, None, top_k).topk_ids
    row = dict(tokens=tokens, experts=experts, top_k=top_k, d_model=d_model, config=case["config"])
    counts = torch.bincount(ids.reshape(-1), minlength=experts).tolist()
    blocks = [math.ceil(c / cfg.block_size_m) for c in counts]
    passes = math.ceil(tokens / tokens_per_pass(tokens, top_k))
    row["tile_bytes"] = operand_bytes(blocks, widths, d_model, case["config"], ITEMSIZE) * passes
    if case.get("swiglu_triton_graph_ms"):
        row["tile_bytes_per_s"] = row["tile_bytes"] / (case["swiglu_triton_graph_ms"] / 1e3)
    for name, widest, compact in VARIANTS:
        order = widest_first(widths) if widest else None
        aligned = moe_align_block_size_reference(ids, cfg.block_size_m, experts, segment_order=order)
        used = int(aligned.num_tokens_post_padded) // cfg.block_size_m
        ratios = launch_ratios(aligned.expert_ids[:used].tolist(), widths, d_model, cfg, compact, idle_k_steps,
                               ids.numel())  # fmt: skip
        row[name] = {f"{k}_over_balanced": v for k, v in ratios.items()}
    # Down is a third of the FLOPs (2 d f of the 6 d f per slot): the whole call's predicted change if each launch
    # takes time in proportion to its makespan.
    call = lambda v: 2 / 3 * row[v]["up_over_balanced"] + 1 / 3 * row[v]["down_over_balanced"]  # noqa: E731
    row["call_time_ratio"] = call("widest_first_compact") / call("expert")
    row["call_time_ratio_widest_first"] = call("widest_first") / call("expert")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grid", help="a grid JSON of benchmarks/moe_kernels.py (its shapes and tiles)")
    parser.add_argument("--out", default="", help="JSON path; default <grid>.schedule_model.json beside it")
    parser.add_argument("--seed", type=int, default=0, help="seed of the routing logits")
    parser.add_argument("--idle-k-steps", type=float, default=2.0,
                        help="cost of a program with no work, in K steps of its tile (default 2: its three dependent "
                             "loads, ~1 us, against ~0.5 us for a K step of a 128x128x64 gate/up tile on an H100)")  # fmt: skip
    args = parser.parse_args()
    if not args.idle_k_steps >= 0:
        parser.error(f"--idle-k-steps must be >= 0, got {args.idle_k_steps}")
    try:
        cases = json.loads(Path(args.grid).read_text())["cases"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        parser.error(f"{args.grid}: not a readable grid JSON of benchmarks/moe_kernels.py ({exc})")
    rows = [model_case(c, args.seed, args.idle_k_steps) for c in cases if c["tokens"] >= 8192]
    print(f"{'E':>3} {'k':>2} {'d':>5} {'T':>6}  {'up':>5} {'down':>5}  {'up*':>5} {'down*':>6}  {'up**':>5}  "
          f"call time */before  **/before  tile GB  TB/s")  # fmt: skip
    for r in rows:
        a, b, c = r["expert"], r["widest_first"], r["widest_first_compact"]
        print(f"{r['experts']:>3} {r['top_k']:>2} {r['d_model']:>5} {r['tokens']:>6}  {a['up_over_balanced']:5.2f} "
              f"{a['down_over_balanced']:5.2f}  {b['up_over_balanced']:5.2f} {b['down_over_balanced']:6.2f}  "
              f"{c['up_over_balanced']:5.2f}  {r['call_time_ratio_widest_first']:18.3f}  "
              f"{r['call_time_ratio']:9.3f}  {r['tile_bytes'] / 1e9:7.2f}  "
              f"{r.get('tile_bytes_per_s', math.nan) / 1e12:4.1f}")  # fmt: skip
    print(f"(makespan over a balanced launch; * widest first; ** widest first, live tiles only; a program with no work "
          f"costs {args.idle_k_steps:g} K steps; tile GB: the operand bytes a call's programs load, TB/s: that over "
          f"the grid's graph time)")  # fmt: skip
    out = args.out or str(Path(args.grid).with_suffix(".schedule_model.json"))
    write_json_atomic(out, dict(model="scripts/schedule_model.py", figures="predicted", grid=args.grid,
                                num_sms=NUM_SMS, smem_bytes=SMEM_BYTES, idle_k_steps=args.idle_k_steps,
                                cases=rows))  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
