"""Train a stable-baselines3 agent (PPO, SAC, TD3, A2C) on MoERouting-v0.

    python train_agent.py --algo ppo --timesteps 100000 --n-envs 2 --out runs/ppo_s0
    python train_agent.py --algo ppo --timesteps 256 --preset tiny --hyperparams n_steps:64 batch_size:32
    python train_agent.py --out runs/ppo_s0 --resume                         # continue from the last checkpoint
    python train_agent.py --out runs/ppo_s0 --resume --timesteps 200000      # ... and train on to 200k steps

`--resume` continues the run as it was configured, from its `config.yaml`: toward its own `--timesteps`, with its
`--seed`, `--n-envs`, `--vec`, `--eval-freq`, `--eval-episodes`, `--eval-seed` and `--checkpoint-freq`; one of these
given replaces the run's value (a note says so, `config.yaml` keeps the new value for later resumes and records the
change under `resumed`). `--algo`, `--env-id`, `--env-kwargs`, `--telemetry`, `--hyperparams` and
`--hyperparams-file` left out take the saved values; given, they must resolve to the saved ones (else an error names
each setting that differs, saved vs now). `--device`, `--progress-bar` and `--verbose` are this session's. A run that
already reached its `--timesteps` (its model.zip saved there) has nothing to do: a resume says so and exits with
status 0, no file changed. Without `--resume`, `--out` must not hold a run already.
A resume from a checkpoint older than the best model (the newer checkpoints unreadable) moves `best/` aside to
`best_discarded_<steps>/` (a best model that does not load, to `best_discarded_unreadable/`): that model belongs to
the steps the resume trains again, and the next evaluation saves a new best.

Hyperparameters come from `agents/hyperparams/<algo>.yml` (RL Baselines3 Zoo layout) with `--hyperparams key:value`
overrides; `--env-kwargs key:value` sets any `EnvConfig` field (`preset:tiny`, which `--preset tiny` also sets;
`episode_intervals:32`; nested fields with a dot: `workload.load:0.8`, `reward.w_loss:2`). Values are YAML scalars.

The run folder (`--out`) gets: `config.yaml` (every argument, the resolved hyperparameters and env config, versions,
date), `model.zip` and `vecnormalize.pkl` (final), `best/best_model.zip` (+ its `vecnormalize.pkl`; chosen on
held-out seeds of the validation split), `checkpoints/ckpt_<steps>_steps.zip` (+ VecNormalize, replay buffer),
`evaluations.npz`, `tb/` (TensorBoard: SB3's losses, `env/` reward terms and loss, per-episode energy and latency
under `env/<source>/`, temperature and power under `telemetry/<source>/`, the source `simulated` or `measured`) and
`train_summary.json` (steps, wall time this session and in all, steps/s).
Training worker i starts at episode seed `agents.TRAINING_SEEDS_FROM` (2**32) + seed + i (+ steps on a resume), above
every seed `evaluate.py` and the validation episodes play, so training never replays a held-out episode.
Ctrl-C (or SIGTERM) saves a checkpoint and exits with status 130; a run whose policy diverges (NaN or infinite
weights, an invalid action distribution) exits with status 1 and a one-line error naming the step, its checkpoints
kept. `--hyperparams imitate:<controller>` first fits the fresh policy to a baseline controller
(`agents.warm_start`); the record goes to `config.yaml` and the summary. Under a warm start (`imitate`, or the files'
`init_action: no_control`) SAC and TD3 act with the policy from the first step: `learning_starts` becomes 0 unless
given with --hyperparams, and `config.yaml` says so under `hyperparams_adjusted`; for their first `critic_warmup`
steps (2048 in their files) only the critic learns, so the actor's first updates follow a critic fitted where it acts.
"""

from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import yaml
from stable_baselines3.common.callbacks import CallbackList, ProgressBarCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecNormalize

import envs  # registers MoERouting-v0
import train_args
from agents.controller import ControlSpec
from agents.run_config import TRAINING_SEEDS_FROM
from agents.sb3 import (
    ALGOS,
    CHECKPOINT_PREFIX,
    CONFIG_FILE,
    MODEL_FILE,
    VECNORMALIZE_FILE,
    AtomicCheckpointCallback,
    CriticWarmupCallback,
    EpisodeInfoCallback,
    HeldOutEvalCallback,
    SaveVecNormalizeCallback,
    atomic_save,
    build_algo_kwargs,
    latest_checkpoint,
    load_replay_buffer,
    save_checkpoint,
    set_initial_action,
)
from agents.warm_start import warm_start
from moe_runtime import ControlAction
from train_args import Args
from train_config import run_config


