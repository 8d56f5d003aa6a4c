"""Shared helpers for the planner tests."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest

from migctl.catalog import GpuModel
from migctl.catalog.geometry import place_all


def partitions(items: list[int]):
    """Every set partition of ``items`` (as lists of blocks)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in partitions(rest):
        for i in range(len(part)):
            yield part[:i] + [[first] + part[i]] + part[i + 1:]
        yield [[first]] + part


def brute_force_min_gpus(model: GpuModel, options: Sequence[Sequence[int]]) -> int:
    """Fewest GPUs for units with the given eligible profile IDs, by exhaustive search with place_all."""
    by_id = {p.id: p for p in model.gi_profiles}
    best = len(options)
    cache: dict[tuple, bool] = {}

    def block_ok(block: list[int]) -> bool:
        for choice in itertools.product(*(options[u] for u in block)):
            key = tuple(sorted(choice))
            if key not in cache:
                cache[key] = place_all(model, [by_id[i] for i in key]) is not None
            if cache[key]:
                return True
        return False

    for part in partitions(list(range(len(options)))):
        if len(part) < best and all(block_ok(b) for b in part):
            best = len(part)
    return best


@pytest.fixture
def brute_force():
    """The exhaustive-search reference (a fixture, since tests/ is not a package)."""
    return brute_force_min_gpus
