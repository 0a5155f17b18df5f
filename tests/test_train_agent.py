"""train_agent.py: flags parse into configs, bad flags are clear errors, and a tiny run trains, checkpoints, stops
on Ctrl-C with a checkpoint, resumes, evaluates, logs and saves a model that reloads as a Controller."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from train_testing import REPO, TINY_RUN, exits_with

import agents
import train_agent
import train_args
import train_config
from envs import Workload

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
    (["--env-id", "Bogus-v0"], "--env-id 'Bogus-v0' is not registered"),
    (["--env-id", "CartPole-v1"], "--env-id 'CartPole-v1' is not a scalar-reward MoERouting env"),
    (["--env-id", "MoERoutingMO-v0"], "--env-id 'MoERoutingMO-v0' is not a scalar-reward MoERouting env"),
    (["--hyperparams-file", "/no/such.yml"], "--hyperparams-file '/no/such.yml' does not exist"),
    (["--hyperparams", "imitate:oracle"], "imitate: unknown controller 'oracle'"),
    (["--hyperparams", "imitate:examples.custom_controller:Thermo"], "custom_controller.py) has no 'Thermo'"),
    (["--hyperparams", "imitate:5"], "imitate: 5 is no controller; give one of"),
    (["--hyperparams", "imitate_steps:64"], "given without imitate:<controller>"),
    (["--hyperparams", "imitate:kcm_greedy", "imitate_epochs:0"], "imitate_epochs must be a positive integer"),
    (["--env-kwargs", "gpu:H900"], "unknown GPU 'H900'"),
    (["--preset", "huge"], "unknown MoEConfig preset 'huge'"),
    (["--preset", "tiny", "--env-kwargs", "preset:default"], "--preset tiny disagrees with --env-kwargs preset:default"),
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
    *([(["--env-id", "MoERoutingMeasured-v0"], "--env-id MoERoutingMeasured-v0's telemetry nvml: ")]
      if not torch.cuda.is_available() else []),
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
    (
        ["--hyperparams", "policy_kwargs:{net_arch: [64, 64}"],
        "as YAML: expected ',' or ']', but got '}' at character 19",  # one line, not PyYAML's carets
    ),
    (["--hyperparams", "normalize:{clip_reward: -1}"], "normalize.clip_reward:-1 in --hyperparams is not allowed"),
    (["--algo", "sac", "--hyperparams", "buffer_size:0"], "buffer_size:0 in --hyperparams is not allowed"),
    (["--algo", "sac", "--hyperparams", "ent_coef:auto_-1"], "ent_coef:'auto_-1' in --hyperparams is not allowed"),
    (["--algo", "sac", "--hyperparams", "tau:0"], "tau:0 in --hyperparams is not allowed"),
    (["--algo", "td3", "--hyperparams", "noise_type:gauss"], "noise_type:'gauss' in --hyperparams is not allowed"),
    (["--seed", "-1"], "--seed must be an integer in [0, 2**32), got -1"),
    (["--hyperparams", "critic_warmup:100"], "unknown ppo hyperparameter(s) ['critic_warmup']"),  # SAC/TD3 only
    (["--algo", "sac", "--hyperparams", "critic_warmup:-1"], "critic_warmup:-1 in --hyperparams is not allowed"),
    (["--eval-seed", "-5"], "--eval-seed must be in [0, 4294967291] (the training episodes' seeds start at"),
    (["--eval-seed", str(2**32 - 4)], f"got {2**32 - 4}"),  # its 5 episodes would reach the training seeds
    (["--hyperparams-file", "{dir}"], "is a directory, not a YAML file of hyperparameters"),
    (["--hyperparams-file", "{list_yaml}"], "holds a YAML list, not a mapping of env id -> hyperparameters"),
    (["--out", __file__], "is a file; it must be a run folder"),
    *([(["--device", "cuda"], "--device cuda: CUDA is not available here")] if not torch.cuda.is_available() else []),
]


@pytest.mark.parametrize("argv, message", BAD_FLAGS)
def test_bad_flags_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_agent.parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_run_folder_or_cache_that_cannot_be_used_is_a_clear_error(tmp_path, monkeypatch, capsys):
    """A folder whose run stopped before its first checkpoint (config.yaml alone) cannot be resumed: say so rather
    than point at --resume; and a MOE_RL_CACHE that cannot be a folder is named before any env is built."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("args: {}\n")
    with pytest.raises(SystemExit):
        train_agent.parse_args(["--out", str(run)])
    assert "holds a run that saved no checkpoint (config.yaml only)" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("MOE_RL_CACHE", str(tmp_path / "afile" / "cache"))
    with pytest.raises(SystemExit):
        train_agent.parse_args(["--out", str(tmp_path / "new")])
    assert f"MOE_RL_CACHE={tmp_path}/afile/cache: {tmp_path}/afile is a file, not a folder" in capsys.readouterr().err


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
    args, derived = train_agent.parse_args(["--preset", "tiny", "--env-kwargs", "episode_intervals:8"])
    assert derived["env_kwargs"]["preset"] == "tiny" and derived["env_kwargs"]["episode_intervals"] == 8
    assert args.env_kwargs == ["episode_intervals:8", "preset:tiny"]  # recorded as the pair it stands for
    for algo in agents.ALGOS:  # every shipped hyperparameter file loads and checks
        assert agents.load_hyperparams(algo)["policy"] == "MlpPolicy"


