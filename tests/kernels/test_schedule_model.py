"""scripts/schedule_model.py: the launch-order model behind the widest-first segment order (no GPU needed)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "schedule_model.py"


@pytest.fixture(scope="module")
def model():
    spec = importlib.util.spec_from_file_location("schedule_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tile_order_is_the_kernels_grouped_order(model):
    # 3 row blocks, 2 column tiles, groups of 2 rows: both columns of rows 0-1, then of row 2.
    assert model.tile_order(3, 2, 2) == [(0, 0), (1, 0), (0, 1), (1, 1), (2, 0), (2, 1)]


def test_makespan_takes_programs_in_order(model):
    assert model.makespan([1, 1, 1, 1], 2) == 2
    assert model.makespan([1, 1, 4], 2) == 5  # the long one last waits for a free place
    assert model.makespan([4, 1, 1], 2) == 4  # first, it overlaps the short ones


def test_widest_first_shortens_a_ragged_down_launch(tmp_path):
    case = dict(tokens=8192, experts=16, top_k=1, d_model=1024, widths=[256, 512, 768, 1024, 1024, 1280, 1536, 2048] * 2,
                config=dict(BLOCK_SIZE_M=128, BLOCK_SIZE_N=128, BLOCK_SIZE_K=64, GROUP_SIZE_M=8, num_warps=8,
                            num_stages=4, BLOCK_SIZE_N_DOWN=256))  # fmt: skip
    small = dict(case, tokens=2048)  # under 8k: not modelled
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"cases": [case, small]}))
    out = tmp_path / "model.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(grid), "--out", str(out)], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["figures"] == "predicted"
    (row,) = result["cases"]
    before, after = row["expert"], row["widest_first"]
    assert after["down_over_balanced"] < before["down_over_balanced"] - 0.1
    assert after["up_over_balanced"] == pytest.approx(before["up_over_balanced"], rel=0.05)
    assert 0.8 < row["call_time_ratio"] <= row["call_time_ratio_widest_first"] < 1.0
    assert row["tile_bytes"] > 0 and "tile_bytes_per_s" not in row  # no measured time in this grid


def test_live_tiles_only_take_the_idle_programs_out_of_the_gate_up_launch(model):
    from kernels.configs import MoeKernelConfig

    widths = [256, 2048] * 4  # half the experts a quarter as wide as the widest: most of their column tiles idle
    cfg = MoeKernelConfig(64, 128, 64, 4, num_warps=4, num_stages=3)
    blocks = [e for e in model.widest_first(widths) for _ in range(3)]  # 3 blocks an expert, widest first
    order = model.compact_order(blocks, widths, 128, 4)
    assert len(order) == len(set(order)) == 3 * (2 + 16) * 4  # every live tile once
    assert [blocks[m] for m, _ in order] == sorted((blocks[m] for m, _ in order), key=blocks.index)  # by segment
    free = [model.launch_ratios(blocks, widths, 1024, cfg, compact, 0.0, 3 * 64 * 8)["up"] for compact in (False, True)]
    costly = [
        model.launch_ratios(blocks, widths, 1024, cfg, compact, 4.0, 3 * 64 * 8)["up"] for compact in (False, True)
    ]
    assert free[0] == pytest.approx(free[1], rel=0.02)  # idle programs that cost nothing: the same launch
    assert costly[1] < costly[0] - 0.05


def test_operand_bytes_count_each_programs_tiles(model):
    config = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=64, BLOCK_SIZE_K=16, GROUP_SIZE_M=1, BLOCK_SIZE_N_DOWN=32)
    # gate/up: expert 0 (f 64, 2 blocks) one column tile a block, expert 1 (f 128, 1 block) two, each x [16, 32] +
    # W [32, 2 x 64]; down: one column tile (d 32), h [16, f] + W_down [f, 32]. In bf16.
    up = 2 * 1 * (16 * 32 + 2 * 32 * 64) + 1 * 2 * (16 * 32 + 2 * 32 * 64)
    down = 2 * (16 * 64 + 64 * 32) + (16 * 128 + 128 * 32)
    assert model.operand_bytes([2, 1], [64, 128], 32, config, 2) == 2 * (up + down)
    no_down_tile = {k: v for k, v in config.items() if k != "BLOCK_SIZE_N_DOWN"}  # the down GEMM takes BLOCK_SIZE_N
    assert model.operand_bytes([0, 1], [64, 128], 32, no_down_tile, 2) == 2 * (2 * (16 * 32 + 2 * 32 * 64) + 16 * 128
                                                                                 + 128 * 64)  # fmt: skip


def test_a_bad_grid_is_named(tmp_path):
    bad = tmp_path / "grid.json"
    bad.write_text("{")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(bad)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "not a readable grid JSON" in proc.stderr and "Traceback" not in proc.stderr
