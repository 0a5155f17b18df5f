"""train_agent.py: flags parse into configs, bad flags are clear errors, and a tiny run trains, checkpoints, stops
on Ctrl-C with a checkpoint, resumes, evaluates, logs and saves a model that reloads as a Controller."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
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
    (["--env-kwargs", f"cost_table:{__file__}"], "EnvConfig.cost_table: cost table"),  # read before any env
    (["--env-kwargs", "domains:[prose, klingon]"], "'klingon' is neither a built-in domain"),
    (["--env-kwargs", "ambient_range_c:[1]"], "ambient_range_c must be a (low, high) pair of numbers"),
    (["--hyperparams", "batch_size:1"], "batch_size must be an integer >= 2 for ppo"),
    (["--hyperparams", "n_steps:1"], "n_steps 1 x --n-envs 1 must be >= 2"),
    (["--hyperparams", "policy_kwargs:{foo: 1}"], "unknown policy_kwargs ['foo'] of the ppo ActorCriticPolicy"),
    (["--algo", "td3", "--hyperparams", "policy_kwargs:{ortho_init: true}"], "unknown policy_kwargs ['ortho_init']"),
    *([(["--env-kwargs", "telemetry:nvml"], "--env-kwargs telemetry:nvml: ")] if not torch.cuda.is_available() else []),
]


# values out of range: one-line errors before any env is built ({dir}, {list_yaml}: filled in by the test)
BAD_VALUES = [
    (
        ["--hyperparams", "learning_rate:nan"],
        "learning_rate:nan in --hyperparams is not allowed: learning_rate must be",
    ),
    (["--hyperparams", "learning_rate:lin_-1e-3"], "learning_rate:'lin_-1e-3' in --hyperparams is not allowed"),
    (["--hyperparams", "n_steps:-1"], "n_steps:-1 in --hyperparams is not allowed: n_steps must be a positive integer"),
    (["--hyperparams", "batch_size:0"], "batch_size:0 in --hyperparams is not allowed"),
    (["--hyperparams", "n_epochs:2.5"], "n_epochs:2.5 in --hyperparams is not allowed"),
    (["--hyperparams", "gamma:inf"], "gamma:inf in --hyperparams is not allowed: gamma must be a number in (0, 1]"),
    (["--hyperparams", "gamma:1.5"], "gamma:1.5 in --hyperparams is not allowed"),
    (["--hyperparams", "gae_lambda:-0.1"], "gae_lambda:-0.1 in --hyperparams is not allowed"),
    (["--hyperparams", "ent_coef:-1"], "ent_coef:-1 in --hyperparams is not allowed"),
    (["--hyperparams", "clip_range:0"], "clip_range:0 in --hyperparams is not allowed"),
    (
        ["--hyperparams", "policy_kwargs:{net_arch: [-4]}"],
        "policy_kwargs.net_arch:[-4] in --hyperparams is not allowed",
    ),
    (["--hyperparams", "policy_kwargs:{net_arch: {pi: [64], vf: [0]}}"], "policy_kwargs.net_arch:{"),
    (["--hyperparams", "normalize:{clip_reward: -1}"], "normalize.clip_reward:-1 in --hyperparams is not allowed"),
    (["--algo", "sac", "--hyperparams", "buffer_size:0"], "buffer_size:0 in --hyperparams is not allowed"),
    (["--algo", "sac", "--hyperparams", "ent_coef:auto_-1"], "ent_coef:'auto_-1' in --hyperparams is not allowed"),
    (["--algo", "sac", "--hyperparams", "tau:0"], "tau:0 in --hyperparams is not allowed"),
    (["--algo", "td3", "--hyperparams", "noise_type:gauss"], "noise_type:'gauss' in --hyperparams is not allowed"),
    (["--seed", "-1"], "--seed must be an integer in [0, 2**32), got -1"),
    (["--eval-seed", "-5"], "--eval-seed must be >= 0, got -5"),
    (["--hyperparams-file", "{dir}"], "is a directory, not a YAML file of hyperparameters"),
    (["--hyperparams-file", "{list_yaml}"], "holds a YAML list, not a mapping of env id -> hyperparameters"),
    (["--out", __file__], "is a file; it must be a run folder"),
    *([(["--device", "cuda"], "--device cuda: CUDA is not available here")] if not torch.cuda.is_available() else []),
]


def exits_with(argv: list[str], capsys) -> str:
    """parse_args(argv) exits with status 2 and a one-line message, no traceback; the message."""
    with pytest.raises(SystemExit) as exit_info:
        train_agent.parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]  # after argparse's usage lines: the one error line
    assert ": error: " in message, err
    return message


@pytest.mark.parametrize("argv, message", BAD_FLAGS)
def test_bad_flags_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_agent.parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", BAD_VALUES)
def test_bad_values_are_one_line_errors_before_any_env(argv, message, tmp_path, capsys):
    (tmp_path / "list.yml").write_text("- n_steps: 64\n- batch_size: 32\n")
    argv = [a.replace("{dir}", str(tmp_path)).replace("{list_yaml}", str(tmp_path / "list.yml")) for a in argv]
    assert message in exits_with(argv, capsys)


@pytest.mark.parametrize(
    "algo, params",
    [
        ("ppo", {"learning_rate": "lin_3e-4", "clip_range": 0.2, "clip_range_vf": None, "target_kl": None}),
        ("ppo", {"gamma": 1, "gae_lambda": 0, "ent_coef": 0, "policy_kwargs": {"net_arch": {"pi": [8], "vf": []}}}),
        ("sac", {"ent_coef": "auto_0.1", "gradient_steps": -1, "train_freq": [1, "episode"], "learning_starts": 0}),
        ("sac", {"ent_coef": "auto", "target_entropy": "auto", "policy_kwargs": {"net_arch": [64, 64]}}),
        ("td3", {"noise_type": "ornstein-uhlenbeck", "noise_std": 0.2, "policy_delay": 2, "normalize": True}),
        ("a2c", {"rms_prop_eps": 1e-5, "normalize": {"norm_obs": False, "clip_reward": 10.0, "gamma": 0.9}}),
    ],
)
def test_values_in_range_pass_the_check(algo, params):
    agents.sb3.check_hyperparams(algo, params, "test")


# ----- the run folder: no run overwritten, --resume with the run's own settings and its last readable checkpoint -----
RUN_FLAGS = ["--env-kwargs", "preset:tiny", "episode_intervals:8", "--hyperparams", "n_steps:32", "batch_size:32"]


def write_model_zip(path: Path) -> None:
    """A zip as far as `latest_checkpoint` reads it (a `data` entry that passes its CRC check)."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data", "{}")


