"""scripts/learning_curve.py: bad input is a one-line error before any env is built, outputs keep their names, and
every curve says its source; and the provenance of scripts/agent_router_nvml.py's rows (a GPU-only script, whose
row builder runs here on fakes)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("learning_curve", REPO / "scripts" / "learning_curve.py")
learning_curve = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(learning_curve)


def fake_run(folder: Path, telemetry: str = "simulated") -> Path:
    """A run folder with a config and no curves yet (a run that has not logged)."""
    folder.mkdir(parents=True)
    args = {"env_id": "MoERouting-v0", "eval_episodes": 2, "eval_seed": 1000, "telemetry": telemetry}
    config = {"args": args, "hyperparams": {}, "env_kwargs": {"telemetry": telemetry}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def error_of(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as stop:
        learning_curve.main(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err


def test_bad_input_names_what_is_wrong(tmp_path, capsys):
    a, b = fake_run(tmp_path / "s0" / "ppo"), fake_run(tmp_path / "s1" / "ppo")
    assert "runs need distinct labels, ['ppo'] repeats" in error_of(capsys, [str(a), str(b), "--baselines", ""])
    assert "--baselines ['oracle'] not among the controllers" in error_of(capsys, [str(a), "--baselines", "oracle"])
    assert "--baselines: controller 'no_such_module:Greedy': cannot import" in error_of(
        capsys, [str(a), "--baselines", "no_such_module:Greedy"])  # fmt: skip
    for text in ("args: [unclosed", ""):
        (b / "config.yaml").write_text(text)
        assert f"{b / 'config.yaml'} is corrupt" in error_of(capsys, [str(b)])
    (b / "config.yaml").write_text(
        "{args: {eval_episodes: two, eval_seed: 1, env_id: x}, hyperparams: {}, env_kwargs: {}}"
    )
    assert f"{b / 'config.yaml'} lacks the evaluation settings" in error_of(capsys, [str(b)])
    (a / "evaluations.npz").write_bytes(b"PK\x03\x04 torn")
    message = error_of(capsys, [str(a), "--baselines", "", "--out", "x"])
    assert f"{a / 'evaluations.npz'} is not a readable evaluation history" in message


@pytest.mark.parametrize(("out", "stem"), [("curve_v1.5", "curve_v1.5"), ("curve.png", "curve")])
def test_outputs_keep_the_name_given(tmp_path, out, stem):
    run = fake_run(tmp_path / "run")
    learning_curve.main([str(run), "--baselines", "", "--out", str(tmp_path / out)])
    assert (tmp_path / f"{stem}.png").stat().st_size > 0
    assert json.loads((tmp_path / f"{stem}.json").read_text())["runs"]["run"]["train_steps"] == []


@pytest.mark.parametrize(
    ("telemetry", "source"), [("simulated", "mixed"), ("nvml", "measured"), ("auto", "unknown (telemetry 'auto')")]
)
def test_every_curve_says_its_source(tmp_path, telemetry, source):
    """A simulated run's returns are simulated energy, heat and latency terms plus the measured loss: `mixed`."""
    run = fake_run(tmp_path / "run", telemetry)
    learning_curve.main([str(run), "--baselines", "", "--out", str(tmp_path / "curve")])
    data = json.loads((tmp_path / "curve.json").read_text())
    assert data["runs"]["run"]["source"] == source and data["source"] == source
    assert learning_curve.curves_source(["mixed", "measured"])["source"] == "differs by curve"
    assert "loss term measured" in learning_curve.curves_source(["mixed"])["source_note"]


def test_saved_curves_are_drawn_again_from_their_json(tmp_path, monkeypatch, capsys):
    """--from-json redraws a saved curves file without its runs: the same data, the axis labelled with its source;
    a file without a source (written before curves named it) or not a curves file at all is a one-line error."""
    import matplotlib.pyplot as plt
    import numpy as np

    run = fake_run(tmp_path / "run", "nvml")
    monkeypatch.setattr(learning_curve, "training_curve", lambda run: (np.array([64, 128]), np.array([-9.0, -7.0])))
    learning_curve.main([str(run), "--baselines", "", "--out", str(tmp_path / "curve")])
    saved = json.loads((tmp_path / "curve.json").read_text())
    plt.close("all")
    learning_curve.main(["--from-json", str(tmp_path / "curve.json"), "--out", str(tmp_path / "again")])
    assert json.loads((tmp_path / "again.json").read_text()) == saved
    ax = plt.gcf().axes[0]
    assert ax.get_ylabel() == "episode return [measured]"
    assert [list(line.get_ydata()) for line in ax.get_lines()] == [[-9.0, -7.0]]
    plt.close("all")
    del saved["source"]
    (tmp_path / "old.json").write_text(json.dumps(saved))
    assert "lacks ['source']" in error_of(capsys, ["--from-json", str(tmp_path / "old.json")])
    (tmp_path / "torn.json").write_text('{"runs": ')
    assert "not a readable curves file" in error_of(capsys, ["--from-json", str(tmp_path / "torn.json")])
    assert "not both" in error_of(capsys, [str(run), "--from-json", str(tmp_path / "curve.json")])
    assert "give train_agent.py run folders" in error_of(capsys, [])


