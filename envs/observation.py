"""The observation: a float32 vector of named, fixed-scale features, usable inside and outside the env.

Every feature is `raw / scale`, clipped to fixed bounds; no running statistics. `ObservationBuilder.names` lists
them; `ObservationBuilder.raw(obs, name)` turns an entry back into its unit, so a controller can read
`temperature_c` in C from any process that knows the builder's arguments.

| name                         | unit / meaning                                   | scale            | bounds    |
|------------------------------|--------------------------------------------------|------------------|-----------|
| power_w                      | mean board power over the interval, W            | TDP              | [0, 2]    |
| interval_energy_j            | energy of the interval, J                        | TDP x interval   | [0, 2]    |
| temperature_c                | GPU temperature at the interval's end, C         | 100              | [0, 1.5]  |
| temp_headroom_c              | slowdown temperature minus temperature, C        | 50               | [-1, 2]   |
| sm_clock_ratio               | mean SM clock / boost clock                      | 1                | [0, 1.2]  |
| gpu_utilization              | SM busy share of the interval                    | 1                | [0, 1]    |
| memory_pressure              | memory used / total                              | 1                | [0, 1]    |
| throttled                    | 1 if the clock was held below boost by a limit   | 1                | [0, 1]    |
| pred_energy_j_e{i}           | KCM: expert i's energy next interval, J          | TDP x interval   | [0, 2]    |
| pred_latency_ms_e{i}         | KCM: expert i's busy time next interval, ms      | 1000 x interval  | [0, 2]    |
| expert_cost_ratio_e{i}       | KCM: expert i's energy per token / experts' mean | 1                | [0, 5]    |
| pred_total_energy_j          | KCM: whole interval's energy, J                  | TDP x interval   | [0, 3]    |
| pred_total_latency_ms        | KCM: whole interval's busy time, ms              | 1000 x interval  | [0, 5]    |
| load_fraction_e{i}           | share of routed slots on expert i                | 1                | [0, 1]    |
| loss                         | mean next-token loss of the interval, nats       | 5                | [0, 2]    |
| loss_delta                   | change from the previous interval, nats          | 1                | [-5, 5]   |
| loss_gap                     | loss minus the uncontrolled model's (paired), nats | 1                | [-5, 5]   |
| router_entropy               | routing entropy / log(E)                         | log(E)           | [0, 1]    |
| tokens_since_ttt             | runtime tokens since the last TTT update         | 8192             | [0, 4]    |
| bias_e{i}                    | current selection bias of expert i               | bias_range       | [-1, 1]   |
| ttt_frequency                | log2(tokens between updates) / 16, 0 when off    | 1                | [0, 1]    |
| ttt_chunk                    | log2(chunk tokens) / 16                          | 1                | [0, 1]    |
| ttt_grad_norm                | last update's mean gradient norm (log1p)         | 1                | [0, 20]   |
| ttt_activation_energy        | last update's mean activation energy (log1p)     | 1                | [0, 30]   |
| demand                       | token demand of the interval served / capacity   | 1                | [0, 4]    |
| backlog                      | tokens carried over / capacity x interval        | 1                | [0, 10]   |
| energy_from_counter          | 1 if energy came from a hardware counter         | 1                | [0, 1]    |
| sample_staleness_s           | age of the newest telemetry sample, s            | 1                | [0, 10]   |
"""

from __future__ import annotations

import math

import numpy as np

