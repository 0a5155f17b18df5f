"""Token demand: how many deployment tokens per second the GPU must serve, interval by interval.

Demand is given as a fraction of the deployment's *capacity* (tokens/s the GPU serves with uncontrolled routing at
full clock, from the cost model), so that the same workload means the same load at any `DeploymentScale`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PROFILES = ("constant", "step", "diurnal", "bursty")


@dataclass(frozen=True)
class Workload:
    """A demand profile.

    Attributes:
        profile: `constant`, `step`, `diurnal`, `bursty`, or `random` (one of the four drawn per episode).
        load: mean demand as a fraction of capacity (0.6 = 60% of what the GPU serves flat out at full clock).
        amplitude: relative swing of `step` and `diurnal` demand (0.5: from 0.5x to 1.5x `load`).
        period_intervals: intervals per diurnal cycle; the step comes at half of it.
        burst_prob: chance per interval that a `bursty` burst starts; bursts last 1-4 intervals at 2x.
        randomize_load: draw `load` per episode from [0.5 load, 1.5 load].
    """

    profile: str = "random"
    load: float = 0.6
    amplitude: float = 0.5
    period_intervals: int = 32
    burst_prob: float = 0.1
    randomize_load: bool = True

    def __post_init__(self) -> None:
        if self.profile not in PROFILES + ("random",):
            raise ValueError(f"Workload.profile {self.profile!r} is not one of {PROFILES + ('random',)}")
        if not 0.0 < self.load <= 3.0:
            raise ValueError(f"Workload.load must be in (0, 3] (a fraction of capacity), got {self.load}")
        if not 0.0 <= self.amplitude < 1.0:
            raise ValueError(f"Workload.amplitude must be in [0, 1), got {self.amplitude}")
        period = self.period_intervals
        whole = isinstance(period, (int, np.integer)) or (isinstance(period, float) and period.is_integer())
        if isinstance(period, bool) or not whole or period < 2:
            raise ValueError(f"Workload.period_intervals must be a whole number >= 2, got {period!r}")
        object.__setattr__(self, "period_intervals", int(period))  # 32.0 from a YAML or --env-kwargs file is 32
        if not 0.0 <= self.burst_prob <= 1.0:
            raise ValueError(f"Workload.burst_prob must be in [0, 1], got {self.burst_prob}")


class DemandTrace:
    """One episode's demand, drawn from a `Workload` with the episode's generator.

    `load_at(i)` is the demand of interval i as a fraction of capacity.
    """

    def __init__(self, workload: Workload, intervals: int, rng: np.random.Generator):
        self.profile = workload.profile if workload.profile != "random" else str(rng.choice(PROFILES))
        load = workload.load * (rng.uniform(0.5, 1.5) if workload.randomize_load else 1.0)
        n, a, p = intervals, workload.amplitude, workload.period_intervals
        i = np.arange(n)
        if self.profile == "constant":
            loads = np.full(n, load)
        elif self.profile == "step":
            start = int(rng.integers(n // 4, max(n // 4 + 1, 3 * n // 4)))
            loads = np.where(i < start, load * (1 - a), load * (1 + a))
        elif self.profile == "diurnal":
            phase = rng.uniform(0, 2 * math.pi)
            loads = load * (1 + a * np.sin(2 * math.pi * i / p + phase))
        else:  # bursty
            loads = np.full(n, load * 0.8)
            j = 0
            while j < n:
                if rng.random() < workload.burst_prob:
                    length = int(rng.integers(1, 5))
                    loads[j : j + length] = load * 2.0
                    j += length
                else:
                    j += 1
        self.loads = np.clip(loads, 0.02, 3.0)
        self.mean_load = float(load)

    def load_at(self, interval: int) -> float:
        """Demand in interval `interval` as a fraction of the calibrated capacity (the last one past the end)."""
        return float(self.loads[min(interval, len(self.loads) - 1)])
