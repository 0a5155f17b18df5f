"""Thin helpers around stable-baselines3: algorithms and their hyperparameter files (RL Baselines3 Zoo style),
callbacks for `train_agent.py` (from `agents.callbacks`), and `load_policy`, which turns a saved model into a `Controller`.

Hyperparameter files: `agents/hyperparams/<algo>.yml`, keyed by env id as in the Zoo. Besides the algorithm's own
constructor arguments they may hold `policy` (default `MlpPolicy`), `normalize` (false, true, or VecNormalize
arguments such as `{norm_obs: false, norm_reward: true}`), `noise_type` (`normal` or `ornstein-uhlenbeck`) with
`noise_std` for TD3/SAC action noise, and `init_action` (`no_control`: the untrained policy's mean action is no
control, zero biases and TTT off, so exploration starts there; `zero`: SB3's own initialisation, mean action 0,
which has TTT on), and `imitate` (a controller name, or your own as `module.path:Name`: warm-start the policy by
imitating it, see `agents.warm_start`) with `imitate_steps` (default 2048) and `imitate_epochs` (default 30), and
for SAC and TD3 `critic_warmup` (env steps in which only the critic learns, the actor kept at its start:
`agents.callbacks.CriticWarmupCallback`).
Overrides use the Zoo's `key:value` syntax, with values parsed as YAML (`n_steps:64`, `learning_rate:3e-4`,
`learning_rate:lin_3e-4` (linear decay), `policy_kwargs:"{net_arch: [64, 64], activation_fn: tanh}"`); never `eval`.
Under a warm start (`init_action: no_control` or `imitate`) SAC and TD3 get `learning_starts` 0 unless it is given on
the command line (`resolve_learning_starts`): their random warm-up would otherwise act instead of the warm-started
policy.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import yaml
from stable_baselines3 import A2C, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.noise import NormalActionNoise, OrnsteinUhlenbeckActionNoise

from agents.callbacks import (  # noqa: F401  (train_agent.py takes them from here)
    EVALUATIONS_FILE,
    CriticWarmupCallback,
    EpisodeInfoCallback,
    HeldOutEvalCallback,
    SaveVecNormalizeCallback,
    read_eval_history,
)
from agents.checkpoints import (  # noqa: F401  (train_agent.py takes them from here)
    CHECKPOINT_PREFIX,
    AtomicCheckpointCallback,
    atomic_save,
    checkpoint_paths,
    latest_checkpoint,
    load_replay_buffer,
    read_vecnormalize,
    save_checkpoint,
)
from agents.controller import CONTROLLERS, check_controller
from agents.hyperparam_rules import INIT_ACTIONS, NORMALIZE_RULES, VALUE_RULES, ent_coef_ok, finite, net_arch_ok
from agents.run_config import CONFIG_FILE, find_run_config, training_env_config  # noqa: F401  (train_args.py takes CONFIG_FILE from here)

logger = logging.getLogger(__name__)

ALGOS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "a2c": A2C, "sac": SAC, "td3": TD3}
HYPERPARAMS_DIR = Path(__file__).parent / "hyperparams"
META_KEYS = (
    "policy",
    "normalize",
    "noise_type",
    "noise_std",
    "init_action",
    "imitate",
    "imitate_steps",
    "imitate_epochs",
)  # hyperparameters that are not constructor arguments
OFF_POLICY_META_KEYS = ("critic_warmup",)  # ... and those only SAC and TD3 take
NORMALIZE_KEYS = ("norm_obs", "norm_reward", "clip_obs", "clip_reward", "gamma", "epsilon")
ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}
_NOT_HYPERPARAMS = {"self", "policy", "env", "tensorboard_log", "verbose", "seed", "device", "_init_setup_model"}
_POLICY_SPACES = {"self", "observation_space", "action_space", "lr_schedule"}  # what SB3 passes, not policy_kwargs
MODEL_FILE = "model.zip"
VECNORMALIZE_FILE = "vecnormalize.pkl"


# ----- hyperparameters -------------------------------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """A `key:value` value as YAML (`64` -> int, `[64, 64]` -> list, `true` -> bool), with the floats YAML 1.1
    leaves as strings (`3e-4`, `1e5`) made floats."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:  # one line, not PyYAML's multi-line report with carets
        problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
        detail = f"{problem} at character {mark.column + 1}" if problem and mark else str(exc).splitlines()[0]
        raise ValueError(f"cannot parse value {text!r} as YAML: {detail}") from exc
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_key_values(pairs: list[str] | None, what: str = "--hyperparams") -> dict[str, Any]:
    """`["n_steps:64", "policy_kwargs:{net_arch: [64]}"]` -> {"n_steps": 64, "policy_kwargs": {...}}.

    Raises:
        ValueError: an entry without `key:value`.
    """
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition(":")
        if not sep or not key.strip():
            raise ValueError(f"{what} entries are key:value (e.g. n_steps:64), got {pair!r}")
        out[key.strip()] = parse_value(value)
    return out