def parse_args(argv: list[str] | None = None) -> tuple[Args, dict[str, Any]]:
    """`train_args.parse_args` with this script's usage as its --help."""
    return train_args.parse_args(argv, description=__doc__)


def make_env(env_id: str, env_kwargs: dict[str, Any], seed: int, rank: int):
    """A thunk that builds one monitored env (in a subprocess worker it also ignores Ctrl-C, which the main process
    handles by saving a checkpoint)."""

    def thunk() -> gym.Env:
        if multiprocessing.parent_process() is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        env = gym.make(env_id, **env_kwargs)
        env = Monitor(env)
        env.action_space.seed(seed + rank)
        return env

    return thunk


def make_vec_env(env_id: str, env_kwargs: dict[str, Any], n_envs: int, seed: int, vec: str) -> VecEnv:
    """`n_envs` monitored envs whose first resets are at episode seeds seed + i (worker i)."""
    thunks = [make_env(env_id, env_kwargs, seed, rank) for rank in range(n_envs)]
    venv = SubprocVecEnv(thunks) if vec == "subproc" else DummyVecEnv(thunks)
    venv.seed(seed)  # worker i resets with seed + i
    return venv


def training_seeds_from(saved_config: dict[str, Any] | None) -> int:
    """Where a run's training episode seeds start: `TRAINING_SEEDS_FROM`, above every held-out seed, for a new run or
    one whose config.yaml is gone; the base a saved config records, 0 for runs saved before there was one."""
    return TRAINING_SEEDS_FROM if saved_config is None else int(saved_config.get("training_seeds_from", 0))


def first_episode_seed(seed: int, seeds_from: int = TRAINING_SEEDS_FROM, steps: int = 0) -> int:
    """The episode seed of training worker 0's first episode (worker i: + i): seeds_from + seed, + steps on a resume
    at `steps` (fresh episodes, not a replay of the first session's)."""
    return seeds_from + seed + steps


