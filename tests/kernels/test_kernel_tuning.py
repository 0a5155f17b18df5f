"""Block-size tuning: the candidate space, the robust pick over several shapes, parallel compiling (interpreter)."""

from __future__ import annotations

import dataclasses
import logging
import math

import pytest
import torch

from kernels.configs import MoeKernelConfig, default_config, get_config
from kernels.configs.tuning import (
    SPACES,
    Shape,
    candidate_space,
    eligible,
    fits_registers,
    pick_robust,
    precompile,
)

A = MoeKernelConfig(64, 128, 64, 8, 4, 3)
B = MoeKernelConfig(128, 128, 64, 8, 8, 3)
C = MoeKernelConfig(16, 256, 64, 8, 4, 3)


@pytest.mark.parametrize("space", sorted(SPACES))
@pytest.mark.parametrize("smem_bytes", [99 * 1024, 227 * 1024])
def test_candidates_fit_shared_memory(space, smem_bytes):
    cands = candidate_space(space, itemsize=2, smem_bytes=smem_bytes)
    assert cands and len(set(cands)) == len(cands)
    for c in cands:
        stage = (c.block_size_m * c.block_size_k + 2 * c.block_size_k * c.block_size_n) * 2
        assert stage * c.num_stages <= smem_bytes - 8 * 1024
    assert len(candidate_space(space, 2, 99 * 1024)) <= len(candidate_space(space, 2, 227 * 1024))
    assert {16, 128} <= {c.block_size_m for c in candidate_space(space, 2, 227 * 1024)}


@pytest.mark.parametrize("space", sorted(SPACES))
def test_wide_down_tiles_pair_every_wgmma_tile_that_has_room(space):
    """Each candidate of 64 rows or more with up to 128 columns comes with its down GEMM at twice the columns too, and
    only those (the same registers and shared memory; smaller tiles are bound by the weights' bytes)."""
    cands = candidate_space(space, itemsize=2, smem_bytes=227 * 1024)
    wide = [c for c in cands if c.block_size_n_down is not None]
    narrow = {c for c in cands if c.block_size_n_down is None}
    assert wide and all(c.block_size_m >= 64 and c.block_size_n_down == 2 * c.block_size_n <= 256 for c in wide)
    assert {dataclasses.replace(c, block_size_n_down=None) for c in wide} == {
        c for c in narrow if c.block_size_m >= 64 and c.block_size_n <= 128
    }


def test_unknown_space_is_a_clear_error():
    with pytest.raises(ValueError, match="quick"):
        candidate_space("huge", 2, 227 * 1024)


def test_register_budget_leaves_out_the_tiles_that_spill():
    # Both sides of the line, as compiled for sm_90 (tests/kernels/test_kernel_compile.py checks the compiler agrees).
    assert fits_registers(64, 256, 8) and fits_registers(128, 128, 8) and fits_registers(16, 256, 4)
    assert not fits_registers(128, 128, 4) and not fits_registers(64, 256, 4) and not fits_registers(32, 256, 4)
    assert fits_registers(128, 128, 16) and not fits_registers(128, 256, 16)  # 128 registers a thread at 16 warps
    space = candidate_space("full", 2, 227 * 1024)
    assert all(fits_registers(c.block_size_m, c.block_size_n, c.num_warps) for c in space)


def test_eligible_drops_tiles_that_are_mostly_padding():
    assert eligible(MoeKernelConfig(block_size_m=16), 0.5)
    assert not eligible(MoeKernelConfig(block_size_m=64), 8)
    assert eligible(MoeKernelConfig(block_size_m=128), 32)


def test_robust_pick_prefers_never_far_off_to_one_win():
    # A wins case x by 1% and loses case y by 2x; B is 3% behind on both: B is the one to keep.
    times = {A: {"x": 1.00, "y": 2.00}, B: {"x": 1.03, "y": 1.03}, C: {"x": 1.50, "y": 1.00}}
    pick = pick_robust(times)
    assert pick.config == B
    assert pick.best_ms == {"x": 1.00, "y": 1.00}
    assert pick.slowdowns == pytest.approx({"x": 1.03, "y": 1.03})
    assert pick.score == pytest.approx(1.03) and pick.candidates == 3
    # Alone on one case, the fastest wins.
    assert pick_robust({A: {"x": 1.0}, B: {"x": 1.2}}).config == A


