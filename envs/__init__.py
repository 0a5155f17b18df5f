"""Gymnasium environments for energy-aware control of a live MoE runtime.

`import envs` registers:
- `MoERouting-v0`: scalar reward (simulated backend unless `telemetry="nvml"`, or `auto` finds a GPU);
- `MoERoutingMO-v0`: the same with the unweighted objective vector as reward and a `reward_space`;
- `MoERoutingMeasured-v0`: `telemetry="nvml"` and the `gpu` preset on CUDA (both can be overridden as keywords of
  `gymnasium.make`), registered nondeterministic (real hardware).
"""

from gymnasium.envs.registration import register, registry

from envs.actions import ActionCodec, ActionConfig
from envs.backends import deployment_memory_pressure, execute_interval, interval_latency_ms
from envs.config import EnvConfig, deployment_for
from envs.measured import (
    ServedInterval,
    measured_backend_unavailable,
    merge_reports,
    serve_interval,
    source_memory_pressure,
    spec_name_for,
)
from envs.moe_routing_env import MoERoutingEnv, MoERoutingMOEnv, pretrain_served_model
from envs.observation import ObservationBuilder
from envs.rewards import OBJECTIVES, RewardConfig, RewardReference, reward, vector_reward
from envs.workload import PROFILES, DemandTrace, Workload

__all__ = [
    "OBJECTIVES",
    "PROFILES",
    "ActionCodec",
    "ActionConfig",
    "DemandTrace",
    "EnvConfig",
    "MoERoutingEnv",
    "MoERoutingMOEnv",
    "ObservationBuilder",
    "RewardConfig",
    "RewardReference",
    "ServedInterval",
    "Workload",
    "deployment_for",
    "deployment_memory_pressure",
    "execute_interval",
    "interval_latency_ms",
    "measured_backend_unavailable",
    "merge_reports",
    "pretrain_served_model",
    "reward",
    "serve_interval",
    "source_memory_pressure",
    "spec_name_for",
    "vector_reward",
]

if "MoERouting-v0" not in registry:
    register(id="MoERouting-v0", entry_point="envs.moe_routing_env:MoERoutingEnv")
    # The passive checker insists on scalar rewards; the MO variant returns a vector by design (MO-Gymnasium).
    register(id="MoERoutingMO-v0", entry_point="envs.moe_routing_env:MoERoutingMOEnv", disable_env_checker=True)
    register(
        id="MoERoutingMeasured-v0",
        entry_point="envs.moe_routing_env:MoERoutingEnv",
        kwargs={"telemetry": "nvml", "preset": "gpu"},  # the CPU-sized presets leave an H100 all but idle
        nondeterministic=True,
    )
