"""Environment speed and the shape of the control problem.

1. Steps/s of `MoERouting-v0` at the default config (simulated backend, TTT at its default setting) on this
   machine, and the env's own overhead (everything but the runtime's model work) as a share of step time.
2. The best fixed actions per scenario (workload profiles, a low load, a hot aisle with poor cooling): a small grid of
   fixed actions (selection bias toward the narrow experts at a few strengths x TTT off / rare large updates) run
   on the same seeds in each scenario, to see whether one fixed action is best everywhere.

    python benchmarks/env_step.py [--steps 60] [--episodes 2] [--out results/benchmarks/env_step.json]

Prints tables; the last line is `env: X steps/s, overhead Y % of step time`. Figures are wall-clock `measured`
on this CPU; the rewards are from the `simulated` backend.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform

import numpy as np
import torch
from _cli import check_out_file, write_json_atomic

from envs import MoERoutingEnv, Workload
from moe_runtime import ControlAction, MoEConfig


def fixed_actions(env: MoERoutingEnv) -> dict[str, np.ndarray]:
    """A small grid: selection biases toward the narrow half of the experts at a few strengths (bias units) x TTT
    off / rare large updates (every 16k tokens on 2k-token chunks)."""
    widths = np.asarray(env.model_config.expert_widths, dtype=float)
    lean = np.where(widths <= np.median(widths), 1.0, -1.0)
    out = {}
    for strength in (0.0, 0.03, 0.1, 0.25):
        for ttt_name, freq in (("off", 0), ("16k", 16384)):
            c = ControlAction(routing_biases=tuple(strength * lean), ttt_frequency_tokens=freq, ttt_chunk_tokens=2048)
            out[f"b{strength:g}/{ttt_name}"] = env.encode_action(c)
    return out


SCENARIOS = {  # name -> EnvConfig keyword arguments
    "constant": dict(workload=Workload(profile="constant")),
    "step": dict(workload=Workload(profile="step")),
    "diurnal": dict(workload=Workload(profile="diurnal")),
    "bursty": dict(workload=Workload(profile="bursty")),
    "bursty-high": dict(workload=Workload(profile="bursty", load=1.0)),
    "low-load": dict(workload=Workload(profile="constant", load=0.2, randomize_load=False)),
    "hot-aisle": dict(workload=Workload(profile="constant", load=0.9, randomize_load=False),
                      ambient_range_c=(42.0, 45.0), cooling_range=(2.5, 3.0)),
}


def episode_return(env: MoERoutingEnv, action: np.ndarray, seed: int, steps: int) -> float:
    env.reset(seed=seed)
    total = 0.0
    for _ in range(steps):
        _, r, _, trunc, _ = env.step(action)
        total += r
        if trunc:
            break
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="default", help="MoEConfig preset: tiny, default or gpu (default: default)")
    parser.add_argument("--steps", type=int, default=60, help="steps timed for the speed figure")
    parser.add_argument("--episodes", type=int, default=2, help="seeds per profile in the fixed-action grid")
    parser.add_argument("--grid-steps", type=int, default=24, help="steps per grid episode")
    parser.add_argument(
        "--out", default="results/benchmarks/env_step.json", help="where the JSON goes (default: %(default)s)"
    )
    args = parser.parse_args()
    if min(args.steps, args.episodes, args.grid_steps) < 1:
        parser.error(f"--steps, --episodes and --grid-steps must be >= 1, got {args.steps}, {args.episodes}, "
                     f"{args.grid_steps}")
    try:
        MoEConfig.preset(args.preset)
    except ValueError as exc:
        parser.error(str(exc))
    check_out_file(parser, "--out", args.out)

    env = MoERoutingEnv(preset=args.preset, telemetry="simulated")
    env.reset(seed=0)
    default_action = env.encode_action(
        ControlAction(
            ttt_frequency_tokens=env.runtime.ttt.config.frequency_tokens,
            ttt_chunk_tokens=env.runtime.ttt.config.chunk_tokens,
        )
        if env.runtime.ttt is not None
        else ControlAction.uncontrolled()
    )
    timings = []
    for _ in range(args.steps):
        _, _, _, trunc, _ = env.step(default_action)
        timings.append(dict(env.last_timing))
        if trunc:
            env.reset()
    step_s = np.array([t["step_s"] for t in timings])
    runtime_s = np.array([t["runtime_s"] for t in timings])
    steps_per_s = 1.0 / float(np.median(step_s))
    overhead = float(np.sum(step_s - runtime_s) / np.sum(step_s))
    print(f"{'figure':<34} {'value':>10}")
    print(f"{'median step time (ms)':<34} {1e3 * np.median(step_s):>10.1f}")
    print(f"{'runtime model work (ms)':<34} {1e3 * np.median(runtime_s):>10.1f}")
    print(f"{'env overhead (share)':<34} {overhead:>10.3f}")
    print(f"{'torch threads':<34} {torch.get_num_threads():>10d}")

    grid = {}
    print(f"\n{'scenario':<12} " + " ".join(f"{k:>10}" for k in fixed_actions(env)) + "   best")
    for profile, kwargs in SCENARIOS.items():
        e = MoERoutingEnv(preset=args.preset, telemetry="simulated", episode_intervals=args.grid_steps, **kwargs)
        returns = {
            name: float(np.mean([episode_return(e, a, seed, args.grid_steps) for seed in range(args.episodes)]))
            for name, a in fixed_actions(e).items()
        }
        best = max(returns, key=returns.get)
        grid[profile] = {"returns": returns, "best": best}
        print(f"{profile:<12} " + " ".join(f"{v:>10.2f}" for v in returns.values()) + f"   {best}")
        e.close()
    best_set = {g["best"] for g in grid.values()}
    print(f"distinct best fixed actions across profiles: {len(best_set)} ({', '.join(sorted(best_set))})")

    out = pathlib.Path(args.out)
    payload = {
        "meta": dict(
            date=datetime.datetime.now().isoformat(timespec="seconds"),
            machine=platform.machine(),
            cpu_count=os.cpu_count(),
            torch_threads=torch.get_num_threads(),
            preset=args.preset,
            timing_source="measured",
            reward_source="simulated",
        ),
        "steps_per_s": steps_per_s,
        "median_step_ms": 1e3 * float(np.median(step_s)),
        "overhead_share": overhead,
        "fixed_action_grid": grid,
    }
    write_json_atomic(out, payload)
    print(f"env: {steps_per_s:.1f} steps/s, overhead {100 * overhead:.1f} % of step time")


if __name__ == "__main__":
    main()
