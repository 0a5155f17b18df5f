"""Warm start by imitation: before RL, fit a fresh SB3 policy to a baseline controller's actions (behaviour cloning)
and, for actor-critic algorithms, its value function to the returns the controller earned.

RL from scratch on `MoERouting-v0` spends most of its first 1e5 steps rediscovering what a one-line baseline already
knows (bias away from the costly experts); episode returns vary far more with the workload than with the policy, so
the gradient signal is weak. Starting from a baseline and letting PPO improve on it is the standard remedy
("kickstarting", BC pre-training as in AlphaStar or the SB3 docs' pretraining example). What a run was warm-started
from is saved in its `config.yaml` and `train_summary.json`, so no result passes as learned from scratch.

Used by `train_agent.py` through the hyperparameters `imitate` (a controller name from `agents.CONTROLLERS`),
`imitate_steps` (env steps to collect, all workers together) and `imitate_epochs`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from agents.controller import CONTROLLERS, make_controller


def collect_demonstrations(
    venv: VecEnv, controller: str, steps: int, gamma: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """Drive every worker of `venv` with its own `controller` for `steps` env steps in all.

    Returns:
        observations float32 [N, obs_dim] as the policy sees them (normalised if `venv` is a `VecNormalize`),
        actions float32 [N, A] (the controller's, in [-1, 1]), discounted returns float32 [N] of the rewards as
        the agent sees them (normalised likewise; an episode cut by the end of collection is cut there too),
        and stats (episodes finished, their mean raw return).
    """
    if steps < venv.num_envs:
        raise ValueError(f"imitate_steps must be at least the number of envs ({venv.num_envs}), got {steps}")
    controllers = [make_controller(controller, venv) for _ in range(venv.num_envs)]
    for c in controllers:
        c.reset()
    normalize = venv if isinstance(venv, VecNormalize) else None
    obs = venv.reset()
    rounds = -(-steps // venv.num_envs)
    seen_obs, seen_act, rewards, dones = [], [], [], []
    episode_returns, running = [], np.zeros(venv.num_envs)
    for _ in range(rounds):
        raw = normalize.get_original_obs() if normalize is not None else obs
        action = np.stack([c.act(o) for c, o in zip(controllers, raw)]).astype(np.float32)
        seen_obs.append(np.asarray(obs, dtype=np.float32))
        seen_act.append(action)
        obs, reward, done, infos = venv.step(action)
        raw_reward = normalize.get_original_reward() if normalize is not None else reward
        running += raw_reward
        rewards.append(np.asarray(reward, dtype=np.float32))
        dones.append(np.asarray(done, dtype=bool))
        for i in np.flatnonzero(done):
            episode_returns.append(running[i])
            running[i] = 0.0
            controllers[i].reset()
    rewards_arr, dones_arr = np.stack(rewards), np.stack(dones)  # [T, n_envs]
    returns = np.zeros_like(rewards_arr)
    future = np.zeros(venv.num_envs, dtype=np.float32)
    for t in range(len(rewards_arr) - 1, -1, -1):
        future = rewards_arr[t] + gamma * future * (~dones_arr[t])
        returns[t] = future
    stats = {
        "episodes": len(episode_returns),
        "mean_return": float(np.mean(episode_returns)) if episode_returns else float("nan"),
    }
    # [T, n_envs, ...] -> [T * n_envs, ...]
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
    return flat(np.stack(seen_obs)), flat(np.stack(seen_act)), flat(returns), stats


def fit_policy(
    model: BaseAlgorithm,
    observations: np.ndarray,
    actions: np.ndarray,
    returns: np.ndarray | None,
    epochs: int,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> dict[str, float]:
    """Regress the policy's deterministic action onto `actions` [N, A] (MSE) and, where the policy has a value
    head (PPO, A2C) and `returns` [N] is given, its value onto `returns`. The log-std (exploration) is left as the
    hyperparameters set it. Returns the final mean losses."""
    policy = model.policy
    policy.set_training_mode(True)
    has_value = returns is not None and hasattr(policy, "predict_values")
    params = [p for name, p in policy.named_parameters() if name != "log_std" and "critic" not in name]
    optimizer = torch.optim.Adam(params, lr=learning_rate)
    obs_t = torch.as_tensor(observations, device=policy.device)
    act_t = torch.as_tensor(actions, device=policy.device)
    ret_t = torch.as_tensor(returns, device=policy.device) if has_value else None
    generator = torch.Generator().manual_seed(seed)
    losses = {"action_mse": float("nan"), "value_mse": float("nan")}
    for _ in range(epochs):
        order = torch.randperm(len(obs_t), generator=generator)
        action_sum, value_sum = 0.0, 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            # `_predict` is SB3's differentiable deterministic action for every policy class
            predicted = policy._predict(obs_t[idx], deterministic=True)
            loss = F.mse_loss(predicted, act_t[idx])
            action_sum += loss.item() * len(idx)
            if has_value:
                value_loss = F.mse_loss(policy.predict_values(obs_t[idx]).squeeze(-1), ret_t[idx])
                value_sum += value_loss.item() * len(idx)
                loss = loss + value_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        losses = {"action_mse": action_sum / len(order), "value_mse": value_sum / len(order) if has_value else 0.0}
    if getattr(policy, "actor_target", None) is not None:  # TD3: the target starts as the fitted actor
        policy.actor_target.load_state_dict(policy.actor.state_dict())
    policy.set_training_mode(False)
    return losses


def warm_start(
    model: BaseAlgorithm, venv: VecEnv, controller: str, steps: int, epochs: int, seed: int = 0
) -> dict[str, Any]:
    """Collect `steps` steps of `controller` on `venv` and fit `model`'s policy to them (see the module docstring).

    Returns a record for the run's summary: controller, steps, episodes, their mean return, the fit's losses and the
    wall time. Raises ValueError for an unknown controller or non-positive steps/epochs.
    """
    if controller not in CONTROLLERS:
        raise ValueError(f"imitate: unknown controller {controller!r}; choose one of {sorted(CONTROLLERS)}")
    if steps < 1 or epochs < 1:
        raise ValueError(f"imitate_steps and imitate_epochs must be positive, got {steps} and {epochs}")
    start = time.perf_counter()
    gamma = float(getattr(model, "gamma", 0.99))
    observations, actions, returns, stats = collect_demonstrations(venv, controller, steps, gamma)
    losses = fit_policy(model, observations, actions, returns, epochs, seed=seed)
    return {
        "controller": controller,
        "steps": int(len(observations)),
        "episodes": stats["episodes"],
        "teacher_mean_return": stats["mean_return"],
        "epochs": int(epochs),
        **losses,
        "wall_s": round(time.perf_counter() - start, 2),
    }
