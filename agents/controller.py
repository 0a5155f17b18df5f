"""Controllers: the `Controller` protocol, `ControlSpec` (what a controller knows about its env), the baselines and
`make_controller`.

A controller maps one observation of `MoERouting-v0` to one action vector. It reads the observation only, by
feature name through the env's `ObservationBuilder` (rebuilt from `ControlSpec`, which is small and picklable), so
the same controller drives the env, a vector env's worker, the evaluator and a live runtime (`AgentRouter`).

| name          | class                  | what it does                                                               |
|---------------|------------------------|----------------------------------------------------------------------------|
| heuristic     | EnergyAwareTTTRouter   | the original system's heuristic (`agents.heuristic`)                       |
| no_control    | NoControl              | zero biases, TTT off (`ControlAction.uncontrolled()`)                      |
| load_balance  | LoadBalance            | DeepSeek-V3 aux-loss-free balancing: bias -= step * sign(load - 1/E)       |
| fixed_ttt     | FixedTTT               | zero biases, one fixed TTT schedule (see `FIXED_TTT_GRID`)                 |
| kcm_greedy    | KcmGreedy              | bias against each expert's KCM energy per token                            |
| random        | RandomController       | uniform random actions, seeded                                             |

Your own controller plugs in by entry point, `module.path:Name` (`make_controller("my_controllers:Cool", env,
gain=0.5)`, or `evaluate.py --policies "my_controllers:Cool(gain=0.5)"`; `examples/custom_controller.py` is one):
`Name(spec, **kwargs)` must return an object with `reset()` and `act(observation)`, as the classes above do. A
controller with randomness of its own takes `reset(seed=None)`: `evaluate.py` passes each episode's seed
(`reset_controller`), so its episodes do not depend on the order they ran in.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import numbers
import os
import sys
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Protocol, runtime_checkable

import numpy as np

from envs import ActionCodec, ActionConfig, ObservationBuilder
from moe_runtime import ControlAction

# (frequency tokens, chunk tokens): a small grid of fixed TTT schedules, from rare and small to frequent and large.
FIXED_TTT_GRID: tuple[tuple[int, int], ...] = (
    (8192, 256),
    (8192, 1024),
    (2048, 256),
    (2048, 1024),
    (512, 256),
    (512, 1024),
)


@runtime_checkable
class Controller(Protocol):
    """What drives the env or a live runtime: `reset()` at an episode's start (optionally `reset(seed=None)`, see
    `reset_controller`), then `act(obs)` every interval.

    `act` takes one observation, float32 [obs_dim] (the env's `observation_names` order), and returns the env's
    action vector, float32 [E + 2] in [-1, 1].
    """

    def reset(self) -> None: ...

    def act(self, observation: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class ControlSpec:
    """What a controller needs to read observations and write actions, without the env itself.

    Attributes:
        num_experts: E.
        tdp_w: the GPU's power limit, W (the observation's power scale).
        slowdown_temp_c: the GPU's thermal slowdown temperature, C.
        interval_s: control interval, s.
        action: the env's `ActionConfig` (bias range, TTT ranges).
        runtime_tokens: runtime tokens served per interval (the heuristic counts tokens with it).
    """

    num_experts: int
    tdp_w: float
    slowdown_temp_c: float
    interval_s: float = 1.0
    action: ActionConfig = field(default_factory=ActionConfig)
    runtime_tokens: int = 1024

    def __post_init__(self) -> None:
        if not isinstance(self.num_experts, int) or self.num_experts < 1:
            raise ValueError(f"ControlSpec.num_experts must be a positive int, got {self.num_experts!r}")
        for name in ("tdp_w", "interval_s", "runtime_tokens"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ControlSpec.{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def from_env(cls, env: Any) -> ControlSpec:
        """The spec of a `MoERouting-v0` env: a gymnasium env (wrapped or not), an SB3 `VecEnv` of them, or a
        `ControlSpec` (returned as it is).

        Raises:
            TypeError: `env` is none of these.
        """
        if isinstance(env, ControlSpec):
            return env
        if hasattr(env, "get_attr") and hasattr(env, "num_envs"):  # an SB3 VecEnv: ask worker 0
            builder = env.get_attr("observation_builder", [0])[0]
            config = env.get_attr("config", [0])[0]
        else:
            unwrapped = getattr(env, "unwrapped", env)
            builder = getattr(unwrapped, "observation_builder", None)
            config = getattr(unwrapped, "config", None)
        if not isinstance(builder, ObservationBuilder) or config is None:
            raise TypeError(
                "make a controller from a MoERouting-v0 env, a VecEnv of them or a ControlSpec; "
                f"got {type(env).__name__}"
            )
        i = builder.index
        tdp_w = float(builder.scale[i["power_w"]])
        return cls(
            num_experts=builder.num_experts,
            tdp_w=tdp_w,
            slowdown_temp_c=float(builder.slowdown_temp_c),
            interval_s=float(builder.scale[i["interval_energy_j"]]) / tdp_w,
            action=config.action,
            runtime_tokens=int(config.runtime_tokens),
        )

    @functools.cached_property
    def builder(self) -> ObservationBuilder:
        """The env's `ObservationBuilder` (same arguments, so the same names, scales and bounds)."""
        return ObservationBuilder(
            self.num_experts, self.tdp_w, self.slowdown_temp_c, self.interval_s, self.action.bias_range
        )

    @functools.cached_property
    def codec(self) -> ActionCodec:
        """The env's `ActionCodec`."""
        return ActionCodec(self.num_experts, self.action)

    def raw(self, obs: np.ndarray, name: str) -> float:
        """Feature `name` of one observation in its unit."""
        return self.builder.raw(np.asarray(obs), name)

    def raw_experts(self, obs: np.ndarray, stem: str) -> np.ndarray:
        """Per-expert feature `stem` (e.g. `load_fraction`) of one observation in its unit, float64 [E]."""
        return self.builder.raw_experts(np.asarray(obs), stem)

    def encode(self, control: ControlAction) -> np.ndarray:
        """The action vector for a `ControlAction`, float32 [E + 2]."""
        return self.codec.encode(control)

    def check_observation(self, obs: np.ndarray) -> np.ndarray:
        """obs as float32 [obs_dim]; ValueError on another shape or on a NaN or infinite entry (the env's
        observations are always finite: a non-finite one comes from elsewhere and would only surface later as a
        NaN action)."""
        obs = np.asarray(obs, dtype=np.float32)
        if obs.shape != (self.builder.size,):
            raise ValueError(
                f"a controller takes one observation of shape ({self.builder.size},), got {obs.shape}; "
                "step vector envs one observation at a time"
            )
        bad = np.flatnonzero(~np.isfinite(obs))
        if bad.size:
            names = [self.builder.names[i] for i in bad[:5]]
            more = f" and {bad.size - 5} more" if bad.size > 5 else ""
            raise ValueError(f"the observation has NaN or infinite entries: {', '.join(names)}{more}")
        return obs


