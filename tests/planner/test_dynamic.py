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


NAMES = ["1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"]


def random_trace(seed: int, n: int, gap: float, weights: list[int]) -> list[tuple[float, float, str]]:
    """``n`` jobs (arrival, run time, profile): exponential gaps (mean ``gap`` s) and run times (mean 200 s),
    A100-80GB profiles drawn with ``weights``."""
    rnd = random.Random(seed)
    jobs = []
    t = 0.0
    for _ in range(n):
        t += rnd.expovariate(1 / gap)
        jobs.append((t, rnd.expovariate(1 / 200), rnd.choices(NAMES, weights)[0]))
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


def test_lifetime_placement_groups_jobs_that_end_together() -> None:
    """With ``lifetime`` the scheduler tells the placement rule when each GPU drains: a job goes where it
    ends before the jobs already there, so the other GPU empties whole at its own end."""
    got = {}
    for lifetime in (False, True):
        sch = Scheduler([A100, A100], Policy(lifetime=lifetime))
        sch.submit(Job(0, req(A100, "4g.40gb"), 0.0, 100.0))
        sch.submit(Job(1, req(A100, "4g.40gb"), 0.0, 1000.0))
        assert len(sch.step(0.0)) == 2
        sch.submit(Job(2, req(A100, "1g.10gb"), 1.0, 900.0))
        assert len(sch.step(1.0)) == 1
        got[lifetime] = {j.id: j.held[0][0] for j in sch.running.values()}
        sch.finish(0, 100.0)
        # with lifetimes GPU 0 is empty once job 0 ends: a whole-GPU job starts there
        sch.submit(Job(3, req(A100, "7g.80gb"), 100.0, 10.0))
        assert bool(sch.step(100.0)) is lifetime
    assert got[False] == {0: 0, 1: 1, 2: 0}
    assert got[True] == {0: 0, 1: 1, 2: 1}


@pytest.mark.parametrize("lifetime", [False, True])
def test_random_traces_never_touch_busy(lifetime: bool) -> None:
    jobs = random_trace(5, 300, 20, [60, 5, 15, 10, 5, 5])
    pol = Policy(keep_idle=True, reshape=True, max_reconfig_per_min=10, hysteresis_s=5, reserve_after_s=600,
                 lifetime=lifetime)
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


def _fits_busy_only(sch: Scheduler, job: Job) -> bool:
    """Whether ``job`` would fit on some GPU if every idle instance were destroyed (what a scheduler that
    destroys instances when their jobs end would see)."""
    from migctl.catalog.geometry import conflict

    for g, m in enumerate(sch.models):
        sp = sch.placer.spaces[m.key]
        busy = [sch._placed(k) for k, o in sch.owner.items() if k[0] == g and o is not None]
        for pid in job.request.on(m.key):
            if any(conflict(m, busy, sp.profiles[pid], pl) is None for pl in sp.profiles[pid].placements):
                return True
    return False


def test_reshaping_never_leaves_waiting_a_job_that_destroy_on_release_would_start() -> None:
    """With no reservation and no churn limit in the way, hysteresis only orders the idle instances to
    destroy: a job that fits once idle instances are gone never waits."""
    pol = Policy(keep_idle=True, reshape=True, hysteresis_s=600.0, hysteresis_blocks=False)
    sch = Scheduler([A100] * 3, pol)
    specs = random_trace(11, 400, 15, [60, 5, 15, 10, 5, 5])
    events = [(t, 1, i) for i, (t, _d, _p) in enumerate(specs)]
    heapq.heapify(events)
    checked = 0
    while events:
        now, kind, i = heapq.heappop(events)
        if kind == 0:
            sch.finish(i, now)
        else:
            sch.submit(Job(i, req(A100, specs[i][2]), now, specs[i][1]))
        if events and events[0][0] == now:
            continue
        for j in sch.step(now):
            heapq.heappush(events, (now + specs[j.id][1], 0, j.id))
        for j in sch.waiting:
            assert not _fits_busy_only(sch, j), (now, j.id)
            checked += 1
    assert checked > 100 and sch.stats["reshape_destroyed"] > 0 and sch.stats["busy_destroyed"] == 0


