"""What a comparison ran on, for its report and `run_facts.json`: the env's deployment scale, model and workload
(`env_facts`, `config_facts`) and the host, GPU and driver (`device_facts`)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import platform


def env_facts(env) -> dict:
    """What the report says about an env: deployment scale, model (with, where it came from a checkpoint, which
    weights and their pretraining losses: `MoETransformer.provenance`), GPU, workload, and on CUDA the allocator's
    peak."""
    import torch

    u = env.unwrapped
    weight_bytes = sum(p.numel() * p.element_size() for p in u.runtime.model.parameters())
    facts = config_facts(u.config, u.backend.source, u.backend.spec.name, weight_bytes / 1e9)
    provenance = getattr(u.runtime.model, "provenance", None)  # a checkpoint's: its file, weights digest, losses
    if provenance:
        facts["model"]["provenance"] = dict(provenance)
    if torch.cuda.is_available():
        # measured, but process-wide: every env built so far in this process (and anything else it ran) counts
        facts["cuda_peak_allocated_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return facts


def config_facts(cfg, source: str, gpu_spec: str, runtime_weights_gb: float | None) -> dict:
    """`env_facts` from an `EnvConfig` alone (no model built).

    Args:
        runtime_weights_gb: the runtime model's parameter bytes / 1e9 (predicted: arithmetic, not a measurement),
            or None when no model was built.

    Deployment weights are predicted the same way, at deployment scale (`DeploymentScale.weight_count`, which the
    env's memory pressure counts too).
    """
    dep = cfg.deployment
    return {
        "runtime_weights_gb": runtime_weights_gb,  # predicted: parameter bytes of the runtime model
        "deployment_weights_gb": dep.weight_count * dep.dtype_bytes / 1e9,  # predicted: weights at deployment scale
        "cuda_peak_allocated_gb": None,  # measured on CUDA (`env_facts`), process-wide
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
        "cpu_model": _cpu_model(),  # with the next: the runtime's arithmetic (its losses) can differ by CPU
        "torch_cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", str)(),  # torch >= 2.1
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


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else the platform's processor string, else ''."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor()