def test_the_measured_env_id_trains_measured_with_the_same_hyperparameters(monkeypatch, tmp_path):
    """--env-id MoERoutingMeasured-v0 keeps the env's own telemetry="nvml" (a --telemetry default must not turn it
    into a simulated run on the gpu preset), and every algorithm has its hyperparameters."""
    monkeypatch.setattr(train_args, "measured_backend_unavailable", lambda: None)  # as on a GPU machine
    for algo in agents.ALGOS:
        args, derived = train_args.parse_args(["--algo", algo, "--env-id", "MoERoutingMeasured-v0",
                                               "--out", str(tmp_path / algo)])  # fmt: skip
        assert args.telemetry == "nvml" and derived["env_kwargs"]["telemetry"] == "nvml"
        env_config = train_config.run_config(args, derived, None)["env_config"]  # what config.yaml records
        assert env_config["telemetry"] == "nvml" and env_config["model"]["preset_name"] == "gpu"  # the registered preset
        assert derived["hyperparams"] == train_args.parse_args(["--algo", algo, "--out", str(tmp_path)])[1]["hyperparams"]
    for given in (["--telemetry", "simulated"], ["--env-kwargs", "telemetry:simulated"]):  # given, it wins
        args, derived = train_args.parse_args([*given, "--env-id", "MoERoutingMeasured-v0"])
        assert args.telemetry == derived["env_kwargs"]["telemetry"] == "simulated"
    assert train_args.parse_args([])[0].telemetry == "simulated"  # MoERouting-v0's default
    # A resume compares a setting left out with what the env id builds without it: the measured env's gpu preset.
    args, derived = train_args.parse_args(["--env-id", "MoERoutingMeasured-v0", "--preset", "gpu"])
    left_out = {k: v for k, v in derived["env_kwargs"].items() if k != "preset"}  # a run started without --preset
    saved = {"args": {"algo": args.algo, "env_id": "MoERoutingMeasured-v0"}, "hyperparams": derived["hyperparams"],
             "env_kwargs": train_config.plain(left_out)}  # fmt: skip
    assert train_config.run_setting_changes(saved, args, derived) == []
    args, derived = train_args.parse_args(["--env-id", "MoERoutingMeasured-v0", "--preset", "default"])
    assert train_config.run_setting_changes(saved, args, derived) == ["env_kwargs.preset: 'gpu' (saved) vs 'default'"]


SEED_SPY = """
import runpy, sys
import envs.moe_routing_env as m
reset = m.MoERoutingEnv.reset
def spy(self, *, seed=None, options=None):
    if seed is not None:
        print("SEEDED", self.config.split, seed, flush=True)
    return reset(self, seed=seed, options=options)
m.MoERoutingEnv.reset = spy
sys.argv = ["train_agent.py", *sys.argv[1:]]
runpy.run_path("train_agent.py", run_name="__main__")
"""


