"""The dynamic scheduler (planner/dynamic.py): reuse, idle-only reshaping, churn limit, reservations,
static layouts; busy instances are never destroyed."""

from __future__ import annotations

import heapq
import random

import pytest

from migctl.catalog import load_model
from migctl.catalog.geometry import PlacedGI, validate_layout
from migctl.catalog.model import Placement
from migctl.planner.dynamic import Job, Policy, Scheduler
from migctl.planner.online import Request

A30 = load_model("A30")
A100 = load_model("A100-80GB")


def req(model, name: str) -> Request:
    return Request.for_profile([model], name)


def test_issue_scenario_four_1g_then_2g_on_a30() -> None:
    """After four 1g.6gb jobs on an A30 the kept idle instances block a 2g.12gb job unless the node reshapes."""
    for reshape in (False, True):
        sch = Scheduler([A30], Policy(keep_idle=True, reshape=reshape))
        for i in range(4):
            sch.submit(Job(i, req(A30, "1g.6gb"), 0.0, 10.0))
        assert len(sch.step(0.0)) == 4
        for i in range(4):
            sch.finish(i, 10.0)
        sch.submit(Job(9, req(A30, "2g.12gb"), 11.0, 10.0))
        started = sch.step(11.0)
        assert bool(started) is reshape
        assert sch.stats["busy_destroyed"] == 0
        if reshape:
            assert sch.stats["reshape_destroyed"] == 2  # the smallest change: two idle 1g, not four


def test_reshape_never_touches_busy_and_reuses_idle() -> None:
    sch = Scheduler([A30], Policy(keep_idle=True, reshape=True))
    for i in range(4):
        sch.submit(Job(i, req(A30, "1g.6gb"), 0.0, 100.0))
    sch.step(0.0)
    sch.finish(1, 5.0)
    sch.finish(3, 5.0)  # idle at 1 and 3, busy at 0 and 2: a 2g.12gb (start 0 or 2) cannot be made to fit
    sch.submit(Job(10, req(A30, "2g.12gb"), 6.0, 10.0))
    assert sch.step(6.0) == []
    # a 1g job reuses an idle instance: no reconfiguration
    created = sch.stats["created"]
    sch.submit(Job(11, req(A30, "1g.6gb"), 7.0, 10.0))
    assert [j.id for j in sch.step(7.0)] == [11]
    assert sch.stats["created"] == created and sch.stats["reused"] == 1
    assert sch.stats["destroyed"] == 0


def test_churn_limit_and_hysteresis() -> None:
    pol = Policy(keep_idle=True, reshape=True, max_reconfig_per_min=2, hysteresis_s=30.0)
    sch = Scheduler([A30, A30], pol)
    for i in range(8):
        sch.submit(Job(i, req(A30, "1g.6gb"), 0.0, 10.0))
    sch.step(0.0)
    for i in range(8):
        sch.finish(i, 10.0)
    for i in range(2):
        sch.submit(Job(20 + i, req(A30, "2g.12gb"), 11.0, 100.0))
    assert sch.step(11.0) == []  # idle for 1 s < hysteresis
    assert [j.id for j in sch.step(40.0)] == [20]  # 2 destroys: the per-minute budget is spent
    assert sch.step(60.0) == []
    assert [j.id for j in sch.step(101.0)] == [21]
    assert sch.stats["reshape_destroyed"] == 4 and sch.stats["busy_destroyed"] == 0