def valid_hyperparams(algo: str) -> list[str]:
    """Names a hyperparameter file or override may set for `algo`."""
    params = inspect.signature(ALGOS[algo].__init__).parameters
    meta = META_KEYS + (OFF_POLICY_META_KEYS if algo in ("sac", "td3") else ())
    return sorted(set(params) - _NOT_HYPERPARAMS) + sorted(meta)


def check_hyperparams(algo: str, params: dict[str, Any], where: str) -> None:
    """ValueError naming the unknown keys and the valid ones, or a value out of its range and the range
    (`VALUE_RULES`: learning rates finite > 0 or `lin_<x>`, gamma in (0, 1], sizes positive integers, ...)."""
    if algo not in ALGOS:
        raise ValueError(f"unknown algorithm {algo!r}; choose one of {sorted(ALGOS)}")
    valid = valid_hyperparams(algo)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"unknown {algo} hyperparameter(s) {unknown} in {where}; valid: {', '.join(valid)}")

    def bad(key: str, value: Any, allowed: str) -> ValueError:
        return ValueError(f"{key}:{value!r} in {where} is not allowed: {key} must be {allowed}")

    for key, value in params.items():
        if key in VALUE_RULES and not VALUE_RULES[key][0](value):
            raise bad(key, value, VALUE_RULES[key][1])
    if "ent_coef" in params and not ent_coef_ok(algo, params["ent_coef"]):
        allowed = "a finite number >= 0" + (", auto or auto_<initial value > 0>" if algo == "sac" else "")
        raise bad("ent_coef", params["ent_coef"], allowed)
    if isinstance(params.get("normalize"), dict):
        unknown = sorted(set(params["normalize"]) - set(NORMALIZE_KEYS))
        if unknown:
            raise ValueError(f"unknown normalize option(s) {unknown} in {where}; valid: {', '.join(NORMALIZE_KEYS)}")
        for key, value in params["normalize"].items():
            if not NORMALIZE_RULES[key][0](value):
                raise bad(f"normalize.{key}", value, NORMALIZE_RULES[key][1])
    if algo == "ppo" and params.get("batch_size") == 1:  # SB3 asserts it: advantages are normalised per minibatch
        raise bad("batch_size", 1, "an integer >= 2 for ppo")
    pk = params.get("policy_kwargs") or {}
    policy_cls = ALGOS[algo].policy_aliases.get(params.get("policy", "MlpPolicy"))
    if policy_cls is not None:  # a policy class given by import path is left to SB3
        accepted = sorted(set(inspect.signature(policy_cls.__init__).parameters) - _POLICY_SPACES)
        if unknown := sorted(set(pk) - set(accepted)):
            raise ValueError(f"unknown policy_kwargs {unknown} of the {algo} {policy_cls.__name__} in {where}; "
                             f"valid: {', '.join(accepted)}")
    if "net_arch" in pk and not net_arch_ok(pk["net_arch"]):
        raise bad(
            "policy_kwargs.net_arch",
            pk["net_arch"],
            "a list of positive integers (layer widths), or {pi: [...], vf: [...]} / {pi: [...], qf: [...]} of them",
        )
    activation = pk.get("activation_fn")
    if isinstance(activation, str) and activation.lower().removeprefix("nn.") not in ACTIVATIONS:
        raise bad("policy_kwargs.activation_fn", activation, f"one of {sorted(ACTIVATIONS)}")
    if "log_std_init" in pk and not finite(pk["log_std_init"]):
        raise bad("policy_kwargs.log_std_init", pk["log_std_init"], "a finite number")