class NoControl:
    """No control: zero biases, TTT off, every interval."""

    def __init__(self, spec: ControlSpec):
        self.spec = spec
        self._action = spec.encode(ControlAction.uncontrolled(spec.num_experts))

    def reset(self) -> None:
        pass

    def act(self, observation: np.ndarray) -> np.ndarray:
        self.spec.check_observation(observation)
        return self._action.copy()


class LoadBalance:
    """Auxiliary-loss-free load balancing (DeepSeek-V3): each expert's bias moves by a fixed step against the sign of
    its load error, `b_e <- clip(b_e - step * sign(load_e - 1/E), -bias_range, bias_range)`; TTT off.

    The current biases are read from the observation (`bias_e*`), so the controller is stateless.

    Args:
        spec: the env's `ControlSpec`.
        step: bias change per interval (softmax-score units; the bias range is `spec.action.bias_range`).
    """

    def __init__(self, spec: ControlSpec, step: float = 0.01):
        require_finite_numbers("LoadBalance", step=step)
        if not step > 0:
            raise ValueError(f"LoadBalance step must be positive, got {step}")
        self.spec = spec
        self.step = float(step)

    def reset(self) -> None:
        pass

    def act(self, observation: np.ndarray) -> np.ndarray:
        obs, spec = self.spec.check_observation(observation), self.spec
        load = spec.raw_experts(obs, "load_fraction")  # [E], sums to 1
        bias = spec.raw_experts(obs, "bias")  # [E]
        new = np.clip(
            bias - self.step * np.sign(load - 1.0 / spec.num_experts), -spec.action.bias_range, spec.action.bias_range
        )
        return spec.encode(ControlAction(tuple(new), ttt_frequency_tokens=0))