def test_robust_pick_leaves_out_candidates_that_did_not_run_everywhere():
    times = {A: {"x": 0.5, "y": None}, B: {"x": 1.0, "y": 1.0}, C: {"x": 0.4}}
    pick = pick_robust(times)
    assert pick.config == B and pick.candidates == 1 and pick.score == 1.0
    assert pick_robust({A: {"x": math.nan, "y": 1.0}, B: {"x": 2.0, "y": 2.0}}).config == B
    with pytest.raises(ValueError, match="no candidate ran on every case"):
        pick_robust({A: {"x": None}, B: {"y": 1.0}})


def test_robust_pick_ties_go_to_the_smaller_total_then_the_first():
    assert pick_robust({A: {"x": 1.0, "y": 2.0}, B: {"x": 1.0, "y": 2.0}}).config == A
    assert pick_robust({B: {"x": 1.0, "y": 2.0}, A: {"x": 1.0, "y": 2.0}}).config == B


@pytest.mark.triton
@pytest.mark.parametrize("workers", [1, 2])
def test_precompile_runs_every_candidate(workers, caplog):
    # Under TRITON_INTERPRET=1 the workers interpret the kernels (nothing to cache), which checks the plumbing: the
    # candidates and shapes reach the spawned workers and every candidate runs.
    widths = (16, 32, 48)
    small = [MoeKernelConfig(16, 16, 16, 1, 4, 2), default_config(64, 3, 2, torch.float32)]
    shapes = [Shape(3, 1, 32, widths), Shape(3, 2, 32, widths)]
    with caplog.at_level(logging.WARNING, logger="kernels.configs.tuning"):
        assert precompile(small, shapes, torch.float32, device="cpu", workers=workers) == {}
    assert not caplog.records
    # A failure that is not the candidates' (here a shape the launch refuses; on a GPU, out of memory) drops none
    # of them: it is a warning, and they compile when first timed.
    with caplog.at_level(logging.WARNING, logger="kernels.configs.tuning"):
        assert precompile(small, [Shape(3, 2, 32, (16, 0, 32))], torch.float32, device="cpu", workers=workers) == {}
    assert "2 of 2 candidates not precompiled (ValueError" in caplog.text


@pytest.mark.triton
def test_precompile_reports_candidates_triton_refuses(monkeypatch):
    from triton.runtime.errors import OutOfResources

    from kernels import swiglu

    refused = MoeKernelConfig(16, 16, 16, 1, 4, 2)
    real = swiglu.grouped_swiglu_triton

    def launch(*args, **kwargs):
        if get_config(64, 3, 1, 48, torch.float32, "cpu") == refused:  # the forced candidate
            raise OutOfResources(300_000, 232_448, "shared memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(swiglu, "grouped_swiglu_triton", launch)
    space = [refused, default_config(64, 3, 1, torch.float32)]
    failed = precompile(space, [Shape(3, 1, 32, (16, 32, 48))], torch.float32, device="cpu", workers=1)
    assert list(failed) == [refused] and "OutOfResources" in failed[refused]


@pytest.mark.triton
def test_precompile_also_compiles_the_descriptor_variants_the_policy_takes(monkeypatch):
    """Where `use_tma_weights` takes tensor descriptors for large passes, each candidate also runs with them forced on
    (its 64-token run alone would compile only the pointer variants); the setting is restored after."""
    from kernels import swiglu

    seen = []
    monkeypatch.setattr(swiglu, "grouped_swiglu_triton", lambda *a, **k: seen.append(swiglu.TMA_WEIGHTS))
    space = [default_config(64, 3, 1, torch.float32)]
    shapes = [Shape(3, 1, 32, (16, 32, 48))]
    assert precompile(space, shapes, torch.float32, device="cpu", workers=1) == {}
    assert seen == [False]  # the CPU: no descriptors by default
    monkeypatch.setattr(swiglu, "use_tma_weights", lambda device, slots: slots >= swiglu.TMA_MIN_SLOTS)
    seen.clear()
    assert precompile(space, shapes, torch.float32, device="cpu", workers=1) == {}
    assert seen == [False, True] and swiglu.TMA_WEIGHTS is None
