"""What a training run recorded about its env (config.yaml), read back beside a saved model: the settings that decide
which model an env serves and what an action earns, compared with an evaluation env's."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import yaml

CONFIG_FILE = "config.yaml"

TRAINING_SEEDS_FROM = 2**32
"""Training envs reset at seeds from here up (`train_agent.py`: worker i first at TRAINING_SEEDS_FROM + seed + i),
above every held-out episode seed (`evaluate.py`'s 1000 x seed + episode and the validation seeds, which the CLIs keep
below it): no training episode replays a held-out episode's workload, temperatures or shift point. A run whose
config.yaml has no `training_seeds_from` reset at seed + i (runs before 2026-11-25) and keeps that on resume."""


def plain(obj: Any) -> Any:
    """Dataclasses, tuples, paths and numpy scalars as YAML-safe plain values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return plain(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, str):
        return str(obj)  # also str subclasses such as torch's TorchVersion
    if obj is None or isinstance(obj, (bool, int, float)):
        return obj
    return repr(obj)


SERVED_MODEL_SETTINGS = ("preset", "model", "checkpoint", "pretrain_steps")
"""The `EnvConfig` fields that decide which weights the env serves (`moe_runtime.pretrain.checkpoint_path`)."""
TASK_SETTINGS = ("gpu", "cost_table", "ttt", "interval_s", "runtime_tokens", "reference_tokens", "action", "reward")
"""The `EnvConfig` fields that decide what an action does and what it earns (the simulated GPU and its cost model,
the action's bounds, the reward's terms); workload, split, episode length and randomisation are left out: they are
what an evaluation varies on purpose."""
_NOT_THE_WEIGHTS = ("device", "dtype", "batch_size", "preset_name")  # MoEConfig fields outside `model_key()`


def _leaves(name: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _leaves(f"{name}.{key}", sub).items()}
    return {name: value}


def env_setting_differences(trained: dict[str, Any], config: Any) -> list[tuple[str, Any, Any]]:
    """The served-model and task settings (`SERVED_MODEL_SETTINGS`, `TASK_SETTINGS`) in which an env's config
    differs from the one a policy was trained on.

    Args:
        trained: the `env_config` mapping of the run's config.yaml (`training_env_config`); a setting it does not
            record is not compared.
        config: the evaluation env's `EnvConfig`.

    Returns:
        `(setting, trained value, this env's value)` per differing leaf (`reward.w_loss`, `model.d_model`), in
        field order; `model` only when the presets agree (another preset is another model), `pretrain_steps` only
        when the model is pretrained here (no `checkpoint` on either side).
    """
    here = plain(config)
    differences = []
    for key in SERVED_MODEL_SETTINGS + TASK_SETTINGS:
        if key not in trained or key not in here:
            continue
        if key == "model" and trained.get("preset") != here.get("preset"):
            continue
        if key == "pretrain_steps" and (trained.get("checkpoint") or here.get("checkpoint")):
            continue
        old, new = _leaves(key, trained[key]), _leaves(key, here[key])
        for name in old.keys() | new.keys():
            if key == "model" and name.split(".", 1)[-1] in _NOT_THE_WEIGHTS:
                continue
            if name in old and name in new and old[name] != new[name]:
                differences.append((name, old[name], new[name]))
    order = {name: i for i, name in enumerate(SERVED_MODEL_SETTINGS + TASK_SETTINGS)}
    return sorted(differences, key=lambda d: (order[d[0].split(".")[0]], d[0]))


def training_env_config(model_path: str | Path) -> dict[str, Any] | None:
    """The `env_config` (the full `EnvConfig`, as plain values) a saved model was trained on, from its run's
    `config.yaml` beside it or one folder up; None when there is none or it records no env config."""
    env_config = (find_run_config(Path(model_path)) or {}).get("env_config")
    return env_config if isinstance(env_config, dict) else None


def find_run_config(model_path: Path) -> dict | None:
    """The run's config.yaml beside a saved model or one folder up (a best model in `best/`), parsed; None when
    there is none or it is not YAML."""
    for folder in (model_path.parent, model_path.parent.parent):
        f = folder / CONFIG_FILE
        if f.exists():
            try:
                return yaml.safe_load(f.read_text())
            except yaml.YAMLError:
                return None
    return None
