"""AgentRouter on the measured GPU (NVML): the `gpu` preset (untrained weights: the serving, not the loss, is under
test) served by no_control at demand 0.3 and 0.9 of the KCM-predicted capacity, 4 one-second intervals each; one row
per interval to $OUT/agent_router_nvml.json (or ./), with each field's source (`FIELD_SOURCES`): measured, except
the capacity (predicted by the KCM) and the demand (a setting: a fraction of that predicted capacity). Needs CUDA and
NVML."""

import os
import sys
import time

import torch

from agents import AgentRouter
from moe_runtime import MoEConfig, MoERuntime

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from _cli import gpu_only_cli, out_dir_json  # noqa: E402

LABEL_FIELDS = ("interval", "source", "gpu")  # which interval, the AgentRouter's own source label, the GPU's name
FIELD_SOURCES = {  # every other row field: measured on the GPU, predicted by the KCM, or a setting of this script
    "demand": "setting (fraction of the predicted capacity: the tokens asked for are predicted)",
    "tokens": "measured",
    "served": "measured",
    "energy_j": "measured",
    "power_w": "measured",
    "temp_c": "measured",
    "latency_ms": "measured",
    "backlog": "measured (demand less what was served)",
    "util": "measured",
    "loss_gap": "measured",
    "capacity": "predicted",
    "launch": "setting",
}


def interval_row(router, rec, demand: float) -> dict:
    """One interval's row: `LABEL_FIELDS` and the figures of `FIELD_SOURCES`."""
    raw = router.builder.raw
    return dict(
        demand=demand, interval=rec.interval, source=rec.source, tokens=rec.tokens, served=rec.served_tokens,
        energy_j=rec.energy_j, power_w=rec.power_w, temp_c=rec.temperature_c, latency_ms=rec.latency_ms,
        backlog=rec.backlog_tokens, util=raw(rec.observation, "gpu_utilization"),
        loss_gap=raw(rec.observation, "loss_gap"), capacity=router.capacity_tokens_per_s,
        launch=router.launch_tokens, gpu=router.gpu_spec.name,
    )  # fmt: skip


def main() -> None:
    runtime = MoERuntime(MoEConfig.preset("gpu"))
    rows = []
    for demand in (0.3, 0.9):
        with AgentRouter("no_control", runtime, monitor="nvml", interval_s=1.0, demand=demand) as router:
            for rec in router.run(4):
                row = interval_row(router, rec, demand)
                rows.append(row)
                print(row, flush=True)
    facts = dict(
        device=torch.cuda.get_device_name(),
        date=time.strftime("%F"),
        figures="measured, except capacity (predicted) and the settings demand and launch: see sources",
        sources=FIELD_SOURCES,
        rows=rows,
    )
    out_dir_json("agent_router_nvml.json", facts)


if __name__ == "__main__":
    gpu_only_cli(__doc__, "CUDA and NVML (an NVIDIA GPU)")
    main()
