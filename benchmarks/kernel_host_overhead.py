"""Host-side cost of one call of the Triton MoE path, with the kernel launches stubbed out (no GPU needed).

    python benchmarks/kernel_host_overhead.py            # table, JSON to results/kernel_host_overhead.json

At small batches the Triton path is launch-bound: on an H100 an 8k-token call ran 0.36 ms launched from Python and
0.16 ms replayed from a CUDA graph (results/gpu/kernels/grid.json). Part of the gap is Triton's own launcher, part
is this package's Python around the launches (argument checks, config lookup, buffer sizes, allocations). This
times the second part alone: the Triton kernels are replaced by no-ops, and `grouped_swiglu_triton` and
`fused_route_triton` are called on CPU tensors under TRITON_INTERPRET=1 (which only lets the wrappers run there;
nothing is interpreted). Figures are `measured` on this machine's CPU; a GPU host adds the CUDA caching
allocator's cost instead of the CPU allocator's (cheaper for the large buffers), and Triton's launcher.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported: lets the wrappers accept CPU tensors

import argparse
import datetime
import functools
import platform
import timeit
from pathlib import Path

import torch
from _cli import check_out_file, positive_int, write_json_atomic

from kernels import _triton_align, _triton_route, _triton_swiglu
from kernels.routing import fused_route_triton
from kernels.swiglu import grouped_swiglu_triton
from moe_runtime import EXPERT_WIDTH_RATIOS

CASES = [(1024, 16, 2, 256), (2048, 64, 1, 256), (8192, 8, 2, 256), (8192, 64, 8, 256)]  # (T, E, k, d)


LAUNCHES = {"count": 0}  # kernel launches the stubs have taken: each is a Triton launcher call on a GPU host


class _NoLaunch:
    """Stands in for a `@triton.jit` kernel: `kernel[grid](*args, **meta)` does nothing but count the launch."""

    def __getitem__(self, grid):
        return _count_launch


def _count_launch(*args, **kwargs) -> None:
    LAUNCHES["count"] += 1


def stub_kernels() -> None:
    for module in (_triton_align, _triton_route, _triton_swiglu):
        for name in dir(module):
            if name.endswith("_kernel"):
                setattr(module, name, _NoLaunch())


def launches_per_call(fn) -> int:
    """Triton launches one call of `fn` makes (with the kernels stubbed out)."""
    before = LAUNCHES["count"]
    fn()
    return LAUNCHES["count"] - before


def per_call_us(fn, number: int, repeat: int) -> float:
    for _ in range(number):  # caches filled and the allocator settled, as in a long run
        fn()
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=positive_int, default=500, help="calls per timing")
    parser.add_argument("--repeat", type=positive_int, default=5, help="timings per case (the fastest is kept)")
    parser.add_argument(
        "--out", default="results/kernel_host_overhead.json", help="where the JSON goes (default: %(default)s)"
    )
    args = parser.parse_args()
    check_out_file(parser, "--out", args.out)
    torch.set_num_threads(1)
    stub_kernels()
    rows = []
    print(f"{'tokens':>6} {'E':>3} {'k':>2} {'d':>5} {'swiglu us':>10} {'launches':>8} {'route us':>9}")
    for num_tokens, num_experts, top_k, d_model in CASES:
        widths = tuple(round(128 * EXPERT_WIDTH_RATIOS[e % len(EXPERT_WIDTH_RATIOS)]) for e in range(num_experts))
        x = torch.randn(num_tokens, d_model)
        logits = torch.randn(num_tokens, num_experts)
        ids = torch.rand(num_tokens, num_experts).argsort(dim=1)[:, :top_k].contiguous()  # as the router returns
        weights = torch.rand(num_tokens, top_k)
        w_up, w_down = torch.randn(d_model, 2 * sum(widths)), torch.randn(sum(widths), d_model)
        out = torch.empty_like(x)
        swiglu = functools.partial(grouped_swiglu_triton, x, ids, weights, w_up, w_down, widths, out=out)
        swiglu_us = per_call_us(swiglu, args.number, args.repeat)
        route_us = per_call_us(functools.partial(fused_route_triton, logits, None, top_k), args.number, args.repeat)
        launches = launches_per_call(swiglu)
        rows.append(dict(tokens=num_tokens, experts=num_experts, top_k=top_k, d_model=d_model, widths=list(widths),
                         swiglu_host_us=swiglu_us, swiglu_launches=launches, route_host_us=route_us))  # fmt: skip
        print(f"{num_tokens:>6} {num_experts:>3} {top_k:>2} {d_model:>5} {swiglu_us:>10.1f} {launches:>8} "
              f"{route_us:>9.1f}")
    result = dict(
        benchmark="kernel_host_overhead",
        figures="measured (CPU; kernel launches stubbed out and counted)",
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        python=platform.python_version(),
        torch=torch.__version__,
        cases=rows,
    )
    out_path = Path(args.out)
    write_json_atomic(out_path, result)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