def test_hysteresis_that_blocks_makes_jobs_wait() -> None:
    """The old rule (young idle instances are never destroyed) leaves the job waiting; the new one starts it,
    and when old idle instances can make room it destroys those rather than young ones."""
    for blocks, started in ((True, []), (False, [20])):
        sch = Scheduler([A30], Policy(keep_idle=True, reshape=True, hysteresis_s=30.0, hysteresis_blocks=blocks))
        for i in range(4):
            sch.submit(Job(i, req(A30, "1g.6gb"), 0.0, 10.0))
        sch.step(0.0)
        for i in range(4):
            sch.finish(i, 40.0)  # all idle for 1 s at 41
        sch.submit(Job(20, req(A30, "2g.12gb"), 41.0, 10.0))
        assert [j.id for j in sch.step(41.0)] == started
    sch = Scheduler([A30], Policy(keep_idle=True, reshape=True, hysteresis_s=30.0, hysteresis_blocks=False))
    for i in range(4):
        sch.submit(Job(i, req(A30, "1g.6gb"), 0.0, 10.0))
    sch.step(0.0)
    young = [k for k in sch.owner if k[2] in (0, 1)]
    for i, j in sch.running.copy().items():
        sch.finish(i, 40.0 if j.held[0] in young else 5.0)
    sch.submit(Job(20, req(A30, "2g.12gb"), 41.0, 10.0))
    assert [j.id for j in sch.step(41.0)] == [20]
    assert sch.running[20].held[0][2] == 2  # the old ones (memory slices 2, 3) made room


def test_mps_sharing_opens_whole_gpu_pools() -> None:
    """With a free GPU, the first fractional job opens a whole-GPU shared instance and the others join it
    while their shares add up to at most 100%."""
    sch = Scheduler([A100, A100], Policy(keep_idle=True, reshape=True, share=True))
    for i, sh in enumerate([0.47, 0.47, 0.05, 0.1]):
        sch.submit(Job(i, req(A100, "4g.40gb" if sh > 0.4 else "1g.10gb"), 0.0, 100.0, share=sh))
    assert len(sch.step(0.0)) == 4
    held = [sch.running[i].held[0] for i in range(4)]
    assert held[0] == held[1] == held[2] != held[3]  # 0.47 + 0.47 + 0.05 = 0.99; 0.1 more does not fit
    assert A100.profile("7g.80gb").id == held[0][1] == held[3][1]
    assert sch.stats["joined"] == 2 and sch.stats["created"] == 2


def test_mps_sharing_packs_fractional_jobs() -> None:
    """Jobs that ask for a GPU share join a shared instance while threads and memory (proportional) fit;
    the instance stays busy while any client runs; allocation counts the shares asked."""
    sch = Scheduler([A100], Policy(keep_idle=True, reshape=True, share=True, share_pool="own"))
    sch.submit(Job(0, req(A100, "2g.20gb"), 0.0, 100.0, share=0.25))  # 1.75 slices -> a 2g.20gb
    sch.submit(Job(1, req(A100, "1g.10gb"), 0.0, 50.0, share=0.03))  # 0.21 slices: joins it (0.25 left)
    sch.submit(Job(2, req(A100, "1g.10gb"), 0.0, 50.0, share=0.1))  # 0.7 slices: no room left there
    assert [j.id for j in sch.step(0.0)] == [0, 1, 2]
    assert sch.running[0].held == sch.running[1].held != sch.running[2].held
    assert sch.stats["joined"] == 1 and sch.stats["created"] == 2
    assert abs(sch.allocated_slices() - 7 * (0.25 + 0.03 + 0.1)) < 1e-9
    sch.finish(0, 60.0)  # one client left: still busy
    sch.submit(Job(3, req(A100, "7g.80gb"), 61.0, 10.0))
    assert sch.step(61.0) == []
    sch.finish(1, 70.0)
    sch.finish(2, 70.0)
    assert [j.id for j in sch.step(70.0)] == [3]  # both idle now: reshaped away
    assert sch.stats["busy_destroyed"] == 0


