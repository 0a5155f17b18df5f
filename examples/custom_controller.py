"""A controller of your own, plugged into the tools by entry point (`module.path:Name`, as Gymnasium names envs).

    python evaluate.py --policies "examples.custom_controller:Thermostat(max_bias=0.5),no_control" --seeds 0-4
    python examples/serve_with_agent.py --controller examples.custom_controller:Thermostat
    agents.make_controller("examples.custom_controller:Thermostat", env, max_bias=0.5)

The tools build it as `Name(spec, **kwargs)`, with the env's `agents.ControlSpec`, and call `reset()` at each
episode's start and `act(observation)` every interval; `act` returns the env's action vector, float32 [E + 2] in
[-1, 1]. The spec reads observation entries by name in their own units and encodes a `ControlAction`, so the
controller never depends on the observation's layout. The tools find a module from the folder they are run in
(here, the repository root) or on PYTHONPATH; name it by module path, not file (`examples.custom_controller`).
"""

from __future__ import annotations

import numbers

import numpy as np

from agents import ControlSpec
from moe_runtime import ControlAction


class Thermostat:
    """Steer tokens away from costly experts only as the GPU nears its thermal slowdown, TTT off.

    The bias on expert e is `-max_bias * bias_range * heat * (r_e - mean r) / max |r - mean r|`, where r is the
    kernel cost model's energy per token of each expert relative to their mean (`expert_cost_ratio_e*`) and
    `heat` rises from 0 at `start_c` below the slowdown temperature to 1 at the slowdown temperature.

    Args:
        spec: the env's `ControlSpec`.
        max_bias: the share of the bias range given to the costliest expert when hot, in (0, 1].
        start_c: degrees below the slowdown temperature at which it starts to steer, > 0.
    """

    def __init__(self, spec: ControlSpec, max_bias: float = 0.5, start_c: float = 30.0):
        for name, value in (("max_bias", max_bias), ("start_c", start_c)):  # a string from a command line, say
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"Thermostat {name} must be a number, got {value!r}")
        if not 0 < max_bias <= 1:
            raise ValueError(f"Thermostat max_bias must be in (0, 1], got {max_bias}")
        if not start_c > 0:
            raise ValueError(f"Thermostat start_c must be > 0, got {start_c}")
        self.spec, self.max_bias, self.start_c = spec, float(max_bias), float(start_c)

    def reset(self) -> None:
        pass  # no state kept across intervals

    def act(self, observation: np.ndarray) -> np.ndarray:
        spec = self.spec
        obs = spec.check_observation(observation)  # a clear error for a wrong shape or NaN
        headroom_c = spec.raw(obs, "temp_headroom_c")  # slowdown temperature - temperature, C
        heat = float(np.clip(1.0 - headroom_c / self.start_c, 0.0, 1.0))
        ratio = spec.raw_experts(obs, "expert_cost_ratio")  # [E]
        centred = ratio - ratio.mean()
        span = float(np.abs(centred).max())
        bias = -self.max_bias * spec.action.bias_range * heat * (centred / span if span > 0 else centred)
        return spec.encode(ControlAction(tuple(bias), ttt_frequency_tokens=0))
