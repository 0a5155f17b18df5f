"""Warm start by imitation: before RL, fit a fresh SB3 policy to a baseline controller's actions (behaviour cloning)
and, for actor-critic algorithms, its value function to the returns the controller earned.

RL from scratch on `MoERouting-v0` spends most of its first 1e5 steps rediscovering what a one-line baseline already
knows (bias away from the costly experts); episode returns vary far more with the workload than with the policy, so
the gradient signal is weak. Starting from a baseline and letting PPO improve on it is the standard remedy
("kickstarting", BC pre-training as in AlphaStar or the SB3 docs' pretraining example). What a run was warm-started
from is saved in its `config.yaml` and `train_summary.json`, so no result passes as learned from scratch.

The critic is fitted to what PPO will bootstrap towards: every episode of `MoERouting-v0` ends by truncation (the
time limit), and PPO adds gamma * V(final observation) there, so the targets are discounted returns bootstrapped
with the critic's own V at truncations and at the end of the collection (fitted value iteration over a few rounds),
not returns cut at the time limit, which at gamma 0.98 and 64-step episodes average ~44% of the values PPO then
learns. Rewards and observations are normalised with the VecNormalize statistics as they stand after the whole
collection (the ones PPO starts from), not with the statistics of the moment each step was taken.

Used by `train_agent.py` through the hyperparameters `imitate` (a controller name from `agents.CONTROLLERS`, or
your own as `module.path:Name`), `imitate_steps` (env steps to collect, all workers together) and `imitate_epochs`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from agents.controller import check_controller, make_controller

VALUE_ROUNDS = 5
"""Rounds of value targets in a fit: the first bootstraps with mean reward / (1 - gamma), each later one with the
critic as fitted so far. A round shrinks the error of the bootstrapped tail by about the mean gamma^(steps to the
cut): ~0.56 for 64-step episodes at gamma 0.98."""


@dataclass
class Demonstrations:
    """A controller's steps as the agent sees them, per round and worker ([T, n_envs, ...]).

    Attributes:
        observations: float32 [T, n_envs, obs_dim], normalised with the statistics frozen after the collection.
        actions: float32 [T, n_envs, A], the controller's, in [-1, 1].
        rewards: float32 [T, n_envs], normalised (and clipped) like the observations.
        cut: bool [T, n_envs], the return stops after this step: an episode's end, or the collection's last round.
        bootstrap: bool [T, n_envs], where cut, the return goes on as V(`next_observations`): a truncation or an
            episode the collection cut short; a termination's return ends there.
        next_observations: float32 [T, n_envs, obs_dim], the observation the return goes on from where
            `bootstrap` (zeros elsewhere), normalised like the others.
        episodes: episodes finished.
        mean_return: their mean raw (unnormalised) return; NaN when none finished.
        normalised: whether the rewards went through VecNormalize's reward normalisation.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    cut: np.ndarray
    bootstrap: np.ndarray
    next_observations: np.ndarray
    episodes: int
    mean_return: float
    normalised: bool