class FixedTTT:
    """Zero biases and a fixed TTT schedule.

    Args:
        spec: the env's `ControlSpec`.
        frequency_tokens: tokens between updates (clamped to the action's range by the codec).
        chunk_tokens: tokens per update (snapped to the action's chunk sizes).
    """

    def __init__(self, spec: ControlSpec, frequency_tokens: int = 2048, chunk_tokens: int = 512):
        require_finite_numbers("FixedTTT", frequency_tokens=frequency_tokens, chunk_tokens=chunk_tokens)
        if frequency_tokens <= 0 or chunk_tokens <= 0:
            raise ValueError(
                f"FixedTTT needs positive frequency_tokens and chunk_tokens, got {frequency_tokens}, {chunk_tokens}"
            )
        self.spec = spec
        self.frequency_tokens, self.chunk_tokens = int(frequency_tokens), int(chunk_tokens)
        self._action = spec.encode(ControlAction((0.0,) * spec.num_experts, self.frequency_tokens, self.chunk_tokens))

    def reset(self) -> None:
        pass

    def act(self, observation: np.ndarray) -> np.ndarray:
        self.spec.check_observation(observation)
        return self._action.copy()


class KcmGreedy:
    """Bias against each expert's predicted energy per token (the KCM's `expert_cost_ratio_e*` features):
    `b_e = -strength * bias_range * (r_e - mean r) / max |r - mean r|`; TTT off.

    Args:
        spec: the env's `ControlSpec`.
        strength: share of the bias range given to the costliest expert, in (0, 1].
    """

    def __init__(self, spec: ControlSpec, strength: float = 0.5):
        require_finite_numbers("KcmGreedy", strength=strength)
        if not 0 < strength <= 1:
            raise ValueError(f"KcmGreedy strength must be in (0, 1], got {strength}")
        self.spec = spec
        self.strength = float(strength)

    def reset(self) -> None:
        pass

    def act(self, observation: np.ndarray) -> np.ndarray:
        obs, spec = self.spec.check_observation(observation), self.spec
        ratio = spec.raw_experts(obs, "expert_cost_ratio")  # [E], energy per token / experts' mean
        centred = ratio - ratio.mean()
        span = np.abs(centred).max()
        bias = -self.strength * spec.action.bias_range * (centred / span if span > 0 else centred)
        return spec.encode(ControlAction(tuple(bias), ttt_frequency_tokens=0))


def require_finite_numbers(owner: str, **values: Any) -> None:
    """A TypeError naming every argument that is not a finite real number (a string from a policy spec such as
    `strength=abc`, a bool, NaN, inf), before a range check would fail on it with a message about types."""
    bad = [
        f"{name} must be a finite number, got {value!r}"
        for name, value in values.items()
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
    ]
    if bad:
        raise TypeError(f"{owner}: " + "; ".join(bad))


class RandomController:
    """Uniform random actions in [-1, 1]^(E + 2) from a seeded generator.

    `reset(seed=episode_seed)` (as `evaluate.py` calls it) draws the episode's actions from (controller seed, episode
    seed), so they do not depend on which episodes ran before (a resumed or reordered evaluation plays the same ones);
    a plain `reset()` goes on with the generator.
    """

    def __init__(self, spec: ControlSpec, seed: int | None = 0):
        bad_int = isinstance(seed, (int, np.integer)) and (isinstance(seed, bool) or seed < 0)
        rng_like = (int, np.integer, np.random.Generator, np.random.SeedSequence, np.random.BitGenerator)
        if bad_int or not (seed is None or isinstance(seed, rng_like)):  # a Generator or SeedSequence passes through
            raise ValueError(f"random controller: seed must be None or a non-negative integer, got {seed!r}")
        self.spec = spec
        self.rng = np.random.default_rng(seed)
        self._base = int(np.random.default_rng(seed).integers(2**63))  # the controller's entropy, whatever seeded it

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self.rng = np.random.default_rng([self._base, int(seed)])

    def act(self, observation: np.ndarray) -> np.ndarray:
        self.spec.check_observation(observation)
        return self.rng.uniform(-1.0, 1.0, self.spec.codec.size).astype(np.float32)


