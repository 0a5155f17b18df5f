"""examples/serve_with_agent.py: it serves a live runtime under a controller, and bad input is a one-line error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = "examples/serve_with_agent.py"


def run_example(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_serves_the_tiny_preset_with_the_heuristic():
    result = run_example("--preset", "tiny", "--intervals", "3")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line[:4].strip().isdigit()]
    assert [int(r[0]) for r in rows] == [0, 1, 2]
    assert rows[0][1] == "prose" and rows[-1][1] == "code", "the stream shifts halfway"
    assert "heuristic:" in result.stdout.splitlines()[-1]
    assert "loss in nats [measured]; power, temperature, energy per token and latency [simulated]" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "huge"], "unknown MoEConfig preset 'huge'"),
        (["--intervals", "0"], "--intervals must be >= 1, got 0"),
        (["--demand", "-1"], "--demand must be a fraction of capacity in (0, 3]"),
        (["--demand", "inf"], "--demand must be a fraction of capacity in (0, 3], as the env's workloads are, got inf"),
        (["--demand", "50"], "--demand must be a fraction of capacity in (0, 3], as the env's workloads are, got 50.0"),
        (["--controller", "greedy"], "--controller 'greedy' is not one of"),
        (["--policy", "/no/such/model.zip"], "no saved model at /no/such/model.zip"),
        (["--preset", "tiny", "--policy", "results/ppo_kcm_warm/best_model.zip"], "a policy of another preset"),
    ],
)
def test_bad_input_is_a_one_line_error(args, message):
    result = run_example(*args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_the_gpu_preset_without_cuda_is_a_one_line_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is present: the gpu preset is served there")
    result = run_example("--preset", "gpu")
    assert result.returncode == 2 and "--preset gpu is sized for a GPU" in result.stderr, result.stderr
