"""Train a stable-baselines3 agent (PPO, SAC, TD3, A2C) on MoERouting-v0.

    python train_agent.py --algo ppo --timesteps 100000 --n-envs 2 --out runs/ppo_s0
    python train_agent.py --algo ppo --timesteps 256 --env-kwargs preset:tiny --hyperparams n_steps:64 batch_size:32
    python train_agent.py --out runs/ppo_s0 --timesteps 200000 --resume      # continue from the last checkpoint

`--resume` continues with the run's own settings from its `config.yaml`: `--algo`, `--env-id`, `--env-kwargs`,
`--telemetry`, `--hyperparams` and `--hyperparams-file` left out take the saved values; given, they must resolve to
the saved ones (else an error names each setting that differs, saved vs now). Other flags (seed, evaluation,
checkpoints, device, workers) apply to the new session. Without `--resume`, `--out` must not hold a run already.

Hyperparameters come from `agents/hyperparams/<algo>.yml` (RL Baselines3 Zoo layout) with `--hyperparams key:value`
overrides; `--env-kwargs key:value` sets any `EnvConfig` field (`preset:tiny`, `episode_intervals:32`, and nested
fields with a dot: `workload.load:0.8`, `reward.w_loss:2`). Values are YAML scalars.

The run folder (`--out`) gets: `config.yaml` (every argument, the resolved hyperparameters and env config, versions,
date), `model.zip` and `vecnormalize.pkl` (final), `best/best_model.zip` (+ its `vecnormalize.pkl`; chosen on
held-out seeds of the validation split), `checkpoints/ckpt_<steps>_steps.zip` (+ VecNormalize, replay buffer),
`evaluations.npz`, `tb/` (TensorBoard: SB3's losses, `env/` reward terms and per-episode energy, latency, loss,
`telemetry/` temperature and power) and `train_summary.json` (steps, wall time this session and in all, steps/s).
Ctrl-C (or SIGTERM) saves a checkpoint and exits with status 130. `--hyperparams imitate:<controller>` first fits the
fresh policy to a baseline controller (`agents.warm_start`); the record goes to `config.yaml` and the summary.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import importlib.util
import inspect
import json
import multiprocessing
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import yaml
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecNormalize

import envs  # noqa: F401  (registers MoERouting-v0)
from agents.controller import ControlSpec
from agents.sb3 import (
    ALGOS,
    CHECKPOINT_PREFIX,
    CONFIG_FILE,
    EVALUATIONS_FILE,
    MODEL_FILE,
    VECNORMALIZE_FILE,
    AtomicCheckpointCallback,
    EpisodeInfoCallback,
    HeldOutEvalCallback,
    SaveVecNormalizeCallback,
    atomic_save,
    build_algo_kwargs,
    check_hyperparams,
    imitation_settings,
    latest_checkpoint,
    load_hyperparams,
    load_replay_buffer,
    parse_key_values,
    read_eval_history,
    read_vecnormalize,
    save_checkpoint,
    set_initial_action,
)
from agents.warm_start import warm_start
from envs import EnvConfig, measured_backend_unavailable
from moe_runtime import CheckpointError, ControlAction, read_checkpoint
from train_config import read_run_config, run_config, run_setting_changes


@dataclass
class Args:
    algo: str = "ppo"
    """algorithm: ppo, sac, td3 or a2c"""
    env_id: str = "MoERouting-v0"
    """the environment id"""
    timesteps: int = 100_000
    """total environment steps (all workers together)"""
    n_envs: int = 1
    """parallel env workers"""
    vec: str = "auto"
    """vector env: subproc, dummy, or auto (subproc when n_envs > 1)"""
    seed: int = 0
    """seed of python, numpy, torch, SB3 and the training envs (worker i gets seed + i)"""
    telemetry: str = "simulated"
    """env hardware backend: simulated, nvml or auto"""
    device: str = "cpu"
    """torch device of the agent (cpu is fastest for MLP policies)"""
    out: str = ""
    """run folder; empty: runs/{env_id}__{algo}__{seed}__{unix time}"""
    hyperparams: list[str] = field(default_factory=list)
    """hyperparameter overrides, key:value (Zoo syntax), e.g. n_steps:64 learning_rate:lin_3e-4"""
    hyperparams_file: str = ""
    """YAML file of hyperparameters; empty: agents/hyperparams/<algo>.yml"""
    env_kwargs: list[str] = field(default_factory=list)
    """env arguments, key:value, e.g. preset:tiny episode_intervals:32 workload.load:0.8"""
    eval_freq: int = 10_000
    """env steps between evaluations on held-out seeds (0: no evaluation)"""
    eval_episodes: int = 5
    """episodes per evaluation"""
    eval_seed: int = 1_000_000
    """first seed of the held-out evaluation episodes (on the validation split)"""
    checkpoint_freq: int = 10_000
    """env steps between checkpoints (0: only on Ctrl-C)"""
    resume: bool = False
    """continue the run in --out from its last readable checkpoint with its saved settings (--timesteps may grow)"""
    progress_bar: bool = True
    """show a progress bar (tqdm + rich)"""
    verbose: int = 1
    """SB3 verbosity: 0 quiet, 1 info"""


def _field_docs(cls) -> dict[str, str]:
    """The one-line docstring under each dataclass field (CleanRL style), for --help."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = str(nxt.value.value)
    return docs