def reset_controller(controller: Controller, seed: int | None) -> None:
    """Start a controller's episode: `controller.reset(seed=seed)` where its `reset` takes a `seed` (Gymnasium's
    convention; `RandomController`, `PolicyController`), else `controller.reset()`."""
    try:
        takes_seed = "seed" in inspect.signature(controller.reset).parameters
    except (TypeError, ValueError):  # a builtin or C-implemented reset without a signature
        takes_seed = False
    if takes_seed:
        controller.reset(seed=seed)
    else:
        controller.reset()


def _heuristic(env: Any, spec: ControlSpec, **kw):
    from agents.heuristic import EnergyAwareTTTRouter

    unwrapped = getattr(env, "unwrapped", env)
    config = getattr(unwrapped, "model_config", None)
    if config is None and hasattr(env, "get_attr") and hasattr(env, "num_envs"):
        config = env.get_attr("model_config", [0])[0]
    kw.setdefault("config", config)
    kw.setdefault("kernel_cost_model", None)
    kw.setdefault("gpu_system_monitor", None)
    return EnergyAwareTTTRouter(spec=spec, **kw)


CONTROLLERS = {
    "heuristic": _heuristic,
    "no_control": lambda env, spec, **kw: NoControl(spec, **kw),
    "load_balance": lambda env, spec, **kw: LoadBalance(spec, **kw),
    "fixed_ttt": lambda env, spec, **kw: FixedTTT(spec, **kw),
    "kcm_greedy": lambda env, spec, **kw: KcmGreedy(spec, **kw),
    "random": lambda env, spec, **kw: RandomController(spec, **kw),
}


def load_entry_point(name: str) -> Any:
    """The callable that `module.path:Name` names (Gymnasium's entry-point form): a user's controller class or
    factory, imported from a module on `sys.path` (`PYTHONPATH`) or in the current directory.

    Raises:
        ValueError: the name is not `module.path:Name` (a file path is refused with the module path to give
            instead), the module or one it imports is not found, or it has no callable `Name`; each naming what
            is missing. Any other error raised inside the module (a bug) is raised as it is: it points at your code.
    """
    module_name, _, attr = name.partition(":")
    if module_name.endswith(".py") or "/" in module_name or "\\" in module_name:
        path = PurePath(module_name.replace("\\", "/")).with_suffix("")
        relative = not path.is_absolute() and ".." not in path.parts
        module = f"{'.'.join(path.parts) if relative else path.name}:{attr or 'Name'}"
        where = "from this folder" if relative else f"run from {path.parent} or with it on PYTHONPATH"
        raise ValueError(f"controller {name!r}: give a module path, not a file: {module} ({where})")
    if not module_name or not all(part.isidentifier() for part in module_name.split(".")) or not attr.isidentifier():
        raise ValueError(f"controller {name!r} is not module.path:Name (a class or factory in an importable module)")
    try:
        module = _import_here_too(module_name)
    except ModuleNotFoundError as exc:
        parents = {".".join(module_name.split(".")[: i + 1]) for i in range(module_name.count(".") + 1)}
        if exc.name not in parents:  # the module is there; one of its own imports is not
            raise ValueError(f"controller {name!r}: {module_name!r} imports {exc.name!r}, which cannot be found "
                             f"({exc})") from exc  # fmt: skip
        raise ValueError(f"controller {name!r}: cannot import {module_name!r} ({exc}); run from the folder that "
                         "holds it, or put that folder on PYTHONPATH") from exc  # fmt: skip
    factory = getattr(module, attr, None)
    if factory is None:
        where = getattr(module, "__file__", None) or "a namespace package"
        raise ValueError(f"controller {name!r}: module {module_name!r} (imported from {where}) has no {attr!r}")
    if not callable(factory):
        raise ValueError(f"controller {name!r}: {module_name}.{attr} is a {type(factory).__name__}, not a class or "
                         "factory")  # fmt: skip
    return factory


