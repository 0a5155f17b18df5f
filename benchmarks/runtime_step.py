"""Throughput of `MoERuntime.step`: tokens/s for the `default` preset on this machine (and `gpu` on CUDA), and how
it scales with the interval size and the number of experts. Prints a table; writes JSON; the last line is the
default preset's tokens/s.

    python benchmarks/runtime_step.py [--out results/benchmarks/runtime_step.json] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import time

import torch
from _cli import check_out_file, positive_int, thread_count, write_json_atomic

import moe_runtime as mr
from evaluate_facts import device_facts


def tokens_per_s(cfg: mr.MoEConfig, interval_tokens: int, repeats: int) -> tuple[float, float]:
    """(tokens/s, ms per interval), median over `repeats` timed intervals after one warm-up."""
    rt = mr.MoERuntime(cfg)
    rt.step(interval_tokens)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        rt.step(interval_tokens)
        times.append(time.perf_counter() - t)
    ms = sorted(times)[len(times) // 2] * 1e3
    return interval_tokens / (ms / 1e3), ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", default="results/benchmarks/runtime_step.json", help="where the JSON goes (default: %(default)s)"
    )
    parser.add_argument("--threads", type=thread_count, default=2, help="torch CPU threads, 1-256 (default: 2)")
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=7,
        help="timed intervals per case, after one warm-up; the median is kept (default: 7)",
    )
    args = parser.parse_args()
    check_out_file(parser, "--out", args.out)
    torch.set_num_threads(args.threads)
    rows = []

    def run(name: str, cfg: mr.MoEConfig, tokens: int) -> None:
        tps, ms = tokens_per_s(cfg, tokens, args.repeats)
        rows.append(
            dict(
                case=name,
                device=cfg.resolved_device(),
                experts=cfg.num_experts,
                interval_tokens=tokens,
                ms_per_interval=ms,
                tokens_per_s=tps,
            )
        )
        print(f"{name:<28} {cfg.resolved_device():>5} {cfg.num_experts:>3} {tokens:>7} {ms:>10.1f} {tps:>12.0f}")

    print(f"{'case':<28} {'dev':>5} {'E':>3} {'tokens':>7} {'ms/step':>10} {'tokens/s':>12}")
    for tokens in (256, 512, 2048, 4096):
        run("default, interval size", mr.MoEConfig.preset("default"), tokens)
    ratios = mr.EXPERT_WIDTH_RATIOS
    for e in (4, 16, 32):
        r = (ratios * (e // len(ratios) + 1))[:e] if e >= len(ratios) else ratios[::2][:e]
        cfg = mr.MoEConfig.preset("default", num_experts=e, expert_widths=mr.widths_from_ratios(192, tuple(r)))
        run("default, experts", cfg, 1024)
    if torch.cuda.is_available():
        run("gpu preset (bf16)", mr.MoEConfig.preset("gpu"), 16384)
    run("default", mr.MoEConfig.preset("default"), 1024)
    out = pathlib.Path(args.out)
    host = device_facts()
    meta = dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        machine=platform.machine(),
        cpu_model=host["cpu_model"],
        torch_cpu_capability=host["torch_cpu_capability"],
        cpu_count=os.cpu_count(),
        torch_threads=args.threads,
        torch=torch.__version__,
        gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        source="measured",
    )
    write_json_atomic(out, {"meta": meta, "rows": rows})
    print(
        f"default preset: {rows[-1]['tokens_per_s']:.0f} tokens/s ({rows[-1]['ms_per_interval']:.1f} ms per "
        f"1,024-token interval, {args.threads} threads, {rows[-1]['device']})"
    )


if __name__ == "__main__":
    main()