def load_hyperparams(algo: str, env_id: str = "MoERouting-v0", path: str | Path | None = None) -> dict[str, Any]:
    """The hyperparameters of `algo` for `env_id` from its YAML file (`default` section when the env id is absent).

    Raises:
        ValueError: unknown algorithm, a directory or a file that is not a YAML mapping, missing section, unknown
            keys, values out of range. FileNotFoundError: no file.
    """
    if algo not in ALGOS:
        raise ValueError(f"unknown algorithm {algo!r}; choose one of {sorted(ALGOS)}")
    path = Path(path) if path else HYPERPARAMS_DIR / f"{algo}.yml"
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a YAML file of hyperparameters")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path} is not a YAML file of hyperparameters ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a YAML {type(data).__name__}, not a mapping of env id -> hyperparameters")
    section = data.get(env_id, data.get("default"))
    if section is None:
        raise ValueError(f"{path} has no section for {env_id!r} (nor 'default'); sections: {sorted(data)}")
    if not isinstance(section, dict):
        name = env_id if env_id in data else "default"
        raise ValueError(
            f"{path}: section {name!r} is a YAML {type(section).__name__}, not a mapping of hyperparameters"
        )
    params = dict(section)
    check_hyperparams(algo, params, str(path))
    return params


def _linear_schedule(initial: float):
    def schedule(progress_remaining: float) -> float:
        return progress_remaining * initial

    return schedule


def build_algo_kwargs(algo: str, params: dict[str, Any], n_actions: int) -> tuple[str, dict[str, Any], dict | None]:
    """Turn checked hyperparameters into `(policy, constructor kwargs, VecNormalize kwargs or None)`.

    Converts `lin_<x>` schedules, `activation_fn` names, `train_freq` lists and `noise_type`/`noise_std`; drops
    `init_action` (see `set_initial_action`), the `imitate*` keys (see `imitation_settings`) and `critic_warmup`
    (see `CriticWarmupCallback`).
    """
    p = dict(params)
    policy = p.pop("policy", "MlpPolicy")
    normalize = p.pop("normalize", False)
    if p.pop("init_action", "zero") not in INIT_ACTIONS:
        raise ValueError(f"init_action must be one of {INIT_ACTIONS}, got {params['init_action']!r}")
    imitation_settings(p)
    for key in ("imitate", "imitate_steps", "imitate_epochs", *OFF_POLICY_META_KEYS):
        p.pop(key, None)
    noise_type, noise_std = p.pop("noise_type", None), p.pop("noise_std", 0.1)
    for key in ("learning_rate", "clip_range", "clip_range_vf"):
        if isinstance(p.get(key), str) and p[key].startswith("lin_"):
            p[key] = _linear_schedule(float(p[key][4:]))
    if "policy_kwargs" in p:
        pk = dict(p["policy_kwargs"] or {})
        if isinstance(pk.get("activation_fn"), str):
            name = pk["activation_fn"].lower().removeprefix("nn.")
            if name not in ACTIVATIONS:
                raise ValueError(f"unknown activation_fn {pk['activation_fn']!r}; choose one of {sorted(ACTIVATIONS)}")
            pk["activation_fn"] = ACTIVATIONS[name]
        p["policy_kwargs"] = pk
    if isinstance(p.get("train_freq"), list):
        p["train_freq"] = tuple(p["train_freq"])
    if noise_type is not None:
        mean, sigma = np.zeros(n_actions), float(noise_std) * np.ones(n_actions)
        if noise_type == "normal":
            p["action_noise"] = NormalActionNoise(mean, sigma)
        elif noise_type == "ornstein-uhlenbeck":
            p["action_noise"] = OrnsteinUhlenbeckActionNoise(mean, sigma)
        else:
            raise ValueError(f"noise_type must be 'normal' or 'ornstein-uhlenbeck', got {noise_type!r}")
    if normalize is True:
        normalize = {}
    return policy, p, (dict(normalize) if normalize is not False and normalize is not None else None)


