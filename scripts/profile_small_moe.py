"""Per-kernel CUDA and host times (torch.profiler, 50 calls after 20 warm-up) of the grouped SwiGLU at four of the
benchmark grid's 8k-token cases, to $OUT/profile_small_moe.json (or ./). Needs CUDA."""

import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from kernels.swiglu import grouped_swiglu_triton

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from _cli import gpu_only_cli, out_dir_json  # noqa: E402
from moe_kernels import expert_widths, make_case  # noqa: E402


def main() -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for experts, top_k, d_model, tokens in ((16, 1, 1024, 8192), (64, 1, 1024, 8192), (8, 1, 1024, 8192),
                                            (16, 8, 1024, 8192)):  # fmt: skip
        widths = expert_widths(experts, 1024)
        x, _, ids, w, w_up, w_down = make_case(tokens, experts, top_k, d_model, widths, torch.bfloat16, "cuda", gen)
        for _ in range(20):
            grouped_swiglu_triton(x, ids, w, w_up, w_down, widths)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            for _ in range(50):
                grouped_swiglu_triton(x, ids, w, w_up, w_down, widths)
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=12)
        print(f"== E={experts} k={top_k} d={d_model} T={tokens}\n{table}", flush=True)
        rows.append(dict(case=[experts, top_k, d_model, tokens], table=table))
    facts = dict(device=torch.cuda.get_device_name(), figures="measured", rows=rows)
    out_dir_json("profile_small_moe.json", facts)


if __name__ == "__main__":
    gpu_only_cli(__doc__, "CUDA (an NVIDIA GPU)")
    main()
