"""load_policy and the files beside a model: observation statistics found, missing (a warning when the run's
config.yaml says they were used) or corrupt (a ValueError naming the file), and a run folder whose newest checkpoint
is unreadable."""

from __future__ import annotations

import logging
import shutil
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from agents import load_policy


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """An untrained PPO on Pendulum (saving is all these tests need) and its VecNormalize statistics."""
    folder = tmp_path_factory.mktemp("saved")
    venv = VecNormalize(DummyVecEnv([lambda: gym.make("Pendulum-v1")]), norm_obs=True, norm_reward=True)
    venv.obs_rms.mean[:] = 0.5  # statistics that change the action
    model = PPO("MlpPolicy", venv, n_steps=64, batch_size=32, seed=0, device="cpu")
    model.save(str(folder / "model.zip"))
    venv.save(str(folder / "vecnormalize.pkl"))
    venv.close()
    return folder


def run_folder(tmp_path, saved, norm_obs: bool | None, stats: bool) -> tuple:
    """A run folder as train_agent.py leaves it (config.yaml with `vec_normalize`, unless `norm_obs` is None:
    no config.yaml), with or without the statistics file."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(saved / "model.zip", run / "model.zip")
    if stats:
        shutil.copy(saved / "vecnormalize.pkl", run / "vecnormalize.pkl")
    if norm_obs is not None:
        config = {"args": {"algo": "ppo"}, "vec_normalize": {"norm_obs": norm_obs, "norm_reward": True, "gamma": 0.99}}
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


def test_statistics_beside_the_model_are_used_without_a_warning(tmp_path, saved):
    run = run_folder(tmp_path, saved, norm_obs=True, stats=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        policy = load_policy(run / "model.zip")
    assert policy.vec_normalize is not None and np.allclose(policy.vec_normalize.obs_rms.mean, 0.5)  # the saved ones
    obs = np.zeros(3, dtype=np.float32)
    model = PPO.load(run / "model.zip", device="cpu")
    normalised, _ = model.predict(policy.vec_normalize.normalize_obs(obs), deterministic=True)
    raw, _ = model.predict(obs, deterministic=True)
    assert np.allclose(policy.act(obs), normalised) and not np.allclose(normalised, raw)  # act normalises first


def test_a_stochastic_policy_reset_with_an_episode_seed_plays_that_episode_alone(saved):
    """Sampled actions depend on the episode seed `evaluate.py` resets with, not on the episodes before; a
    deterministic policy leaves the global random sources alone."""
    from agents import reset_controller

    obs = np.zeros(3, dtype=np.float32)
    policy = load_policy(saved / "model.zip", deterministic=False)

    def episode(seed):
        reset_controller(policy, seed)
        return np.stack([policy.act(obs) for _ in range(4)])

    first = episode(7)
    episode(8)
    assert np.array_equal(episode(7), first) and not np.array_equal(episode(8), first)
    mean = load_policy(saved / "model.zip")
    state = torch.get_rng_state()
    reset_controller(mean, 7)
    assert torch.equal(torch.get_rng_state(), state)


def test_missing_statistics_of_a_normalised_run_warn(tmp_path, saved):
    run = run_folder(tmp_path, saved, norm_obs=True, stats=False)
    with pytest.warns(UserWarning, match=r"normalised observations .*/run/vecnormalize\.pkl is missing"):
        policy = load_policy(run / "model.zip")
    assert policy.vec_normalize is None
    (run / "best").mkdir()  # best/best_model.zip: the run's config.yaml is one folder up
    shutil.copy(run / "model.zip", run / "best" / "best_model.zip")
    with pytest.warns(UserWarning, match=r"best/vecnormalize\.pkl is missing"):
        load_policy(run / "best" / "best_model.zip")


@pytest.mark.parametrize("norm_obs", [False, None])  # the run did not normalise observations / a bare zip
def test_no_warning_when_nothing_says_the_statistics_are_needed(tmp_path, saved, norm_obs):
    run = run_folder(tmp_path, saved, norm_obs=norm_obs, stats=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_policy(run / "model.zip").vec_normalize is None


@pytest.mark.parametrize("cut", [0, 20, 200])
def test_truncated_statistics_are_a_value_error_naming_the_file(tmp_path, saved, cut):
    run = run_folder(tmp_path, saved, norm_obs=True, stats=True)
    stats = run / "vecnormalize.pkl"
    stats.write_bytes(stats.read_bytes()[:cut])
    with pytest.raises(ValueError, match=f"{stats} is not readable VecNormalize statistics"):
        load_policy(run / "model.zip")


def test_a_run_folder_loads_its_newest_readable_checkpoint(tmp_path, saved, caplog):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(saved / "model.zip", run / "checkpoints" / "ckpt_64_steps.zip")
    shutil.copy(saved / "vecnormalize.pkl", run / "checkpoints" / "ckpt_vecnormalize_64_steps.pkl")
    (run / "checkpoints" / "ckpt_96_steps.zip").write_bytes((saved / "model.zip").read_bytes()[:100])  # truncated
    with caplog.at_level(logging.WARNING, logger="agents.checkpoints"):
        policy = load_policy(run)
    assert "ckpt_96_steps.zip" in caplog.text and policy.vec_normalize is not None
    obs = np.zeros(3, dtype=np.float32)
    assert np.allclose(policy.act(obs), load_policy(run / "checkpoints" / "ckpt_64_steps.zip").act(obs))


@pytest.mark.parametrize("config", [True, False])  # the algorithm from the run's config.yaml / from the zip alone
def test_another_algorithm_than_the_saved_one_is_a_value_error(tmp_path, saved, config):
    run = run_folder(tmp_path, saved, norm_obs=True if config else None, stats=True)
    for algo in ("sac", "td3", "a2c"):
        with pytest.raises(ValueError, match=f"holds a ppo model, not {algo}; load it as ppo"):
            load_policy(run / "model.zip", algo=algo)
    assert load_policy(run / "model.zip", algo="ppo").vec_normalize is not None


def rewrite_entry(src, dst, name: str, data: bytes) -> None:
    """Copy the zip `src` to `dst` with entry `name` replaced by `data` (a valid zip: only its content is bad)."""
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item, data if item.filename == name else zin.read(item.filename))


@pytest.mark.parametrize(("entry", "data"), [("policy.pth", b"not a torch file"), ("data", b"{}"),
                                             ("data", b"[1, 2]"), ("data", b"\x00garbage")])  # fmt: skip
def test_a_zip_with_damaged_contents_is_a_value_error_naming_it(tmp_path, saved, entry, data):
    bad = tmp_path / "model.zip"
    rewrite_entry(saved / "model.zip", bad, entry, data)
    for algo in (None, "ppo"):
        with pytest.raises(ValueError, match=f"{bad} is not a (readable ppo|saved stable-baselines3) model"):
            load_policy(bad, algo=algo)


# ----- the env a policy was trained on ---------------------------------------------------------------------------
def trained_elsewhere(tmp_path, ppo_run, env, **changes):
    """A copy of the tiny PPO run with a config.yaml whose `env_config` is the tiny env's with `changes` (a nested
    field as `reward__w_loss`)."""
    from train_config import plain

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(ppo_run[0] / "model.zip", run / "model.zip")
    env_config = plain(env.unwrapped.config)
    for key, value in changes.items():
        outer, _, inner = key.partition("__")
        if inner:
            env_config[outer][inner] = value
        else:
            env_config[key] = value
    (run / "config.yaml").write_text(yaml.safe_dump({"args": {"algo": "ppo"}, "env_config": env_config}))
    return run


def test_load_policy_exposes_the_env_config_of_its_run(tmp_path, saved):
    run = run_folder(tmp_path, saved, norm_obs=False, stats=False)
    assert load_policy(run).train_env_config is None  # a config.yaml without an env config
    config = yaml.safe_load((run / "config.yaml").read_text()) | {"env_config": {"preset": "tiny", "gpu": "H200"}}
    (run / "best").mkdir()
    shutil.copy(run / "model.zip", run / "best" / "best_model.zip")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert load_policy(run / "best" / "best_model.zip").train_env_config == config["env_config"]  # one folder up


def test_a_policy_evaluated_on_another_served_model_warns_once_naming_each_setting(tmp_path, ppo_run, env):
    import evaluate

    changes = dict(pretrain_steps=99, gpu="H200", reward__w_loss=2.0, split="validation", workload__load=0.9)
    run = trained_elsewhere(tmp_path, ppo_run, env, **changes)
    spec = evaluate.parse_policy(f"ppo:{run}", ())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # as a script runs: each distinct warning once
        for _ in range(2):  # the main suite builds every controller twice (check_policies, then the episodes)
            evaluate.make_controller(spec, env, "cpu")
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == 1, messages
    message = messages[0]
    assert "\n" not in message and f"policy 'ppo:{run}'" in message
    assert "pretrain_steps 99 (trained) vs 150 (here; --pretrain-steps 99)" in message
    assert "gpu 'H200' (trained) vs 'H100' (here; --gpu H200)" in message
    assert "reward.w_loss 2.0 (trained) vs 1.0 (here; EnvConfig.reward.w_loss, not an evaluate.py flag)" in message
    assert "split" not in message and "workload" not in message  # what an evaluation varies on purpose


@pytest.mark.parametrize("config", [True, False])  # the run's own env / no config.yaml: nothing to compare
def test_a_policy_evaluated_on_its_own_env_or_without_a_config_does_not_warn(tmp_path, ppo_run, env, config):
    import evaluate

    run = trained_elsewhere(tmp_path, ppo_run, env, split="train")
    if not config:
        (run / "config.yaml").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        controller = evaluate.make_controller(evaluate.parse_policy(f"ppo:{run}", ()), env, "cpu")
    assert (controller.train_env_config is not None) == config


def test_the_report_says_when_a_policy_ran_on_another_served_model(tmp_path, ppo_run, env):
    from evaluate_testing import TINY

    import evaluate

    run = trained_elsewhere(tmp_path, ppo_run, env, pretrain_steps=99)
    out = tmp_path / "cmp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the console's copy; the report's is checked here
        rc = evaluate.main(["--policies", f"moved=ppo:{run},no_control", "--seeds", "0", "--telemetry", "simulated",
                            "--out", str(out), *TINY])  # fmt: skip
    assert rc == 0
    report = (out / "report.md").read_text()
    assert "pretrain_steps 99 (trained)" in report and "measure a transfer" in report
    assert "no_control" not in evaluate.json.loads((out / "run_facts.json").read_text())["policy_notes"]
    sources = evaluate.json.loads((out / "summary.json").read_text())["sources"]  # as the simulated backend labels
    assert sources["episode_return"] == "mixed" and sources["kcm_energy_error_pct"] == "predicted vs simulated"
    assert sources["energy_per_token_mj"] == "simulated" and sources["mean_loss"] == "measured"
    assert evaluate.main(["--report-only", "--out", str(out), "--no-progress"]) == 0  # rebuilt: the note stays
    assert "pretrain_steps 99 (trained)" in (out / "report.md").read_text()


def test_training_runs_given_by_a_glob_are_pooled_in_the_report(tmp_path, ppo_run, env):
    """`LABEL=ppo:GLOB` runs each training run as LABEL@RUN and reports them pooled, with an interval over runs and
    seeds: two copies of one run agree on every episode, so their pooled improvement is each one's, and its interval
    is the seeds' alone (with two seeds, a mean of two resampled ones: from the smaller paired difference to the
    larger)."""
    from evaluate_testing import TINY, read_csv

    import evaluate

    run = trained_elsewhere(tmp_path, ppo_run, env)  # its own env: no transfer note
    for name in ("run_a", "run_b"):
        shutil.copytree(run, tmp_path / "runs" / name)
    out = tmp_path / "cmp"
    rc = evaluate.main(["--policies", f"warm=ppo:{tmp_path}/runs/run_*,no_control", "--seeds", "0-1",
                        "--telemetry", "simulated", "--out", str(out), *TINY])  # fmt: skip
    assert rc == 0
    summary = evaluate.json.loads((out / "summary.json").read_text())
    assert list(summary["policies"]) == ["warm@run_a", "warm@run_b", "no_control"]
    group = summary["run_groups"]["warm"]
    assert group["runs"] == group["pooled"]["no_control"] == ["warm@run_a", "warm@run_b"]
    pooled = group["improvements"]["no_control"]["episode_return"]
    each = summary["improvements"]["no_control"]["warm@run_a"]["episode_return"]
    assert pooled["n"] == 4 and pooled["iqm"] == pytest.approx(each["iqm"])
    rows = {(r["label"], r["episode_seed"]): float(r["episode_return"]) for r in read_csv(out / "episodes.csv")}
    diffs = [rows[("warm@run_a", s)] - rows[("no_control", s)] for s in ("0", "1000")]
    assert (pooled["low"], pooled["high"]) == pytest.approx((min(diffs), max(diffs)))  # the runs do not differ
    report = (out / "report.md").read_text()
    assert "## Across training runs" in report and "| warm | 2 |" in report and "{DAGGER}" not in report
    assert evaluate.main(["--report-only", "--out", str(out), "--no-progress"]) == 0
    assert "## Across training runs" in (out / "report.md").read_text()
