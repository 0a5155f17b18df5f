"""A list-scheduling model of the grouped SwiGLU's two GEMM launches: how long each takes against a perfectly
balanced launch, with the experts' segments in expert order or widest first (`kernels.swiglu.widest_first`).

    python scripts/schedule_model.py results/gpu/kernels/2026-11-24/grid.json   # table, JSON beside it

For each case of a benchmark grid at 8k tokens or more (its shapes, and the tiles it ran with), a routing of the
benchmark's kind is drawn (random logits, no biases: alike in distribution, not the benchmark's own draw), the slots
of one pass aligned with both segment orders, and every program of both launches
listed in launch order (the kernels' grouped order, `_tile_ids`) with a cost of BLOCK_M x BLOCK_N x (its reduction
length + 2 K steps for the prologue and epilogue); programs past their expert's width (gate/up) cost nothing. The
programs go, in order, to whichever SM frees first, as many at a time on an SM as the shared memory of their pipeline
stages allows (132 SMs of 228 KB: an H100 SXM). The figures are `predicted`: the model knows no memory traffic, no
L2, no clock, only the order and sizes of the programs; a GPU run (`benchmarks/moe_kernels.py --segment-order`)
measures what the order buys.
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


def launch_ratios(block_experts: list[int], widths: list[int], d_model: int, cfg: MoeKernelConfig) -> dict:
    """Each launch's makespan over its balanced time (total work / places), for blocks owned by `block_experts`."""
    bm, bk = cfg.block_size_m, cfg.block_size_k
    out = {}
    for name, bn, num_pid_n, reduction in (
        ("up", cfg.block_size_n, math.ceil(max(widths) / cfg.block_size_n), lambda e: 2 * d_model),
        ("down", cfg.down_block_size_n, math.ceil(d_model / cfg.down_block_size_n), lambda e: widths[e]),
    ):
        stage_bytes = (bm * bk + (2 if name == "up" else 1) * bk * bn) * ITEMSIZE
        per_sm = max(1, SMEM_BYTES // (cfg.num_stages * stage_bytes))
        costs = []
        for pid_m, pid_n in tile_order(len(block_experts), num_pid_n, cfg.group_size_m):
            e = block_experts[pid_m]
            live = name == "down" or pid_n * bn < widths[e]
            costs.append(bm * bn * (reduction(e) + OVERHEAD_K_STEPS * bk) / 1e9 if live else 0.0)
        out[name] = makespan(costs, NUM_SMS * per_sm) / (sum(costs) / (NUM_SMS * per_sm))
    return out


def model_case(case: dict, seed: int) -> dict:
    tokens, experts, top_k, d_model = case["tokens"], case["experts"], case["top_k"], case["d_model"]
    widths, cfg = case["widths"], MoeKernelConfig.from_json(case["config"])
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(tokens_per_pass(tokens, top_k), experts, generator=gen)
    ids = fused_route_reference(logits, None, top_k).topk_ids
    row = dict(tokens=tokens, experts=experts, top_k=top_k, d_model=d_model, config=case["config"])
    for order_name, order in (("expert", None), ("widest_first", widest_first(widths))):
        aligned = moe_align_block_size_reference(ids, cfg.block_size_m, experts, segment_order=order)
        used = int(aligned.num_tokens_post_padded) // cfg.block_size_m
        ratios = launch_ratios(aligned.expert_ids[:used].tolist(), widths, d_model, cfg)
        row[order_name] = {f"{k}_over_balanced": v for k, v in ratios.items()}
    # Down is a third of the FLOPs (2 d f of the 6 d f per slot): the whole call's predicted change if each launch
    # takes time in proportion to its makespan.
    up_share, down_share = 2 / 3, 1 / 3
    before = up_share * row["expert"]["up_over_balanced"] + down_share * row["expert"]["down_over_balanced"]
    after = up_share * row["widest_first"]["up_over_balanced"] + down_share * row["widest_first"]["down_over_balanced"]
    row["call_time_ratio"] = after / before
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grid", help="a grid JSON of benchmarks/moe_kernels.py (its shapes and tiles)")
    parser.add_argument("--out", default="", help="JSON path; default <grid>.schedule_model.json beside it")
    parser.add_argument("--seed", type=int, default=0, help="seed of the routing logits")
    args = parser.parse_args()
    try:
        cases = json.loads(Path(args.grid).read_text())["cases"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        parser.error(f"{args.grid}: not a readable grid JSON of benchmarks/moe_kernels.py ({exc})")
    rows = [model_case(c, args.seed) for c in cases if c["tokens"] >= 8192]
    print(f"{'E':>3} {'k':>2} {'d':>5} {'T':>6}  {'up':>5} {'down':>5}  {'up*':>5} {'down*':>6}  call time*/before")
    for r in rows:
        a, b = r["expert"], r["widest_first"]
        print(f"{r['experts']:>3} {r['top_k']:>2} {r['d_model']:>5} {r['tokens']:>6}  {a['up_over_balanced']:5.2f} "
              f"{a['down_over_balanced']:5.2f}  {b['up_over_balanced']:5.2f} {b['down_over_balanced']:6.2f}  "
              f"{r['call_time_ratio']:.3f}")  # fmt: skip
    print("(makespan over a balanced launch; * widest first)")
    out = args.out or str(Path(args.grid).with_suffix(".schedule_model.json"))
    write_json_atomic(out, dict(model="scripts/schedule_model.py", figures="predicted", grid=args.grid,
                                num_sms=NUM_SMS, smem_bytes=SMEM_BYTES, cases=rows))  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
