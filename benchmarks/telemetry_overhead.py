"""Cost of telemetry on the machine at hand: one query per field, the background sampler at 10 and 100 Hz (achieved
rate, CPU share), and the slowdown of a busy loop with the sampler running (a bf16 GEMM loop on CUDA, target under
1%; a float32 matmul loop on the CPU otherwise). Prints a table, writes JSON; the last line is the slowdown.

    python benchmarks/telemetry_overhead.py [--source auto|nvml|simulated] [--loop-s 2.0] [--out ...json]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import pathlib
import platform
import statistics
import time
from dataclasses import dataclass

import numpy as np
from _cli import check_out_file, field_help, flags, positive_float, positive_int, write_json_atomic

from telemetry import BackgroundSampler, GpuSystemMonitor, NvmlSource, SampleBuffer, nvml_available
from telemetry.reference import find_reference_file

# The reference H100's query costs (shared/reference/h100-nvml-meta.json "query_us"), printed beside ours.
REFERENCE_FIELDS = {"average_power_w": "power", "instant_power_w": "instant", "temperature_c": "temp",
                    "sm_clock_mhz": "clock", "clock_event_reasons": "reasons", "utilization_percent": "util",
                    "energy_j": "energy"}
FIELDS = ["power_w", "average_power_w", "instant_power_w", "temperature_c", "sm_clock_mhz", "utilization_percent",
          "memory_utilization_percent", "clock_event_reasons", "sample", "energy_j"]


@dataclass
class Args:
    source: str = "auto"
    """auto, nvml or simulated"""
    repeats: int = 2000
    """calls per field (the energy counter gets a tenth: ~4 ms each on H100)"""
    sampler_s: float = 1.0
    """seconds the sampler runs at each rate"""
    rates_hz: str = "10,100"
    """sampler rates to measure, comma-separated"""
    loop_s: float = 1.0
    """seconds of busy loop per arm (without, with the sampler), five pairs"""
    out: str = "results/telemetry/telemetry_overhead.json"
    """where the JSON goes"""


def parse_args() -> Args:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    types = {int: positive_int, float: positive_float}  # zero calls or seconds would time nothing (or divide by 0)
    helps = field_help(Args)
    for field in dataclasses.fields(Args):
        kind = type(field.default)
        parser.add_argument(
            *flags(field.name), type=types.get(kind, kind), default=field.default, help=helps[field.name]
        )
    args = Args(**vars(parser.parse_args()))
    if args.source not in ("auto", "nvml", "simulated"):
        parser.error(f"--source {args.source!r} is not auto, nvml or simulated")
    try:
        rates = [float(rate) for rate in args.rates_hz.split(",")]
    except ValueError:
        rates = []
    if not rates or not all(0.0 < rate < math.inf for rate in rates):
        parser.error(f"--rates-hz {args.rates_hz!r}: give positive rates in Hz, comma-separated (e.g. 10,100)")
    check_out_file(parser, "--out", args.out)
    if args.source == "nvml" and not nvml_available():
        parser.error("--source nvml: NVML sees no GPU here (no driver or nvidia-ml-py); use simulated or auto")
    return args


def query_cost_us(source, field: str, repeats: int) -> float | None:
    """Median microseconds of one call to source.<field>(), None if the source lacks it."""
    query = getattr(source, field, None)
    if not callable(query):
        return None
    query()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        query()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def sampler_cost(source, rate_hz: float, seconds: float) -> dict:
    """Run a sampler over source.sample at rate_hz: achieved rate and the process CPU it used (share of one core).

    The achieved rate is (reads - 1) / (last read - first read), on the host clock: reads over the whole wall time
    count a fencepost (3 reads in 1 s at 2 Hz). The host clock, because a simulated source's samples carry simulated
    time, which stands still while nothing executes. None with fewer than two reads (`seconds` under one period).
    """
    buffer = SampleBuffer()
    read_s = []  # host time of each successful read, s

    def read():
        start_s = time.perf_counter()
        sample = source.sample()
        read_s.append(start_s)
        return sample

    sampler = BackgroundSampler(read, buffer, rate_hz)
    cpu0 = time.process_time()
    time.sleep(seconds)  # baseline: the process idle
    idle_cpu_s = time.process_time() - cpu0
    wall1, cpu1 = time.perf_counter(), time.process_time()
    sampler.start()
    time.sleep(seconds)
    sampler.stop()
    busy_cpu_s = time.process_time() - cpu1
    wall_s = time.perf_counter() - wall1
    span_s = read_s[-1] - read_s[0] if len(read_s) > 1 else 0.0
    return {"rate_hz": rate_hz, "achieved_hz": (len(read_s) - 1) / span_s if span_s > 0.0 else None,
            "reads": len(read_s), "span_s": span_s,
            "cpu_share_pct": 100.0 * max(busy_cpu_s - idle_cpu_s, 0.0) / wall_s}


def make_loop(seconds: float):
    """A busy loop (iterations / s): bf16 GEMMs on CUDA when torch sees a GPU, else float32 numpy matmuls."""
    if nvml_available():  # a GPU is here: time GEMMs on it (torch is imported only then)
        import torch

        if torch.cuda.is_available():
            a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
            b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)

            def gpu_loop() -> float:
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                count, t0 = 0, time.perf_counter()
                start.record()
                while time.perf_counter() - t0 < seconds:
                    for _ in range(10):
                        a @ b
                    count += 10
                end.record()
                torch.cuda.synchronize()
                return count / (start.elapsed_time(end) / 1e3)

            return gpu_loop, f"bf16 8192^3 GEMM on {torch.cuda.get_device_name()}"
    a = np.random.default_rng(0).standard_normal((128, 128), dtype=np.float32)  # small: one BLAS thread

    def cpu_loop() -> float:
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ a
            count += 1
        return count / (time.perf_counter() - t0)

    return cpu_loop, f"float32 128^3 numpy matmul on {platform.processor() or platform.machine()} (no CUDA)"


def loop_slowdown_pct(source, loop_s: float, rate_hz: float = 100.0, rounds: int = 5) -> tuple[float, str]:
    """Slowdown of the busy loop with the sampler at rate_hz: the median over `rounds` back-to-back pairs (without,
    with) of 1 - rate_with / rate_without, %. Pairs cancel slow drifts of a shared machine's load."""
    loop, what = make_loop(loop_s)
    loop()  # warm-up
    slowdowns = []
    for _ in range(rounds):
        without = loop()
        sampler = BackgroundSampler(source.sample, SampleBuffer(), rate_hz)
        sampler.start()
        with_sampler = loop()
        sampler.stop()
        slowdowns.append(100.0 * (1.0 - with_sampler / without))
    return statistics.median(slowdowns), what