def _import_here_too(module_name: str) -> Any:
    """`importlib.import_module`, and where the module's top package is not on `sys.path`, again with the current
    directory appended to it (as `python -m` and uvicorn find `module:app`): `python examples/x.py` puts `examples/`
    first on the path, not the folder it was started in."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        here = os.getcwd()
        if exc.name != module_name.split(".")[0] or here in sys.path or "" in sys.path:
            raise
        sys.path.append(here)
        return importlib.import_module(module_name)


def check_controller(name: str, **kwargs) -> None:
    """Check, before any env is built (or any model pretrained), what `make_controller(name, env, **kwargs)` can be
    checked for without one: the name, the argument names and, for an entry point, that it imports, can be called
    as `Name(spec, **kwargs)` and, when it is a class, has `reset()` and `act(observation)`. Argument values are
    checked when it is built.

    Raises:
        ValueError, TypeError: as `make_controller` would, in one line.
    """
    if ":" not in name:
        if name not in CONTROLLERS:
            raise ValueError(f"unknown controller {name!r}; choose one of {sorted(CONTROLLERS)}")
        allowed = controller_arguments(name)
        if allowed is not None and (unknown := sorted(set(kwargs) - set(allowed))):
            # said here, not as a TypeError from the class's __init__ that lists nothing
            raise TypeError(f"{name}: unknown argument(s) {unknown}; it takes {', '.join(allowed) or 'none'}")
        return
    factory = load_entry_point(name)
    allowed = _own_arguments(factory)
    if allowed is not None and (unknown := sorted(set(kwargs) - set(allowed))):
        raise TypeError(f"{name}: unknown argument(s) {unknown}; it takes {', '.join(allowed) or 'none'}")
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or C callable: left to the call
        signature = None
    if signature is not None:
        try:
            signature.bind(None, **kwargs)
        except TypeError as exc:
            call = ", ".join(["spec", *(f"{k}=..." for k in kwargs)])
            raise TypeError(f"{name} cannot be called as {name.partition(':')[2]}({call}): {exc}") from None
    missing = [m for m in ("reset", "act") if not callable(getattr(factory, m, None))]
    if inspect.isclass(factory) and missing:
        raise TypeError(f"{name} is a class without {' and '.join(missing)}(): a Controller has reset() and "
                        "act(observation) -> action")  # fmt: skip


def make_controller(name: str, env: Any, **kwargs) -> Controller:
    """A controller by name for an env.

    Args:
        name: one of `CONTROLLERS` (heuristic, no_control, load_balance, fixed_ttt, kcm_greedy, random), or your
            own as `module.path:Name` (`load_entry_point`), built as `Name(spec, **kwargs)` with the env's
            `ControlSpec`, as the built-in ones are.
        env: a `MoERouting-v0` env (wrapped or not), an SB3 VecEnv of them, or a `ControlSpec` (the heuristic then
            needs `config=` a `MoEConfig` or nothing: it only reads the expert count from the spec).
        **kwargs: the controller's own arguments (e.g. `step=` for load_balance, `frequency_tokens=` and
            `chunk_tokens=` for fixed_ttt, `seed=` for random, `ttt_update_frequency=` for heuristic).

    Raises:
        ValueError: an unknown name, or an entry point that does not load. TypeError: an unknown argument or env,
            or an entry point that built no `Controller` (`reset()` and `act(observation)`).
    """
    check_controller(name, **kwargs)
    spec = ControlSpec.from_env(env)
    if ":" in name:
        controller = load_entry_point(name)(spec, **kwargs)
        if missing := [m for m in ("reset", "act") if not callable(getattr(controller, m, None))]:
            raise TypeError(f"{name} built a {type(controller).__name__} without {' and '.join(missing)}(): a "
                            "Controller has reset() and act(observation) -> action")  # fmt: skip
        return controller
    return CONTROLLERS[name](env, spec, **kwargs)


def controller_arguments(name: str) -> list[str] | None:
    """The keyword arguments the controller `name` takes (beside its spec); None for a controller whose class this
    does not know (its arguments are then left to its constructor)."""
    from agents.heuristic import EnergyAwareTTTRouter

    kind = {"heuristic": EnergyAwareTTTRouter, "no_control": NoControl, "load_balance": LoadBalance,
            "fixed_ttt": FixedTTT, "kcm_greedy": KcmGreedy, "random": RandomController}.get(name)  # fmt: skip
    if kind is None:
        return None
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in inspect.signature(kind).parameters.values() if p.kind in named and p.name != "spec"]


def _own_arguments(factory: Any) -> list[str] | None:
    """The keyword arguments an entry point takes after its first (the spec); None when it takes any (`**kwargs`)
    or its signature cannot be read."""
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in params[1:] if p.kind in named]