_TEMPLATE = [
    # name, scale key, low, high
    ("power_w", "tdp_w", 0.0, 2.0),
    ("interval_energy_j", "interval_energy_budget_j", 0.0, 2.0),
    ("temperature_c", 100.0, 0.0, 1.5),
    ("temp_headroom_c", 50.0, -1.0, 2.0),
    ("sm_clock_ratio", 1.0, 0.0, 1.2),
    ("gpu_utilization", 1.0, 0.0, 1.0),
    ("memory_pressure", 1.0, 0.0, 1.0),
    ("throttled", 1.0, 0.0, 1.0),
    ("pred_energy_j_e{i}", "interval_energy_budget_j", 0.0, 2.0),
    ("pred_latency_ms_e{i}", "interval_ms", 0.0, 2.0),
    ("expert_cost_ratio_e{i}", 1.0, 0.0, 5.0),
    ("pred_total_energy_j", "interval_energy_budget_j", 0.0, 3.0),
    ("pred_total_latency_ms", "interval_ms", 0.0, 5.0),
    ("load_fraction_e{i}", 1.0, 0.0, 1.0),
    ("loss", 5.0, 0.0, 2.0),
    ("loss_delta", 1.0, -5.0, 5.0),
    ("loss_gap", 1.0, -5.0, 5.0),
    ("router_entropy", "log_experts", 0.0, 1.0),
    ("tokens_since_ttt", 8192.0, 0.0, 4.0),
    ("bias_e{i}", "bias_range", -1.0, 1.0),
    ("ttt_frequency", 1.0, 0.0, 1.0),
    ("ttt_chunk", 1.0, 0.0, 1.0),
    ("ttt_grad_norm", 1.0, 0.0, 20.0),
    ("ttt_activation_energy", 1.0, 0.0, 30.0),
    ("demand", 1.0, 0.0, 4.0),
    ("backlog", 1.0, 0.0, 10.0),
    ("energy_from_counter", 1.0, 0.0, 1.0),
    ("sample_staleness_s", 1.0, 0.0, 10.0),
]


class ObservationBuilder:
    """Builds observation vectors from raw figures.

    Args:
        num_experts: E.
        tdp_w: the GPU's power limit, W (scale of power and energy).
        slowdown_temp_c: the GPU's slowdown temperature, C.
        interval_s: control interval, s.
        bias_range: the action's largest bias.
    """

    def __init__(self, num_experts: int, tdp_w: float, slowdown_temp_c: float, interval_s: float, bias_range: float):
        self.num_experts = num_experts
        self.slowdown_temp_c = slowdown_temp_c
        scales = {
            "tdp_w": tdp_w,
            "interval_energy_budget_j": tdp_w * interval_s,
            "interval_ms": 1000.0 * interval_s,
            "log_experts": math.log(num_experts) if num_experts > 1 else 1.0,
            "bias_range": bias_range,
        }
        names, scale, low, high = [], [], [], []
        for name, s, lo, hi in _TEMPLATE:
            expanded = [name.format(i=i) for i in range(num_experts)] if "{i}" in name else [name]
            for n in expanded:
                names.append(n)
                scale.append(scales[s] if isinstance(s, str) else s)
                low.append(lo)
                high.append(hi)
        self.names = names
        self.index = {n: i for i, n in enumerate(names)}
        self.scale = np.array(scale, dtype=np.float64)
        self.low = np.array(low, dtype=np.float32)
        self.high = np.array(high, dtype=np.float32)

    @property
    def observation_names(self) -> list[str]:
        """The entries' names in order (`names`; the env's `observation_names`, as DESIGN.md calls them)."""
        return self.names

    @property
    def size(self) -> int:
        return len(self.names)

    def build(self, figures: dict) -> np.ndarray:
        """float32 [size] from raw figures keyed by feature name (per-expert ones as arrays under the stem,
        e.g. `pred_energy_j_e` -> [E]); `temp_headroom_c` is derived from `temperature_c` when absent.

        Raises:
            KeyError: a feature is missing.
        """
        raw = np.empty(self.size, dtype=np.float64)
        figures = dict(figures)
        figures.setdefault("temp_headroom_c", self.slowdown_temp_c - figures["temperature_c"])
        for name, i in self.index.items():
            if name[-1].isdigit() and "_e" in name:
                stem, e = name.rsplit("_e", 1)
                raw[i] = figures[stem + "_e"][int(e)]
            else:
                raw[i] = figures[name]
        raw = np.nan_to_num(raw, nan=0.0, posinf=1e9, neginf=-1e9)
        return np.clip(raw / self.scale, self.low, self.high).astype(np.float32)

    def raw(self, obs: np.ndarray, name: str) -> float | np.ndarray:
        """The entry `name` of `obs` in its own unit (clipping is not undone): a float for one observation, [N] for
        a batch [N, size]."""
        i = self.index[name]
        value = np.asarray(obs, dtype=np.float64)[..., i] * self.scale[i]
        return float(value) if value.ndim == 0 else value

    def raw_experts(self, obs: np.ndarray, stem: str) -> np.ndarray:
        """The per-expert entries `stem_e0 ... stem_e{E-1}` of `obs` in their unit, [E]."""
        idx = [self.index[f"{stem}_e{e}"] for e in range(self.num_experts)]
        return np.asarray(obs, dtype=np.float64)[..., idx] * self.scale[idx]
