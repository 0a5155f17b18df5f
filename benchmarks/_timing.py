"""CUDA timing of `benchmarks/moe_kernels.py`: the GPU time of a call by events, of its CUDA-graph replay, and the
host's time to enqueue it. `args` is anything with `warmup_ms` and `rep_ms` (the benchmark's `Args`)."""

from __future__ import annotations

import statistics
import time

import torch


def bench_ms(fn, args) -> float:
    """Median milliseconds of `fn` by CUDA events (triton.testing.do_bench: warm-up, many repeats, L2 flushed)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=args.warmup_ms, rep=args.rep_ms, return_mode="median"))


def host_ms(fn, repeats: int = 200) -> float:
    """Median milliseconds the host takes to enqueue `fn` (Python, allocations, launches), the GPU idle before each
    call so that no launch waits on a full queue. Where this exceeds the GPU time of a call plus do_bench's L2 flush
    before it, the eager timing is host-bound."""
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    torch.cuda.synchronize()
    return statistics.median(times) * 1e3


def graph_ms(fn, args) -> tuple[float | None, str]:
    """Median milliseconds of `fn` replayed from a captured CUDA graph (no Python or launch overhead), or None and
    why it could not be captured."""
    try:
        fn()  # compile and allocate outside the capture
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return bench_ms(graph.replay, args), ""
    except Exception as exc:  # recorded in the row: not every path can be captured
        torch.cuda.synchronize()
        return None, f"{type(exc).__name__}: {exc}"[:300]