def test_without_sharing_fractional_jobs_hold_instances() -> None:
    sch = Scheduler([A100], Policy(keep_idle=True, reshape=True))
    sch.submit(Job(0, req(A100, "2g.20gb"), 0.0, 100.0, share=0.25))
    sch.submit(Job(1, req(A100, "1g.10gb"), 0.0, 50.0, share=0.03))
    sch.step(0.0)
    assert sch.running[0].held != sch.running[1].held and sch.stats["joined"] == 0
    assert abs(sch.allocated_slices() - 7 * 0.28) < 1e-9


def test_reservation_log_and_bound() -> None:
    """Every reservation records when it was made and the longest limit in its way; the job starts by its
    reserved time, so its wait is at most (made - submit) + that limit."""
    jobs = starving_trace()
    sch, waits = simulate([A100], jobs, Policy(placement="migctl", reserve_after_s=120.0))
    assert sch.reservation_log
    for job, res in sch.reservation_log:
        assert res.made - job.submit >= 120.0 - 1e-9
        assert job.start is not None and job.start <= res.at + 1e-9
        assert waits[job.id] <= (res.made - job.submit) + res.way_limit + 1e-9


def test_relaxed_backfill_delays_a_reservation_by_at_most_its_slack() -> None:
    """backfill_slack=0.1: a later job may hold reserved space up to 0.1 x the reserved job's limit after the
    reservation's start (here 100 s); without slack it must end before the reservation starts."""
    for slack, backfilled in ((None, False), (0.1, True)):
        sch = Scheduler([A100], Policy(reserve_after_s=10.0, backfill_slack=slack))
        sch.submit(Job(0, req(A100, "1g.10gb"), 0.0, 100.0))
        sch.step(0.0)
        sch.submit(Job(1, req(A100, "7g.80gb"), 1.0, 1000.0))
        assert sch.step(1.0) == [] and sch.step(20.0) == []
        (res,) = sch.reservations[1]
        assert res.at == 100.0 and res.due == (200.0 if slack else 100.0)
        sch.submit(Job(2, req(A100, "1g.10gb"), 30.0, 150.0))  # ends at 180: after at, before due
        assert bool(sch.step(30.0)) is backfilled
        sch.finish(0, 100.0)
        assert [j.id for j in sch.step(100.0)] == ([] if backfilled else [1])
        if backfilled:
            sch.finish(2, 180.0)
            assert [j.id for j in sch.step(180.0)] == [1]
        assert sch.stats["reservations_late"] == 0


def test_gangs_reshape_only_when_every_unit_fits() -> None:
    pol = Policy(keep_idle=True, reshape=True, reshape_gangs=True)
    sch = Scheduler([A100, A100], pol)
    for i in range(14):
        sch.submit(Job(i, req(A100, "1g.10gb"), 0.0, 10.0))
    sch.step(0.0)
    for i in range(13):
        sch.finish(i, 10.0)  # job 13 still busy on one GPU
    sch.submit(Job(20, req(A100, "7g.80gb"), 11.0, 10.0, count=2))
    assert sch.step(11.0) == [] and sch.stats["destroyed"] == 0  # one GPU cannot be emptied: nothing destroyed
    sch.finish(13, 12.0)
    assert [j.id for j in sch.step(12.0)] == [20]
    assert sch.stats["busy_destroyed"] == 0


def test_reserve_slowdown_waits_for_the_jobs_own_limit() -> None:
    """With reserve_slowdown=1 a job is starving once it has waited both reserve_after_s and its own limit:
    a short 7g job gets its reservation at reserve_after_s, a long one only after its limit."""
    for limit, expect in ((100.0, 121.0), (500.0, 501.0)):
        jobs = starving_trace()
        jobs[1] = (1.0, limit, "7g.80gb")
        pol = Policy(placement="migctl", reserve_after_s=120.0, reserve_slowdown=1.0)
        sch, waits = simulate([A100], jobs, pol)
        (job, res), *_ = [(j, r) for j, r in sch.reservation_log if j.id == 1]
        assert res.made == pytest.approx(expect, abs=10.0)
        assert waits[1] <= (res.made - job.submit) + res.way_limit


