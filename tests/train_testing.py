"""What the train_agent.py tests share: the repository root, a tiny run's flags, and checking a one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest

import train_agent

REPO = Path(__file__).resolve().parents[1]
TINY_RUN = [
    "--env-kwargs",
    "preset:tiny",
    "episode_intervals:8",
    "--hyperparams",
    "n_steps:32",
    "batch_size:32",
    "n_epochs:2",
    "--eval-freq",
    "32",
    "--eval-episodes",
    "1",
    "--checkpoint-freq",
    "32",
    "--no-progress-bar",
    "--verbose",
    "0",
]


def exits_with(argv: list[str], capsys) -> str:
    """parse_args(argv) exits with status 2 and a one-line message, no traceback; the message."""
    with pytest.raises(SystemExit) as exit_info:
        train_agent.parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]  # after argparse's usage lines: the one error line
    assert ": error: " in message, err
    return message