def interrupted_run(folder: Path, steps=(32, 64)) -> Path:
    """A run folder as an interrupted run of RUN_FLAGS leaves it: its config.yaml (as train_agent.py writes it) and
    checkpoints, no model.zip."""
    args, derived = train_agent.parse_args(["--out", str(folder), *RUN_FLAGS])
    (folder / "checkpoints").mkdir(parents=True)
    config = train_agent.run_config(args, derived, None)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for n in steps:
        write_model_zip(folder / "checkpoints" / f"ckpt_{n}_steps.zip")
    return folder


def test_resume_from_a_checkpoint_that_reads_but_does_not_load_is_one_line(tmp_path):
    run = interrupted_run(tmp_path / "run")  # its checkpoints pass the zip probe, but hold no model
    cmd = [sys.executable, "train_agent.py", "--out", str(run), *RUN_FLAGS, "--resume", "--timesteps", "128"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    ckpt = run / "checkpoints" / "ckpt_64_steps.zip"
    assert f"train_agent.py: error: --resume: cannot load {ckpt} (" in result.stderr
    assert "move it aside to resume from the checkpoint before it" in result.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["ckpt_32_steps.zip", "ckpt_64_steps.zip"]


@pytest.mark.parametrize("leave", ["config.yaml", "checkpoints/ckpt_32_steps.zip", "model.zip", "all"])
def test_a_run_folder_is_not_reused_without_resume(leave, tmp_path, capsys):
    run = interrupted_run(tmp_path / "run")
    (run / "model.zip").write_bytes(b"")
    for name in ("config.yaml", "model.zip", "checkpoints/ckpt_32_steps.zip", "checkpoints/ckpt_64_steps.zip"):
        if leave not in (name, "all"):
            (run / name).unlink()
    message = exits_with(["--out", str(run), *RUN_FLAGS], capsys)
    assert f"{run} already holds a run" in message and "--resume" in message and "another --out" in message
    # an empty folder (or one a failed start left with an empty checkpoints/) is fine
    (tmp_path / "fresh" / "checkpoints").mkdir(parents=True)
    assert train_agent.parse_args(["--out", str(tmp_path / "fresh"), *RUN_FLAGS])[1]["run_dir"] == tmp_path / "fresh"


def test_latest_checkpoint_skips_unreadable_ones_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for n in (32, 64):
        write_model_zip(folder / f"ckpt_{n}_steps.zip")
    (folder / "ckpt_96_steps.zip").write_bytes(b"")  # empty
    (folder / "ckpt_128_steps.zip").write_bytes((folder / "ckpt_64_steps.zip").read_bytes()[:40])  # truncated
    with caplog.at_level(logging.WARNING, logger="agents.checkpoints"):
        steps, paths = agents.sb3.latest_checkpoint(folder)
    assert steps == 64 and paths["model"] == folder / "ckpt_64_steps.zip"
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "ckpt_96_steps.zip" in warned and "ckpt_128_steps.zip" in warned and "ckpt_64" not in warned
    (folder / "ckpt_32_steps.zip").write_bytes(b"PK")
    (folder / "ckpt_64_steps.zip").unlink()
    assert agents.sb3.latest_checkpoint(folder) is None


def test_resume_takes_the_newest_readable_checkpoint_and_names_corrupt_files(tmp_path, capsys):
    run = interrupted_run(tmp_path / "run", steps=(32, 64, 96))
    (run / "checkpoints" / "ckpt_96_steps.zip").write_bytes(b"")
    resume = ["--out", str(run), "--resume", "--timesteps", "128"]
    assert train_agent.parse_args(resume)[1]["resume_from"][0] == 64
    stats = run / "checkpoints" / "ckpt_vecnormalize_64_steps.pkl"
    stats.write_bytes(b"\x80\x04\x95 truncated")
    assert f"--resume: {stats} is not readable VecNormalize statistics" in exits_with(resume, capsys)
    stats.unlink()
    config = run / "config.yaml"
    config.write_text(config.read_text()[:200] + "\n  - [unclosed")
    assert f"--resume: {config} is corrupt" in exits_with(resume, capsys)
    config.write_text("args: {algo: ppo}\n")  # a truncation that is still YAML
    assert f"--resume: {config} is corrupt or not a train_agent.py config" in exits_with(resume, capsys)
    interrupted_run(tmp_path / "run2")
    resume[1] = str(tmp_path / "run2")
    history = tmp_path / "run2" / "evaluations.npz"
    np.savez(history, timesteps=np.array([32]), results=np.array([[1.0]]), ep_lengths=np.array([[8]]))
    assert train_agent.parse_args(resume)[1]["resume_from"][0] == 64  # a readable history passes
    history.write_bytes(history.read_bytes()[:60])  # cut short
    message = exits_with(resume, capsys)
    assert f"--resume: {history} is not a readable evaluation history" in message and "move it aside" in message


@pytest.mark.parametrize(
    "flags, changes",
    [
        (["--env-kwargs", "preset:default"], ["env_kwargs.preset: 'tiny' (saved) vs 'default'", "episode_intervals"]),
        (["--env-kwargs", "preset:tiny", "episode_intervals:8", "workload.load:0.5"], ["env_kwargs.workload.load: "]),
        (["--hyperparams", "n_steps:64", "batch_size:32"], ["hyperparams.n_steps: 32 (saved) vs 64"]),
        (["--hyperparams", "n_steps:32", "batch_size:32", "gamma:0.9"], ["hyperparams.gamma: 0.98 (saved) vs 0.9"]),
        (["--algo", "a2c"], ["--algo: 'ppo' (saved) vs 'a2c'"]),
        (["--telemetry", "auto"], ["env_kwargs.telemetry: 'simulated' (saved) vs 'auto'"]),
    ],
)
def test_resume_refuses_changed_settings_naming_each(flags, changes, tmp_path, capsys):
    run = interrupted_run(tmp_path / "run")
    message = exits_with(["--out", str(run), "--resume", *flags], capsys)
    assert f"--resume: {run} was trained with other settings" in message
    for change in changes:
        assert change in message


def test_resume_takes_the_settings_left_out_from_the_run(tmp_path):
    run = interrupted_run(tmp_path / "run")
    for argv in (
        ["--resume"],
        ["--resume", *RUN_FLAGS],
        ["--resume", "--env-kwargs", "preset:tiny", "episode_intervals:8"],
    ):
        args, derived = train_agent.parse_args(["--out", str(run), "--timesteps", "128", *argv])
        assert args.algo == "ppo" and derived["env_kwargs"]["preset"] == "tiny"
        assert derived["env_kwargs"]["episode_intervals"] == 8
        assert derived["hyperparams"]["n_steps"] == 32 and derived["resume_from"][0] == 64


class _Model:
    """Stands in for an SB3 model with VecNormalize statistics in save_checkpoint: each save writes part of its file,
    then fails if told to."""

    num_timesteps = 32

    def __init__(self, fail: str):
        self.fail = fail

    def write(self, what: str, path: str) -> None:
        Path(path).write_bytes(b"part of " + what.encode())
        if self.fail == what:
            raise KeyboardInterrupt

    def save(self, path: str) -> None:
        self.write("model", path)

    def get_vec_normalize_env(self):
        return type("Stats", (), {"save": lambda _, path: self.write("vecnormalize", path)})()


@pytest.mark.parametrize("fail", ["model", "vecnormalize"])
def test_checkpoints_are_written_atomically_model_last(fail, tmp_path):
    model, folder = _Model(fail), tmp_path / "checkpoints"
    with pytest.raises(KeyboardInterrupt):
        agents.sb3.save_checkpoint(model, folder)
    assert not (folder / "ckpt_32_steps.zip").exists()  # no truncated zip, nor one without its statistics
    assert [p.name for p in folder.iterdir()] == (["ckpt_vecnormalize_32_steps.pkl"] if fail == "model" else [])
    model.fail = ""
    assert agents.sb3.save_checkpoint(model, folder) == folder / "ckpt_32_steps.zip"
    assert sorted(p.name for p in folder.iterdir()) == ["ckpt_32_steps.zip", "ckpt_vecnormalize_32_steps.pkl"]
    assert (folder / "ckpt_32_steps.zip").read_bytes() == b"part of model"
    old = tmp_path / "config.yaml"  # a file written before keeps its content when a rewrite fails
    old.write_text("old")
    model.fail = "model"
    with pytest.raises(KeyboardInterrupt):
        agents.sb3.atomic_save(old, model.save)
    assert old.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "config.yaml"]


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