def simulate(models: list, jobs: list[tuple[float, float, str]], policy: Policy) -> tuple[Scheduler, dict[int, float]]:
    sch = Scheduler(models, policy)
    events = [(t, 1, i) for i, (t, _d, _p) in enumerate(jobs)]
    heapq.heapify(events)
    waits: dict[int, float] = {}
    while events:
        t, kind, i = heapq.heappop(events)
        if kind == 0:
            sch.finish(i, t)
        elif kind == 1:
            sch.submit(Job(i, req(models[0], jobs[i][2]), t, jobs[i][1]))
        if events and events[0][0] == t:
            continue
        for j in sch.step(t):
            waits[j.id] = t - j.submit
            heapq.heappush(events, (t + jobs[j.id][1], 0, j.id))
        if sch.waiting and policy.reserve_after_s is not None:
            nxt = min(j.submit + policy.reserve_after_s for j in sch.waiting)
            if nxt > t:
                heapq.heappush(events, (nxt, 2, -1))
        for g, m in enumerate(models):
            sp = sch.placer.spaces[m.key]
            placed = [PlacedGI(sp.profiles[pid], Placement(s, sp.profiles[pid].placement_size))
                      for pid, s in sch.placer.states[g]]
            assert validate_layout(m, placed) == []
    return sch, waits


def starving_trace() -> list[tuple[float, float, str]]:
    """A 7g job behind an endless stream of overlapping 1g jobs: greedy backfill never frees a whole GPU."""
    jobs = [(0.0, 50.0, "1g.10gb")]
    jobs.append((1.0, 100.0, "7g.80gb"))
    t = 2.0
    for _ in range(600):
        jobs.append((t, 40.0, "1g.10gb"))
        t += 10.0
    return jobs


def test_reservation_bounds_the_wait_of_a_large_job() -> None:
    jobs = starving_trace()
    plain, waits = simulate([A100], jobs, Policy(placement="migctl"))
    assert 1 not in waits or waits[1] > 5000  # starved by backfill
    bound = 120.0
    sch, waits = simulate([A100], jobs, Policy(placement="migctl", reserve_after_s=bound))
    # documented bound: reserve_after_s plus the longest limit of the jobs in its way (50 s here)
    assert waits[1] <= bound + 50.0
    assert sch.stats["reservations"] >= 1 and sch.stats["reservations_late"] == 0
    assert len(waits) == len(jobs)


def test_random_traces_never_touch_busy() -> None:
    rnd = random.Random(5)
    names = ["1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"]
    jobs = []
    t = 0.0
    for _ in range(300):
        t += rnd.expovariate(1 / 20)
        jobs.append((t, rnd.expovariate(1 / 200), rnd.choices(names, [60, 5, 15, 10, 5, 5])[0]))
    pol = Policy(keep_idle=True, reshape=True, max_reconfig_per_min=10, hysteresis_s=5, reserve_after_s=600)
    sch, waits = simulate([A100] * 3, jobs, pol)
    assert sch.stats["busy_destroyed"] == 0 and sch.stats["reservations_late"] == 0
    assert len(waits) == len(jobs)
    # every destroy in the log hit an instance that no running job held at that moment
    holder: dict[tuple, int | None] = {}
    for a in sch.actions:
        key = (a.gpu, a.profile, a.start)
        if a.kind == "create":
            holder[key] = None
        elif a.kind == "destroy":
            assert holder.pop(key) is None
        elif a.kind == "start":
            assert holder[key] is None
            holder[key] = a.job
        elif a.kind == "release":
            assert holder[key] == a.job
            holder[key] = None


@pytest.mark.parametrize("layout", [["1g.10gb"] * 7])
def test_static_layout_never_reconfigures(layout: list[str]) -> None:
    from migctl.catalog.geometry import place_all

    placed = place_all(A100, [A100.profile(n) for n in layout])
    assert placed is not None
    sch = Scheduler([A100], Policy(static=True), initial=[[(p.profile.id, p.placement.start) for p in placed]])
    assert not sch.submit(Job(0, req(A100, "2g.20gb"), 0.0, 1.0))  # no instance large enough: never runs
    for i in range(1, 9):
        sch.submit(Job(i, req(A100, "1g.10gb"), 0.0, 1.0))
    assert len(sch.step(0.0)) == 7
    assert sch.stats["created"] == 0 and sch.stats["destroyed"] == 0
