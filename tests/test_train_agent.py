"""train_agent.py: flags parse into configs, bad flags are clear errors, and a tiny run trains, checkpoints, stops
on Ctrl-C with a checkpoint, resumes, evaluates, logs and saves a model that reloads as a Controller."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml

import agents
import train_agent
from envs import Workload

REPO = Path(__file__).resolve().parents[1]
TINY_RUN = [
    "--env-kwargs",
    "preset:tiny",
    "episode_intervals:8",
    "--hyperparams",
    "n_steps:32",
    "batch_size:32",
    "n_epochs:2",
    "--eval-freq",
    "32",
    "--eval-episodes",
    "1",
    "--checkpoint-freq",
    "32",
    "--no-progress-bar",
    "--verbose",
    "0",
]
BAD_FLAGS = [
    (["--algo", "dqn"], "--algo 'dqn' is not one of"),
    (["--timesteps", "-5"], "--timesteps must be positive"),
    (["--n-envs", "0"], "--n-envs must be >= 1"),
    (["--vec", "threads"], "--vec must be subproc, dummy or auto"),
    (["--hyperparams", "not_a_key:1"], "unknown ppo hyperparameter(s) ['not_a_key']"),
    (["--hyperparams", "n_steps"], "entries are key:value"),
    (["--algo", "sac", "--hyperparams", "n_epochs:4"], "unknown sac hyperparameter(s) ['n_epochs']"),
    (["--env-kwargs", "nonsense:1"], "unknown MoERouting-v0 argument(s) ['nonsense']"),
    (["--env-kwargs", "workload.nope:1"], "--env-kwargs workload"),
    (["--env-kwargs", "preset:huge"], "unknown MoEConfig preset"),
    (["--resume"], "--resume needs --out"),
    (["--hyperparams", "imitate:oracle"], "imitate: unknown controller 'oracle'"),
    (["--hyperparams", "imitate_steps:64"], "given without imitate:<controller>"),
    (["--hyperparams", "imitate:kcm_greedy", "imitate_epochs:0"], "imitate_epochs must be a positive integer"),
    (["--env-kwargs", "gpu:H900"], "unknown GPU 'H900'"),
    (["--env-kwargs", "checkpoint:/no/such/model.pt"], "'/no/such/model.pt' does not exist"),
    (["--env-kwargs", f"checkpoint:{__file__}"], "is corrupt or not a checkpoint"),  # a file, not a checkpoint
]


@pytest.mark.parametrize("argv, message", BAD_FLAGS)
def test_bad_flags_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_agent.parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_flags_parse_into_configs():
    args, derived = train_agent.parse_args(
        [
            "--algo",
            "ppo",
            "--n-envs",
            "2",
            "--hyperparams",
            "learning_rate:3e-4",
            "policy_kwargs:{net_arch: [32, 32], activation_fn: relu}",
            "--env-kwargs",
            "preset:tiny",
            "workload.load:0.8",
            "domains:[code, prose]",
        ]
    )
    assert derived["vec"] == "subproc"
    assert derived["hyperparams"]["learning_rate"] == pytest.approx(3e-4)
    kwargs = derived["env_kwargs"]
    assert kwargs["preset"] == "tiny" and kwargs["torch_threads"] == 1 and kwargs["telemetry"] == "simulated"
    assert isinstance(kwargs["workload"], Workload) and kwargs["workload"].load == 0.8
    assert kwargs["domains"] == ("code", "prose")
    assert derived["eval_env_kwargs"]["split"] == "validation"
    policy, algo_kwargs, normalize = agents.sb3.build_algo_kwargs("ppo", derived["hyperparams"], 6)
    assert policy == "MlpPolicy" and normalize["norm_reward"] and not normalize["norm_obs"]
    assert algo_kwargs["policy_kwargs"]["activation_fn"].__name__ == "ReLU"
    schedule = agents.sb3.build_algo_kwargs("ppo", {"learning_rate": "lin_1e-3"}, 6)[1]["learning_rate"]
    assert schedule(0.5) == pytest.approx(5e-4)
    for algo in agents.ALGOS:  # every shipped hyperparameter file loads and checks
        assert agents.load_hyperparams(algo)["policy"] == "MlpPolicy"


def test_bad_algo_exits_without_traceback():
    result = subprocess.run(
        [sys.executable, "train_agent.py", "--algo", "dqn"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "--algo 'dqn' is not one of" in result.stderr and "Traceback" not in result.stderr


def test_tiny_run_interrupts_with_a_checkpoint_and_resumes(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "train_agent.py", "--out", str(run), *TINY_RUN]
    proc = subprocess.Popen(
        [*cmd, "--timesteps", "100000"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    first = run / "checkpoints" / "ckpt_64_steps.zip"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "interrupted at" in out and "Traceback" not in out
    summary = json.loads((run / "train_summary.json").read_text())
    steps = summary["steps"]
    assert summary["interrupted"] and steps >= 64
    assert (run / "checkpoints" / f"ckpt_{steps}_steps.zip").exists()
    assert (run / "checkpoints" / f"ckpt_vecnormalize_{steps}_steps.pkl").exists()
    assert not (run / "model.zip").exists()

    result = subprocess.run(
        [*cmd, "--timesteps", str(steps + 64), "--resume"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    resumed_summary = json.loads((run / "train_summary.json").read_text())
    assert resumed_summary["steps"] >= steps + 64
    assert resumed_summary["wall_s_total"] > resumed_summary["wall_s"] >= 0  # both sessions counted
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["args"]["algo"] == "ppo" and config["resumed"][0]["from_steps"] == steps
    assert config["env_config"]["model"]["num_experts"] == 4
    for path in ("model.zip", "vecnormalize.pkl", "best/best_model.zip", "evaluations.npz"):
        assert (run / path).exists(), path
    events = b"".join(p.read_bytes() for p in (run / "tb").rglob("events.out.tfevents*"))
    for tag in (
        b"env/reward_energy",
        b"env/reward_loss",
        b"env/energy_j",
        b"env/latency_ms",
        b"env/loss",
        b"telemetry/temperature_c",
    ):
        assert tag in events, tag

    env = gym.make("MoERouting-v0", preset="tiny", telemetry="simulated", episode_intervals=8)
    obs, _ = env.reset(seed=0)
    for path in (run, run / "model.zip", run / "best" / "best_model.zip"):
        action = agents.load_policy(path).act(obs)
        assert action.shape == env.action_space.shape and np.all(np.abs(action) <= 1)


def test_eval_history_and_best_reward_carry_over_a_resume(tmp_path):
    from agents.sb3 import HeldOutEvalCallback

    np.savez(
        tmp_path / "evaluations.npz",
        timesteps=np.array([100, 200, 300]),
        results=np.array([[-5.0, -7.0], [-2.0, -4.0], [-1.0, -1.0]]),
        ep_lengths=np.array([[10, 10], [10, 10], [10, 10]]),
    )
    kw = dict(eval_seed=0, log_path=str(tmp_path), eval_freq=1, warn=False)
    resumed = HeldOutEvalCallback(gym.make("CartPole-v1"), resume_steps=250, **kw)
    assert resumed.evaluations_timesteps == [100, 200]  # the evaluation after the checkpoint is dropped
    assert resumed.best_mean_reward == -3.0
    fresh = HeldOutEvalCallback(gym.make("CartPole-v1"), resume_steps=None, **kw)
    assert fresh.evaluations_timesteps == [] and fresh.best_mean_reward == -np.inf


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
