"""AgentRouter on the measured GPU (NVML): the `gpu` preset (untrained weights: the serving, not the loss, is under
test) served by no_control at demand 0.3 and 0.9 of the KCM-predicted capacity, 4 one-second intervals each; one row
per interval to $OUT/agent_router_nvml.json (or ./). Needs CUDA and NVML."""

import os
import sys
import time

import torch

from agents import AgentRouter
from moe_runtime import MoEConfig, MoERuntime

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from _cli import gpu_only_cli, out_dir_json  # noqa: E402


def main() -> None:
    runtime = MoERuntime(MoEConfig.preset("gpu"))
    rows = []
    for demand in (0.3, 0.9):
        router = AgentRouter("no_control", runtime, monitor="nvml", interval_s=1.0, demand=demand)
        for rec in router.run(4):
            raw = router.builder.raw
            row = dict(
                demand=demand, interval=rec.interval, source=rec.source, tokens=rec.tokens, served=rec.served_tokens,
                energy_j=rec.energy_j, power_w=rec.power_w, temp_c=rec.temperature_c, latency_ms=rec.latency_ms,
                backlog=rec.backlog_tokens, util=raw(rec.observation, "gpu_utilization"),
                loss_gap=raw(rec.observation, "loss_gap"), capacity=router.capacity_tokens_per_s,
                launch=router.launch_tokens, gpu=router.gpu_spec.name,
            )  # fmt: skip
            rows.append(row)
            print(row, flush=True)
    facts = dict(device=torch.cuda.get_device_name(), date=time.strftime("%F"), figures="measured", rows=rows)
    out_dir_json("agent_router_nvml.json", facts)


if __name__ == "__main__":
    gpu_only_cli(__doc__, "CUDA and NVML (an NVIDIA GPU)")
    main()