RUN_SETTINGS = ("algo", "env_id", "env_kwargs", "telemetry", "hyperparams", "hyperparams_file")
"""The flags that define a run: on --resume, one left out takes its value from the run's config.yaml."""


def _parser(suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """The command line; with `suppress_defaults`, flags not given are left out of the namespace."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    docs = _field_docs(Args)
    for f in dataclasses.fields(Args):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if suppress_defaults:
            default = argparse.SUPPRESS
        help_text = f"{docs.get(f.name, '')} (default: {default!r})"
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif f.type in ("list[str]", list[str]):
            parser.add_argument(flag, nargs="*", default=default, metavar="KEY:VALUE", help=help_text)
        else:
            kind = {"int": int, "str": str, "float": float}[f.type if isinstance(f.type, str) else f.type.__name__]
            parser.add_argument(flag, type=kind, default=default, help=help_text)
    return parser


def env_kwargs_from_pairs(pairs: list[str], telemetry: str) -> dict[str, Any]:
    """gym.make kwargs from `key:value` pairs: YAML values, lists as tuples, `a.b:v` into the nested dataclass `a`;
    `telemetry` from its flag and one torch thread per worker unless given.

    Raises:
        ValueError: a malformed pair, an unknown nested field, or an EnvConfig that rejects the values.
    """
    flat = parse_key_values(pairs, "--env-kwargs")
    kwargs: dict[str, Any] = {"telemetry": telemetry, "torch_threads": 1}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        value = tuple(value) if isinstance(value, list) else value
        if "." in key:
            outer, inner = key.split(".", 1)
            nested.setdefault(outer, {})[inner] = value
        else:
            kwargs[key] = value
    defaults = {
        f.name: f.default_factory()
        for f in dataclasses.fields(EnvConfig)
        if f.default_factory is not dataclasses.MISSING
    }
    for outer, values in nested.items():
        base = kwargs.get(outer, defaults.get(outer))
        if not dataclasses.is_dataclass(base):
            raise ValueError(
                f"--env-kwargs {outer}.<field>: {outer!r} is not a nested config; nested: {sorted(defaults)}"
            )
        try:
            kwargs[outer] = dataclasses.replace(base, **values)
        except TypeError as exc:
            known = [f.name for f in dataclasses.fields(base)]
            raise ValueError(f"--env-kwargs {outer}: {exc}; fields: {known}") from exc
    EnvConfig.from_kwargs(**kwargs)  # check now: unknown names and bad values are errors before any env starts
    return kwargs


def parse_args(argv: list[str] | None = None) -> tuple[Args, dict[str, Any]]:
    """Args and the derived settings (hyperparameters, env kwargs, run folder); bad flags exit with a message.

    With --resume, the run-defining flags left out (`RUN_SETTINGS`) take the values in the run's config.yaml, and
    those given must resolve to the saved settings."""
    parser = _parser()
    args = Args(**vars(parser.parse_args(argv)))
    if args.resume and not args.out:
        parser.error("--resume needs --out, the run folder to continue")
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out {args.out!r} is a file; it must be a run folder (a new one, or a run's with --resume)")
    saved, given = None, set()
    if args.resume:
        try:
            saved = read_run_config(Path(args.out) / CONFIG_FILE)
        except ValueError as exc:
            parser.error(f"--resume: {exc}")
        given = set(vars(_parser(suppress_defaults=True).parse_args(argv)))
        for name in RUN_SETTINGS:
            if saved is not None and name not in given and name in saved["args"]:
                setattr(args, name, saved["args"][name])
    if args.algo not in ALGOS:
        parser.error(f"--algo {args.algo!r} is not one of {sorted(ALGOS)}")
    if args.timesteps <= 0:
        parser.error(f"--timesteps must be positive, got {args.timesteps}")
    if args.n_envs < 1:
        parser.error(f"--n-envs must be >= 1, got {args.n_envs}")
    if args.vec not in ("auto", "subproc", "dummy"):
        parser.error(f"--vec must be subproc, dummy or auto, got {args.vec!r}")
    if args.telemetry not in ("simulated", "nvml", "auto"):
        parser.error(f"--telemetry must be simulated, nvml or auto, got {args.telemetry!r}")
    if args.telemetry == "nvml" and (reason := measured_backend_unavailable()):
        parser.error(f"--telemetry nvml: {reason}")
    for name in ("eval_freq", "checkpoint_freq"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.eval_episodes < 1:
        parser.error(f"--eval-episodes must be >= 1, got {args.eval_episodes}")
    if not 0 <= args.seed < 2**32:  # numpy's global seed takes [0, 2**32)
        parser.error(f"--seed must be an integer in [0, 2**32), got {args.seed}")
    if args.eval_seed < 0:
        parser.error(f"--eval-seed must be >= 0, got {args.eval_seed}")
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        parser.error(f"--device {args.device!r}: {exc}")
    if device.type == "cuda" and not torch.cuda.is_available():  # SB3 would fall back to the CPU without a word
        parser.error(f"--device {args.device}: CUDA is not available here; use --device cpu (the fastest for MLP "
                     "policies) or auto")  # fmt: skip
    missing = [m for m in ("tqdm", "rich") if args.progress_bar and importlib.util.find_spec(m) is None]
    if missing:
        # SB3 would raise this only after the envs are built and imitation is done; say it now and go on without
        print(f"the progress bar needs {' and '.join(missing)} (pip install {' '.join(missing)}); running without it")
        args.progress_bar = False
    try:
        if saved is not None and not given & {"hyperparams", "hyperparams_file"}:
            hyperparams = dict(saved["hyperparams"])  # the run's own, even if the hyperparameter file changed since
        else:
            hyperparams = load_hyperparams(args.algo, args.env_id, args.hyperparams_file or None)
            overrides = parse_key_values(args.hyperparams, "--hyperparams")
            check_hyperparams(args.algo, overrides, "--hyperparams")
            hyperparams.update(overrides)
        imitation = imitation_settings(hyperparams)
        env_kwargs = env_kwargs_from_pairs(args.env_kwargs, args.telemetry)
    except (ValueError, TypeError, OSError, yaml.YAMLError) as exc:
        parser.error(str(exc))
    if env_kwargs.get("checkpoint") not in (None, "none"):
        try:  # a corrupt file fails here, once, not as a traceback from every env worker
            read_checkpoint(env_kwargs["checkpoint"])
        except CheckpointError as exc:
            parser.error(str(exc))
    run_name = f"{args.env_id}__{args.algo}__{args.seed}__{int(time.time())}"
    run_dir = Path(args.out or Path("runs") / run_name)
    resume_from = None
    if args.resume:
        resume_from = latest_checkpoint(run_dir / "checkpoints")  # skips unreadable ones, with a warning
        if resume_from is None:
            parser.error(f"--resume: no readable checkpoint in {run_dir / 'checkpoints'}")
        try:  # damaged files fail here, with their names, not as a traceback after the envs have started
            if resume_from[1]["vecnormalize"].exists():
                read_vecnormalize(resume_from[1]["vecnormalize"])
            if (run_dir / EVALUATIONS_FILE).exists():
                read_eval_history(run_dir / EVALUATIONS_FILE)
        except ValueError as exc:
            parser.error(f"--resume: {exc}; move it aside to continue without it")
    else:
        held = [name for name in (MODEL_FILE, CONFIG_FILE) if (run_dir / name).exists()]
        checkpoints = run_dir / "checkpoints"
        if checkpoints.is_dir() and any(f.is_file() for f in checkpoints.iterdir()):
            held.append("checkpoints/")
        if held:
            parser.error(
                f"{run_dir} already holds a run ({', '.join(held)}); continue it with --resume or pick another --out"
            )
    derived = {
        "run_name": run_dir.name,
        "run_dir": run_dir,
        "vec": args.vec if args.vec != "auto" else ("subproc" if args.n_envs > 1 else "dummy"),
        "hyperparams": hyperparams,
        "imitation": imitation,
        "env_kwargs": env_kwargs,
        # held-out evaluation: its own seeds, on the validation split of the corpus
        "eval_env_kwargs": {"split": "validation", **env_kwargs},
        "resume_from": resume_from,  # (steps, checkpoint paths) with --resume, else None
        "saved_config": saved,  # the run's config.yaml with --resume (None when it has none)
    }
    if saved is not None and (changes := run_setting_changes(saved, args, derived)):
        parser.error(
            f"--resume: {run_dir} was trained with other settings: {'; '.join(changes)}; leave those flags out to "
            f"continue with the run's own settings (its {CONFIG_FILE}), or pick another --out"
        )
    return args, derived


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
    thunks = [make_env(env_id, env_kwargs, seed, rank) for rank in range(n_envs)]
    venv = SubprocVecEnv(thunks) if vec == "subproc" else DummyVecEnv(thunks)
    venv.seed(seed)  # worker i resets with seed + i
    return venv


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    args, derived = parse_args()
    run_dir: Path = derived["run_dir"]
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background, SIGINT ignored
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # `kill` saves a checkpoint too

    # seeding
    random.seed(args.seed)
    np.random.seed(args.seed)  # noqa: NPY002  (SB3 and some wrappers draw from the legacy global RNG)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # MLP updates are small; leave the cores to the env workers

    # envs
    algo_cls = ALGOS[args.algo]
    venv = make_vec_env(args.env_id, derived["env_kwargs"], args.n_envs, args.seed, derived["vec"])
    policy, algo_kwargs, normalize = build_algo_kwargs(args.algo, derived["hyperparams"], venv.action_space.shape[0])
    evaluate = 0 < args.eval_freq <= args.timesteps
    eval_venv = make_vec_env(args.env_id, derived["eval_env_kwargs"], 1, args.eval_seed, "dummy") if evaluate else None
    if normalize is not None:
        normalize.setdefault("gamma", algo_kwargs.get("gamma", 0.99))  # return normalisation at the agent's gamma
    resumed = derived["resume_from"]

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
        if derived["hyperparams"].get("init_action", "zero") == "no_control":
            spec = ControlSpec.from_env(venv)
            set_initial_action(model, spec.encode(ControlAction.uncontrolled(spec.num_experts)))
        config = run_config(args, derived, normalize)
        if derived["imitation"] is not None:
            im = derived["imitation"]
            print(f"warm start: imitating {im['controller']} for {im['steps']} steps, {im['epochs']} epochs")
            config["warm_start"] = warm_start(model, venv, im["controller"], im["steps"], im["epochs"], seed=args.seed)
            print(f"warm start: {config['warm_start']}")
        atomic_save(run_dir / CONFIG_FILE, lambda tmp: Path(tmp).write_text(yaml.safe_dump(config, sort_keys=False)))
    else:
        steps, paths = resumed
        saved = derived["saved_config"] or {}  # read and checked against the flags by parse_args
        if normalize is not None:
            venv = (
                VecNormalize.load(str(paths["vecnormalize"]), venv)
                if paths["vecnormalize"].exists()
                else VecNormalize(venv, **normalize)
            )
            venv.training = True
        venv.seed(args.seed + steps)  # fresh episodes, not a replay of the first ones
        model = algo_cls.load(str(paths["model"]), env=venv, device=args.device, tensorboard_log=str(run_dir / "tb"))
        if paths["replay_buffer"].exists():
            try:  # read only here: a probe in parse_args would load a buffer of up to 1e6 transitions twice
                load_replay_buffer(model, paths["replay_buffer"])
            except ValueError as exc:
                sys.exit(f"train_agent.py: error: --resume: {exc}; move it aside to continue with an empty buffer")
        saved.setdefault("resumed", []).append(
            {
                "from_steps": steps,
                "command": " ".join(sys.argv),
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }
        )
        atomic_save(run_dir / CONFIG_FILE, lambda tmp: Path(tmp).write_text(yaml.safe_dump(saved, sort_keys=False)))
        print(f"resuming {run_dir} from {paths['model'].name} ({steps} steps)")
    if eval_venv is not None and normalize is not None:
        eval_venv = VecNormalize(eval_venv, training=False, norm_obs=normalize.get("norm_obs", True), norm_reward=False)

    # callbacks
    callbacks = [EpisodeInfoCallback()]
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

    # learn
    if model.num_timesteps >= args.timesteps:
        print(
            f"{run_dir} is at {model.num_timesteps} steps already (--timesteps {args.timesteps}); "
            "raise --timesteps to train on"
        )
    start_steps, t0, interrupted = model.num_timesteps, time.perf_counter(), False
    try:
        model.learn(
            total_timesteps=max(args.timesteps - model.num_timesteps, 0),
            callback=CallbackList(callbacks),
            tb_log_name=derived["run_name"] if resumed is None else saved.get("run_name", derived["run_name"]),
            reset_num_timesteps=resumed is None,
            progress_bar=args.progress_bar,
        )
    except KeyboardInterrupt:
        interrupted = True
        path = save_checkpoint(model, run_dir / "checkpoints")
        print(f"\ninterrupted at {model.num_timesteps} steps; checkpoint saved to {path}; continue with --resume")
    wall_s = time.perf_counter() - t0

    # save
    if not interrupted:
        save_checkpoint(model, run_dir / "checkpoints")  # so --resume continues from the end (with the replay buffer)
        if model.get_vec_normalize_env() is not None:
            atomic_save(run_dir / VECNORMALIZE_FILE, model.get_vec_normalize_env().save)
        atomic_save(run_dir / MODEL_FILE, model.save)  # last: a model.zip means a finished run
    steps = model.num_timesteps - start_steps
    summary = {
        "steps": int(model.num_timesteps),
        "steps_this_session": int(steps),
        "wall_s": round(wall_s, 2),
        "steps_per_s": round(steps / wall_s, 3) if wall_s > 0 else None,
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
    print(f"{steps} steps in {wall_s:.1f} s ({summary['steps_per_s']} steps/s); run folder {run_dir}")

    # close
    for v in (venv, eval_venv):
        if v is not None:
            try:
                v.close()
            except (EOFError, BrokenPipeError, ConnectionResetError):
                pass
    sys.exit(130 if interrupted else 0)