def test_a_redrawn_file_stays_beside_its_json_and_a_damaged_one_is_named(tmp_path, monkeypatch, capsys):
    """--from-json without --out writes FILE.png beside FILE.json, never over the committed figure; a damaged run or
    baseline, or flags that name the curves of run folders, are one-line errors."""
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)  # where the committed figure's default path would land
    good = {"runs": {"a": {"train_steps": [64], "train_return": [-9.0], "eval_steps": [64], "eval_returns": [[1, 2]]}},
            "baselines": {"no_control": [-5.0, -6.0]}, "eval_episodes": 2, "source": "mixed"}  # fmt: skip
    (tmp_path / "mine.json").write_text(json.dumps(good))
    learning_curve.main(["--from-json", "mine.json"])
    plt.close("all")
    assert (tmp_path / "mine.png").is_file() and not (tmp_path / "results").exists()
    for damage, message in [
        (lambda d: d["runs"].update(b={}), "run 'b' lacks train_steps"),
        (lambda d: d.update(eval_episodes="x"), "eval_episodes is 'x', not an integer >= 0"),
        (lambda d: d["runs"]["a"].update(eval_returns=[[1, 2], [3]]), "run 'a': eval_returns is not a list of numbers per"),
        (lambda d: d["runs"]["a"].update(train_return=[]), "train_steps and train_return differ in length"),
        (lambda d: d["baselines"].update(x="-5"), "baseline 'x': its returns are not a list of numbers"),
    ]:
        data = json.loads(json.dumps(good))
        damage(data)
        (tmp_path / "bad.json").write_text(json.dumps(data))
        error = error_of(capsys, ["--from-json", "bad.json"])
        assert "--from-json 'bad.json': " in error and message in error
    assert not (tmp_path / "bad.png").exists()
    for flags in (["--labels", "x"], ["--baselines", "kcm_greedy"]):
        assert "a --from-json file keeps its own" in error_of(capsys, ["--from-json", "mine.json", *flags])


def test_a_baseline_that_cannot_be_built_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    """An entry point that is no controller is refused before any env is built; one whose arguments fail only when
    it is built is refused then, naming it, with no traceback."""
    import agents

    (tmp_path / "lc_controllers.py").write_text(
        "class NoAct:\n    def __init__(self, spec):\n        pass\n\n\n"
        "def picky(spec):\n    raise ValueError('picky needs 16 experts, got 8')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    run = fake_run(tmp_path / "run")

    def no_env(*args, **kwargs):
        raise AssertionError("an env was built for a baseline refused by its name")

    monkeypatch.setattr("train_agent.make_vec_env", no_env)
    message = error_of(capsys, [str(run), "--baselines", "lc_controllers:NoAct", "--out", str(tmp_path / "c")])
    assert "--baselines: lc_controllers:NoAct is a class without reset and act()" in message

    class Venv(agents.ControlSpec):  # what make_controller reads of an env, and close()
        def close(self):
            pass

    monkeypatch.setattr("train_agent.make_vec_env", lambda *a, **k: Venv(8, 700.0, 87.0))
    message = error_of(capsys, [str(run), "--baselines", "lc_controllers:picky", "--out", str(tmp_path / "c")])
    assert "--baselines lc_controllers:picky: picky needs 16 experts, got 8" in message
    assert not (tmp_path / "c.png").exists()


def test_a_training_curve_of_one_point_is_drawn(tmp_path, monkeypatch):
    """A short run logs one training-episode mean (SAC and TD3 every 4 episodes): the title says 'faint: training
    episodes', so it must show, not be a line of one point that draws nothing."""
    import matplotlib.pyplot as plt
    import numpy as np

    run = fake_run(tmp_path / "run")
    monkeypatch.setattr(learning_curve, "training_curve", lambda run: (np.array([256]), np.array([-190.0])))
    learning_curve.main([str(run), "--baselines", "", "--out", str(tmp_path / "curve")])
    ax = plt.gcf().axes[0]
    assert "faint: training episodes" in ax.get_title()
    [line] = [line for line in ax.get_lines() if list(line.get_xdata()) == [256]]
    assert line.get_marker() not in ("None", "", " ", None)
    plt.close("all")


def test_agent_router_nvml_rows_say_which_figures_are_predicted(monkeypatch):
    """The capacity is the KCM's and the demand a fraction of it: not `measured` like the rest."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # the script imports `_cli` from there
    spec = importlib.util.spec_from_file_location("agent_router_nvml", REPO / "scripts" / "agent_router_nvml.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    router = SimpleNamespace(builder=SimpleNamespace(raw=lambda obs, name: 0.5), capacity_tokens_per_s=1e5,
                             launch_tokens=16384, gpu_spec=SimpleNamespace(name="H100"))  # fmt: skip
    rec = SimpleNamespace(interval=0, source="measured", tokens=16384, served_tokens=3e4, energy_j=150.0,
                          power_w=150.0, temperature_c=40.0, latency_ms=30.0, backlog_tokens=0.0, observation=None)  # fmt: skip
    row = script.interval_row(router, rec, 0.3)
    assert set(row) == set(script.LABEL_FIELDS) | set(script.FIELD_SOURCES)  # every figure has a source
    assert script.FIELD_SOURCES["capacity"] == "predicted" and "predicted" in script.FIELD_SOURCES["demand"]
    assert script.FIELD_SOURCES["energy_j"] == "measured"
