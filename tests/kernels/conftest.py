"""Fixtures of the kernel tests: a generator seeded per test, and expert choices with a chosen load shape."""

from __future__ import annotations

import zlib
from collections.abc import Callable

import pytest
import torch

LOADS = ("uniform", "skewed", "empty", "one")


def topk_ids_with_load(gen: torch.Generator, num_tokens: int, num_experts: int, top_k: int, load: str) -> torch.Tensor:
    """int64 [T, k] distinct experts per token, drawn with a load shape.

    - uniform: every expert equally likely.
    - skewed: ragged loads, a few experts take most slots.
    - empty: as skewed, but expert 1 never chosen (needs k < E).
    - one: every token's first choice is expert 0 (k = 1: all slots on one expert).
    """
    if load not in LOADS:
        raise ValueError(f"load must be one of {LOADS}, got {load!r}")
    probs = torch.ones(num_experts)
    if load in ("skewed", "empty"):
        probs = torch.rand(num_experts, generator=gen) ** 4 + 1e-2
    if load == "empty":
        probs[1] = 0.0
    if load == "one":
        probs[0] = 0.0
        rest = torch.multinomial(probs.expand(num_tokens, -1), top_k - 1, generator=gen) if top_k > 1 else None
        first = torch.zeros(num_tokens, 1, dtype=torch.int64)
        return first if rest is None else torch.cat([first, rest], dim=1)
    if num_tokens == 0:
        return torch.empty(0, top_k, dtype=torch.int64)
    return torch.multinomial(probs.expand(num_tokens, -1), top_k, generator=gen)


@pytest.fixture
def gen(request: pytest.FixtureRequest) -> torch.Generator:
    """A CPU generator seeded from the test id: fresh inputs per test, reproducible run to run."""
    seed = zlib.crc32(request.node.nodeid.encode())
    request.node.user_properties.append(("seed", seed))
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def make_topk_ids(gen: torch.Generator) -> Callable[[int, int, int, str], torch.Tensor]:
    """`make_topk_ids(T, E, k, load)`: see `topk_ids_with_load`."""
    return lambda num_tokens, num_experts, top_k, load: topk_ids_with_load(gen, num_tokens, num_experts, top_k, load)