def test_training_episodes_are_seeded_above_every_held_out_one(tmp_path):
    """Every seeded reset of a training env is at TRAINING_SEEDS_FROM + seed + i (+ steps on a resume), never at
    seed + i, `evaluate.py`'s test episode seeds for seed 0 (SB3 reseeds the envs with the algorithm's seed when it
    builds or loads a model, which once undid this); the warm start's episodes are training episodes too."""
    base = agents.TRAINING_SEEDS_FROM
    spy = tmp_path / "spy.py"
    spy.write_text(SEED_SPY)
    run = tmp_path / "run"
    cmd = [sys.executable, str(spy), "--out", str(run), *TINY_RUN, "--n-envs", "2", "--vec", "dummy", "--seed", "3",
           "--timesteps", "64", "--eval-freq", "0", "--hyperparams", "n_steps:32", "batch_size:32", "n_epochs:1",
           "imitate:no_control", "imitate_steps:8", "imitate_epochs:1"]  # fmt: skip

    def seeded(result) -> list[tuple[str, int]]:
        assert result.returncode == 0, result.stdout + result.stderr
        return [(w[1], int(w[2])) for w in (line.split() for line in result.stdout.splitlines()) if w[:1] == ["SEEDED"]]

    first = seeded(subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300))
    assert set(first) == {("train", base + 3), ("train", base + 4)}, first
    assert yaml.safe_load((run / "config.yaml").read_text())["training_seeds_from"] == base
    steps = json.loads((run / "train_summary.json").read_text())["steps"]
    resumed = seeded(subprocess.run([*cmd, "--resume", "--timesteps", str(steps + 64)], cwd=REPO, capture_output=True,
                                    text=True, timeout=300))  # fmt: skip
    assert set(resumed) == {("train", base + 3 + steps), ("train", base + 4 + steps)}, resumed
    assert train_agent.first_episode_seed(3, train_agent.training_seeds_from({}), steps=640) == 643  # saved before


