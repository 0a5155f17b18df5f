"""The command line of `train_agent.py`: its arguments (`Args`, one flag a field) and their checks, which resolve
them into the run's settings (hyperparameters, env kwargs, run folder, the checkpoint to resume) before any env or
model is built, so that a bad flag or a damaged file is one line naming it, not a traceback from a worker."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import inspect
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
import yaml

from agents.callbacks import saved_steps
from agents.run_config import TRAINING_SEEDS_FROM
from agents.sb3 import (
    ALGOS,
    CONFIG_FILE,
    EVALUATIONS_FILE,
    MODEL_FILE,
    check_hyperparams,
    imitation_settings,
    latest_checkpoint,
    load_hyperparams,
    parse_key_values,
    read_eval_history,
    read_vecnormalize,
    resolve_learning_starts,
)
from envs import EnvConfig, measured_backend_unavailable
from moe_runtime import CheckpointError, cache_dir_problem, read_checkpoint
from train_config import read_run_config, run_setting_changes


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
    """seed of python, numpy, torch, SB3 and the training envs (worker i's first episode: 2**32 + seed + i)"""
    telemetry: str = ""
    """env hardware backend: simulated, nvml or auto; empty: the env id's own (nvml for MoERoutingMeasured-v0),
    else simulated"""
    device: str = "cpu"
    """torch device of the agent (cpu is fastest for MLP policies)"""
    out: str = ""
    """run folder; empty: runs/{env_id}__{algo}__{seed}__{unix time}"""
    hyperparams: list[str] = field(default_factory=list)
    """hyperparameter overrides, key:value (Zoo syntax), e.g. n_steps:64 learning_rate:lin_3e-4"""
    hyperparams_file: str = ""
    """YAML file of hyperparameters; empty: agents/hyperparams/<algo>.yml"""
    preset: str = ""
    """MoEConfig preset of the served model (tiny, default or gpu), as evaluate.py's --preset; the same as --env-kwargs
    preset:<name>. Empty: the env id's own (gpu for MoERoutingMeasured-v0), else default"""
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
    """continue the run in --out from its last readable checkpoint toward its own --timesteps, with its saved
    settings: --algo, --env-id, --env-kwargs, --telemetry, --hyperparams(-file) given must match them; --timesteps,
    --seed, --n-envs, --vec, --eval-* or --checkpoint-freq given replace the run's (with a note)"""
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
"""The flags that define a run: on --resume, one left out takes its value from the run's config.yaml, and one given
must resolve to the saved setting (`train_config.run_setting_changes`)."""

CONTINUED_SETTINGS = (
    "timesteps",
    "seed",
    "n_envs",
    "vec",
    "eval_freq",
    "eval_episodes",
    "eval_seed",
    "checkpoint_freq",
)
"""The flags a run goes on with: on --resume, one left out takes its value from the run's config.yaml (a run started
with --timesteps 20000 trains toward 20000), and one given with another value replaces the saved one, with a note;
train_agent.py writes the new value into config.yaml, so later resumes go on with it. The other flags (--device,
--progress-bar, --verbose) are this session's only."""


def _saved_type_ok(value: Any, kind: str) -> bool:
    """Whether a value read from a config.yaml's `args` has the type of its Args field (`kind`, as annotated)."""
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "list[str]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, str)  # the only other kind among RUN_SETTINGS and CONTINUED_SETTINGS


def resume_settings(
    parser: argparse.ArgumentParser, args: Args, saved: dict[str, Any], given: set[str], config: Path
) -> dict[str, tuple[Any, Any]]:
    """Set the `RUN_SETTINGS` and `CONTINUED_SETTINGS` left out of the command line to the run's saved `args`
    (its config.yaml, `config`); a name the file lacks (written before that flag existed) keeps its default.

    Returns:
        {name: (saved value, given value)} for each `CONTINUED_SETTINGS` flag given with another value.
    """
    kinds = {f.name: f.type if isinstance(f.type, str) else f.type.__name__ for f in dataclasses.fields(Args)}
    replaced = {}
    for name in RUN_SETTINGS + CONTINUED_SETTINGS:
        if name not in saved:  # a config.yaml written before the flag existed: its default
            continue
        if name not in given:
            if not _saved_type_ok(saved[name], kinds[name]):
                kind = {"int": "an integer", "str": "a string", "list[str]": "a list of strings"}[kinds[name]]
                parser.error(f"--resume: {config} has args.{name}: {saved[name]!r}, not {kind}; give "
                             f"--{name.replace('_', '-')} or correct that file")  # fmt: skip
            setattr(args, name, saved[name])
        elif name in CONTINUED_SETTINGS and getattr(args, name) != saved[name]:
            replaced[name] = (saved[name], getattr(args, name))
    return replaced


def _parser(description: str, suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """The command line; with `suppress_defaults`, flags not given are left out of the namespace."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
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


TRAINABLE_ENV = "envs.moe_routing_env:MoERoutingEnv"  # MoERoutingMO-v0's vector reward is not SB3's


def check_env_id(parser: argparse.ArgumentParser, env_id: str) -> None:
    """Refuse an --env-id that is not registered, or not a scalar-reward MoERouting env (MoERouting-v0,
    MoERoutingMeasured-v0, or one registered with their entry point), before any env is built."""
    try:
        spec = gym.spec(env_id)
    except gym.error.Error as exc:
        parser.error(f"--env-id {env_id!r} is not registered ({exc}); train on MoERouting-v0 or MoERoutingMeasured-v0")
    if spec.entry_point != TRAINABLE_ENV:
        parser.error(f"--env-id {env_id!r} is not a scalar-reward MoERouting env (its entry point: "
                     f"{spec.entry_point!r}); train on MoERouting-v0 or MoERoutingMeasured-v0")  # fmt: skip


def parse_args(argv: list[str] | None = None, description: str = "") -> tuple[Args, dict[str, Any]]:
    """Args and the derived settings (hyperparameters, env kwargs, run folder); bad flags exit with a message.
    `description` heads --help.

    With --resume, the flags left out of `RUN_SETTINGS` and `CONTINUED_SETTINGS` take the values in the run's
    config.yaml; the run-defining ones given must resolve to the saved settings, the others given replace the saved
    values (a note says so; `derived["replaced"]`). A resumed run already at --timesteps, its model.zip saved there,
    has nothing to do: `derived["nothing_to_do"]` says so and no file needs to change."""
    parser = _parser(description)
    args = Args(**vars(parser.parse_args(argv)))
    if args.resume and not args.out:
        parser.error("--resume needs --out, the run folder to continue")
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out {args.out!r} is a file; it must be a run folder (a new one, or a run's with --resume)")
    saved, given, replaced = None, set(), {}
    if args.resume:
        try:
            saved = read_run_config(Path(args.out) / CONFIG_FILE)
        except ValueError as exc:
            parser.error(f"--resume: {exc}")
        given = set(vars(_parser(description, suppress_defaults=True).parse_args(argv)))
        if saved is not None:
            if saved.get("resumed") and "hyperparams_adjusted" not in saved and "timesteps" not in given:
                # Written before config.yaml kept what a resume changed: its --timesteps is the first session's.
                parser.error(f"--resume: {Path(args.out) / CONFIG_FILE} is from before resumes recorded their "
                             f"settings, and this run was resumed since; give --timesteps (the target you resumed "
                             f"toward before, e.g. the --timesteps of its last 'resumed' command)")  # fmt: skip
            replaced = resume_settings(parser, args, saved["args"], given, Path(args.out) / CONFIG_FILE)
    if args.algo not in ALGOS:
        parser.error(f"--algo {args.algo!r} is not one of {sorted(ALGOS)}")
    check_env_id(parser, args.env_id)
    if args.preset:  # recorded as the --env-kwargs pair it stands for, so a resume matches either spelling
        try:
            paired_preset = parse_key_values(args.env_kwargs, "--env-kwargs").get("preset")
        except ValueError:
            paired_preset = None  # a malformed pair is reported where the pairs are read, below
        if paired_preset is None:
            args.env_kwargs = [*args.env_kwargs, f"preset:{args.preset}"]
        elif str(paired_preset) != args.preset:
            if "env_kwargs" in given or not args.resume:
                parser.error(f"--preset {args.preset} disagrees with --env-kwargs preset:{paired_preset}; give one of "
                             "them")  # fmt: skip
            parser.error(f"--preset {args.preset} disagrees with the run's saved --env-kwargs preset:{paired_preset}; "
                         "leave --preset out to continue the run, or give another --out for a new one")  # fmt: skip
    telemetry_from = "--telemetry "  # where the setting came from, for the messages
    if not args.telemetry:  # the measured env's nvml must not be overridden by a default the user never chose
        try:
            paired = parse_key_values(args.env_kwargs, "--env-kwargs").get("telemetry")
        except ValueError:
            paired = None  # a malformed pair is reported where the pairs are read, below
        registered = gym.spec(args.env_id).kwargs.get("telemetry")
        args.telemetry = str(paired or registered or "simulated")
        telemetry_from = "--env-kwargs telemetry:" if paired else f"--env-id {args.env_id}'s telemetry " if registered else ""
    if args.timesteps <= 0:
        parser.error(f"--timesteps must be positive, got {args.timesteps}")
    if args.n_envs < 1:
        parser.error(f"--n-envs must be >= 1, got {args.n_envs}")
    if args.vec not in ("auto", "subproc", "dummy"):
        parser.error(f"--vec must be subproc, dummy or auto, got {args.vec!r}")
    if args.telemetry not in ("simulated", "nvml", "auto"):  # "" resolved above
        parser.error(f"{telemetry_from}{args.telemetry} is not one of simulated, nvml or auto")
    if args.telemetry == "nvml" and (reason := measured_backend_unavailable()):
        parser.error(f"{telemetry_from}nvml: {reason}")
    for name in ("eval_freq", "checkpoint_freq"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.eval_episodes < 1:
        parser.error(f"--eval-episodes must be >= 1, got {args.eval_episodes}")
    if not 0 <= args.seed < 2**32:  # numpy's global seed takes [0, 2**32)
        parser.error(f"--seed must be an integer in [0, 2**32), got {args.seed}")
    if not 0 <= args.eval_seed <= TRAINING_SEEDS_FROM - args.eval_episodes:  # held out: below the training seeds
        parser.error(f"--eval-seed must be in [0, {TRAINING_SEEDS_FROM - args.eval_episodes}] (the training episodes' "
                     f"seeds start at {TRAINING_SEEDS_FROM}), got {args.eval_seed}")
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
    adjusted = {}
    try:
        if saved is not None and not given & {"hyperparams", "hyperparams_file"}:
            hyperparams = dict(saved["hyperparams"])  # the run's own, even if the hyperparameter file changed since
        else:
            if args.hyperparams_file and not Path(args.hyperparams_file).exists():
                parser.error(f"--hyperparams-file {args.hyperparams_file!r} does not exist (a YAML file of "
                             "hyperparameters, as agents/hyperparams/<algo>.yml)")  # fmt: skip
            hyperparams = load_hyperparams(args.algo, args.env_id, args.hyperparams_file or None)
            overrides = parse_key_values(args.hyperparams, "--hyperparams")
            check_hyperparams(args.algo, overrides, "--hyperparams")
            hyperparams.update(overrides)
            # A resume re-derives the value only where its run did (`hyperparams_adjusted`), so its saved
            # hyperparameters still match; a run started before the rule keeps the file's value.
            if saved is None or "learning_starts" in (saved.get("hyperparams_adjusted") or {}):
                hyperparams, note = resolve_learning_starts(args.algo, hyperparams, "learning_starts" in overrides)
                if note is not None:
                    adjusted["learning_starts"] = note
                    print(f"note: {note}")
        imitation = imitation_settings(hyperparams)
        env_kwargs = env_kwargs_from_pairs(args.env_kwargs, args.telemetry)
    except (ValueError, TypeError, OSError, yaml.YAMLError) as exc:
        parser.error(str(exc))
    if args.algo == "ppo" and hyperparams.get("n_steps", 2048) * args.n_envs < 2:  # SB3's PPO asserts it
        parser.error(f"n_steps {hyperparams['n_steps']} x --n-envs {args.n_envs} must be >= 2 (a rollout of at least "
                     "two transitions); raise n_steps or --n-envs")
    if env_kwargs["telemetry"] == "nvml" and args.telemetry != "nvml" and (reason := measured_backend_unavailable()):
        parser.error(f"--env-kwargs telemetry:nvml: {reason}")  # the flag was checked above; this is the pair's
    if env_kwargs.get("checkpoint") not in (None, "none"):
        try:  # a corrupt file fails here, once, not as a traceback from every env worker
            read_checkpoint(env_kwargs["checkpoint"])
        except CheckpointError as exc:
            parser.error(str(exc))
    if reason := cache_dir_problem():  # the envs load (or pretrain) their model there
        parser.error(reason)
    run_name = f"{args.env_id}__{args.algo}__{args.seed}__{int(time.time())}"
    run_dir = Path(args.out or Path("runs") / run_name)
    resume_from, nothing_to_do = None, None
    if args.resume:
        resume_from = latest_checkpoint(run_dir / "checkpoints")  # skips unreadable ones, with a warning
        if resume_from is None:
            parser.error(f"--resume: no readable checkpoint in {run_dir / 'checkpoints'}")
        # model.zip (written last) at the target and at the newest checkpoint: the run is finished, leave it as it is
        final_steps = saved_steps(run_dir / MODEL_FILE) if (run_dir / MODEL_FILE).exists() else None
        if final_steps is not None and final_steps >= max(args.timesteps, resume_from[0]):
            nothing_to_do = (
                f"{run_dir} already reached {final_steps} steps (--timesteps {args.timesteps}): nothing to do, no "
                "file changed; resume with a larger --timesteps to train on"
            )
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
        if held == [CONFIG_FILE]:  # a run that stopped before its first checkpoint: nothing to resume
            parser.error(f"{run_dir} holds a run that saved no checkpoint ({CONFIG_FILE} only): delete the folder or "
                         "pick another --out")  # fmt: skip
        if held:
            parser.error(
                f"{run_dir} already holds a run ({', '.join(held)}); continue it with --resume or pick another --out"
            )
    derived = {
        "run_name": run_dir.name,
        "run_dir": run_dir,
        "vec": args.vec if args.vec != "auto" else ("subproc" if args.n_envs > 1 else "dummy"),
        "hyperparams": hyperparams,
        "hyperparams_adjusted": adjusted,  # {name: why the value in `hyperparams` is not the file's}
        "imitation": imitation,
        "env_kwargs": env_kwargs,
        # held-out evaluation: its own seeds, on the validation split of the corpus
        "eval_env_kwargs": {"split": "validation", **env_kwargs},
        "resume_from": resume_from,  # (steps, checkpoint paths) with --resume, else None
        "saved_config": saved,  # the run's config.yaml with --resume (None when it has none)
        "replaced": replaced,  # {name: (saved, given)}: the run's settings this --resume changes
        "nothing_to_do": nothing_to_do,  # why a --resume of a finished run stops here, else None
    }
    if saved is not None and (changes := run_setting_changes(saved, args, derived)):
        parser.error(
            f"--resume: {run_dir} was trained with other settings: {'; '.join(changes)}; leave those flags out to "
            f"continue with the run's own settings (its {CONFIG_FILE}), or pick another --out"
        )
    if nothing_to_do is None:
        for name, (old, new) in replaced.items():
            print(f"note: --{name.replace('_', '-')} {new} replaces the run's {old}")
    return args, derived