def test_gang_reserve_after_ignores_the_gangs_own_limit() -> None:
    """A gang of two whole GPUs behind a stream of 1g jobs on two A100s: with reserve_slowdown=1 it is starving
    only after its own (long) limit; with gang_reserve_after_s it is starving after that time, whatever its limit,
    and starts by its reservation. Single jobs keep the usual test."""
    def reserved_at(**kw: float) -> tuple[float, float]:
        pol = Policy(placement="migctl", reserve_after_s=120.0, reserve_slowdown=1.0, **kw)
        sch = Scheduler([A100, A100], pol)
        sch.submit(Job(0, req(A100, "7g.80gb"), 1.0, 5000.0, count=2))
        ends: dict[int, float] = {}
        started = {}
        for n, t in enumerate(range(0, 8000, 10)):
            for jid in [j for j, e in ends.items() if e <= t]:
                sch.finish(jid, float(t))
                del ends[jid]
            sch.submit(Job(n + 1, req(A100, "1g.10gb"), float(t), 40.0))
            for job in sch.step(float(t)):
                started[job.id] = float(t)
                if job.id:
                    ends[job.id] = t + job.limit
            if 0 in started:
                break
        (made,) = [r.made for j, r in sch.reservation_log if j.id == 0]
        assert sch.stats["busy_destroyed"] == 0
        return made, started[0]

    made, start = reserved_at()
    assert made >= 5000.0  # waited its own limit first
    made, start = reserved_at(gang_reserve_after_s=300.0)
    assert 300.0 <= made <= 320.0 and start <= made + 40.0  # then the 1g jobs in the way end
    pol = Policy(reserve_after_s=120.0, reserve_slowdown=1.0, gang_reserve_after_s=300.0)
    single, gang = Job(1, req(A100, "7g.80gb"), 0.0, 5000.0), Job(2, req(A100, "7g.80gb"), 0.0, 5000.0, count=2)
    sch = Scheduler([A100, A100], pol)
    assert [sch._starving(j, 400.0) for j in (single, gang)] == [False, True]  # a single job: its own limit
    assert sch._starving(single, 5000.0)
    with pytest.raises(ValueError, match="gang_reserve_after_s"):
        Policy(gang_reserve_after_s=-1.0)


def test_reserve_cap_bounds_the_wait_for_a_reservation_whatever_the_limit() -> None:
    """With reserve_slowdown=1 and reserve_cap_s a job is starving once it has waited reserve_after_s and
    the shorter of its own limit and the cap: a 7g job with a limit of days behind a stream of 1g jobs gets
    its reservation at the cap, not days later, and starts by it; a short job keeps its own limit."""
    jobs = starving_trace()
    jobs[1] = (1.0, 200000.0, "7g.80gb")
    pol = Policy(placement="migctl", reserve_after_s=120.0, reserve_slowdown=1.0, reserve_cap_s=1000.0)
    sch, waits = simulate([A100], jobs, pol)
    (job, res), *_ = [(j, r) for j, r in sch.reservation_log if j.id == 1]
    assert res.made == pytest.approx(1001.0, abs=10.0)
    assert waits[1] <= (res.made - job.submit) + res.way_limit
    assert sch.stats["busy_destroyed"] == 0
    sch = Scheduler([A100], pol)
    long, short = Job(1, req(A100, "7g.80gb"), 0.0, 200000.0), Job(2, req(A100, "7g.80gb"), 0.0, 500.0)
    assert [sch.starving_from(j) for j in (long, short)] == [1000.0, 500.0]
    assert Scheduler([A100], Policy()).starving_from(long) is None  # no reservations
    with pytest.raises(ValueError, match="reserve_cap_s"):
        Policy(reserve_cap_s=-1.0)


