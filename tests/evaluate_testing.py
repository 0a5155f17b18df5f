"""What the evaluate.py tests share: the repository root, the tiny run's flags, its env, and reading a CSV back."""

from __future__ import annotations

import csv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# one torch thread: two threads per process spin against each other when the 2 cores are shared (3x slower)
TINY = ["--preset", "tiny", "--episode-intervals", "4", "--bootstrap-reps", "100", "--no-progress",
        "--torch-threads", "1"]  # fmt: skip


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def tiny_env(intervals: int):
    """The tiny simulated env that `evaluate.py` builds for those flags, `intervals` per episode."""
    import evaluate

    args = evaluate.Args(preset="tiny", episode_intervals=intervals, telemetry="simulated", torch_threads=1)
    return evaluate.make_env(evaluate.env_kwargs(args))