def imitation_settings(params: dict[str, Any]) -> dict[str, Any] | None:
    """`{controller, steps, epochs}` from the `imitate*` hyperparameters, or None when `imitate` is unset.

    Raises:
        ValueError: an unknown controller, non-positive steps or epochs, or `imitate_*` without `imitate`.
    """
    name = params.get("imitate")
    if name in (None, "", "none", False):
        extra = [k for k in ("imitate_steps", "imitate_epochs") if k in params]
        if extra:
            raise ValueError(f"{extra} given without imitate:<controller>")
        return None
    if not isinstance(name, str):
        raise ValueError(f"imitate: {name!r} is no controller; give one of {sorted(CONTROLLERS)} or module.path:Name")
    try:
        check_controller(name)  # your own, as module.path:Name, too
    except (TypeError, ValueError) as exc:
        raise ValueError(f"imitate: {exc}") from None
    settings = {
        "controller": name,
        "steps": params.get("imitate_steps", 2048),
        "epochs": params.get("imitate_epochs", 30),
    }
    for key in ("steps", "epochs"):
        if not isinstance(settings[key], int) or isinstance(settings[key], bool) or settings[key] < 1:
            raise ValueError(f"imitate_{key} must be a positive integer, got {settings[key]!r}")
    return settings


def warm_start_in_effect(params: dict[str, Any]) -> str | None:
    """What makes an untrained policy's own actions the intended start, as `key:value`: `imitate:<controller>` or
    `init_action:no_control`; None for SB3's own initialisation."""
    if imitation_settings(params) is not None:
        return f"imitate:{params['imitate']}"
    if params.get("init_action", "zero") == "no_control":
        return "init_action:no_control"
    return None


def resolve_learning_starts(algo: str, params: dict[str, Any], explicit: bool) -> tuple[dict[str, Any], str | None]:
    """Hyperparameters whose SAC/TD3 `learning_starts` lets a warm start act from the first step.

    SB3's off-policy algorithms take uniformly random actions until `learning_starts` steps are done
    (`OffPolicyAlgorithm._sample_action`), so a warm start (`warm_start_in_effect`) would only begin to act after
    its replay buffer had filled with random actions (TTT on ~3/4 of the time). Under a warm start the value
    becomes 0: updates then start after the first step, sampling the small buffer with replacement.

    Args:
        algo: the algorithm; only `sac` and `td3` have a random warm-up.
        params: the resolved hyperparameters (not changed).
        explicit: `learning_starts` was given on the command line: it is kept, with a warning if it is > 0.

    Returns:
        (the hyperparameters to use, a note of what was changed and why, or None).

    Warns:
        UserWarning: an explicit `learning_starts` > 0 under a warm start: its random actions come first.
    """
    cause = warm_start_in_effect(params)
    if cause is None or algo not in ("sac", "td3"):
        return params, None
    default = inspect.signature(ALGOS[algo].__init__).parameters["learning_starts"].default  # 100 in SB3 2.x
    starts = params.get("learning_starts", default)
    if starts == 0:
        return params, None
    if explicit:
        warnings.warn(
            f"learning_starts:{starts} with {cause}: {algo} takes {starts} uniformly random actions before the "
            "warm-started policy acts (TTT on ~3/4 of the time); leave learning_starts out to act from the start",
            UserWarning,
            stacklevel=2,
        )
        return params, None
    note = (
        f"learning_starts {starts} -> 0: with {cause} the policy acts from the first step (SB3 would take "
        f"{starts} uniformly random actions first); give --hyperparams learning_starts:{starts} to keep them"
    )
    return {**params, "learning_starts": 0}, note


