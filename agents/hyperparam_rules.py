"""The values each common stable-baselines3 hyperparameter may take, so that `agents.sb3.check_hyperparams` turns a
bad one into a one-line error naming it and its range before any env is built (not a traceback from inside SB3 or
torch, minutes later)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

INIT_ACTIONS = ("no_control", "zero")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and (isinstance(v, int) or math.isfinite(v))


def _positive_or_schedule(v: Any) -> bool:
    """A finite number > 0, or `lin_<number > 0>` (the linear decay `build_algo_kwargs` makes a schedule of)."""
    if isinstance(v, str) and v.startswith("lin_"):
        try:
            v = float(v[4:])
        except ValueError:
            return False
    return finite(v) and v > 0


def net_arch_ok(v: Any) -> bool:
    """A list of positive ints, or a dict of them (`{pi: [...], vf: [...]}` or `{pi: [...], qf: [...]}`)."""
    layers = lambda x: isinstance(x, list) and all(_is_int(n) and n > 0 for n in x)  # noqa: E731
    return layers(v) or (isinstance(v, dict) and all(isinstance(k, str) and layers(x) for k, x in v.items()))


_SCHEDULE = "a finite number > 0 or lin_<number > 0> (linear decay)"
_POSITIVE_INT = (lambda v: _is_int(v) and v > 0, "a positive integer")
_UNIT = (lambda v: finite(v) and 0 < v <= 1, "a number in (0, 1]")
_NON_NEGATIVE = (lambda v: finite(v) and v >= 0, "a finite number >= 0")
_POSITIVE = (lambda v: finite(v) and v > 0, "a finite number > 0")
# the values each common hyperparameter may take: (check, what is allowed); other keys are left to SB3
VALUE_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "learning_rate": (_positive_or_schedule, _SCHEDULE),
    "clip_range": (_positive_or_schedule, _SCHEDULE),
    "clip_range_vf": (lambda v: v is None or _positive_or_schedule(v), f"null or {_SCHEDULE}"),
    "gamma": _UNIT,
    "tau": _UNIT,
    "gae_lambda": (lambda v: finite(v) and 0 <= v <= 1, "a number in [0, 1]"),
    **dict.fromkeys(
        ("n_steps", "batch_size", "n_epochs", "buffer_size", "target_update_interval", "policy_delay"), _POSITIVE_INT
    ),
    "stats_window_size": _POSITIVE_INT,
    "learning_starts": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "critic_warmup": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (env steps)"),
    "gradient_steps": (lambda v: _is_int(v) and (v > 0 or v == -1), "a positive integer, or -1 (one per env step)"),
    "sde_sample_freq": (lambda v: _is_int(v) and v >= -1, "an integer >= -1"),
    "train_freq": (
        lambda v: (
            (_is_int(v) and v > 0)
            or (isinstance(v, list) and len(v) == 2 and _is_int(v[0]) and v[0] > 0 and v[1] in ("step", "episode"))
        ),
        "a positive integer or [n, step|episode]",
    ),
    "vf_coef": _NON_NEGATIVE,
    "max_grad_norm": _POSITIVE,
    "target_kl": (lambda v: v is None or (finite(v) and v > 0), "null or a finite number > 0"),
    "rms_prop_eps": _POSITIVE,
    "noise_std": _NON_NEGATIVE,
    "target_policy_noise": _NON_NEGATIVE,
    "target_noise_clip": _NON_NEGATIVE,
    "target_entropy": (lambda v: v == "auto" or finite(v), "auto or a finite number"),
    "init_action": (lambda v: v in INIT_ACTIONS, f"one of {list(INIT_ACTIONS)}"),
    "noise_type": (lambda v: v in (None, "normal", "ornstein-uhlenbeck"), "normal or ornstein-uhlenbeck"),
    "normalize": (
        lambda v: v is None or isinstance(v, (bool, dict)),
        "true, false or a mapping of VecNormalize options",
    ),
    "policy_kwargs": (lambda v: v is None or isinstance(v, dict), "a mapping, e.g. {net_arch: [64, 64]}"),
}
NORMALIZE_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "norm_obs": (lambda v: isinstance(v, bool), "true or false"),
    "norm_reward": (lambda v: isinstance(v, bool), "true or false"),
    "clip_obs": _POSITIVE,
    "clip_reward": _POSITIVE,
    "gamma": _UNIT,
    "epsilon": _POSITIVE,
}


def ent_coef_ok(algo: str, v: Any) -> bool:
    """A finite number >= 0; for SAC also `auto` or `auto_<initial value > 0>`."""
    if algo == "sac" and isinstance(v, str) and v.startswith("auto"):
        try:
            return v == "auto" or (v.startswith("auto_") and math.isfinite(x := float(v[5:])) and x > 0)
        except ValueError:
            return False
    return finite(v) and v >= 0