if __name__ == "__main__":
    args = parse_args()
    monitor = GpuSystemMonitor(source=args.source, start_sampler=False)
    source = monitor.source
    print(f"device: {monitor.device} ({monitor.reason}); host {platform.node()}, {datetime.date.today()}")
    costs = {}
    meta = find_reference_file("h100-nvml-meta.json")
    reference_us = json.loads(meta.read_text())["query_us"] if meta else {}
    print(f"{'field':<28} {'us/call here':>13} {'H100 reference (NVML, measured)':>32}")
    for field in FIELDS:
        repeats = max(args.repeats // 10, 5) if field == "energy_j" else args.repeats
        costs[field] = query_cost_us(source, field, repeats)
        ref = reference_us.get(REFERENCE_FIELDS.get(field, ""))
        print(f"{field:<28} {'n/a' if costs[field] is None else format(costs[field], '.1f'):>13} "
              f"{'' if ref is None else format(ref, '.1f'):>32}")
    samplers = [sampler_cost(source, float(rate), args.sampler_s) for rate in args.rates_hz.split(",")]
    for row in samplers:
        achieved = "n/a (under two reads)" if row["achieved_hz"] is None else f"{row['achieved_hz']:6.1f} Hz"
        print(f"sampler {row['rate_hz']:>5g} Hz: achieved {achieved}, "
              f"process CPU {row['cpu_share_pct']:5.2f}% of one core")
    slowdown_pct, loop_what = loop_slowdown_pct(source, args.loop_s)
    kind = "nvml" if isinstance(source, NvmlSource) else monitor.source_kind
    # The timings are measured on this host whatever the GPU source is; `telemetry_source` says what was queried.
    summary = {"device": monitor.device, "telemetry_source": kind, "figures": "measured (host time and CPU share)",
               "date": str(datetime.date.today()),
               "query_us": costs, "samplers": samplers, "loop": loop_what, "loop_slowdown_pct_at_100hz": slowdown_pct}
    out = pathlib.Path(args.out)
    write_json_atomic(out, summary)
    print(f"wrote {out}")
    print(f"busy-loop slowdown with the 100 Hz sampler ({kind} source; {loop_what}): {slowdown_pct:.2f} %")