def test_start_orders_within_a_priority() -> None:
    """Two waiting 7g jobs and one GPU: "fifo" starts the older (long) one, "sjf" the shorter one, and "hrrn"
    the one with the higher response ratio (wait + limit) / limit, so a long job ages past a short newcomer."""
    def first(order: str, short_at: float, now: float = 500.0) -> int:
        sch = Scheduler([A100], Policy(order=order))
        sch.submit(Job(0, req(A100, "1g.10gb"), 0.0, now))  # holds the GPU until ``now``
        sch.step(0.0)
        sch.submit(Job(1, req(A100, "7g.80gb"), 1.0, 1000.0))  # older, long
        sch.submit(Job(2, req(A100, "7g.80gb"), short_at, 10.0))  # younger, short
        assert sch.step(short_at) == []
        sch.finish(0, now)
        (job,) = sch.step(now)
        return job.id

    assert first("fifo", 2.0) == 1
    assert first("sjf", 2.0) == 2
    assert first("sjf", 499.0) == 2  # shortest first never ages
    assert first("hrrn", 2.0) == 2  # (499 + 1000) / 1000 = 1.5 < (498 + 10) / 10 = 50.8
    assert first("hrrn", 499.0) == 1  # 1.5 > (1 + 10) / 10 = 1.1


def test_sjf_request_orders_only_jobs_that_ask_for_the_same_thing() -> None:
    """One A100 frees up for three waiting jobs: an older long 4g.40gb, a 7g.80gb, a younger short 4g.40gb
    (one 4g fits per GPU). "fifo" starts the older 4g, "sjf" the 7g (shortest limit of all), and "sjf-request"
    the short 4g: it keeps arrival order between requests (a 4g first) but takes the shorter 4g job first."""
    def started(order: str) -> list[int]:
        sch = Scheduler([A100], Policy(order=order))
        sch.submit(Job(0, req(A100, "7g.80gb"), 0.0, 100.0))  # holds the whole GPU until 100
        sch.step(0.0)
        sch.submit(Job(1, req(A100, "4g.40gb"), 1.0, 1000.0))
        sch.submit(Job(2, req(A100, "7g.80gb"), 2.0, 10.0))
        sch.submit(Job(3, req(A100, "4g.40gb"), 3.0, 20.0))
        assert sch.step(3.0) == []
        sch.finish(0, 100.0)
        return [j.id for j in sch.step(100.0)]

    assert started("fifo") == [1]
    assert started("sjf") == [2]
    assert started("sjf-request") == [3]


def test_reservation_goes_to_the_oldest_starving_job_whatever_the_order() -> None:
    """With shortest-limit-first a long 7g job behind a stream of short 1g jobs would never start; the
    reservation still goes to the oldest starving job (not the younger, shorter 7g job that this order tries
    first), so its wait stays within the documented bound."""
    jobs = starving_trace() + [(1.0, 60.0, "7g.80gb")]  # starving at the same instant as job 1
    for order in ("sjf", "hrrn", "sjf-request"):
        sch, waits = simulate([A100], jobs, Policy(placement="migctl", reserve_after_s=120.0, order=order))
        assert 1 in waits and sch.reservation_log[0][0].id == 1
        job, res = sch.reservation_log[0]
        assert waits[1] <= (res.made - job.submit) + res.way_limit + 1e-9
        assert sch.stats["reservations_late"] == 0 and len(waits) == len(jobs)


def test_unknown_order_or_bad_slack_is_refused() -> None:
    with pytest.raises(ValueError, match="order 'lifo' is not one of fifo, hrrn, sjf"):
        Policy(order="lifo")
    for bad in (-0.5, float("nan")):
        with pytest.raises(ValueError, match="backfill_slack must be a number >= 0"):
            Policy(backfill_slack=bad)


@pytest.mark.parametrize("seed", range(6))
def test_several_reservations_start_on_time(seed: int) -> None:
    """With several reservations at a time, a reserved job that makes room for itself keeps clear of the
    other reservations: every reserved job starts by its reserved time, within the documented bound."""
    jobs = random_trace(seed, 400, 15, [50, 5, 15, 15, 10, 5])
    pol = Policy(keep_idle=True, reshape=True, reshape_reserved=True, hysteresis_s=5, hysteresis_blocks=False,
                 reserve_after_s=300, max_reservations=3)
    sch, waits = simulate([A100] * 2, jobs, pol)
    assert sch.stats["busy_destroyed"] == 0 and len(waits) == len(jobs)
    assert sch.stats["reservations"] >= 10
    for job, res in sch.reservation_log:
        assert job.start is not None and job.start <= res.at + 1e-6
        assert waits[job.id] <= (res.made - job.submit) + res.way_limit + 1e-6
    assert sch.stats["reservations_late"] == 0
