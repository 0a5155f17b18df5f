"""The `config.yaml` of a `train_agent.py` run: writing it (`run_config`), reading it back (`read_run_config`), and
the run-defining settings in which a `--resume` command differs from it (`run_setting_changes`)."""

from __future__ import annotations

import dataclasses
import datetime
import platform
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import stable_baselines3
import torch
import yaml

from agents.run_config import plain
from envs import EnvConfig


def read_run_config(path: Path) -> dict[str, Any] | None:
    """A run's config.yaml (as `run_config` wrote it), or None when there is none.

    Raises:
        ValueError: a file that is not readable YAML or lacks the `args`, `hyperparams` and `env_kwargs` mappings.
    """
    if not path.exists():
        return None
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path} is corrupt ({type(exc).__name__}: {' '.join(str(exc).split())})") from None
    missing = [k for k in ("args", "hyperparams", "env_kwargs") if not isinstance((config or {}).get(k), dict)]
    if not isinstance(config, dict) or missing:
        raise ValueError(f"{path} is corrupt or not a train_agent.py config (no {', '.join(missing)} mapping)")
    return config


class _Unset:
    def __repr__(self) -> str:
        return "(unset)"


UNSET = _Unset()


def _changes(name: str, old: Any, new: Any) -> list[str]:
    """`name: old (saved) vs new` for each leaf where two plain values differ (nested mappings key by key)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            c
            for k in sorted(set(old) | set(new))
            for c in _changes(f"{name}.{k}", old.get(k, UNSET), new.get(k, UNSET))
        ]
    return [] if old == new else [f"{name}: {old!r} (saved) vs {new!r}"]


def run_setting_changes(saved: dict[str, Any], args: Any, derived: dict[str, Any]) -> list[str]:
    """The run-defining settings (algo, env id, env kwargs, hyperparameters) in which `args`/`derived` differ from a
    saved config.yaml; an env argument left out counts as what the env id builds without it (its registered kwargs,
    e.g. MoERoutingMeasured-v0's gpu preset, else its EnvConfig default) on either side."""
    changes = []
    for name in ("algo", "env_id"):
        if name in saved["args"]:
            changes += _changes(f"--{name.replace('_', '-')}", saved["args"][name], getattr(args, name))
    defaults = {
        f.name: plain(f.default if f.default_factory is dataclasses.MISSING else f.default_factory())
        for f in dataclasses.fields(EnvConfig)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }
    if args.env_id == saved["args"].get("env_id", args.env_id):  # else that change is the one to report
        try:
            defaults.update(plain(gym.spec(args.env_id).kwargs))
        except gym.error.Error:
            pass  # an unregistered id is refused where the env id is checked
    old_env, new_env = saved["env_kwargs"], plain(derived["env_kwargs"])
    for key in sorted(set(old_env) | set(new_env)):
        unset = defaults.get(key, UNSET)
        changes += _changes(f"env_kwargs.{key}", old_env.get(key, unset), new_env.get(key, unset))
    changes += _changes("hyperparams", saved["hyperparams"], plain(derived["hyperparams"]))
    return changes


def run_config(args: Any, derived: dict[str, Any], normalize: dict | None) -> dict[str, Any]:
    """The config.yaml of a new run: arguments, the hyperparameters in effect (and why any differs from its file),
    the env kwargs and the full `EnvConfig` they resolve to, versions and host."""
    return {
        "run_name": derived["run_name"],
        "command": " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "args": plain(args),
        "hyperparams": plain(derived["hyperparams"]),
        "hyperparams_adjusted": plain(derived.get("hyperparams_adjusted", {})),
        "vec_normalize": plain(normalize),
        "env_kwargs": plain(derived["env_kwargs"]),
        # what gym.make builds: the env id's registered kwargs (MoERoutingMeasured-v0's gpu preset) under the run's
        "env_config": plain(EnvConfig.from_kwargs(**{**gym.spec(args.env_id).kwargs, **derived["env_kwargs"]})),
        "eval_env_kwargs": plain(derived["eval_env_kwargs"]),
        "versions": plain(
            {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "stable_baselines3": stable_baselines3.__version__,
                "gymnasium": gym.__version__,
                "numpy": np.__version__,
            }
        ),
        "host": {"platform": platform.platform(), "processor": platform.processor(), "device": args.device},
    }
