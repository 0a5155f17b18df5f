"""`StepCost`: what `KernelCostModel.predict_step` returns for one runtime step or control interval."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_FIELDS = ("compute_s", "memory_s", "overhead_s", "flops", "bytes", "energy_j", "latency_s")


@dataclass(frozen=True)
class CostParts:
    """Cost of a group of launches; floats for a total, float64 [E] arrays for the per-expert split.

    Attributes:
        compute_s: compute-bound seconds at full clock (stretch with the SM clock).
        memory_s: memory-bound seconds at full clock (stretch by telemetry's `memory_time_factor`).
        overhead_s: launch-overhead seconds (clock-independent; the GPU waits at idle power).
        flops: floating-point operations. bytes: bytes moved.
        energy_j: energy at the step's clock, J. latency_s: busy time at the step's clock, s.
    """

    compute_s: float | np.ndarray
    memory_s: float | np.ndarray
    overhead_s: float | np.ndarray
    flops: float | np.ndarray
    bytes: float | np.ndarray
    energy_j: float | np.ndarray
    latency_s: float | np.ndarray

    def as_dict(self) -> dict:
        """Plain floats, or lists of floats for arrays."""
        return {k: (v.tolist() if isinstance(v, np.ndarray) else float(v)) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class StepCost:
    """Predicted cost of a step: in total, per expert, for shared (non-expert) work and for TTT.

    `total` = `experts` summed over experts + `shared` (each field); `ttt` overlaps both (the TTT phases' share).

    Full-clock seconds split three ways: `compute_s` (stretches with the SM clock), `memory_s` (stretches by
    `memory_time_factor`) and `overhead_s` (launch gaps, clock-independent, at idle power). A simulated backend
    runs `gpu.execute(cost.compute_s, cost.memory_s)` and `gpu.idle(cost.overhead_s)`, counting both as busy
    time; with the analytic table that draws exactly `energy_j` at a steady clock. Observations use `latency_s` and
    `energy_j` at the clock the prediction was made for (`clock_mhz`).

    Attributes:
        total, experts, shared, ttt: `CostParts` (experts: [E] arrays).
        clock_mhz: SM clock of `latency_s` and `energy_j`.
        tokens: tokens served (deployment tokens with a `DeploymentScale`, else the runtime's forward tokens).
        source: `analytic` or `calibrated`.
    """

    total: CostParts
    experts: CostParts
    shared: CostParts
    ttt: CostParts
    clock_mhz: float
    tokens: float
    source: str

    @property
    def compute_s(self) -> float:
        return self.total.compute_s

    @property
    def memory_s(self) -> float:
        return self.total.memory_s

    @property
    def overhead_s(self) -> float:
        return self.total.overhead_s

    @property
    def flops(self) -> float:
        return self.total.flops

    @property
    def bytes(self) -> float:
        return self.total.bytes

    @property
    def energy_j(self) -> float:
        return self.total.energy_j

    @property
    def latency_s(self) -> float:
        return self.total.latency_s

    @property
    def expert_compute_s(self) -> np.ndarray:
        """[E] full-clock compute-bound seconds per expert."""
        return self.experts.compute_s

    @property
    def expert_memory_s(self) -> np.ndarray:
        """[E] full-clock memory-bound seconds per expert."""
        return self.experts.memory_s

    @property
    def expert_energy_j(self) -> np.ndarray:
        """[E] energy per expert at the step's clock, J."""
        return self.experts.energy_j

    @property
    def expert_latency_s(self) -> np.ndarray:
        """[E] busy time per expert at the step's clock, s."""
        return self.experts.latency_s

    @property
    def ttt_share(self) -> float:
        """TTT's share of the busy time at the step's clock, 0..1."""
        return self.ttt.latency_s / self.total.latency_s if self.total.latency_s > 0 else 0.0

    @property
    def power_w(self) -> float:
        """Mean power over the busy time, W."""
        return self.total.energy_j / self.total.latency_s if self.total.latency_s > 0 else 0.0

    def as_dict(self) -> dict:
        """Plain numbers, strings and lists (for `info` and JSON)."""
        return {
            "total": self.total.as_dict(),
            "experts": self.experts.as_dict(),
            "shared": self.shared.as_dict(),
            "ttt": self.ttt.as_dict(),
            "clock_mhz": float(self.clock_mhz),
            "tokens": float(self.tokens),
            "source": self.source,
        }