def set_initial_action(model: BaseAlgorithm, action: np.ndarray) -> None:
    """Make an untrained policy's mean (deterministic) action `action` [A] in [-1, 1]: the output layer's bias is
    set to it (through atanh for the squashed SAC/TD3 actors) and its weights scaled by 0.01, so the mean barely
    depends on the observation at first (as SB3 already does for PPO/A2C)."""
    a = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
    policy = model.policy
    with torch.no_grad():
        if hasattr(policy, "action_net"):  # PPO, A2C: Gaussian mean = action_net(latent), clipped to the bounds
            layer, bias = policy.action_net, torch.as_tensor(a)
        else:  # SAC: actor.mu is the pre-tanh mean; TD3: actor.mu ends with Linear, Tanh
            mu = policy.actor.mu
            layer = mu if isinstance(mu, nn.Linear) else [m for m in mu if isinstance(m, nn.Linear)][-1]
            bias = torch.atanh(torch.as_tensor(np.clip(a, -0.95, 0.95)))
        layer.bias.copy_(bias.to(layer.bias.device))
        layer.weight.mul_(0.01)
        if getattr(policy, "actor_target", None) is not None:
            policy.actor_target.load_state_dict(policy.actor.state_dict())


# ----- policies as controllers -------------------------------------------------------------------------------------
class PolicyController:
    """A trained SB3 model as a `Controller`: `act(obs)` = `model.predict(normalised obs, deterministic=True)`.

    Args:
        model: the SB3 model.
        vec_normalize: the VecNormalize it was trained under (observation statistics), or None.
        deterministic: take the policy's mean action.
        train_env_config: the env config it was trained on (`training_env_config`), or None when unknown; compare
            an env with `env_setting_differences`.
    """

    def __init__(
        self,
        model: BaseAlgorithm,
        vec_normalize: Any = None,
        deterministic: bool = True,
        train_env_config: dict[str, Any] | None = None,
    ):
        self.model = model
        self.vec_normalize = vec_normalize if getattr(vec_normalize, "norm_obs", False) else None
        self.deterministic = deterministic
        self.train_env_config = train_env_config

    def reset(self, seed: int | None = None) -> None:
        """Start an episode. A stochastic policy (`deterministic=False`) given the episode's `seed` reseeds the random
        sources its actions are sampled from (SB3's `set_random_seed`: python's, numpy's and torch's global ones), so
        an episode's actions do not depend on the episodes before it; a deterministic one has nothing to reseed."""
        if seed is not None and not self.deterministic:
            self.model.set_random_seed(int(seed))

    def act(self, observation: np.ndarray) -> np.ndarray:
        """Action [E + 2] for an observation [obs_dim] (or [N, E + 2] for a batch [N, obs_dim])."""
        obs = np.asarray(observation, dtype=np.float32)
        if not np.isfinite(obs).all():
            bad = np.argwhere(~np.isfinite(obs))[:5].tolist()
            raise ValueError(f"the observation has NaN or infinite entries (at {bad}); a policy acts on finite ones")
        if self.vec_normalize is not None:
            obs = self.vec_normalize.normalize_obs(obs).astype(np.float32)
        action, _ = self.model.predict(obs, deterministic=self.deterministic)
        return action


def infer_algo(model_path: str | Path) -> str:
    """The algorithm of a saved model: from the run's `config.yaml` beside it (or one folder up), else from the
    policy class and data stored in the zip."""
    model_path = Path(model_path)
    config = find_run_config(model_path)
    if config and config.get("args", {}).get("algo") in ALGOS:
        return config["args"]["algo"]
    try:
        with zipfile.ZipFile(model_path) as z:
            data = json.loads(z.read("data"))
        module = data["policy_class"]["__module__"]
    except Exception as exc:  # not a zip, no or a damaged `data` entry (zlib, JSON, not a dict): all unreadable
        raise ValueError(f"{model_path} is not a saved stable-baselines3 model ({type(exc).__name__}: {exc})") from None
    for name in ("sac", "td3"):
        if f".{name}." in module:
            return name
    return "ppo" if "n_epochs" in data else "a2c"


