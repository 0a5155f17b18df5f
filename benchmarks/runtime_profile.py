"""Where the time of one runtime launch goes on CUDA: `MoERuntime.step` on the `gpu` preset (random weights; the
timing does not depend on them), measured wall time per launch against the KCM's predicted kernel time for the same
work, with and without the paired reference forward, and the torch profiler's top operators. Needs CUDA.

    python benchmarks/runtime_profile.py [--tokens 16384] [--out results/gpu/runtime_profile.json]
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import statistics
import sys
import time

import torch
from _cli import check_out_file, positive_int, write_json_atomic

import moe_runtime as mr
from kernels import KernelCostModel, dispatch


def launch_ms(rt: mr.MoERuntime, tokens: int, repeats: int) -> float:
    """Median wall milliseconds of `rt.step(tokens)` (it returns host floats, so each step ends synchronised)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        rt.step(tokens)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=positive_int, default=16384, help="tokens per launch (default: 16384)")
    parser.add_argument("--repeats", type=positive_int, default=7, help="timed launches; the median is kept (default: 7)")
    parser.add_argument(
        "--out", default="results/gpu/runtime_profile.json", help="where the JSON goes (default: %(default)s)"
    )
    args = parser.parse_args()
    check_out_file(parser, "--out", args.out)
    if not torch.cuda.is_available():
        print("runtime_profile: needs CUDA (it profiles the runtime's GPU path); nothing to do here")
        return 0
    cfg = mr.MoEConfig.preset("gpu")
    rt = mr.MoERuntime(cfg)
    report = rt.step(args.tokens)  # warm-up: Triton compilation, allocator
    rt.step(args.tokens)
    kcm = KernelCostModel(gpu_type="H100")
    forward = [c for c in report.work if c.phase == "forward"]
    predicted = kcm.predict_step(forward)
    rows = {"plain_ms": launch_ms(rt, args.tokens, args.repeats)}
    rt.reference_tokens = cfg.seq_len // 2
    rows["with_reference_ms"] = launch_ms(rt, args.tokens, args.repeats)
    rt.reference_tokens = 0
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    ) as prof:
        for _ in range(3):
            rt.step(args.tokens)
        torch.cuda.synchronize()
    by_cuda = prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60)
    by_cpu = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60)
    result = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "dispatch": dispatch.describe("cuda"),
        "tokens_per_launch": args.tokens,
        "measured": rows,
        "predicted_kernel_ms": 1e3 * predicted.total.latency_s,
        "source": {"measured": "wall time, CUDA synchronised", "predicted_kernel_ms": "predicted (KCM, H100 table)"},
        "profile_by_cuda_time": by_cuda,
        "profile_by_self_cpu_time": by_cpu,
    }
    print(by_cuda)
    print(by_cpu)
    print(f"gpu preset, {args.tokens} tokens a launch: measured {rows['plain_ms']:.1f} ms "
          f"({rows['with_reference_ms']:.1f} ms with the paired reference forward); KCM kernel time "
          f"{result['predicted_kernel_ms']:.1f} ms (predicted)")
    out = pathlib.Path(args.out)
    write_json_atomic(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
