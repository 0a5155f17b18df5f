"""examples/: serve_with_agent.py serves a live runtime under a controller, bad input is a one-line error; the
controller of your own in custom_controller.py plugs into agents.make_controller, evaluate.py and serve_with_agent.py
by entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from evaluate_testing import TINY, read_csv

import evaluate

REPO = Path(__file__).resolve().parents[1]
SCRIPT = "examples/serve_with_agent.py"


def run_example(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_serves_the_tiny_preset_with_the_heuristic():
    result = run_example("--preset", "tiny", "--intervals", "3")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line[:4].strip().isdigit()]
    assert [int(r[0]) for r in rows] == [0, 1, 2]
    assert rows[0][1] == "prose" and rows[-1][1] == "code", "the stream shifts halfway"
    assert "heuristic:" in result.stdout.splitlines()[-1]
    assert "loss in nats [measured]; power, temperature, energy per token and latency [simulated]" in result.stdout
    result = run_example("--preset", "tiny", "--intervals", "2", "--controller", "examples.custom_controller:Thermostat")
    assert result.returncode == 0, result.stderr
    assert "serving tiny with examples.custom_controller:Thermostat on " in result.stdout
    assert len([line for line in result.stdout.splitlines() if line[:4].strip().isdigit()]) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "huge"], "unknown MoEConfig preset 'huge'"),
        (["--intervals", "0"], "--intervals must be >= 1, got 0"),
        (["--demand", "-1"], "--demand must be a fraction of capacity in (0, 3]"),
        (["--demand", "inf"], "--demand must be a fraction of capacity in (0, 3], as the env's workloads are, got inf"),
        (["--demand", "50"], "--demand must be a fraction of capacity in (0, 3], as the env's workloads are, got 50.0"),
        (["--controller", "greedy"], "--controller 'greedy' is not one of"),
        (["--controller", "examples.custom_controller:Nope"], "module 'examples.custom_controller' has no 'Nope'"),
        (["--policy", "/no/such/model.zip"], "no saved model at /no/such/model.zip"),
        (["--preset", "tiny", "--policy", "results/ppo_kcm_warm/best_model.zip"], "a policy of another preset"),
    ],
)
def test_bad_input_is_a_one_line_error(args, message):
    result = run_example(*args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_the_gpu_preset_without_cuda_is_a_one_line_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is present: the gpu preset is served there")
    result = run_example("--preset", "gpu")
    assert result.returncode == 2 and "--preset gpu is sized for a GPU" in result.stderr, result.stderr


def test_a_controller_of_your_own_runs_beside_the_baselines(tmp_path, capsys):
    """An entry point (`module.path:Name`) runs as a built-in controller does, paired on the same episodes; one that
    does not import or takes no such argument is a one-line error naming it."""
    out = tmp_path / "own"
    argv = ["--policies", "cool=examples.custom_controller:Thermostat(max_bias=0.5),no_control", "--seeds", "0",
            "--out", str(out), *TINY]  # fmt: skip
    assert evaluate.main(argv) == 0
    rows = read_csv(out / "episodes.csv")
    assert sorted(r["label"] for r in rows) == ["cool", "no_control"]
    assert {r["spec"] for r in rows} >= {"cool=examples.custom_controller:Thermostat(max_bias=0.5)"}
    assert len({r["episode_seed"] for r in rows}) == 1  # paired: the same episode
    for spec, message in [
        ("examples.custom_controller:Thermo", "module 'examples.custom_controller' has no 'Thermo'"),
        ("no_such_module:Thermostat", "cannot import 'no_such_module'"),
        ("examples.custom_controller:Thermostat(gain=2)", "unknown argument(s) ['gain']; it takes max_bias, start_c"),
        ("examples.custom_controller:Thermostat(max_bias=2)", "Thermostat max_bias must be in (0, 1], got 2"),
    ]:
        assert evaluate.main(["--policies", spec, "--out", str(tmp_path / "bad"), *TINY]) == 2
        assert message in capsys.readouterr().err, spec


def test_the_thermostat_steers_only_when_hot_and_plugs_in_by_name():
    import gymnasium as gym

    import agents

    env = gym.make("MoERouting-v0", preset="tiny", telemetry="simulated", episode_intervals=4)
    spec = agents.ControlSpec.from_env(env)
    builder = spec.builder
    thermostat = agents.make_controller("examples.custom_controller:Thermostat", env, max_bias=1.0, start_c=20.0)
    obs, _ = env.reset(seed=0)
    ratio = spec.raw_experts(obs, "expert_cost_ratio")

    i = builder.index["temp_headroom_c"]

    def biases(headroom_c: float) -> np.ndarray:
        heated = obs.copy()
        heated[i] = headroom_c / builder.scale[i]  # degrees below the slowdown temperature
        action = spec.codec.decode(thermostat.act(heated))
        assert action.ttt_frequency_tokens == 0
        return np.asarray(action.routing_biases)

    assert np.allclose(biases(25.0), 0.0)  # more than start_c below the slowdown temperature: no steering
    hot = biases(0.0)
    assert hot[np.argmax(ratio)] == pytest.approx(-spec.action.bias_range)  # the costliest expert, all the way
    assert np.all(np.diff(hot[np.argsort(ratio)]) <= 1e-9)  # the costlier, the more it is steered away from
    half = biases(10.0)
    assert half == pytest.approx(hot / 2, abs=1e-6)
