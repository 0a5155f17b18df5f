"""Fixtures the agent tests share (`test_agents.py`, `test_agent_router.py`): the tiny env and a PPO policy trained on
it, and one torch thread for the modules that ask for it."""

from __future__ import annotations

import pytest
import torch


def _tiny_env():
    # Imported here: every test run (the kernel tests' too) loads this file, and only the agent tests need an env.
    import gymnasium as gym

    import envs  # noqa: F401  (registers MoERouting-v0)

    return gym.make("MoERouting-v0", preset="tiny", telemetry="simulated", episode_intervals=8, torch_threads=1)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small matmuls on two contended threads take ~100x longer than on one; the env's workers use one too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def env():
    e = _tiny_env()
    yield e
    e.close()


@pytest.fixture(scope="session")
def ppo_run(tmp_path_factory):
    """A PPO policy trained a few hundred steps with observation normalisation, saved as train_agent.py saves; trained
    once for every module that asks (on one torch thread: a session fixture is set up before a module's own)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("ppo")
    venv = VecNormalize(DummyVecEnv([lambda: Monitor(_tiny_env())]), norm_obs=True, norm_reward=True, gamma=0.98)
    model = PPO("MlpPolicy", venv, n_steps=64, batch_size=32, n_epochs=2, gamma=0.98, seed=0, device="cpu")
    model.learn(192)
    model.save(str(folder / "model.zip"))
    venv.save(str(folder / "vecnormalize.pkl"))
    venv.close()
    torch.set_num_threads(threads)
    return folder, model, venv
