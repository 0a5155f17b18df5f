"""`python -m telemetry`: the detected GPU source and a short live table of its readings.

    python -m telemetry [--source auto|nvml|simulated] [--samples 5] [--interval_s 0.2] [--gpu H100]

On the simulator, each row first runs `interval_s` of full-clock GEMM work (longer under the power cap), so the
table shows the cap and the heating.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass

from telemetry.monitor import GpuSystemMonitor
from telemetry.nvml import NvmlUnavailableError
from telemetry.simulated import SimulatedGpu


@dataclass
class Args:
    source: str = "auto"
    """auto (NVML when a GPU and driver are present, else simulated), nvml or simulated"""
    samples: int = 5
    """rows in the live table"""
    interval_s: float = 0.2
    """seconds between rows"""
    gpu: str = "H100"
    """GPU model the simulator plays"""


def parse_args() -> Args:
    parser = argparse.ArgumentParser(prog="python -m telemetry", description=__doc__.split("\n")[0])
    for field in dataclasses.fields(Args):
        parser.add_argument(f"--{field.name}", type=type(field.default), default=field.default)
    args = Args(**vars(parser.parse_args()))
    if args.source not in ("auto", "nvml", "simulated"):
        parser.error(f"--source {args.source!r} is not auto, nvml or simulated")
    if args.samples < 1 or not args.interval_s > 0:
        parser.error(f"--samples must be >= 1 and --interval_s > 0, got {args.samples} and {args.interval_s}")
    return args


def _fmt(value: object, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def main() -> None:
    args = parse_args()
    try:
        monitor = GpuSystemMonitor(source=args.source, gpu=args.gpu, start_sampler=False)
    except NvmlUnavailableError as error:
        raise SystemExit(f"telemetry: NVML unavailable: {error}") from error
    except ValueError as error:  # an unknown --gpu
        raise SystemExit(f"telemetry: {error}") from error
    with monitor:
        source = monitor.source
        print(f"device: {monitor.device} (source: {monitor.source_kind}; {monitor.reason})")
        if monitor.source_kind == "nvml":
            print(f"driver {source.driver_version()}; power from the {source.power_field} reading; energy from the "
                  f"{source.energy_source.replace('_', ' ')}; thresholds {source.temperature_thresholds_c()}")
        else:
            spec = source.spec
            print(f"simulated {spec.name}: TDP {spec.tdp_w:.0f} W, boost {spec.boost_sm_clock_mhz:.0f} MHz, slowdown "
                  f"{spec.slowdown_temp_c:.0f} C; each row first runs {args.interval_s} s of full-clock GEMM work")
        print(f"{'t_s':>6} {'power_W':>8} {'temp_C':>7} {'sm_MHz':>7} {'util_%':>7} {'mem_%':>6}  reasons")
        start_s = time.monotonic()
        for _ in range(args.samples):
            if isinstance(source, SimulatedGpu):
                source.execute(compute_s=args.interval_s)
            else:
                time.sleep(args.interval_s)
            stats = monitor.get_current_stats()
            elapsed_s = source.now_s() if isinstance(source, SimulatedGpu) else time.monotonic() - start_s
            print(f"{elapsed_s:>6.2f} {_fmt(stats['power_watt'], '8.1f')} {_fmt(stats['temperature'], '7.1f')} "
                  f"{_fmt(stats['sm_clock_mhz'], '7.0f')} {_fmt(stats['gpu_utilization_percent'], '7.0f')} "
                  f"{_fmt(stats['memory_utilization_percent'], '6.0f')}  "
                  f"{','.join(stats['clock_event_reasons']) or '-'}")


if __name__ == "__main__":
    main()