def test_tiny_run_interrupts_with_a_checkpoint_and_resumes(tmp_path, capsys):
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

    # the interrupted run's folder is neither started over nor resumed with other settings (errors before any env)
    message = exits_with(["--out", str(run), *TINY_RUN, "--timesteps", "64"], capsys)
    assert "already holds a run (config.yaml, checkpoints/)" in message
    message = exits_with(["--out", str(run), *TINY_RUN, "--resume", "--env-kwargs", "preset:default"], capsys)
    assert "env_kwargs.preset: 'tiny' (saved) vs 'default'" in message
    # a newer checkpoint cut short (a crash mid-save, a full disk): resuming skips it with a warning
    (run / "checkpoints" / f"ckpt_{steps + 1024}_steps.zip").write_bytes(b"")

    result = subprocess.run(
        [*cmd, "--timesteps", str(steps + 64), "--resume"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"skipping unreadable checkpoint {run / 'checkpoints' / f'ckpt_{steps + 1024}_steps.zip'}" in result.stderr
    assert not list(run.rglob("*.tmp"))  # every atomic write replaced its file
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
    from agents.callbacks import saved_steps
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
    assert resumed.best_mean_reward == -3.0 and resumed.set_aside is None  # no best model saved: nothing moved
    fresh = HeldOutEvalCallback(gym.make("CartPole-v1"), resume_steps=None, **kw)
    assert fresh.evaluations_timesteps == [] and fresh.best_mean_reward == -np.inf

    # The best model on disk says when it was saved: one from after the checkpoint is set aside (kept), one from
    # before keeps its own score as the one to beat, none on disk (a crash after a set-aside) leaves none to beat.
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", "CartPole-v1", n_steps=16, batch_size=16, seed=0, device="cpu")
    best = tmp_path / "best"

    def best_saved_at(steps: int) -> None:
        best.mkdir(exist_ok=True)
        model.num_timesteps = steps
        model.save(best / "best_model.zip")

    kw["best_model_save_path"] = str(best)
    best_saved_at(300)
    resumed = HeldOutEvalCallback(gym.make("CartPole-v1"), resume_steps=250, **kw)
    assert resumed.best_mean_reward == -np.inf and not best.exists()
    assert resumed.set_aside == tmp_path / "best_discarded_300"
    assert saved_steps(tmp_path / "best_discarded_300" / "best_model.zip") == 300
    assert HeldOutEvalCallback(gym.make("CartPole-v1"), resume_steps=250, **kw).best_mean_reward == -np.inf  # none
    best_saved_at(300)  # a second resume from before it keeps both
    assert HeldOutEvalCallback(gym.make("CartPole-v1"), resume_steps=250, **kw).set_aside.name == "best_discarded_300_1"
    best_saved_at(100)  # not the kept history's best (-3 at 200): its own -6 is the score to beat
    kept = HeldOutEvalCallback(gym.make("CartPole-v1"), resume_steps=250, **kw)
    assert kept.best_mean_reward == -6.0 and kept.set_aside is None and best.exists()
    (best / "best_model.zip").write_bytes(b"not a zip")
    unreadable = HeldOutEvalCallback(gym.make("CartPole-v1"), resume_steps=250, **kw)
    assert unreadable.set_aside.name == "best_discarded_unreadable"


def test_eval_history_is_replaced_atomically(tmp_path, monkeypatch):
    from stable_baselines3 import PPO
    from stable_baselines3.common.logger import configure

    from agents.sb3 import HeldOutEvalCallback, read_eval_history

    model = PPO("MlpPolicy", "CartPole-v1", n_steps=16, batch_size=16, seed=0, device="cpu")
    model.set_logger(configure(None, []))
    callback = HeldOutEvalCallback(
        model.get_env(), eval_seed=0, log_path=str(tmp_path), eval_freq=1, n_eval_episodes=1, warn=False, verbose=0
    )
    callback.init_callback(model)
    callback.on_step()
    assert len(read_eval_history(tmp_path / "evaluations.npz")["timesteps"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["evaluations.npz"]  # SB3's write went to a temporary file

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr("agents.callbacks.os.replace", crash)  # a crash between SB3's write and the rename
    with pytest.raises(OSError, match="disk full"):
        callback.on_step()
    assert len(read_eval_history(tmp_path / "evaluations.npz")["timesteps"]) == 1  # the saved history is intact


def test_a_corrupt_replay_buffer_is_named(tmp_path):
    from stable_baselines3 import SAC

    from agents.sb3 import load_replay_buffer

    model = SAC("MlpPolicy", "Pendulum-v1", buffer_size=64, learning_starts=0, seed=0, device="cpu")
    model.save_replay_buffer(tmp_path / "buffer.pkl")
    load_replay_buffer(model, tmp_path / "buffer.pkl")  # a whole one loads
    (tmp_path / "buffer.pkl").write_bytes((tmp_path / "buffer.pkl").read_bytes()[:100])
    with pytest.raises(ValueError, match=r"buffer\.pkl is not a readable replay buffer \("):
        load_replay_buffer(model, tmp_path / "buffer.pkl")


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
