"""train_agent.py's warm starts: imitating a baseline (PPO's critic fitted too, none for SAC/TD3), and SAC/TD3
acting with the warm-started policy from the first step, its actor kept while the critic warms up."""

from __future__ import annotations

import json
import subprocess
import sys

import gymnasium as gym
import pytest
import torch
import yaml
from stable_baselines3.common.save_util import load_from_pkl
from train_testing import REPO, TINY_RUN

import agents
import train_agent


def test_a_controller_of_your_own_can_be_imitated():
    own = "examples.custom_controller:Thermostat"
    assert agents.sb3.imitation_settings({"imitate": own}) == {"controller": own, "steps": 2048, "epochs": 30}


def test_warm_started_run_records_its_teacher(tmp_path):
    run = tmp_path / "run"
    end = TINY_RUN.index("--hyperparams") + 4  # after TINY_RUN's three hyperparameters: add three more
    argv = [*TINY_RUN[:end], "imitate:kcm_greedy", "imitate_steps:16", "imitate_epochs:5", *TINY_RUN[end:]]
    argv.remove("--no-progress-bar")  # with the progress bar on, as a user's run has it (SB3 needs tqdm and rich)
    cmd = [sys.executable, "train_agent.py", "--out", str(run), "--timesteps", "32", *argv]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "running without it" not in result.stdout  # the installed project brings tqdm and rich
    record = yaml.safe_load((run / "config.yaml").read_text())["warm_start"]
    assert record["controller"] == "kcm_greedy" and record["steps"] == 16 and record["episodes"] == 2
    assert json.loads((run / "train_summary.json").read_text())["warm_start"] == record

    # the learning-curve script reads the run and plays the baseline on the same held-out episodes
    out = tmp_path / "curve"
    cmd = [sys.executable, "scripts/learning_curve.py", str(run), "--baselines", "no_control", "--out", str(out)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    curve = json.loads(out.with_suffix(".json").read_text())
    entry = curve["runs"]["run"]
    assert entry["eval_steps"] == [32] and entry["train_steps"] and entry["warm_start"] == record
    assert len(curve["baselines"]["no_control"]) == 1 and out.with_suffix(".png").stat().st_size > 10_000


def test_an_off_policy_warm_start_records_no_value_loss():
    """SAC's and TD3's critics are not fitted by the warm start: the record says null, not a loss of 0."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    env = gym.make("MoERouting-v0", preset="tiny", telemetry="simulated", episode_intervals=8, torch_threads=1)
    model = agents.ALGOS["td3"]("MlpPolicy", DummyVecEnv([lambda: env]), seed=0, device="cpu")
    record = agents.warm_start(model, model.get_env(), "kcm_greedy", steps=8, epochs=1, seed=0)
    assert record["value_mse"] is None and record["value_target"] is None and record["action_mse"] >= 0
    assert "value_mse: null" in yaml.safe_dump(record)  # as config.yaml and train_summary.json hold it
    env.close()


OFF_POLICY_RUN = ["--env-kwargs", "preset:tiny", "episode_intervals:8", "--eval-freq", "0", "--checkpoint-freq", "64",
                  "--no-progress-bar", "--verbose", "0"]  # fmt: skip


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_off_policy_warm_start_acts_from_the_first_step(algo, tmp_path):
    """SB3 takes uniformly random actions for the first `learning_starts` steps (1000 in the hyperparameter files);
    under `init_action: no_control` the first steps are the policy's own, around no control (TTT off)."""
    run = tmp_path / "run"
    cmd = [sys.executable, "train_agent.py", "--algo", algo, "--out", str(run), "--timesteps", "64", *OFF_POLICY_RUN,
           "--hyperparams", "batch_size:32"]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "learning_starts 1000 -> 0: with init_action:no_control" in result.stdout
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["hyperparams"]["learning_starts"] == 0 and "learning_starts" in config["hyperparams_adjusted"]
    assert config["hyperparams"]["critic_warmup"] == 2048  # the file's: the actor kept through these 64 steps
    buffer = load_from_pkl(run / "checkpoints" / "ckpt_replay_buffer_64_steps.pkl")
    actions = buffer.actions[: buffer.pos, 0]  # [64, E + 2], in the order taken
    ttt_on = actions[:, -2] > -0.5  # the frequency entry above ActionConfig.ttt_off_below: TTT on
    assert len(actions) == 64 and ttt_on.mean() < 0.4, ttt_on.mean()  # uniform actions: 0.75


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_critic_warmup_keeps_the_actor_while_the_critic_learns(algo):
    """For `critic_warmup` steps the actor (and TD3's target actor) stays as it started and the critic learns; after
    them, and in a later `learn` past them, the actor learns too; `learn` leaves the actor trainable."""
    from agents.sb3 import ALGOS, CriticWarmupCallback

    model = ALGOS[algo]("MlpPolicy", "Pendulum-v1", learning_starts=0, batch_size=16, seed=0, device="cpu",
                        policy_kwargs={"net_arch": [16]})  # fmt: skip

    def weights(module) -> torch.Tensor:
        return torch.cat([p.detach().flatten().clone() for p in module.parameters()])

    actor, critic = weights(model.actor), weights(model.critic)
    model.learn(40, callback=CriticWarmupCallback(40))
    assert torch.equal(weights(model.actor), actor) and not torch.equal(weights(model.critic), critic)
    if algo == "td3":
        assert torch.allclose(weights(model.actor_target), actor, atol=1e-6)  # polyak towards an unchanged actor
    assert all(p.requires_grad for p in model.actor.parameters())
    model.learn(20, callback=CriticWarmupCallback(40), reset_num_timesteps=False)  # a resume past the warm-up
    assert not torch.equal(weights(model.actor), actor)
    warm = ALGOS[algo]("MlpPolicy", "Pendulum-v1", learning_starts=0, batch_size=16, seed=0, device="cpu",
                       policy_kwargs={"net_arch": [16]})  # fmt: skip
    start = weights(warm.actor)
    warm.learn(60, callback=CriticWarmupCallback(40))  # the actor starts learning within the call
    assert not torch.equal(weights(warm.actor), start)


def test_learning_starts_given_on_the_command_line_is_kept_with_a_warning():
    base = ["--algo", "sac", "--env-kwargs", "preset:tiny"]
    with pytest.warns(UserWarning, match=r"learning_starts:500 with imitate:kcm_greedy: sac takes 500 uniformly"):
        _, derived = train_agent.parse_args([*base, "--hyperparams", "learning_starts:500", "imitate:kcm_greedy"])
    assert derived["hyperparams"]["learning_starts"] == 500 and not derived["hyperparams_adjusted"]
    _, derived = train_agent.parse_args([*base, "--hyperparams", "init_action:zero"])  # a cold start: SB3's warm-up
    assert derived["hyperparams"]["learning_starts"] == 1000 and not derived["hyperparams_adjusted"]
    _, derived = train_agent.parse_args(["--algo", "ppo", "--env-kwargs", "preset:tiny"])
    assert "learning_starts" not in derived["hyperparams"]
