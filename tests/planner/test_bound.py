"""The offline optimum of one instant (planner/bound.py), checked against brute force on tiny fleets."""

from __future__ import annotations

import itertools
import random

import pytest

from migctl.catalog import load_model
from migctl.catalog.geometry import place_all
from migctl.planner.bound import PackingBound

A100 = load_model("A100-80GB")
H100 = load_model("H100-80GB")
A30 = load_model("A30")


def brute(models: list, demand: dict[str, int]) -> int:
    """Every assignment of every unit to a GPU or to nobody; the best that place_all can place."""
    units = [n for n, c in demand.items() for _ in range(c)]
    best = 0
    for assign in itertools.product(range(len(models) + 1), repeat=len(units)):
        per: list[list[str]] = [[] for _ in models]
        for u, g in zip(units, assign, strict=True):
            if g < len(models):
                per[g].append(u)
        total = 0
        ok = True
        for m, names in zip(models, per, strict=True):
            profs = [m.profile(n) for n in names]
            if any(p is None for p in profs) or (profs and place_all(m, profs) is None):
                ok = False
                break
            total += sum(p.slices for p in profs)
        if ok:
            best = max(best, total)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_optimum_matches_brute_force(seed: int) -> None:
    rnd = random.Random(seed)
    fleets = [[A100], [A100, A100], [A100, H100], [A30, A30]]
    models = fleets[seed % len(fleets)]
    names = ["1g.6gb", "2g.12gb", "4g.24gb"] if models[0] is A30 else ["1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"]
    b = PackingBound(models, names)
    for _ in range(6):
        demand = {n: 0 for n in names}
        for _ in range(rnd.randint(1, 6)):
            demand[rnd.choice(names)] += 1
        assert b.optimum(demand) == brute(models, demand), demand


def test_each_path_alone() -> None:
    """The integer program alone equals brute force; the greedy packing is a lower bound and the linear
    relaxation an upper bound (the shortcuts never return a wrong optimum)."""
    names = ["1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"]
    models = [A100, H100]
    b = PackingBound(models, names)
    rnd = random.Random(3)
    for _ in range(12):
        d = {n: 0 for n in names}
        for _ in range(rnd.randint(1, 6)):
            d[rnd.choice(names)] += 1
        vec = tuple(d[n] for n in b.names)
        want = brute(models, d)
        assert b._solve(vec) == want
        assert b._greedy(vec) <= want <= b._relaxed(vec)


def test_cheap_paths_and_cache() -> None:
    b = PackingBound([A100] * 4, ["1g.10gb", "7g.80gb"])
    assert b.optimum({"7g.80gb": 6}) == 28  # more than the fleet: capacity
    assert b.optimum({"7g.80gb": 7}) == 28  # a superset of a demand that filled the fleet
    assert b.optimum({"1g.10gb": 3}) == 3
    assert b.optimum({"1g.10gb": 2}) == 2  # a subset of a demand served whole
    assert b.solved == 0
    n = len(b.cache)
    assert b.optimum({"1g.10gb": 2}) == 2 and len(b.cache) == n
    assert b.optimum({}) == 0
