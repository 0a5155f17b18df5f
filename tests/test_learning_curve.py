"""scripts/learning_curve.py: bad input is a one-line error before any env is built, and outputs keep their names."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("learning_curve", REPO / "scripts" / "learning_curve.py")
learning_curve = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(learning_curve)


def fake_run(folder: Path) -> Path:
    """A run folder with a config and no curves yet (a run that has not logged)."""
    folder.mkdir(parents=True)
    args = {"env_id": "MoERouting-v0", "eval_episodes": 2, "eval_seed": 1000}
    config = {"args": args, "hyperparams": {}, "env_kwargs": {}}
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
