"""Incremental planning against exhaustive search on tiny live fleets: (unserved, destroyed, touched)."""

from __future__ import annotations

import itertools
import random

import pytest

from migctl.catalog import load_model
from migctl.catalog.geometry import PlacedGI, conflict, place_all
from migctl.catalog.model import Placement
from migctl.planner import parse_request, plan, validate_plan

M = "H100-80GB"
PROFS = ["1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb"]


def _random_live(rng: random.Random):
    m = load_model(M)
    gpus = []
    for _ in range(2):
        placed: list[PlacedGI] = []
        insts = []
        for _ in range(rng.randint(0, 3)):
            p = m.profile(rng.choice(PROFS))
            free = [s for s in p.placement_starts if conflict(m, placed, p, Placement(s, p.placement_size)) is None]
            if not free:
                continue
            s = rng.choice(free)
            placed.append(PlacedGI(p, Placement(s, p.placement_size)))
            insts.append({"profile": p.name, "start": s, "busy": rng.random() < 0.5})
        gpus.append(insts)
    return gpus


def _brute(live, demand: list[str]) -> tuple[int, int, int]:
    """Exhaustive: per GPU keep a subset of idle instances and add profiles; best (unserved, destroyed, touched)."""
    m = load_model(M)
    per_gpu = []
    for insts in live:
        busy = [PlacedGI(m.profile(i["profile"]), Placement(i["start"], m.profile(i["profile"]).placement_size))
                for i in insts if i["busy"]]
        idle = [i for i in insts if not i["busy"]]
        opts = []
        for r in range(len(idle) + 1):
            for keep in itertools.combinations(range(len(idle)), r):
                fixed = busy + [PlacedGI(m.profile(idle[k]["profile"]),
                                         Placement(idle[k]["start"], m.profile(idle[k]["profile"]).placement_size))
                                for k in keep]
                destroyed = len(idle) - r
                kept = [idle[k]["profile"] for k in keep]
                for n in range(len(demand) + 1):
                    for add in itertools.combinations_with_replacement(sorted(set(demand)), n):
                        if add and place_all(m, [m.profile(a) for a in add], fixed) is None:
                            continue
                        touched = int(destroyed > 0 or bool(add))
                        opts.append((kept + list(add), destroyed, touched))
        per_gpu.append(opts)
    best = None
    for combo in itertools.product(*per_gpu):
        supply = [p for o in combo for p in o[0]]
        unserved = 0
        for d in demand:
            if d in supply:
                supply.remove(d)
            else:
                unserved += 1
        key = (unserved, sum(o[1] for o in combo), sum(o[2] for o in combo))
        best = key if best is None or key < best else best
    assert best is not None
    return best


@pytest.mark.parametrize("seed", range(8))
def test_incremental_matches_brute_force(seed):
    rng = random.Random(100 + seed)
    live = _random_live(rng)
    demand = [rng.choice(PROFS) for _ in range(rng.randint(1, 2))]
    req = parse_request({
        "live": [{"index": i, "model": M, "instances": insts} for i, insts in enumerate(live)],
        "workloads": [{"name": f"n{k}", "profile": p} for k, p in enumerate(demand)],
    })
    p = plan(req)
    assert validate_plan(p, req.workloads) == []
    got = (sum(p.unserved.values()), p.stats["instances_destroyed"], p.stats["gpus_touched"])
    assert got == _brute(live, demand)
