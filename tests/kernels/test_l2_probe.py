"""benchmarks/_l2_probe.py's read kernel under TRITON_INTERPRET=1 (marker `triton`): it reads every element of its
buffer the given number of times, so its byte count (and the L2 rate the benchmark derives from it) is right."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.triton

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _l2_probe import read_sum  # noqa: E402


@pytest.mark.parametrize(
    ("numel", "programs", "repeats", "block"), [(3000, 3, 2, 256), (1024, 4, 1, 256), (7, 2, 3, 16)]
)
def test_read_kernel_reads_every_element_repeats_times(gen, numel, programs, repeats, block):
    # small positive ints: exact sums in fp32, and a share that was not read cannot pass as one summing to 0
    src = torch.randint(1, 8, (numel,), generator=gen).to(torch.bfloat16)
    got = read_sum(src, programs, repeats, block)
    assert got.shape == (programs,)
    # program p's share: the BLOCK-long slices starting at p * BLOCK, then every programs * BLOCK elements
    share = [sum(float(src[s : s + block].float().sum()) for s in range(p * block, numel, programs * block))
             for p in range(programs)]  # fmt: skip
    assert got.tolist() == [repeats * x for x in share]
    assert float(got.sum()) == repeats * float(src.float().sum())  # every element, `repeats` times
