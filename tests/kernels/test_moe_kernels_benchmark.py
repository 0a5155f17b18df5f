"""Smoke test of benchmarks/moe_kernels.py with a tiny budget, as a subprocess (main test run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "moe_kernels.py"


def test_benchmark_runs_and_writes_json(tmp_path):
    out = tmp_path / "moe_kernels.json"
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--experts", "16", "--top-k", "2", "--tokens", "1024",
           "--d-model", "1024", "--base-width", "256", "--warmup-ms", "2", "--rep-ms", "5"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["figures"] == "measured" and result["device"]
    if torch.cuda.is_available():
        (case,) = result["cases"]
        assert case["swiglu_triton_ms"] > 0 and case["dense_tflops"] > 0 and "target_met" in case
    else:
        assert "needs CUDA" in proc.stdout
        assert {r["op"] for r in result["cpu_reference"]} == {"route_reference", "swiglu_loop"}
        assert all(r["median_ms"] > 0 for r in result["cpu_reference"])


def test_host_overhead_benchmark_runs_without_a_gpu(tmp_path):
    out = tmp_path / "host.json"
    script = SCRIPT.parent / "kernel_host_overhead.py"
    cmd = [sys.executable, str(script), "--out", str(out), "--number", "3", "--repeat", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["figures"].startswith("measured") and len(result["cases"]) == 4
    assert all(c["swiglu_host_us"] > 0 and c["route_host_us"] > 0 for c in result["cases"])
