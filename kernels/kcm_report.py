"""The seeds' KCM test report (`python -m kernels.cost_model`): op costs across batch sizes, thermal and
memory-pressure effects, thermal-safe batch sizes; printed and written as JSON. Every figure is `predicted`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kernels._files import write_text_atomic

TEST_OPS = (
    "ffn_gate",
    "ffn_up",
    "ffn_down",
    "attention_qk",
    "attention_av",
    "moe_router",
    "expert_swiglu",
    "ttt_update",
)
BATCH_SIZES = (1, 8, 32, 128)
DEFAULT_OUT = "results/kcm/kernel_cost_model_test_results.json"


def _effect(op: str, batch: int, label: str, base: dict, other: dict) -> dict:
    lat = 100.0 * (other["latency_ms"] / base["latency_ms"] - 1.0)
    energy = 100.0 * (other["energy_joules"] / base["energy_joules"] - 1.0)
    return {
        "op": op,
        "batch_size": batch,
        "case": label,
        "base": base,
        "other": other,
        "latency_change_pct": lat,
        "energy_change_pct": energy,
    }


def build_report(kcm) -> dict:
    """Every section of the seeds' report as plain data."""
    costs = {op: {str(bs): kcm.get_cost(op, bs) for bs in BATCH_SIZES} for op in TEST_OPS}
    thermal = [
        _effect(
            "ffn_gate",
            32,
            "seeds' case, 50 C vs 85 C",
            kcm.get_cost("ffn_gate", 32, current_temp=50.0),
            kcm.get_cost("ffn_gate", 32, current_temp=85.0),
        ),
        _effect(
            "ffn_gate",
            16384,
            "compute-bound, 50 C vs 92 C (past slowdown)",
            kcm.get_cost("ffn_gate", 16384, current_temp=50.0),
            kcm.get_cost("ffn_gate", 16384, current_temp=92.0),
        ),
    ]
    memory = [
        _effect(
            "ffn_gate",
            32,
            "seeds' case, pressure 0.3 vs 0.9",
            kcm.get_cost("ffn_gate", 32, memory_pressure=0.3),
            kcm.get_cost("ffn_gate", 32, memory_pressure=0.9),
        ),
        _effect(
            "silu_mul",
            16384,
            "memory-bound, pressure 0.3 vs 0.9",
            kcm.get_cost("silu_mul", 16384, memory_pressure=0.3),
            kcm.get_cost("silu_mul", 16384, memory_pressure=0.9),
        ),
    ]
    safe = {
        op: {
            "current_temp": 80.0,
            "max_temp_increase": 3.0,
            "batch_size": kcm.get_thermal_safe_batch_size(op, current_temp=80.0, max_temp_increase=3.0),
        }
        for op in TEST_OPS
    }
    return {
        "gpu_type": kcm.gpu_type,
        "source": kcm.source,
        "label": "predicted",
        "shape": kcm_shape(),
        "operation_costs": costs,
        "thermal_effects": thermal,
        "memory_pressure_effects": memory,
        "thermal_safe_batch_sizes": safe,
    }


def kcm_shape() -> dict:
    from kernels.seed_ops import DEFAULT_SHAPE

    return dict(DEFAULT_SHAPE)


def print_report(report: dict) -> None:
    print("Testing Kernel Cost Model Integration")
    print("=" * 50)
    print(f"GPU {report['gpu_type']}, {report['source']} model, shape {report['shape']} (figures are predicted)")
    print("Testing operation costs across batch sizes:")
    for op, by_batch in report["operation_costs"].items():
        print(f"\n  {op}:")
        for bs, c in by_batch.items():
            print(
                f"    batch_size={int(bs):3d}: energy={c['energy_joules']:.6f}J, latency={c['latency_ms']:.3f}ms, "
                f"temp_impact={c['temp_impact']:.4f}C, {c['bound']}-bound, {c['sm_clock_mhz']:.0f} MHz"
            )
    for title, key, names in (
        ("thermal throttling", "thermal_effects", ("Normal", "Hot")),
        ("memory pressure", "memory_pressure_effects", ("Low pressure", "High pressure")),
    ):
        print(f"\nTesting {title} effects:")
        for e in report[key]:
            print(f"  {e['op']} (batch_size={e['batch_size']}), {e['case']}:")
            for name, c in zip(names, (e["base"], e["other"])):
                print(f"    {name}: {c['latency_ms']:.3f}ms, {c['energy_joules']:.6f}J at {c['sm_clock_mhz']:.0f} MHz")
            print(f"    Impact: {e['latency_change_pct']:+.1f}% latency, {e['energy_change_pct']:+.1f}% energy")
    print("\nThermal-safe batch sizes (from 80 C, at most +3 C per call, below slowdown):")
    for op, s in report["thermal_safe_batch_sizes"].items():
        print(f"  {op:<14} {s['batch_size']}")


def main(argv: list[str] | None = None) -> None:
    from kernels.cost_model import KernelCostModel

    parser = argparse.ArgumentParser(prog="python -m kernels.cost_model", description="The seeds' KCM test report.")
    parser.add_argument("--gpu-type", default="H100", help="GPU model (telemetry.get_gpu_spec name)")
    parser.add_argument("--table", default=None, help="'builtin' for the shipped calibrated table, or a table file")
    parser.add_argument("--out", default=DEFAULT_OUT, help="JSON output (kernel_cost_model_test_results.json)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.is_dir() or any(parent.exists() and not parent.is_dir() for parent in out.parents):
        parser.error(f"--out {args.out} is a folder or lies under a file; give a .json file path")
    try:
        model = KernelCostModel(args.gpu_type, data_path=args.table)
    except (ValueError, KeyError) as exc:  # an unknown GPU, a missing or damaged table
        parser.error(str(exc).strip("'\""))
    report = build_report(model)
    print_report(report)
    write_text_atomic(out, json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
