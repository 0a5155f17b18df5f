"""agents: controllers for MoERouting-v0 and a live MoE runtime.

- `Controller` protocol (`reset()`, `act(obs) -> action`), `ControlSpec` (what a controller knows of its env),
  `make_controller(name, env, **kw)` for `heuristic`, `no_control`, `load_balance`, `fixed_ttt`, `kcm_greedy`,
  `random`, or your own controller as `module.path:Name` (`load_entry_point`);
- `EnergyAwareTTTRouter` (the original heuristic, five parts; a Controller and a router module) with its
  `StatisticalLoadBalancer` and `ThermalAdaptiveScaler`;
- `load_policy(path)`: a saved stable-baselines3 model as a Controller, with the env config of its run
  (`train_env_config`; compare an env with `env_setting_differences`);
- `AgentRouter(controller, runtime, ...)`: a Controller driving a live `MoERuntime`;
- `warm_start(model, venv, controller, steps, epochs)`: fit a fresh SB3 policy to a baseline before RL (its critic
  to returns bootstrapped at the time limit, as PPO bootstraps them).
"""

from agents.agent_router import AgentRouter, IntervalRecord
from agents.controller import (
    CONTROLLERS,
    FIXED_TTT_GRID,
    Controller,
    ControlSpec,
    FixedTTT,
    KcmGreedy,
    LoadBalance,
    NoControl,
    RandomController,
    check_controller,
    load_entry_point,
    make_controller,
    reset_controller,
)
from agents.heuristic import EnergyAwareTTTRouter, StatisticalLoadBalancer, ThermalAdaptiveScaler
from agents.run_config import TRAINING_SEEDS_FROM, env_setting_differences
from agents.sb3 import ALGOS, PolicyController, load_hyperparams, load_policy
from agents.warm_start import warm_start

__all__ = [
    "ALGOS",
    "CONTROLLERS",
    "FIXED_TTT_GRID",
    "TRAINING_SEEDS_FROM",
    "AgentRouter",
    "ControlSpec",
    "Controller",
    "EnergyAwareTTTRouter",
    "FixedTTT",
    "IntervalRecord",
    "KcmGreedy",
    "LoadBalance",
    "NoControl",
    "PolicyController",
    "RandomController",
    "StatisticalLoadBalancer",
    "ThermalAdaptiveScaler",
    "check_controller",
    "env_setting_differences",
    "load_entry_point",
    "load_hyperparams",
    "load_policy",
    "make_controller",
    "reset_controller",
    "warm_start",
]
