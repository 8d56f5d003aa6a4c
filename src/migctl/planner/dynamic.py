"""Dynamic partitioning: a queue of jobs on live GPUs, with reuse, idle-only reshaping, churn limits,
reservations and MPS sharing. Pure logic (no I/O, no clock): the caller says what time it is.

A :class:`Scheduler` owns a :class:`~migctl.planner.online.Placer` and the instances on it. Every instance
is either *busy* (a running job holds it, or MPS clients share it) or *idle*. :meth:`Scheduler.step`
starts waiting jobs in priority-then-arrival order (a reserved job first; ``order`` can put the highest
response ratio or the shortest limit first within a priority instead of arrival, or the shortest limit first
among jobs that ask for the same thing only):

0. **join** (``share=True``, a job asking for a fraction of a GPU): a shared instance with room for its
   share (thread percentages add up to at most 100%, memory limits proportional to them);
1. **reuse**: an idle instance of an eligible profile (no reconfiguration);
2. **place**: a new instance in free space, by the placer's rule;
3. **reshape** (``reshape=True``): destroy the fewest idle instances on one GPU so that the job fits
   (:meth:`Placer.make_room`), clear of other jobs' reservations. Busy instances are never candidates.
   Instances idle for less than ``hysteresis_s`` are spared: with ``hysteresis_blocks`` (the default)
   always, otherwise only when older idle instances make room (hysteresis then never makes a job wait).
   At most ``max_reconfig_per_min`` reshaping destroys happen in any 60 s window. Gangs reshape with
   ``reshape_gangs`` once every unit is known to find room;
4. **reserve** (``reserve_after_s`` set): a job that has waited that long (and, with
   ``reserve_slowdown``, that many times its own limit) gets the placement where it can start earliest
   (when the busy instances in the way reach their time limit) reserved. Later jobs may use that space
   only if their own limit ends before the reservation starts (conservative backfill), so a reservation,
   once made, is never pushed back: a job reserved at time r waits at most (r - submit) + the longest
   time limit of the jobs in its way at r. With ``backfill_slack`` s (relaxed backfill), later jobs may
   end up to s x the reserved job's own limit after the reservation starts, and the bound grows by that.

Without ``keep_idle`` an instance is destroyed as soon as its job ends (what a plain dynamic-MIG
scheduler does). ``static=True`` never creates or destroys: jobs take the smallest idle instance at
least as large as they need (a pre-partitioned layout).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from migctl.catalog.geometry import PlacedGI, conflict
from migctl.catalog.model import GpuModel, Placement
from migctl.planner.online import Choice, Inst, Placer, Request


@dataclass(frozen=True)
class Policy:
    placement: str = "migctl"
    keep_idle: bool = False
    reshape: bool = False
    hysteresis_s: float = 0.0
    max_reconfig_per_min: float = float("inf")
    reserve_after_s: float | None = None
    max_reservations: int = 1
    reserve_slowdown: float | None = None  # also require a wait of at least this many times the job's own limit
    reserve_cap_s: float | None = None  # with reserve_slowdown: a job is starving once it has waited this long,
    # whatever its own limit (a job with a limit of days would otherwise wait days for its reservation)
    gang_reserve_after_s: float | None = None  # a gang (count > 1) is starving once it has waited this long,
    # whatever its limit (None: the test of other jobs); only with reserve_after_s set
    static: bool = False
    hysteresis_blocks: bool = True  # False: young idle instances are only a last resort, never a reason to wait
    reshape_reserved: bool = False  # reshape on GPUs with reservations too (keeping clear of the reserved slices)
    reshape_gangs: bool = False  # gangs reshape too (after checking that every unit can find room)
    share: bool = False  # jobs that ask for a fraction of a GPU (Job.share < 1) run as MPS clients on shared instances
    share_pool: str = "whole"  # a new shared instance: "whole" GPU when one is free, else the job's own profile; "own"
    backfill_slack: float | None = None  # relaxed backfill: later jobs may end up to this many times the reserved
    # job's own limit after its reservation starts (delaying it by at most that much)
    lifetime: bool = False  # migctl placement knows each GPU's drain time and the job's end (from the time
    # limits) and puts jobs where they push a GPU's drain back least (Placer.choose)
    order: str = "fifo"  # start order within a priority: "fifo" (arrival), "hrrn" (highest (wait + limit) / limit
    # first, Brinch Hansen's response ratio), "sjf" (shortest limit first) or "sjf-request" (arrival order, but the
    # shortest limit first among jobs asking for the same thing); reservations go to the oldest starving job
    # whatever the order

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"order '{self.order}' is not one of {', '.join(ORDERS)}")
        if self.gang_reserve_after_s is not None and not self.gang_reserve_after_s >= 0:
            raise ValueError(f"gang_reserve_after_s must be a number of seconds >= 0, not {self.gang_reserve_after_s}")
        if self.reserve_cap_s is not None and not self.reserve_cap_s >= 0:
            raise ValueError(f"reserve_cap_s must be a number of seconds >= 0, not {self.reserve_cap_s}")
        if self.backfill_slack is not None and not self.backfill_slack >= 0:
            raise ValueError(f"backfill_slack must be a number >= 0 (a multiple of the reserved job's limit), "
                             f"not {self.backfill_slack}")


ORDERS = ("fifo", "hrrn", "sjf", "sjf-request")


T = TypeVar("T")


def shortest_first_within(items: Sequence[T], same: Callable[[T], Hashable], limit: Callable[[T], float],
                          fixed: Callable[[T], bool]) -> list[T]:
    """``items`` with the shortest ``limit`` first among those that ask for the same thing (``same``), each
    group keeping the positions it had, so arrival order between groups stays; ``fixed`` items keep their
    place. The "sjf-request" start order of the simulated :class:`Scheduler` and of the live worker
    (:func:`migctl.jobs.demand.start_order`); ties keep the given order."""
    out = list(items)
    slots: dict[Hashable, list[int]] = {}
    for i, x in enumerate(items):
        if not fixed(x):
            slots.setdefault(same(x), []).append(i)
    for idx in slots.values():
        ranked = sorted(idx, key=lambda i: (limit(items[i]), i))
        for i, k in zip(idx, ranked, strict=True):
            out[i] = items[k]
    return out


@dataclass
class Job:
    id: int
    request: Request
    submit: float
    limit: float  # expected run time (a time limit); reservations trust it
    count: int = 1  # instances needed at once (a gang, e.g. a multi-GPU task)
    priority: int = 0
    start: float | None = None
    held: list[tuple[int, int, int]] = field(default_factory=list)  # (gpu, profile id, start)
    share: float | None = None  # the fraction of one GPU's compute asked for (None: the request's profile)


@dataclass
class Reservation:
    job: int
    gpu: int
    profile: int
    placement: Placement
    at: float
    made: float = 0.0  # when it was made
    way_limit: float = 0.0  # the longest time limit among the running jobs in the way when it was made
    slack: float = 0.0  # relaxed backfill: how long after ``at`` later jobs may still hold its space

    @property
    def due(self) -> float:
        """When the reserved job starts at the latest."""
        return self.at + self.slack


@dataclass
class Action:
    kind: str  # "create", "destroy", "start" and "release" (one per instance of a job), "reserve"
    time: float
    gpu: int = -1
    profile: int = -1
    start: int = -1
    job: int = -1


Key = tuple[int, int, int]  # an instance: (GPU index, GI profile id, start)
SHARED = -1  # owner of an instance that MPS clients share (busy while it has a client)


class BusyTouched(RuntimeError):
    """Raised if the scheduler ever tried to destroy a busy instance (a bug; the benchmark asserts 0)."""


class Scheduler:
    def __init__(self, models: Sequence[GpuModel], policy: Policy,
                 initial: Sequence[Sequence[tuple[int, int]]] | None = None) -> None:
        self.policy = policy
        self.placer = Placer(models, policy.placement)
        self.models = list(models)
        # (gpu, pid, start) -> job id or None (idle); idle_since for idle ones
        self.owner: dict[tuple[int, int, int], int | None] = {}
        self.idle_since: dict[tuple[int, int, int], float] = {}
        if initial:
            for g, insts in enumerate(initial):
                for pid, start in insts:
                    self.placer.add(g, pid, start)
                    self.owner[(g, pid, start)] = None
                    self.idle_since[(g, pid, start)] = 0.0
        self.waiting: list[Job] = []
        self.unservable: list[Job] = []
        self.running: dict[int, Job] = {}
        self.reservations: dict[int, list[Reservation]] = {}  # job id -> one per unit (gangs: several)
        self.reservation_log: list[tuple[Job, Reservation]] = []  # every reservation made, with its job
        self.clients: dict[tuple[int, int, int], dict[int, float]] = {}  # shared instance -> job id -> slices
        self.actions: list[Action] = []
        self._reshape_times: deque[float] = deque()
        self.stats = {"created": 0, "destroyed": 0, "reshape_destroyed": 0, "busy_destroyed": 0, "reused": 0,
                      "reservations": 0, "reservations_late": 0, "joined": 0}

    # ------------------------------------------------------------------------------------- events

    def submit(self, job: Job) -> bool:
        """Queue ``job``; False (and not queued) when it can never run here (no eligible model, or a static
        layout without an instance large enough)."""
        self.placer.observe(job.request, job.count)
        if not self._servable(job):
            self.unservable.append(job)
            return False
        self.waiting.append(job)
        return True

    def _servable(self, job: Job) -> bool:
        if not self.policy.static:
            return sum(1 for m in self.models if job.request.on(m.key)) >= (1 if job.count == 1 else 1)
        kinds = {(g, pid) for (g, pid, _s) in self.owner}
        return sum(1 for (g, pid, s) in self.owner if self._idle_fits(job, (g, pid, s))) >= job.count and bool(kinds)

    def finish(self, job_id: int, now: float) -> None:
        job = self.running.pop(job_id)
        for key in job.held:
            if key in self.clients:
                self.actions.append(Action("release", now, *key, job=job_id))
                self.clients[key].pop(job_id, None)
                if self.clients[key]:
                    continue  # other clients still run there
                del self.clients[key]
                self.owner[key] = None
                self.idle_since[key] = now
                if not self.policy.keep_idle and not self.policy.static:
                    self._destroy(key, now)
                continue
            self.actions.append(Action("release", now, *key, job=job_id))
            self.owner[key] = None
            self.idle_since[key] = now
            if not self.policy.keep_idle and not self.policy.static:
                self._destroy(key, now)

    # ------------------------------------------------------------------------------------- helpers

    def _destroy(self, key: tuple[int, int, int], now: float) -> None:
        if self.owner.get(key) is not None:
            self.stats["busy_destroyed"] += 1
            raise BusyTouched(f"instance {key} is busy (job {self.owner[key]})")
        del self.owner[key]
        self.idle_since.pop(key, None)
        self.placer.remove(*key)
        self.stats["destroyed"] += 1
        self.actions.append(Action("destroy", now, *key))

    def _create(self, g: int, pid: int, start: int, now: float) -> tuple[int, int, int]:
        self.placer.add(g, pid, start)
        key = (g, pid, start)
        self.owner[key] = None
        self.stats["created"] += 1
        self.actions.append(Action("create", now, g, pid, start))
        return key

    def _shares(self, job: Job) -> bool:
        return self.policy.share and job.share is not None and job.share < 1 and job.count == 1

    def _share_slices(self, job: Job, g: int) -> float:
        return (job.share or 0.0) * self.models[g].compute_slices

    def _holders(self, key: tuple[int, int, int]) -> list[Job]:
        """The running jobs on an instance (several for a shared one)."""
        o = self.owner.get(key)
        if o is None:
            return []
        if o == SHARED:
            return [self.running[j] for j in self.clients.get(key, {})]
        return [self.running[o]]

    def _join(self, job: Job, now: float, clear: Callable[[Key], bool]) -> Key | None:
        """A shared instance with room for ``job``'s share (thread percentages add up to at most 100%, and
        memory limits, proportional to them, to at most the instance's memory): the fullest after joining."""
        best = None
        for key, cl in self.clients.items():
            g, pid, _s = key
            if pid not in job.request.on(self.models[g].key) and not self._share_fits_larger(job, key):
                continue
            room = self._placed(key).profile.slices - sum(cl.values())
            need = self._share_slices(job, g)
            if need <= room + 1e-9 and clear(key):
                cand = (room - need, key)
                if best is None or cand < best:
                    best = cand
        return best[1] if best else None

    def _open_pool(self, job: Job, now: float, taken: set[Key], clear: Callable[[Key], bool],
                   extra: dict[int, list[PlacedGI]]) -> Key | None:
        """A whole-GPU instance for a new shared pool (an idle one, or one created in free space; no
        reshaping for it), so that later fractional jobs can join; None when no GPU is free."""
        eligible = []
        for m in {m.key: m for m in self.models}.values():
            if job.request.on(m.key):
                whole = max(m.gi_profiles, key=lambda p: (p.slices, p.memory_mib, -p.id))
                eligible.append((m.key, (whole.id,)))
        req = Request(tuple(eligible))
        idle = [k for k, o in self.owner.items() if o is None and k not in taken and k[1] in req.on(self.models[k[0]].key)
                and clear(k)]
        if idle:
            self.stats["reused"] += 1
            return min(idle)
        c = self.placer.choose(req, extra=extra)
        if c is None:
            return None
        return self._create(c.gpu, c.profile.id, c.placement.start, now)

    def _share_fits_larger(self, job: Job, key: tuple[int, int, int]) -> bool:
        """A client may join a shared instance larger than its own profile (its share is what it asked)."""
        g, pid, _s = key
        ids = job.request.on(self.models[g].key)
        if not ids:
            return False
        profiles = self.placer.spaces[self.models[g].key].profiles
        return profiles[pid].slices >= profiles[ids[0]].slices

    def _model(self, g: int) -> GpuModel:
        return self.models[g]

    def _placed(self, key: tuple[int, int, int]) -> PlacedGI:
        g, pid, start = key
        p = self.placer.spaces[self.models[g].key].profiles[pid]
        return PlacedGI(p, Placement(start, p.placement_size))

    def _blocking(self, job: Job, now: float, g: int) -> list[PlacedGI]:
        """Reservations of other jobs on GPU ``g`` that ``job`` must keep clear of (it ends after them)."""
        out: list[PlacedGI] = []
        if not self.reservations:
            return out
        for r in self.all_reservations():
            if r.gpu == g and r.job != job.id and now + job.limit > r.due:
                p = self.placer.spaces[self.models[g].key].profiles[r.profile]
                out.append(PlacedGI(p, r.placement))
        return out

    def _clear_of(self, job: Job, now: float, key: tuple[int, int, int]) -> bool:
        if not self.reservations:
            return True
        block = self._blocking(job, now, key[0])
        pl = self._placed(key)
        return not any(b.placement.overlaps(pl.placement) for b in block)

    def _idle_fits(self, job: Job, key: tuple[int, int, int]) -> bool:
        g, pid, _ = key
        ids = job.request.on(self.models[g].key)
        if pid in ids:
            return True
        if not self.policy.static or not ids:
            return False
        profiles = self.placer.spaces[self.models[g].key].profiles
        want = profiles[ids[0]]
        have = profiles[pid]
        return have.slices >= want.slices and have.memory_mib >= want.memory_mib

    def _find_one(self, job: Job, now: float, taken: set[tuple[int, int, int]]) -> tuple[int, int, int] | None:
        """An instance for one unit of ``job``: reuse, then place, then reshape. Records creations."""
        extra: dict[int, list[PlacedGI]] = {}
        for r in self.all_reservations():
            if r.job != job.id and now + job.limit > r.due:
                p = self.placer.spaces[self.models[r.gpu].key].profiles[r.profile]
                extra.setdefault(r.gpu, []).append(PlacedGI(p, r.placement))

        def clear(k: tuple[int, int, int]) -> bool:
            pl = self._placed(k).placement
            return not any(x.placement.overlaps(pl) for x in extra.get(k[0], ()))

        if self._shares(job):
            key = self._join(job, now, clear)
            if key is not None:
                self.stats["joined"] += 1
                return key
            if self.policy.share_pool == "whole":
                key = self._open_pool(job, now, taken, clear, extra)
                if key is not None:
                    return key
        idle = [k for k, o in self.owner.items() if o is None and k not in taken and self._idle_fits(job, k)
                and clear(k)]
        if idle:
            profiles = {m.key: self.placer.spaces[m.key].profiles for m in self.models}

            def size(k: tuple[int, int, int]) -> tuple:
                p = profiles[self.models[k[0]].key][k[1]]
                return (p.slices, p.memory_mib, k)

            key = min(idle, key=size)
            self.stats["reused"] += 1
            return key
        if self.policy.static:
            return None
        mine = [r for r in self.reservations.get(job.id, []) if r.gpu not in {k[0] for k in taken}]
        for res in mine:
            if self._reservation_free(res):
                return self._create(res.gpu, res.profile, res.placement.start, now)
        if self.policy.lifetime:
            c = self.placer.choose(job.request, extra=extra, drain=self._drain(now), end=now + job.limit)
        else:
            c = self.placer.choose(job.request, extra=extra)
        if c is not None:
            return self._create(c.gpu, c.profile.id, c.placement.start, now)
        for res in mine:
            # the reservation's GPU: destroy the fewest idle instances that make room (no churn limit for it)
            idle_here = [(k[1], k[2]) for k, o in self.owner.items() if k[0] == res.gpu and o is None and k not in taken]
            made = self.placer.make_room(Request(((self.models[res.gpu].key, (res.profile,)),)),
                                         lambda g, idle_here=idle_here: idle_here,
                                         allowed=lambda g, gpu=res.gpu: g == gpu, extra=extra)
            if made is not None:
                drop, c = made
                for pid, st in drop:
                    self._destroy((c.gpu, pid, st), now)
                return self._create(c.gpu, c.profile.id, c.placement.start, now)
        if (not self.policy.reshape or (job.count > 1 and not self.policy.reshape_gangs)
                or not self._churn_ok(now)):
            return None

        def room(young: bool) -> tuple[list[Inst], Choice] | None:
            spare: dict[int, list[Inst]] = {}
            for k, o in self.owner.items():
                if (o is None and k not in taken and (self.policy.reshape_reserved or clear(k))
                        and (young or now - self.idle_since.get(k, 0.0) >= self.policy.hysteresis_s)):
                    spare.setdefault(k[0], []).append((k[1], k[2]))
            if self.policy.reshape_reserved:
                return self.placer.make_room(job.request, lambda g: spare.get(g, []),
                                             allowed=lambda g: g in spare, extra=extra)
            return self.placer.make_room(job.request, lambda g: spare.get(g, []),
                                         allowed=lambda g: g in spare and g not in extra)

        if self.policy.hysteresis_blocks:
            made = room(False)
        else:
            # with every idle instance first: when even that makes no room (the common case in a full
            # cluster), the search among old ones alone is not needed
            made = room(True)
            if made is not None:
                made = room(False) or made
        if made is None:
            return None
        drop, c = made
        budget = self.policy.max_reconfig_per_min - len(self._reshape_times)
        if len(drop) > budget:
            return None
        for pid, s in drop:
            self._destroy((c.gpu, pid, s), now)
            self._reshape_times.append(now)
            self.stats["reshape_destroyed"] += 1
        return self._create(c.gpu, c.profile.id, c.placement.start, now)

    def _drain(self, now: float) -> list[float]:
        """Per GPU, when its last busy instance reaches its time limit (``now`` if none is busy)."""
        drain = [now] * len(self.models)
        for k in self.owner:
            drain[k[0]] = max(drain[k[0]], self._ends(k, now))
        return drain

    def _ends(self, key: Key, now: float) -> float:
        """When the last job on instance ``key`` reaches its time limit (``now`` if it is idle)."""
        return max([now] + [(r.start if r.start is not None else now) + r.limit for r in self._holders(key)])

    def _churn_ok(self, now: float) -> bool:
        while self._reshape_times and self._reshape_times[0] <= now - 60.0:
            self._reshape_times.popleft()
        return len(self._reshape_times) < self.policy.max_reconfig_per_min

    def _reservation_free(self, res: Reservation) -> bool:
        sp = self.placer.spaces[self.models[res.gpu].key]
        placed = sp.placed(self.placer.states[res.gpu])
        return conflict(sp.model, placed, sp.profiles[res.profile], res.placement) is None

    def all_reservations(self) -> list[Reservation]:
        return [r for rs in self.reservations.values() for r in rs]

    def _plan(self, job: Job, now: float) -> list[tuple] | None:
        """The placements where ``job`` can start earliest: for each unit, on distinct GPUs, the placement
        whose busy instances in the way reach their limits first, clear of other jobs' reservations. None
        if too few GPUs have one."""
        per_gpu: dict[int, tuple] = {}
        taken = [r for r in self.all_reservations() if r.job != job.id]
        for g, m in enumerate(self.models):
            sp = self.placer.spaces[m.key]
            for pid in job.request.on(m.key):
                p = sp.profiles[pid]
                for pl in p.placements:
                    if any(r.gpu == g and r.placement.overlaps(pl) for r in taken):
                        continue
                    way = [k for k in self.owner if k[0] == g and self._placed(k).placement.overlaps(pl)]
                    rest = [self._placed(k) for k in self.owner if k[0] == g and k not in way]
                    if conflict(m, rest, p, pl) is not None:
                        continue
                    at = max([now] + [self._ends(k, now) for k in way])
                    lim = max([0.0] + [r.limit for k in way for r in self._holders(k)])
                    cand = (at, len(way), g, pl.start, pid, pl, lim)
                    if g not in per_gpu or cand[:4] < per_gpu[g][:4]:
                        per_gpu[g] = cand
        best = sorted(per_gpu.values(), key=lambda c: c[:4])[:job.count]
        return best if len(best) == job.count else None

    def _reserve(self, job: Job, now: float) -> None:
        """Reserve the placements where ``job`` can start earliest (:meth:`_plan`). A gang's units all get
        the time its last unit frees up."""
        best = self._plan(job, now)
        if best is None:
            return
        at = max(c[0] for c in best)
        lim = max(c[6] for c in best)
        slack = 0.0 if self.policy.backfill_slack is None else self.policy.backfill_slack * job.limit
        self.reservations[job.id] = [Reservation(job.id, c[2], c[4], c[5], at, now, lim, slack) for c in best]
        self.reservation_log.append((job, self.reservations[job.id][0]))
        self.stats["reservations"] += 1
        for r in self.reservations[job.id]:
            self.actions.append(Action("reserve", now, r.gpu, r.profile, r.placement.start, job.id))

    # ------------------------------------------------------------------------------------- step

    def step(self, now: float) -> list[Job]:
        """Start every waiting job that can start now, in order; returns the started jobs.

        A job that finds no room closes its request for the rest of the step: every later job of the same
        request, gang size (and share, for a sharing job) whose limit is no shorter fails the same way (a
        longer limit only meets more reservations; with no other job's reservation, any limit fails), so
        those are not tried again.
        """
        started = []
        order = self._start_order(now)
        # the jobs that may get a reservation, oldest first (the same as the start order with "fifo")
        starving = deque(j for j in sorted(self.waiting, key=lambda j: (-j.priority, j.submit, j.id))
                         if j.id not in self.reservations and self._starving(j, now))
        failed: dict[tuple, float] = {}
        for job in order:
            memo = (job.request, job.count, job.share if self._shares(job) else None)
            reserved = job.id in self.reservations
            got = None
            if reserved or memo not in failed or job.limit < failed[memo]:
                blocking = bool(self.reservations) and any(j != job.id for j in self.reservations)
                got = self._try_start(job, now)
                if got is None and not reserved:
                    # without another job's reservation in the way the limit plays no part: every limit fails
                    lim = job.limit if blocking else float("-inf")
                    failed[memo] = min(lim, failed.get(memo, lim))
            while starving and (starving[0].start is not None or starving[0].id in self.reservations):
                starving.popleft()
            if (got is None and starving and starving[0] is job
                    and len(self.reservations) < self.policy.max_reservations):
                starving.popleft()  # its chance in this step, taken or not (then the next starving job's)
                self._reserve(job, now)
                if job.id in self.reservations and self.reservations[job.id][0].at <= now:
                    got = self._try_start(job, now)  # its reservation is free now: it starts in this step
            if got is None:
                continue
            for k in got:
                if self._shares(job):
                    self.owner[k] = SHARED
                    self.clients.setdefault(k, {})[job.id] = self._share_slices(job, k[0])
                else:
                    self.owner[k] = job.id
                self.idle_since.pop(k, None)
            job.start = now
            job.held = got
            res = self.reservations.pop(job.id, None)
            if res and now > res[0].due + 1e-6:
                self.stats["reservations_late"] += 1
            self.waiting.remove(job)
            self.running[job.id] = job
            for k in got:
                self.actions.append(Action("start", now, *k, job=job.id))
            started.append(job)
        return started

    def _gang_fits(self, job: Job, now: float) -> bool:
        """Whether each unit of a gang can find room on a GPU of its own: an idle eligible instance there,
        or an eligible placement clear of the busy instances and of other jobs' reservations (destroying
        idle instances where needed). Checked before a gang reshapes, so that a gang that cannot start
        whole destroys nothing."""
        ok = 0
        busy: dict[int, list[PlacedGI]] = {}
        for k, o in self.owner.items():
            if o is not None:
                busy.setdefault(k[0], []).append(self._placed(k))
        for g, m in enumerate(self.models):
            ids = job.request.on(m.key)
            if not ids:
                continue
            sp = self.placer.spaces[m.key]
            if any(self.owner.get((g, pid, st), 0) is None for pid, st in self.placer.states[g] if pid in ids):
                ok += 1
            else:
                fixed = busy.get(g, []) + self._blocking(job, now, g)
                if any(conflict(m, fixed, sp.profiles[pid], pl) is None
                       for pid in ids for pl in sp.profiles[pid].placements):
                    ok += 1
            if ok >= job.count:
                return True
        return False

    def _try_start(self, job: Job, now: float) -> list[tuple[int, int, int]] | None:
        if job.count > 1 and self.policy.reshape and self.policy.reshape_gangs and not self._gang_fits(job, now):
            return None
        taken: set[tuple[int, int, int]] = set()
        got: list[tuple[int, int, int]] = []
        mark = (len(self.actions), dict(self.stats))
        for _ in range(job.count):
            k = self._find_one(job, now, taken)
            if k is None:
                break
            taken.add(k)
            got.append(k)
        if len(got) == job.count:
            return got
        if job.count > 1:
            # a gang that does not fit whole was only tried: remove the instances created for it (idle
            # instances destroyed on its way stay destroyed: they were idle)
            tried = self.actions[mark[0]:]
            creates = [a for a in tried if a.kind == "create"]
            for a in reversed(creates):
                del self.owner[(a.gpu, a.profile, a.start)]
                self.idle_since.pop((a.gpu, a.profile, a.start), None)
                self.placer.remove(a.gpu, a.profile, a.start)
            self.actions[mark[0]:] = [a for a in tried if a.kind != "create"]
            self.stats["created"] -= len(creates)
            self.stats["reused"] = mark[1]["reused"]
        return None

    def _start_order(self, now: float) -> list[Job]:
        """The waiting jobs in the order they are tried: reserved jobs first, then by priority and ``order``.

        "sjf-request" keeps arrival order between requests but lets the shortest limit go first among jobs
        that ask for the same thing (same priority, request, gang size and share): such jobs are
        interchangeable for the fleet, so only their order of service changes.
        """
        order = sorted(self.waiting, key=lambda j: (j.id not in self.reservations, -j.priority, self._rank(j, now),
                                                    j.submit, j.id))
        if self.policy.order != "sjf-request":
            return order
        return shortest_first_within(
            order, same=lambda j: (j.priority, j.request, j.count, j.share if self._shares(j) else None),
            limit=lambda j: j.limit, fixed=lambda j: j.id in self.reservations)

    def _rank(self, job: Job, now: float) -> float:
        """The job's place in the start order within its priority (lower first); 0 for every job with "fifo"."""
        if self.policy.order == "hrrn":
            return -(now - job.submit + job.limit) / max(job.limit, 1.0)
        if self.policy.order == "sjf":
            return job.limit
        return 0.0

    def _starving(self, job: Job, now: float) -> bool:
        """Whether ``job`` has waited long enough for a reservation (:meth:`starving_from`)."""
        due = self.starving_from(job)
        return due is not None and now >= due

    def starving_from(self, job: Job) -> float | None:
        """When ``job`` becomes *starving* (may get a reservation); None without reservations. It has then
        waited ``reserve_after_s`` and, with ``reserve_slowdown``, that many times its own limit or, with
        ``reserve_cap_s``, that long whatever its limit; a gang, with ``gang_reserve_after_s``, that long."""
        p = self.policy
        if p.reserve_after_s is None:
            return None
        if job.count > 1 and p.gang_reserve_after_s is not None:
            return job.submit + p.gang_reserve_after_s
        wait = 0.0 if p.reserve_slowdown is None else p.reserve_slowdown * job.limit
        if p.reserve_cap_s is not None:
            wait = min(wait, p.reserve_cap_s)
        return job.submit + max(p.reserve_after_s, wait)

    # ------------------------------------------------------------------------------------- measures

    def allocated_slices(self) -> float:
        """Compute slices that running jobs asked for (a job on a larger instance counts what it asked; a job
        with ``share`` counts that fraction of its GPU's slices, whether it shares or holds an instance)."""
        total: float = 0
        for job in self.running.values():
            for g, _pid, _s in job.held:
                key = self.models[g].key
                if job.share is not None:
                    total += job.share * self.models[g].compute_slices
                else:
                    total += self.placer.spaces[key].profiles[job.request.on(key)[0]].slices
        return total