def seed_training_envs(model, seed: int) -> None:
    """Seed the model's training envs' next resets (worker i: seed + i). After the model is built or loaded: SB3's
    `_setup_model` seeds them with the algorithm's own seed (`set_random_seed` -> `env.seed`), which is the CLI's
    --seed, so a seed given to the envs before would be overwritten."""
    model.get_env().seed(seed)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def divergence(model, exc: Exception) -> str | None:
    """What says that `exc`, raised inside `model.learn`, is the policy diverging, or None for any other failure
    (which surfaces as it is). A diverged policy has NaN or infinite weights, or weights so large that the action
    distribution SB3 builds from them is invalid (torch.distributions refuses a scale of 0 or infinity: "Expected
    parameter scale ... to satisfy the constraint")."""
    bad = [name for name, p in model.policy.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        return f"the policy's weights {', '.join(bad[:3])}{' and more' if len(bad) > 3 else ''} are NaN or infinite"
    if isinstance(exc, ValueError) and str(exc).startswith("Expected parameter"):
        return "the action distribution built from the policy's weights is invalid (NaN, or a scale of 0 or infinity)"
    return None


def learn(model, progress: ProgressBarCallback | None, **learn_kwargs) -> None:
    """`model.learn`, with `progress` (one of its callbacks) closed however it ends: a progress bar left open on
    Ctrl-C is closed by tqdm at interpreter exit, when rich can no longer import ("Exception ignored in tqdm.__del__
    ... sys.meta_path is None")."""
    try:
        model.learn(**learn_kwargs)
    finally:
        if progress is not None and hasattr(progress, "pbar"):  # `pbar` is set once training starts
            progress.pbar.close()  # a no-op when SB3 closed it at the end of training


def close_envs(*venvs) -> None:
    for v in venvs:
        if v is not None:
            try:
                v.close()
            except (EOFError, BrokenPipeError, ConnectionResetError):
                pass


if __name__ == "__main__":
    args, derived = parse_args()
    if derived["nothing_to_do"] is not None:
        print(derived["nothing_to_do"])
        sys.exit(0)  # the run is as the command asks: a resume loop or a re-submitted job is done, not failed
    run_dir: Path = derived["run_dir"]
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        sys.exit(f"train_agent.py: error: --out {run_dir}: cannot create that folder ({exc.strerror or exc})")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background, SIGINT ignored
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # `kill` saves a checkpoint too

    # seeding
    random.seed(args.seed)
    np.random.seed(args.seed)  # noqa: NPY002  (SB3 and some wrappers draw from the legacy global RNG)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # MLP updates are small; leave the cores to the env workers

    # envs: the served model is pretrained (when not cached) here, once, not by every worker at the same time
    for kwargs in (derived["env_kwargs"], derived["eval_env_kwargs"]):
        envs.pretrain_served_model(args.env_id, args.progress_bar, **kwargs)
    algo_cls = ALGOS[args.algo]
    resumed = derived["resume_from"]
    seeds_from = training_seeds_from(None if resumed is None else derived["saved_config"])
    first_seed = first_episode_seed(args.seed, seeds_from, steps=0 if resumed is None else resumed[0])
    venv = make_vec_env(args.env_id, derived["env_kwargs"], args.n_envs, first_seed, derived["vec"])
    policy, algo_kwargs, normalize = build_algo_kwargs(args.algo, derived["hyperparams"], venv.action_space.shape[0])
    evaluate = 0 < args.eval_freq <= args.timesteps
    eval_venv = make_vec_env(args.env_id, derived["eval_env_kwargs"], 1, args.eval_seed, "dummy") if evaluate else None
    if normalize is not None:
        normalize.setdefault("gamma", algo_kwargs.get("gamma", 0.99))  # return normalisation at the agent's gamma

    # agent
    if resumed is None:
        if normalize is not None:
            venv = VecNormalize(venv, **normalize)
        model = algo_cls(
            policy,
            venv,
            seed=args.seed,
            device=args.device,
            tensorboard_log=str(run_dir / "tb"),
            verbose=args.verbose,
            **algo_kwargs,
        )
        seed_training_envs(model, first_seed)  # before the warm start's episodes, which are training episodes too
        if derived["hyperparams"].get("init_action", "zero") == "no_control":
            spec = ControlSpec.from_env(venv)
            set_initial_action(model, spec.encode(ControlAction.uncontrolled(spec.num_experts)))
        config = run_config(args, derived, normalize) | {"training_seeds_from": seeds_from}
        if derived["imitation"] is not None:
            im = derived["imitation"]
            print(f"warm start: imitating {im['controller']} for {im['steps']} steps, {im['epochs']} epochs")
            config["warm_start"] = warm_start(model, venv, im["controller"], im["steps"], im["epochs"], seed=args.seed)
            print(f"warm start: {config['warm_start']}")
        atomic_save(run_dir / CONFIG_FILE, lambda tmp: Path(tmp).write_text(yaml.safe_dump(config, sort_keys=False)))
    else:
        steps, paths = resumed
        saved = derived["saved_config"] or {}  # read and checked against the flags by parse_args
        saved.setdefault("training_seeds_from", seeds_from)  # a run saved before keeps its 0 on later resumes too
        if normalize is not None:
            venv = (
                VecNormalize.load(str(paths["vecnormalize"]), venv)
                if paths["vecnormalize"].exists()
                else VecNormalize(venv, **normalize)
            )
            venv.training = True
        try:
            model = algo_cls.load(str(paths["model"]), env=venv, device=args.device,
                                  tensorboard_log=str(run_dir / "tb"), verbose=args.verbose)  # this session's
        except Exception as exc:  # its zip reads (checked in parse_args) but what is inside does not load
            venv.close()
            sys.exit(f"train_agent.py: error: --resume: cannot load {paths['model']} ({type(exc).__name__}: {exc}); "
                     "move it aside to resume from the checkpoint before it")
        seed_training_envs(model, first_seed)
        if paths["replay_buffer"].exists():
            try:  # read only here: a probe in parse_args would load a buffer of up to 1e6 transitions twice
                load_replay_buffer(model, paths["replay_buffer"])
            except ValueError as exc:
                sys.exit(f"train_agent.py: error: --resume: {exc}; move it aside to continue with an empty buffer")
        session = {
            "from_steps": steps,
            "command": " ".join(sys.argv),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        replaced = derived["replaced"]  # the run goes on with the new values; the old ones stay on record here
        if replaced:
            session["replaced"] = {name: {"saved": old, "now": new} for name, (old, new) in replaced.items()}
            saved["args"].update({name: new for name, (_, new) in replaced.items()})
        saved.setdefault("resumed", []).append(session)
        atomic_save(run_dir / CONFIG_FILE, lambda tmp: Path(tmp).write_text(yaml.safe_dump(saved, sort_keys=False)))
        print(f"resuming {run_dir} from {paths['model'].name} ({steps} steps)")
    if eval_venv is not None and normalize is not None:
        eval_venv = VecNormalize(eval_venv, training=False, norm_obs=normalize.get("norm_obs", True), norm_reward=False)

    # callbacks
    callbacks = [EpisodeInfoCallback()]
    if derived["hyperparams"].get("critic_warmup", 0) > 0:  # SAC/TD3 only (checked with the hyperparameters)
        callbacks.append(CriticWarmupCallback(derived["hyperparams"]["critic_warmup"]))
    if args.checkpoint_freq:
        callbacks.append(
            AtomicCheckpointCallback(
                save_freq=max(args.checkpoint_freq // args.n_envs, 1),
                save_path=str(run_dir / "checkpoints"),
                name_prefix=CHECKPOINT_PREFIX,
                save_replay_buffer=hasattr(model, "replay_buffer"),
                save_vecnormalize=normalize is not None,
            )
        )
    if eval_venv is not None:
        callbacks.append(
            HeldOutEvalCallback(
                eval_venv,
                eval_seed=args.eval_seed,
                resume_steps=None if resumed is None else resumed[0],
                n_eval_episodes=args.eval_episodes,
                eval_freq=max(args.eval_freq // args.n_envs, 1),
                log_path=str(run_dir),
                best_model_save_path=str(run_dir / "best"),
                callback_on_new_best=SaveVecNormalizeCallback(run_dir / "best" / VECNORMALIZE_FILE),
                deterministic=True,
                verbose=args.verbose,
                warn=False,
            )
        )
    progress = ProgressBarCallback() if args.progress_bar else None  # ours, not learn()'s, to close on Ctrl-C
    if progress is not None:
        callbacks.append(progress)

    # learn
    train = model.num_timesteps < args.timesteps
    if not train:  # only a run whose model.zip is missing or older than its newest checkpoint gets here
        print(f"{run_dir} is at {model.num_timesteps} steps already (--timesteps {args.timesteps}): nothing to train; "
              f"saving its final model from {resumed[1]['model'].name}")  # fmt: skip
    start_steps, t0, interrupted = model.num_timesteps, time.perf_counter(), False
    try:
        if train:
            learn(
                model,
                progress,
                total_timesteps=args.timesteps - model.num_timesteps,
                callback=CallbackList(callbacks),
                tb_log_name=derived["run_name"] if resumed is None else saved.get("run_name", derived["run_name"]),
                reset_num_timesteps=resumed is None,
            )
    except KeyboardInterrupt:
        interrupted = True
        path = save_checkpoint(model, run_dir / "checkpoints")
        print(f"\ninterrupted at {model.num_timesteps} steps; checkpoint saved to {path}; continue with --resume")
    except (ValueError, RuntimeError) as exc:
        reason = divergence(model, exc)
        if reason is None:
            raise
        close_envs(venv, eval_venv)
        last = latest_checkpoint(run_dir / "checkpoints")
        kept = "no checkpoint was saved before it" if last is None else f"the last checkpoint ({last[0]} steps) is kept"
        hyperparams = derived["hyperparams"]
        knobs = ["learning_rate"] + (["max_grad_norm"] if args.algo in ("ppo", "a2c") else [])  # SAC, TD3: no clip
        lower = " or ".join(f"{name} (now {hyperparams.get(name, 'the algorithm default')})" for name in knobs)
        sys.exit(
            f"train_agent.py: error: training diverged at {model.num_timesteps} steps: {reason}. Start again with a "
            f"lower {lower}; nothing of the diverged model is saved, {kept}."
        )
    wall_s = time.perf_counter() - t0

    # save
    if not interrupted:
        if train:  # so --resume continues from the end (with the replay buffer)
            save_checkpoint(model, run_dir / "checkpoints")
        if model.get_vec_normalize_env() is not None:
            atomic_save(run_dir / VECNORMALIZE_FILE, model.get_vec_normalize_env().save)
        atomic_save(run_dir / MODEL_FILE, model.save)  # last: a model.zip means a finished run
    steps = model.num_timesteps - start_steps
    summary = {
        "steps": int(model.num_timesteps),
        "steps_this_session": int(steps),
        "wall_s": round(wall_s, 2),
        "steps_per_s": round(steps / wall_s, 3) if steps > 0 and wall_s > 0 else None,
        "interrupted": interrupted,
        "n_envs": args.n_envs,
        "vec": derived["vec"],
    }
    previous = run_dir / "train_summary.json"
    if resumed is not None and previous.exists():  # a resumed run's totals span all its sessions
        try:
            before = json.loads(previous.read_text())
            summary["wall_s_total"] = round(before.get("wall_s_total", before.get("wall_s", 0.0)) + wall_s, 2)
        except (json.JSONDecodeError, TypeError):
            pass
    else:
        summary["wall_s_total"] = summary["wall_s"]
    saved_config = yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {}
    if "warm_start" in saved_config:  # env steps spent imitating before RL, not counted in `steps`
        summary["warm_start"] = saved_config["warm_start"]
    tmp = run_dir / "train_summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, run_dir / "train_summary.json")
    if train:
        print(f"{steps} steps in {wall_s:.1f} s ({summary['steps_per_s']} steps/s); run folder {run_dir}")
    else:
        print(f"saved the final model of {model.num_timesteps} steps to {run_dir / MODEL_FILE}")

    close_envs(venv, eval_venv)
    sys.exit(130 if interrupted else 0)
