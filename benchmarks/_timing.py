"""CUDA timing of `benchmarks/moe_kernels.py`: the GPU time of a call by events, of its CUDA-graph replay, of each
kernel it launches, and the host's time to enqueue it. `args` is anything with `warmup_ms` and `rep_ms` (the
benchmark's `Args`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from types import SimpleNamespace

import torch


def bench_ms(fn, args) -> float:
    """Median milliseconds of `fn` by CUDA events (triton.testing.do_bench: warm-up, many repeats, L2 flushed)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=args.warmup_ms, rep=args.rep_ms, return_mode="median"))


def paired_ms(fns: Mapping[str, Callable[[], object]], args, rounds: int) -> dict[str, list[float]]:
    """Each round, each of `fns` timed by `bench_ms` over `args.rep_ms / rounds`, the order reversed every other
    round (A B, B A, ...) so that a drift within a round favours neither: {name: [ms of each round]}.

    Figures that are divided by each other are taken side by side. In the two 2026-11-24 grids, a case's dense-GEMM
    TFLOP/s moved a median 2.9% between the runs (10% at the 90th percentile), its Triton time 1.7%; the dense GEMM
    was timed seconds after the Triton call, after the other paths, and a power-capped H100's clocks move with its
    temperature. Each round's ratio is taken under one state of the card.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    per_round = SimpleNamespace(warmup_ms=args.warmup_ms, rep_ms=max(args.rep_ms / rounds, 1.0))
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns.items())
    for i in range(rounds):
        for name, fn in order if i % 2 == 0 else order[::-1]:
            times[name].append(bench_ms(fn, per_round))
    return times


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


def kernel_ms(fn, calls: int = 10) -> dict[str, float]:
    """GPU milliseconds per call of each kernel (and memset or copy) that `fn` launches, by name, summed over its
    launches in one call, from the CUDA activity records of torch.profiler (CUPTI) over `calls` eager calls after a
    warm one. The calls run back to back: unlike `bench_ms`, L2 is not flushed between them, so it holds what the
    previous call left. Launch gaps are not counted: the values add up to the call's kernel time."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return kernel_totals(prof.events(), calls, torch.autograd.DeviceType.CUDA)


def kernel_totals(events, calls: int, device_type) -> dict[str, float]:
    """Milliseconds per call by event name of the profiler `events` (FunctionEvents) that ran on `device_type`,
    longest first."""
    totals: dict[str, float] = {}
    for event in events:
        if event.device_type == device_type:
            totals[event.name] = totals.get(event.name, 0.0) + event.time_range.elapsed_us() / 1e3 / calls
    return dict(sorted(totals.items(), key=lambda item: -item[1]))