def vecnormalize_path_for(model_path: str | Path) -> Path:
    """Where the VecNormalize statistics of a saved model lie: `ckpt_vecnormalize_<n>_steps.pkl` beside a
    checkpoint, else `vecnormalize.pkl` beside the model."""
    model_path = Path(model_path)
    m = re.match(r"^(.*)_(\d+)_steps\.zip$", model_path.name)
    if m:
        return model_path.parent / f"{m.group(1)}_vecnormalize_{m.group(2)}_steps.pkl"
    return model_path.parent / VECNORMALIZE_FILE


def load_policy(
    path: str | Path, algo: str | None = None, device: str = "cpu", deterministic: bool = True
) -> PolicyController:
    """A saved SB3 model as a `Controller`, with its observation normalisation when saved beside it.

    Args:
        path: a model `.zip`, or a run folder (its `model.zip`, else its latest checkpoint).
        algo: `ppo`, `a2c`, `sac`, `td3`, checked against the saved model's; inferred when None (see
            `infer_algo`).
        device: torch device for the policy.
        deterministic: mean actions (as `predict(..., deterministic=True)`).

    Warns (UserWarning) when the run's `config.yaml` (beside the model, or one folder up) says observations were
    normalised but no statistics file lies beside the model: the policy then sees raw observations. The env config
    that file records is the controller's `train_env_config` (None without one).

    Raises:
        FileNotFoundError: no model there. ValueError: unknown algo or another than the model's, a file that is
            not a readable saved SB3 model, or unreadable VecNormalize statistics beside it.
    """
    path = Path(path)
    if path.is_dir():
        candidate = path / MODEL_FILE
        if not candidate.exists():
            latest = latest_checkpoint(path / "checkpoints")
            if latest is None:
                others = sorted(p.name for p in path.glob("*.zip"))  # e.g. best_model.zip: which one is for the user
                name_one = f"; it has {', '.join(others)}: name the file" if others else ""
                raise FileNotFoundError(f"no {MODEL_FILE} nor checkpoint in {path}{name_one}")
            candidate = latest[1]["model"]
        path = candidate
    if not path.exists():
        raise FileNotFoundError(f"no saved model at {path}")
    if algo is not None and algo not in ALGOS:
        raise ValueError(f"unknown algorithm {algo!r}; choose one of {sorted(ALGOS)}")
    saved_algo = infer_algo(path)
    if algo is not None and algo != saved_algo:  # SB3 would fail deep in the policy's constructor
        raise ValueError(f"{path} holds a {saved_algo} model, not {algo}; load it as {saved_algo} (or let the "
                         "algorithm be inferred)")
    try:
        model = ALGOS[saved_algo].load(str(path), device=device)
    except Exception as exc:  # a damaged zip or pickle inside it raises nearly anything (AssertionError, ...)
        raise ValueError(f"{path} is not a readable {saved_algo} model ({type(exc).__name__}: {exc})") from None
    stats_path = vecnormalize_path_for(path)
    vec_normalize = None
    if stats_path.exists():
        vec_normalize = read_vecnormalize(stats_path)
    else:
        normalize = (find_run_config(path) or {}).get("vec_normalize")
        if isinstance(normalize, dict) and normalize.get("norm_obs", True):
            warnings.warn(
                f"{path} was trained on normalised observations (its run's {CONFIG_FILE}: vec_normalize "
                f"{normalize}) but {stats_path} is missing: the policy will see raw observations; copy the "
                f"statistics file beside the model",
                UserWarning,
                stacklevel=2,
            )
    return PolicyController(model, vec_normalize, deterministic, train_env_config=training_env_config(path))
