"""The reward's reference: a short uncontrolled calibration of the config and corpus, cached.

For each domain it serves the uncontrolled model (zero biases, TTT off) on a fixed stream and records the mean loss;
on the hardware backend it runs the mean workload uncontrolled and records energy per token and latency; from the
cost model it takes the deployment's capacity (tokens/s at full clock) and each expert's energy per token. The
result is cached as JSON under the checkpoint cache, keyed by everything that changes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass

import numpy as np

from envs.config import EnvConfig
from envs.rewards import RewardReference
from moe_runtime import ControlAction, DomainSchedule, MoERuntime, corpus_hash, default_cache_dir

log = logging.getLogger(__name__)
CALIBRATION_VERSION = 2
_LOSS_INTERVALS = 6
_HARDWARE_INTERVALS = 12


@dataclass(frozen=True)
class EnvReference(RewardReference):
    """`RewardReference` plus what the env needs to scale demand and costs.

    Attributes:
        capacity_tokens_per_s: deployment tokens/s served with uncontrolled routing at full clock.
        expert_cost_ratio: [E] each expert's energy per routed token over the experts' mean (KCM, deployment).
    """

    capacity_tokens_per_s: float = 1.0
    expert_cost_ratio: tuple[float, ...] = ()


def _key(cfg: EnvConfig, runtime: MoERuntime, backend) -> str:
    weights = runtime.model.state_dict()
    fingerprint = float(sum(float(v.float().abs().sum()) for v in list(weights.values())[:4]))
    parts = {
        "v": CALIBRATION_VERSION,
        "model": cfg.model.model_key(),
        "weights": round(fingerprint, 3),
        "corpus": corpus_hash(list(cfg.domains)),
        "split": cfg.split,
        "runtime_tokens": cfg.runtime_tokens,
        "deployment": cfg.deployment.to_dict(),
        "gpu": cfg.gpu,
        "spec": repr(backend.spec),  # a refitted simulator or cost model changes the reference
        "cost_table": backend.kcm.source,
        "source": backend.source,
        "load": cfg.workload.load,
        "interval_s": cfg.interval_s,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _calibrate(cfg: EnvConfig, runtime: MoERuntime, backend) -> EnvReference:
    num_experts = cfg.model.num_experts
    runtime.reset_ttt()
    runtime.apply(ControlAction.uncontrolled(num_experts))
    losses = {}
    for domain in cfg.domains:
        runtime.reset_stream(DomainSchedule.constant(domain), split=cfg.split, seed=12345)
        losses[domain] = float(np.mean([runtime.step(cfg.runtime_tokens).loss for _ in range(_LOSS_INTERVALS)]))
    runtime.reset_stream(DomainSchedule.constant(cfg.domains[0]), split=cfg.split, seed=12345)
    report = runtime.step(cfg.runtime_tokens)
    capacity = backend.capacity_tokens_per_s(report)
    expert_energy = backend.expert_energy_per_token_j(report)
    ratio = expert_energy / expert_energy.mean()
    rng = np.random.default_rng(0)
    backend.reset(rng, runtime, cfg.workload.load * capacity, randomize=False)
    demand = cfg.workload.load * capacity * cfg.interval_s
    backlog, energy, tokens, latency = 0.0, [], [], []
    for i in range(_HARDWARE_INTERVALS):
        r = backend.run_interval(runtime, cfg.runtime_tokens, demand, backlog)
        backlog = r.backlog_tokens
        if i >= _HARDWARE_INTERVALS // 3:  # skip the warm-up transient
            energy.append(r.energy_j)
            tokens.append(r.tokens_served)
            latency.append(r.latency_ms)
    return EnvReference(
        energy_per_token_j=float(np.sum(energy) / max(1.0, np.sum(tokens))),
        latency_ms=float(np.mean(latency)),
        loss=losses,
        capacity_tokens_per_s=float(capacity),
        expert_cost_ratio=tuple(float(x) for x in ratio),
    )


def reward_reference(cfg: EnvConfig, runtime: MoERuntime, backend) -> EnvReference:
    """The cached calibration for this config, computing it (a few seconds) when missing."""
    path = default_cache_dir() / "calibration" / f"{_key(cfg, runtime, backend)}.json"
    if path.exists():
        try:
            data = json.loads(path.read_text())
            data["expert_cost_ratio"] = tuple(data["expert_cost_ratio"])
            return EnvReference(**data)
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("ignoring unreadable calibration cache %s (%s); recomputing", path, exc)
    ref = _calibrate(cfg, runtime, backend)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # not mkstemp: its 0600 would outlive the rename
    try:
        tmp.write_text(json.dumps(dataclasses.asdict(ref), indent=1))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return ref
