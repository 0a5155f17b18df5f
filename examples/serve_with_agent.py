"""Serve a live MoE runtime with an agent in control: the heuristic, a baseline, or a trained policy.

    python examples/serve_with_agent.py                                   # heuristic on the default preset
    python examples/serve_with_agent.py --preset tiny --intervals 16
    python examples/serve_with_agent.py --policy runs/ppo_s0/model.zip    # a policy trained by train_agent.py
    python examples/serve_with_agent.py --controller no_control           # any agents.make_controller name
    python examples/serve_with_agent.py --controller examples.custom_controller:Thermostat   # your own

(from the repository root, as the README's commands: `examples.custom_controller` is a module path from there).

`AgentRouter` serves the runtime's token stream one control interval at a time on a simulated H100 (or the real GPU
with `--telemetry nvml`), builds `MoERouting-v0`'s observation from the telemetry and the kernel cost model, and
applies the controller's routing biases and TTT schedule. The stream shifts from prose to code halfway.
"""

from __future__ import annotations

import argparse
import math

import agents
from envs import EnvConfig
from moe_runtime import (
    CheckpointError,
    DomainSchedule,
    MoERuntime,
    PretrainConfig,
    TTTConfig,
    TTTEngine,
    load_or_pretrain,
)
from telemetry import GpuSystemMonitor, nvml_available


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="default", help="MoEConfig preset of the served model (default, tiny)")
    parser.add_argument("--intervals", type=int, default=24, help="control intervals to serve")
    parser.add_argument("--controller", default="heuristic",
                        help=f"one of {sorted(agents.CONTROLLERS)}, or your own as module.path:Name")  # fmt: skip
    parser.add_argument("--policy", default="", help="a saved SB3 model (.zip or run folder); overrides --controller")
    parser.add_argument("--telemetry", default="simulated", choices=("simulated", "nvml", "auto"))
    parser.add_argument("--demand", type=float, default=0.6, help="token demand as a fraction of capacity")
    args = parser.parse_args()
    # Bad input is a one-line error before the model is pretrained or loaded, not a traceback after.
    if args.intervals < 1:
        parser.error(f"--intervals must be >= 1, got {args.intervals}")
    if not 0 < args.demand <= 3.0:  # the env's workloads span 0.02-3 (envs.workload); beyond, a policy extrapolates
        parser.error(f"--demand must be a fraction of capacity in (0, 3], as the env's workloads are, got {args.demand}")
    if not args.policy and ":" in args.controller:  # an entry point: it must import, and be a controller class or
        try:  # factory taking a spec, before the model is loaded
            agents.check_controller(args.controller)
        except (ValueError, TypeError) as exc:
            parser.error(f"--controller: {exc}")
    elif not args.policy and args.controller not in agents.CONTROLLERS:
        parser.error(f"--controller {args.controller!r} is not one of {sorted(agents.CONTROLLERS)} or module.path:Name")
    if args.telemetry == "nvml" and not nvml_available():
        parser.error("--telemetry nvml: NVML sees no GPU here (no driver or nvidia-ml-py); use simulated or auto")
    try:
        env_config = EnvConfig(preset=args.preset, telemetry=args.telemetry)  # the model and sizes MoERouting-v0 uses
        controller = agents.load_policy(args.policy) if args.policy else args.controller
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    if env_config.model.preset_name == "gpu" and env_config.model.resolved_device() == "cpu":
        parser.error(
            "--preset gpu is sized for a GPU (its pretraining would crawl on the CPU) and CUDA is not "
            "available here; use default or tiny"
        )

    config = env_config.model
    try:
        model = load_or_pretrain(config, PretrainConfig(steps=env_config.pretrain_steps))  # the env's cached model
    except CheckpointError as exc:  # a damaged cache: the message says how to rebuild it
        parser.exit(1, f"{parser.prog}: error: {exc}\n")
    schedule = DomainSchedule.shift("prose", "code", env_config.runtime_tokens * args.intervals // 2)
    runtime = MoERuntime(config, model=model, schedule=schedule, ttt=TTTEngine(TTTConfig()))
    cuda = (runtime.device.index or 0) if runtime.device.type == "cuda" else None  # NVML reads the runtime's GPU
    monitor = GpuSystemMonitor(source=args.telemetry, cuda_device=cuda)
    try:
        router = agents.AgentRouter(
            controller, runtime, monitor=monitor, interval_tokens=env_config.runtime_tokens, demand=args.demand
        )
    except (ValueError, TypeError) as exc:  # e.g. a policy trained for another expert count, a bad entry point
        parser.error(f"--policy {args.policy!r}: {exc}" if args.policy else f"--controller {args.controller!r}: {exc}")
    if router.gpu is None:  # on NVML the runtime serves the whole demand: whole launches until it is met
        launches = math.ceil(args.demand * router.capacity_tokens_per_s * router.interval_s / router.launch_tokens)
        shift_tokens = launches * router.launch_tokens * args.intervals // 2
        runtime.reset_stream(DomainSchedule.shift("prose", "code", shift_tokens), seed=config.seed)
    name = args.policy or args.controller
    print(f"serving {args.preset} with {name} on {monitor.device} ({monitor.reason})")
    source = "simulated" if router.gpu is not None else "measured"  # as IntervalRecord.source says it
    print(f"loss in nats [measured]; power, temperature, energy per token and latency [{source}]")
    print(" int domain  loss    power   temp  mJ/tok   lat ms  | next: biases                   ttt")
    for r in router.run(args.intervals):
        biases = " ".join(f"{b:+.2f}" for b in r.next_action.biases(config.num_experts))
        ttt = (
            f"every {r.next_action.ttt_frequency_tokens} x{r.next_action.ttt_chunk_tokens}"
            if r.next_action.ttt_enabled
            else "off"
        )
        print(
            f"{r.interval:4d} {r.domain:<6} {r.loss:5.3f} {r.power_w:6.0f} W {r.temperature_c:5.1f} C "
            f"{1e3 * r.energy_per_token_j:6.3f} {r.latency_ms:8.1f}  | {biases}  {ttt}"
        )
    stats = getattr(router.controller, "get_statistics", None)
    if stats is not None:
        s = stats()
        print(
            f"heuristic: {s['ttt_update_count']} fast-weight updates, "
            f"predicted savings {s['avg_energy_savings_watts']:.1f} W, "
            f"mean thermal scaling {s['avg_thermal_scaling']:.2f}, TTT cost ratio {s['ttt_cost_ratio']:.1f}"
        )


if __name__ == "__main__":
    main()
