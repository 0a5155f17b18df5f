"""train_agent.py's run folder: no run overwritten, --resume with the run's own settings and its last readable
checkpoint, checkpoints and the evaluation history written atomically, and the best model carried over a resume."""

from __future__ import annotations

import logging
import subprocess
import sys
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml
from train_testing import REPO, exits_with

import agents
import train_agent

RUN_FLAGS = ["--env-kwargs", "preset:tiny", "episode_intervals:8", "--hyperparams", "n_steps:32", "batch_size:32"]


def write_model_zip(path: Path) -> None:
    """A zip as far as `latest_checkpoint` reads it (a `data` entry that passes its CRC check)."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data", "{}")


def interrupted_run(folder: Path, steps=(32, 64), flags=()) -> Path:
    """A run folder as an interrupted run of RUN_FLAGS (and `flags`) leaves it: its config.yaml (as train_agent.py
    writes it) and checkpoints, no model.zip."""
    args, derived = train_agent.parse_args(["--out", str(folder), *RUN_FLAGS, *flags])
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
    if leave == "config.yaml":  # a run that stopped before its first checkpoint: nothing to resume
        assert f"{run} holds a run that saved no checkpoint (config.yaml only)" in message and "--resume" not in message
    else:
        assert f"{run} already holds a run" in message and "--resume" in message
    assert "another --out" in message
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


# a run started with other values than the defaults of every flag a bare --resume goes on with
CONFIGURED = {"timesteps": 20000, "seed": 3, "n_envs": 2, "vec": "dummy", "eval_freq": 512, "eval_episodes": 2,
              "eval_seed": 7, "checkpoint_freq": 256}  # fmt: skip


def test_a_bare_resume_continues_the_run_as_configured(tmp_path, capsys):
    flags = [a for name, value in CONFIGURED.items() for a in ("--" + name.replace("_", "-"), str(value))]
    run = interrupted_run(tmp_path / "run", flags=flags)
    args, derived = train_agent.parse_args(["--out", str(run), "--resume"])
    assert {name: getattr(args, name) for name in CONFIGURED} == CONFIGURED
    assert derived["vec"] == "dummy" and derived["replaced"] == {} and derived["nothing_to_do"] is None
    assert "note:" not in capsys.readouterr().out
    # a flag given replaces the run's value, with a note; one given with the run's own value changes nothing
    args, derived = train_agent.parse_args(["--out", str(run), "--resume", "--timesteps", "50000", "--n-envs", "2",
                                            "--eval-freq", "0", "--device", "cpu"])  # fmt: skip
    assert args.timesteps == 50000 and args.eval_freq == 0 and args.checkpoint_freq == 256
    assert derived["replaced"] == {"timesteps": (20000, 50000), "eval_freq": (512, 0)}
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert notes == ["note: --timesteps 50000 replaces the run's 20000", "note: --eval-freq 0 replaces the run's 512"]
    # a hand-edited value of the wrong type is a one-line error naming it, not a traceback
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("timesteps: 20000", "timesteps: lots"))
    message = exits_with(["--out", str(run), "--resume"], capsys)
    assert f"--resume: {config} has args.timesteps: 'lots', not an integer; give --timesteps" in message
    assert train_agent.parse_args(["--out", str(run), "--resume", "--timesteps", "50000"])[0].timesteps == 50000


def test_a_resume_of_a_run_at_its_target_has_nothing_to_do(tmp_path, capsys):
    """model.zip saved at or past --timesteps and at the newest checkpoint: nothing to do; a model.zip older than
    the newest checkpoint (or none: a run stopped while saving) is written from it, with no training."""
    from stable_baselines3 import PPO

    run = interrupted_run(tmp_path / "run", flags=["--timesteps", "64"])  # checkpoints at 32 and 64 steps
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=16, batch_size=16, seed=0, device="cpu")
    for final, timesteps, done in [(64, None, True), (64, "32", True), (64, "96", False), (32, None, False)]:
        model.num_timesteps = final
        model.save(run / "model.zip")
        argv = ["--out", str(run), "--resume", *([] if timesteps is None else ["--timesteps", timesteps])]
        reason = train_agent.parse_args(argv)[1]["nothing_to_do"]
        if done:
            assert reason.startswith(f"{run} already reached 64 steps (--timesteps {timesteps or 64}): nothing to do")
            assert "larger --timesteps" in reason and "note:" not in capsys.readouterr().out
        else:
            assert reason is None, (final, timesteps)


def test_a_run_configured_before_resumes_kept_their_settings(tmp_path, capsys):
    """A config.yaml from before 2026-11-24 late: no `hyperparams_adjusted`, and resumes that did not record what
    they changed. Its SAC `learning_starts` stays the file's on a resume that re-gives the hyperparameters (the warm
    start rule came later), and a run resumed since must name its --timesteps (the saved one is the first session's)."""
    flags = ["--algo", "sac", "--hyperparams", "batch_size:32", "buffer_size:1000"]
    run = interrupted_run(tmp_path / "run", flags=flags)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["hyperparams"]["learning_starts"] == 0  # sac.yml's init_action: no_control is a warm start
    config.pop("hyperparams_adjusted")
    config["hyperparams"]["learning_starts"] = 1000  # as such a run saved it
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    argv = ["--out", str(run), "--resume", "--env-kwargs", "preset:tiny", "episode_intervals:8", *flags]
    args, derived = train_agent.parse_args(argv)  # was: hyperparams.learning_starts: 1000 (saved) vs 0
    assert derived["hyperparams"]["learning_starts"] == 1000
    config["resumed"] = [{"from_steps": 32, "command": "train_agent.py --resume --timesteps 500"}]
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    message = exits_with(["--out", str(run), "--resume"], capsys)
    assert "is from before resumes recorded their settings" in message and "give --timesteps" in message
    assert train_agent.parse_args(["--out", str(run), "--resume", "--timesteps", "500"])[0].timesteps == 500


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
    model.replay_buffer.observations[:5] = 7.0  # five transitions to recognise the saved buffer by
    model.replay_buffer.pos = 5
    model.save_replay_buffer(tmp_path / "buffer.pkl")
    model = SAC("MlpPolicy", "Pendulum-v1", buffer_size=64, learning_starts=0, seed=0, device="cpu")
    load_replay_buffer(model, tmp_path / "buffer.pkl")  # a whole one loads
    assert model.replay_buffer.pos == 5 and (model.replay_buffer.observations[:5] == 7.0).all()
    (tmp_path / "buffer.pkl").write_bytes((tmp_path / "buffer.pkl").read_bytes()[:100])
    with pytest.raises(ValueError, match=r"buffer\.pkl is not a readable replay buffer \("):
        load_replay_buffer(model, tmp_path / "buffer.pkl")
