"""The action vector and its meaning: per-expert selection biases, TTT frequency, TTT chunk size.

    a = [b_0 ... b_{E-1}, f, c] in [-1, 1]^(E + 2)

- biases: b_e * bias_range, added to expert e's softmax score when the top-k is chosen;
- TTT frequency: f below `ttt_off_below` means TTT off; above it, log-uniform from `ttt_frequency_range[1]` tokens
  (at the threshold: rare updates) down to `ttt_frequency_range[0]` (at 1: frequent updates);
- TTT chunk size: c maps log-uniformly onto `ttt_chunk_sizes` and snaps to the nearest allowed size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from moe_runtime import ControlAction


@dataclass(frozen=True)
class ActionConfig:
    """Action bounds.

    Attributes:
        bias_range: largest selection bias (softmax scores are in [0, 1]; 0.5 can move most tokens).
        ttt_off_below: frequency entries below this mean TTT off.
        ttt_frequency_range: (most frequent, least frequent) update interval, tokens.
        ttt_chunk_sizes: allowed chunk sizes, tokens, ascending.
    """

    bias_range: float = 0.5
    ttt_off_below: float = -0.5
    ttt_frequency_range: tuple[int, int] = (1024, 16384)
    ttt_chunk_sizes: tuple[int, ...] = (128, 256, 512, 1024, 2048)

    def __post_init__(self) -> None:
        if not self.bias_range > 0:
            raise ValueError(f"ActionConfig.bias_range must be positive, got {self.bias_range}")
        if not -1.0 < self.ttt_off_below < 1.0:
            raise ValueError(f"ActionConfig.ttt_off_below must be in (-1, 1), got {self.ttt_off_below}")
        lo, hi = self.ttt_frequency_range
        if not 0 < lo <= hi:
            raise ValueError(
                f"ActionConfig.ttt_frequency_range must be 0 < low <= high, got {self.ttt_frequency_range}"
            )
        sizes = self.ttt_chunk_sizes
        if not sizes or min(sizes) <= 0 or list(sizes) != sorted(sizes):
            raise ValueError(f"ActionConfig.ttt_chunk_sizes must be positive and ascending, got {sizes}")


class ActionCodec:
    """Maps action vectors [E + 2] to `ControlAction`s and back."""

    def __init__(self, num_experts: int, cfg: ActionConfig | None = None):
        self.num_experts = num_experts
        self.cfg = cfg or ActionConfig()
        self.size = num_experts + 2

    def check(self, action) -> np.ndarray:
        """float32 [E + 2], clipped to [-1, 1]. Raises ValueError on a wrong shape, NaN or inf, or entries that are
        not real numbers (strings, booleans, complex, None)."""
        a = np.asarray(action)
        if a.dtype.kind not in "iuf":  # numpy would turn "0.5" and True into numbers, and drop an imaginary part
            raise ValueError(f"action must be real numbers, got dtype {a.dtype}: {action!r:.80}")
        a = a.astype(np.float64)
        if a.shape != (self.size,):
            raise ValueError(
                f"action must have shape ({self.size},) (biases for {self.num_experts} experts, "
                f"TTT frequency, TTT chunk), got {a.shape}"
            )
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action has non-finite entries at {np.flatnonzero(~np.isfinite(a)).tolist()}: {a}")
        return np.clip(a, -1.0, 1.0).astype(np.float32)

    def decode(self, action) -> ControlAction:
        """The `ControlAction` an action vector [E + 2] means: biases scaled by `bias_range`, the TTT frequency on
        a log scale (off below `ttt_off_below`), the chunk on a log scale snapped to a power of two. Out-of-range
        entries are clipped; ValueError on NaN, inf or a wrong shape (`check`)."""
        a = self.check(action)
        c = self.cfg
        biases = tuple(float(b) * c.bias_range for b in a[: self.num_experts])
        f, k = float(a[-2]), float(a[-1])
        lo, hi = c.ttt_frequency_range
        if f < c.ttt_off_below:
            freq = 0
        else:
            share = (f - c.ttt_off_below) / (1.0 - c.ttt_off_below)  # 0 at threshold, 1 at +1
            freq = int(round(math.exp(math.log(hi) + share * (math.log(lo) - math.log(hi)))))
        sizes = c.ttt_chunk_sizes
        target = math.exp(math.log(sizes[0]) + (k + 1) / 2 * (math.log(sizes[-1]) - math.log(sizes[0])))
        chunk = min(sizes, key=lambda s: abs(math.log(s) - math.log(target)))
        return ControlAction(routing_biases=biases, ttt_frequency_tokens=freq, ttt_chunk_tokens=int(chunk))

    def encode(self, control: ControlAction) -> np.ndarray:
        """The action vector that decodes to `control` (frequency and chunk to the nearest representable)."""
        c = self.cfg
        a = np.zeros(self.size, dtype=np.float32)
        a[: self.num_experts] = np.clip(control.biases(self.num_experts) / c.bias_range, -1, 1)
        lo, hi = c.ttt_frequency_range
        if control.ttt_frequency_tokens <= 0:
            a[-2] = -1.0
        else:
            freq = min(max(control.ttt_frequency_tokens, lo), hi)
            share = (math.log(freq) - math.log(hi)) / (math.log(lo) - math.log(hi)) if hi > lo else 1.0
            a[-2] = c.ttt_off_below + share * (1.0 - c.ttt_off_below)
        sizes = c.ttt_chunk_sizes
        chunk = min(max(control.ttt_chunk_tokens, sizes[0]), sizes[-1])
        span = math.log(sizes[-1]) - math.log(sizes[0])
        a[-1] = 2 * (math.log(chunk) - math.log(sizes[0])) / span - 1 if span > 0 else 0.0
        return a
