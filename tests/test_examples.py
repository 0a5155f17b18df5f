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
        (["--controller", "examples.custom_controller:Nope"], "examples/custom_controller.py) has no 'Nope'"),
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
        ("examples.custom_controller:Thermo", "examples/custom_controller.py) has no 'Thermo'"),
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


CONTROLLER_MODULE = '''
import numpy as np


class NoSpec:  # takes no spec
    def __init__(self):
        pass


class NoAct:  # no act()
    def __init__(self, spec):
        pass

    def reset(self):
        pass


class AnyArgs:  # takes any keyword argument
    def __init__(self, spec, **kwargs):
        self.kwargs = kwargs

    def reset(self):
        pass

    def act(self, observation):
        return np.zeros(10, dtype=np.float32)


def factory(spec, gain=1.0):  # a factory, not a class: what it builds is checked when it is built
    return object()


NOT_CALLABLE = 3
'''


@pytest.fixture
def own_module(tmp_path, monkeypatch):
    """A module of controllers on sys.path, named apart from any other test's (imports are cached)."""
    name = f"own_controllers_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(CONTROLLER_MODULE)
    (tmp_path / "needs_dep.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_an_entry_point_that_cannot_be_a_controller_is_named_without_an_env(own_module):
    import agents

    spec = agents.ControlSpec(num_experts=8, tdp_w=700.0, slowdown_temp_c=87.0)
    for name, kwargs, error, message in [
        (f"{own_module}:NoSpec", {}, TypeError, "cannot be called as NoSpec(spec): too many positional arguments"),
        (f"{own_module}:NoAct", {}, TypeError, "is a class without act()"),
        (f"{own_module}:NOT_CALLABLE", {}, ValueError, f"{own_module}.NOT_CALLABLE is a int, not a class or factory"),
        (f"{own_module}:Missing", {}, ValueError, f"(imported from {Path(sys.path[0]) / own_module}.py) has no"),
        ("needs_dep:C", {}, ValueError, "'needs_dep' imports 'no_such_dependency_xyz', which cannot be found"),
        ("examples/custom_controller.py:Thermostat", {}, ValueError,
         "give a module path, not a file: examples.custom_controller:Thermostat"),
        ("/opt/mine/ctl.py:Mine", {}, ValueError, "not a file: ctl:Mine (run from /opt/mine or with it on PYTHONPATH)"),
        (f"{own_module}:", {}, ValueError, "is not module.path:Name"),
        (f"{own_module}:factory", {"gian": 2}, TypeError, "unknown argument(s) ['gian']; it takes gain"),
    ]:  # fmt: skip
        with pytest.raises(error) as raised:
            agents.check_controller(name, **kwargs)
        assert message in str(raised.value), name
        with pytest.raises(error):  # make_controller checks the same first
            agents.make_controller(name, spec, **kwargs)
    agents.check_controller(f"{own_module}:AnyArgs", anything=1)  # **kwargs: any argument is its own to check
    assert agents.make_controller(f"{own_module}:AnyArgs", spec, anything=1).kwargs == {"anything": 1}
    agents.check_controller(f"{own_module}:factory", gain=2.0)  # a factory's product is checked when it is built
    with pytest.raises(TypeError, match="built a object without reset and act"):
        agents.make_controller(f"{own_module}:factory", spec)


def test_evaluate_refuses_a_bad_controller_before_pretraining(own_module, tmp_path, monkeypatch, capsys):
    """A typo in an entry point is said before a served model is pretrained (minutes on a cold cache)."""

    def pretrain(*args, **kwargs):
        raise AssertionError("pretrained before the policies were checked")

    monkeypatch.setattr(evaluate, "pretrain_served_model", pretrain)
    for spec, message in [
        (f"{own_module}:NoAct", "is a class without act()"),
        ("no_such_module:Thermostat", "cannot import 'no_such_module'"),
        ("examples.custom_controller:Thermostat(gain=2)", "unknown argument(s) ['gain']"),
        ("load_balance(stride=2)", "load_balance: unknown argument(s) ['stride']"),
    ]:
        assert evaluate.main(["--policies", spec, "--out", str(tmp_path / "bad"), *TINY]) == 2
        assert message in capsys.readouterr().err, spec
    assert not (tmp_path / "bad" / "args.json").exists()


def test_the_thermostat_names_an_argument_that_is_no_number():
    import agents

    spec = agents.ControlSpec(num_experts=8, tdp_w=700.0, slowdown_temp_c=87.0)
    with pytest.raises(TypeError, match="Thermostat max_bias must be a number, got 'abc'"):
        agents.make_controller("examples.custom_controller:Thermostat", spec, max_bias="abc")