def collect_demonstrations(venv: VecEnv, controller: str, steps: int) -> Demonstrations:
    """Drive every worker of `venv` with its own `controller` for `steps` env steps in all (rounded up to whole
    rounds of `venv.num_envs` steps).

    A `VecNormalize` venv goes on updating its statistics as it steps (PPO starts from them); what is returned is
    normalised with the statistics as they stand at the end.

    Raises:
        ValueError: fewer steps than workers.
    """
    if steps < venv.num_envs:
        raise ValueError(f"imitate_steps must be at least the number of envs ({venv.num_envs}), got {steps}")
    controllers = [make_controller(controller, venv) for _ in range(venv.num_envs)]
    for c in controllers:
        c.reset()
    normalize = venv if isinstance(venv, VecNormalize) else None
    obs = venv.reset()
    raw_obs = normalize.get_original_obs() if normalize is not None else obs
    rounds = -(-steps // venv.num_envs)
    seen_obs, seen_act, rewards, cuts, bootstraps, next_obs = [], [], [], [], [], []
    episode_returns, running = [], np.zeros(venv.num_envs)
    for _ in range(rounds):
        action = np.stack([c.act(o) for c, o in zip(controllers, raw_obs)]).astype(np.float32)
        seen_obs.append(np.asarray(raw_obs, dtype=np.float32))
        seen_act.append(action)
        obs, reward, done, infos = venv.step(action)
        raw_obs = normalize.get_original_obs() if normalize is not None else obs
        raw_reward = normalize.get_original_reward() if normalize is not None else reward
        running += raw_reward
        rewards.append(np.asarray(raw_reward, dtype=np.float32))
        after = np.zeros_like(seen_obs[-1])
        bootstrap = np.zeros(venv.num_envs, dtype=bool)
        for i in np.flatnonzero(done):
            if infos[i].get("TimeLimit.truncated", False) and "terminal_observation" in infos[i]:
                final = infos[i]["terminal_observation"]  # VecNormalize normalised it with this step's statistics
                after[i] = normalize.unnormalize_obs(final) if normalize is not None else final
                bootstrap[i] = True
            episode_returns.append(running[i])
            running[i] = 0.0
            controllers[i].reset()
        cuts.append(np.asarray(done, dtype=bool))
        bootstraps.append(bootstrap)
        next_obs.append(after)
    # the collection's end cuts the running episodes short: their returns go on from the last observation
    unfinished = ~cuts[-1]
    next_obs[-1][unfinished] = np.asarray(raw_obs, dtype=np.float32)[unfinished]
    bootstraps[-1] = bootstraps[-1] | unfinished
    cuts[-1] = np.ones(venv.num_envs, dtype=bool)

    observations, after, rewards_arr = np.stack(seen_obs), np.stack(next_obs), np.stack(rewards)
    if normalize is not None:  # frozen statistics, the same for every step
        observations = normalize.normalize_obs(observations).astype(np.float32)
        after = np.where(np.stack(bootstraps)[..., None], normalize.normalize_obs(after), 0.0).astype(np.float32)
        rewards_arr = normalize.normalize_reward(rewards_arr).astype(np.float32)
    return Demonstrations(
        observations=observations,
        actions=np.stack(seen_act),
        rewards=rewards_arr,
        cut=np.stack(cuts),
        bootstrap=np.stack(bootstraps),
        next_observations=after,
        episodes=len(episode_returns),
        mean_return=float(np.mean(episode_returns)) if episode_returns else float("nan"),
        normalised=bool(normalize is not None and normalize.norm_reward),
    )


def discounted_returns(rewards: np.ndarray, cut: np.ndarray, tail: np.ndarray, gamma: float) -> np.ndarray:
    """G_t = r_t + gamma * (tail_t if cut_t else G_{t+1}), backwards over the rounds of each worker.

    Args:
        rewards: float [T, n_envs].
        cut: bool [T, n_envs], where the return stops (the last round must be cut).
        tail: float [T, n_envs], the value the return goes on with where cut: V(next observation) at a truncation
            or at the collection's end, 0 at a termination.
        gamma: the discount.

    Returns:
        float32 [T, n_envs].
    """
    assert cut[-1].all(), "the last round must be cut: nothing follows it"
    returns = np.zeros(rewards.shape, dtype=np.float32)
    future = np.zeros(rewards.shape[1], dtype=np.float32)
    for t in range(len(rewards) - 1, -1, -1):
        future = rewards[t] + gamma * np.where(cut[t], tail[t], future)
        returns[t] = future
    return returns


def fit_policy(
    model: BaseAlgorithm,
    demos: Demonstrations,
    epochs: int,
    gamma: float,
    rounds: int = VALUE_ROUNDS,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> dict[str, Any]:
    """Regress the policy's deterministic action onto the demonstrated actions (MSE) and, where the policy has a
    value head (PPO, A2C), its value onto bootstrapped discounted returns (see `VALUE_ROUNDS`): the `epochs` are
    split into `rounds`, each with targets recomputed from the critic fitted so far. The log-std (exploration) is
    left as the hyperparameters set it.

    Returns:
        the final mean losses (`action_mse`; `value_mse`, None without a value head: SAC's and TD3's critics are
        not fitted) and, with a value head, `value_target`: how the targets were made, their final mean and the mean
        of the returns cut at episode ends, for comparison.
    """
    policy = model.policy
    policy.set_training_mode(True)
    has_value = hasattr(policy, "predict_values")
    rounds = max(1, min(rounds, epochs)) if has_value else 1
    params = [p for name, p in policy.named_parameters() if name != "log_std" and "critic" not in name]
    optimizer = torch.optim.Adam(params, lr=learning_rate)
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731  ([T, n_envs, ...] -> [T * n_envs, ...])
    obs_t = torch.as_tensor(flat(demos.observations), device=policy.device)
    act_t = torch.as_tensor(flat(demos.actions), device=policy.device)
    after_t = torch.as_tensor(demos.next_observations[demos.bootstrap], device=policy.device)  # [K, obs_dim]
    tail = np.zeros(demos.rewards.shape, dtype=np.float32)
    # The first round's tail: in a non-terminating env V averages r_mean / (1 - gamma) over the teacher's states.
    tail[demos.bootstrap] = float(demos.rewards.mean()) / (1.0 - gamma)
    generator = torch.Generator().manual_seed(seed)
    losses: dict[str, Any] = {"action_mse": float("nan"), "value_mse": float("nan") if has_value else None}
    for round_, epochs_this_round in enumerate(np.array_split(np.arange(epochs), rounds)):
        ret_t = None
        if has_value:
            if round_ > 0 and len(after_t):
                with torch.no_grad():
                    tail[demos.bootstrap] = policy.predict_values(after_t).squeeze(-1).cpu().numpy()
            returns = discounted_returns(demos.rewards, demos.cut, tail, gamma)
            ret_t = torch.as_tensor(flat(returns), device=policy.device)
        for _ in epochs_this_round:
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
            losses["action_mse"] = action_sum / len(order)
            losses["value_mse"] = value_sum / len(order) if has_value else None  # no critic fitted: no figure
    if has_value:
        cut_short = discounted_returns(demos.rewards, demos.cut, np.zeros_like(tail), gamma)
        losses["value_target"] = {
            "kind": "discounted returns bootstrapped with V(final observation) at truncations and at the "
            "collection's end (0 at terminations), refitted over rounds",
            "rounds": int(rounds),
            "rewards": "normalised with the VecNormalize statistics frozen after the collection"
            if demos.normalised
            else "raw",
            "mean": round(float(ret_t.mean()), 4),
            "mean_if_cut_at_episode_ends": round(float(cut_short.mean()), 4),
        }
    if getattr(policy, "actor_target", None) is not None:  # TD3: the target starts as the fitted actor
        policy.actor_target.load_state_dict(policy.actor.state_dict())
    policy.set_training_mode(False)
    return losses


def warm_start(
    model: BaseAlgorithm, venv: VecEnv, controller: str, steps: int, epochs: int, seed: int = 0
) -> dict[str, Any]:
    """Collect `steps` steps of `controller` on `venv` and fit `model`'s policy to them (see the module docstring).

    Returns a record for the run's summary: controller, steps, episodes, their mean return, the fit's losses
    (`value_mse` None without a value head), how the value targets were made (`value_target`, None without a value
    head) and the wall time.

    Raises:
        ValueError: an unknown controller or non-positive steps/epochs.
    """
    try:
        check_controller(controller)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"imitate: {exc}") from None
    if steps < 1 or epochs < 1:
        raise ValueError(f"imitate_steps and imitate_epochs must be positive, got {steps} and {epochs}")
    start = time.perf_counter()
    gamma = float(getattr(model, "gamma", 0.99))
    demos = collect_demonstrations(venv, controller, steps)
    losses = fit_policy(model, demos, epochs, gamma, seed=seed)
    return {
        "controller": controller,
        "steps": int(demos.actions.shape[0] * demos.actions.shape[1]),
        "episodes": demos.episodes,
        "teacher_mean_return": demos.mean_return,
        "epochs": int(epochs),
        "action_mse": losses["action_mse"],
        "value_mse": losses["value_mse"],
        "value_target": losses.get("value_target"),
        "wall_s": round(time.perf_counter() - start, 2),
    }
