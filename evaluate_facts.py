"""What a comparison ran on, for its report and `run_facts.json`: the env's deployment scale, model and workload
(`env_facts`, `config_facts`) and the host, GPU and driver (`device_facts`)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import platform


def env_facts(env) -> dict:
    """What the report says about an env: deployment scale, model, GPU, workload."""
    import torch

    u = env.unwrapped
    runtime_bytes = sum(p.numel() * p.element_size() for p in u.runtime.model.parameters())
    if torch.cuda.is_available():
        runtime_bytes = max(runtime_bytes, torch.cuda.max_memory_allocated())
    return config_facts(u.config, u.backend.source, u.backend.spec.name, runtime_bytes / 1e9)


def config_facts(cfg, source: str, gpu_spec: str, runtime_memory_gb: float | None) -> dict:
    """`env_facts` from an `EnvConfig` alone (no model built); `runtime_memory_gb` is measured, or None."""
    dep = cfg.deployment
    d, widths = dep.d_model, sum(dep.expert_widths)
    weights = dep.layers * (4 * d * d + 3 * d * widths + d * dep.num_experts) + 2 * dep.vocab_size * d
    return {
        "runtime_memory_gb": runtime_memory_gb,  # measured: the runtime's weights (CUDA: peak allocated)
        "deployment_weights_gb": weights * dep.dtype_bytes / 1e9,  # predicted: weights at deployment scale
        "source": source,
        "gpu_spec": gpu_spec,
        "deployment": dep.to_dict(),
        "model": {
            k: v
            for k, v in cfg.model.to_dict().items()
            if k in ("preset_name", "d_model", "n_layers", "num_experts", "top_k", "expert_widths")
        },
        "runtime_tokens": cfg.runtime_tokens,
        "episode_intervals": cfg.episode_intervals,
        "interval_s": cfg.interval_s,
        "split": cfg.split,
        "workload": dataclasses.asdict(cfg.workload),
        "domains": list(cfg.domains),
        "ttt": cfg.ttt,
    }


def device_facts() -> dict:
    """Host, date and (measured) the GPU's name and driver."""
    import torch

    facts = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
        try:
            import pynvml

            pynvml.nvmlInit()
            facts["driver"] = pynvml.nvmlSystemGetDriverVersion()
        except Exception as exc:  # the driver version is a label; its absence must not stop a report
            facts["driver"] = f"unknown ({type(exc).__name__})"
    return facts