def test_bad_algo_exits_without_traceback():
    result = subprocess.run(
        [sys.executable, "train_agent.py", "--algo", "dqn"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "--algo 'dqn' is not one of" in result.stderr and "Traceback" not in result.stderr


def test_tiny_run_interrupts_with_a_checkpoint_and_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    cmd = [sys.executable, "train_agent.py", "--out", str(run), *TINY_RUN]
    with_bar = [a for a in cmd if a != "--no-progress-bar"]  # interrupted with the progress bar on, as a user's run
    proc = subprocess.Popen(
        [*with_bar, "--timesteps", "100000"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    first = run / "checkpoints" / "ckpt_64_steps.zip"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "interrupted at" in out
    # the bar is closed before exit, not by tqdm at interpreter shutdown ("Exception ignored in tqdm.__del__")
    assert "Traceback" not in err and "Exception ignored" not in err, err
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

    result = subprocess.run(  # --verbose is this session's: SB3's tables, though the run was saved with 0
        [*cmd, "--timesteps", str(steps + 64), "--resume", "--verbose", "1"], cwd=REPO, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| time/" in result.stdout, result.stdout
    assert f"skipping unreadable checkpoint {run / 'checkpoints' / f'ckpt_{steps + 1024}_steps.zip'}" in result.stderr
    assert not list(run.rglob("*.tmp"))  # every atomic write replaced its file
    resumed_summary = json.loads((run / "train_summary.json").read_text())
    assert resumed_summary["steps"] >= steps + 64
    assert resumed_summary["wall_s_total"] > resumed_summary["wall_s"] >= 0  # both sessions counted
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["args"]["algo"] == "ppo" and config["resumed"][0]["from_steps"] == steps
    assert config["training_seeds_from"] == agents.TRAINING_SEEDS_FROM  # kept through the resume
    assert config["env_config"]["model"]["num_experts"] == 4
    # the target given replaces the run's for the resumes after, the old one on record
    assert config["args"]["timesteps"] == steps + 64
    assert config["resumed"][0]["replaced"] == {"timesteps": {"saved": 100000, "now": steps + 64}}

    # the run is at its target: a resume at or below it changes no file and says so, status 0
    kept = ("model.zip", "vecnormalize.pkl", "config.yaml", "train_summary.json")
    finished = {name: (run / name).read_bytes() for name in kept}
    result = subprocess.run([*cmd, "--resume", "--timesteps", "64"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{run} already reached {resumed_summary['steps']} steps (--timesteps 64): nothing to do" in result.stdout
    assert "0 steps in" not in result.stdout and "Traceback" not in result.stderr
    assert {name: (run / name).read_bytes() for name in kept} == finished
    assert train_agent.parse_args(["--out", str(run), "--resume"])[1]["nothing_to_do"]  # a bare one too
    # --preset is the --env-kwargs pair it stands for: the run's own matches, another is refused
    assert train_agent.parse_args(["--out", str(run), "--resume", "--preset", "tiny"])[1]["nothing_to_do"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        train_agent.parse_args(["--out", str(run), "--resume", "--preset", "default"])
    assert "--preset default disagrees with the run's saved --env-kwargs preset:tiny" in capsys.readouterr().err
    for path in ("model.zip", "vecnormalize.pkl", "best/best_model.zip", "evaluations.npz"):
        assert (run / path).exists(), path
    events = b"".join(p.read_bytes() for p in (run / "tb").rglob("events.out.tfevents*"))
    for tag in (
        b"env/reward_energy",
        b"env/reward_loss",
        b"env/simulated/energy_j",
        b"env/simulated/latency_ms",
        b"env/loss",
        b"telemetry/simulated/temperature_c",
    ):
        assert tag in events, tag
    assert b"measured/" not in events and b"env/energy_j" not in events  # simulated figures say so in their tag

    env = gym.make("MoERouting-v0", preset="tiny", telemetry="simulated", episode_intervals=8)
    obs, _ = env.reset(seed=0)
    for path in (run, run / "model.zip", run / "best" / "best_model.zip"):
        action = agents.load_policy(path).act(obs)
        assert action.shape == env.action_space.shape and np.all(np.abs(action) <= 1)


def test_a_diverging_run_stops_with_a_clear_error_and_keeps_its_checkpoint(tmp_path):
    run = tmp_path / "run"
    end = TINY_RUN.index("--hyperparams") + 4
    argv = [*TINY_RUN[:end], "learning_rate:1e10", *TINY_RUN[end:]]
    cmd = [sys.executable, "train_agent.py", "--out", str(run), "--timesteps", "256", *argv]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    match = re.match(r"train_agent.py: error: training diverged at (\d+) steps: ", message)
    assert match and int(match[1]) >= 32, message  # at the first update, after a rollout of 32 steps (checkpointed)
    assert "lower learning_rate (now 10000000000.0) or max_grad_norm (now " in message
    assert "the last checkpoint (32 steps) is kept" in message or int(match[1]) > 32
    assert (run / "checkpoints" / "ckpt_32_steps.zip").exists() and not (run / "model.zip").exists()


def test_only_a_diverged_policy_counts_as_divergence():
    env = gym.make("MoERouting-v0", preset="tiny", telemetry="simulated", episode_intervals=8)
    model = agents.ALGOS["ppo"]("MlpPolicy", env, n_steps=32, batch_size=32, device="cpu")
    assert train_agent.divergence(model, ValueError("a bug of ours")) is None  # surfaces with its traceback
    assert "distribution" in train_agent.divergence(model, ValueError("Expected parameter loc (Tensor ...)"))
    with torch.no_grad():
        next(model.policy.parameters()).fill_(float("nan"))
    assert "NaN or infinite" in train_agent.divergence(model, RuntimeError("anything"))


@pytest.mark.parametrize("source", ["simulated", "measured"])
def test_episode_hardware_figures_are_tagged_with_their_source(source):
    from types import SimpleNamespace

    from stable_baselines3.common.logger import Logger

    from agents.callbacks import EpisodeInfoCallback

    logger = Logger(folder=None, output_formats=[])
    callback = EpisodeInfoCallback()
    callback.model = SimpleNamespace(logger=logger, num_timesteps=0, get_env=lambda: SimpleNamespace(num_envs=1))
    callback.on_training_start({}, {})
    steps = [
        dict(energy_j=2.0, tokens=4, latency_ms=10.0, temperature_c=50.0, power_w=300.0, slo_violated=False),
        dict(energy_j=6.0, tokens=4, latency_ms=30.0, temperature_c=60.0, power_w=500.0, slo_violated=True),
    ]
    for i, figures in enumerate(steps):
        info = dict(figures, loss=3.0, ttt_updates=1, source=source, reward_terms={"energy": -1.0})
        callback.update_locals({"infos": [info], "dones": [i == len(steps) - 1]})
        callback.on_step()
    logged = dict(logger.name_to_value)
    assert logged[f"env/{source}/energy_j"] == 8.0 and logged[f"env/{source}/energy_per_token_j"] == 1.0
    assert logged[f"env/{source}/latency_ms"] == 20.0 and logged[f"env/{source}/slo_violations"] == 1.0
    assert logged[f"telemetry/{source}/power_w"] == 400.0 and logged[f"telemetry/{source}/peak_temperature_c"] == 60.0
    assert logged["env/loss"] == 3.0 and logged["env/reward_energy"] == -2.0 and logged["env/ttt_updates"] == 2.0
    other = "measured" if source == "simulated" else "simulated"
    assert not [key for key in logged if other in key or key in ("env/energy_j", "telemetry/power_w")]
