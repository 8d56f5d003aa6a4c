"""Reshaping a live node for a request: destroy the fewest *idle* MIG instances on one GPU so that the
requested profile fits, and create it, through the transactional apply (journal, rollback, busy check).

Idle = not busy by :mod:`migctl.busy` (no live lease or lease process group, no NVML process, no MPS
server, no MPS or time-sliced client migctl admitted); busy and leased instances are fixed. The choice is :meth:`migctl.planner.online.Placer.make_room`
(fewest instances destroyed, then fewest slices, then migctl's placement rule) over the live layouts.

Churn policy (:class:`Churn`), shared by every process of the node through the jobs database:

* at most ``max_per_min`` instances are destroyed for reshaping in any 60 s window (table ``reshapes``);
  a change that needs more than what is left waits for the window (it is not replaced by a worse one);
* an instance idle for less than ``hysteresis_s`` is spared. "Idle since" (table ``idle_since``, per MIG
  device UUID) is written when a lease is released and whenever a reshaping pass sees the instance busy;
  an instance with no record counts as idle since the first pass that saw it.

The plan is made twice: once without any lock (cheap: most passes find nothing to do), then again inside
:func:`migctl.reconcile.engine.apply_desired` under the node lock, on the layout and holders read there,
with the budget read there; the destroys are counted in the same locked section. apply_desired itself
refuses to touch an instance that is busy when it plans, and the driver refuses to destroy one with a
process (the apply then rolls back), so a race ends with nothing busy destroyed.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from migctl.jobs.common import JobsError, connect, immediate, node_key
from migctl.jobs.leases import LeaseManager, Request

WINDOW_S = 60.0
DEFAULT_MAX_PER_MIN = 20
MAX_PER_MIN_LIMIT = 10_000


@dataclass(frozen=True)
class Churn:
    """At most ``max_per_min`` reshaping destroys per 60 s on the node; spare instances idle < ``hysteresis_s``."""

    max_per_min: int = DEFAULT_MAX_PER_MIN
    hysteresis_s: float = 0.0


@dataclass
class Outcome:
    """What one reshaping attempt did.

    ``status``: ``reshaped``; ``free`` (nothing to destroy: a fitting instance or room for one is free, the
    next lease attempt takes it); ``none`` (no set of idle instances makes room); ``budget`` (one would, but the
    churn cap is reached until ``retry_at``); ``young`` (one would once instances have been idle for the
    hysteresis, at ``retry_at``); ``raced`` (the layout or its holders changed, or the node lock stayed
    held: nothing was destroyed).
    """

    status: str
    note: str = ""
    retry_at: float | None = None

    @property
    def done(self) -> bool:
        return self.status == "reshaped"


@dataclass(frozen=True)
class _Change:
    gpu: Any  # LiveGpu
    drop: tuple[Any, ...]  # LiveGI
    profile: Any  # catalog GIProfile
    start: int


class _Stale(Exception):
    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.note)
        self.outcome = outcome


def _mig(live: list[Any], gpus: tuple[int, ...] | None) -> list[Any]:
    return [g for g in live if g.model is not None and g.mig_current and (gpus is None or g.index in gpus)]


def eligible_profiles(model: Any, req: Request) -> list[Any]:
    """Catalog GI profiles of ``model`` that serve ``req``, preferred (smallest) first."""
    if req.profile:
        p = model.profile(req.profile)
        return [p] if p is not None else []
    from migctl.jobs.leases import _holds

    plain = [p for p in model.gi_profiles if not p.suffix and (req.mem_mib is None or _holds(p.memory_mib, p.name, req.mem_mib))]
    return sorted(plain, key=lambda p: (p.memory_mib, p.slices, p.id))


# ------------------------------------------------------------------------------------------------ records
def _used(conn: sqlite3.Connection, key: str, now: float) -> tuple[int, float | None]:
    """Reshaping destroys in the last 60 s, and when the oldest of them leaves the window."""
    from migctl.jobs.rows import sound

    rows = sound("reshapes", conn.execute("SELECT at FROM reshapes WHERE node=? AND at > ? ORDER BY at",
                                          (key, now - WINDOW_S)).fetchall())
    return len(rows), (float(rows[0]["at"]) + WINDOW_S if rows else None)


def _gi_uuids(g: Any, gi: Any) -> list[str]:
    return gi.uuids() or [f"{g.uuid}/gi{gi.id}@{gi.start}"]


def idle_records(conn: sqlite3.Connection, key: str, live: list[Any], now: float, write: bool = True) -> dict[str, float]:
    """``idle_since`` for every instance of ``live``: recorded, else now (first seen). With ``write``, busy
    instances are recorded as idle from now, first-seen ones are recorded, gone ones are dropped."""
    from migctl.jobs.rows import sound

    have = {r["uuid"]: float(r["since"]) for r in
            sound("idle_since", conn.execute("SELECT uuid, since FROM idle_since WHERE node=?", (key,)).fetchall())}
    out: dict[str, float] = {}
    busy: list[str] = []
    for g in live:
        for gi in g.gis:
            for u in _gi_uuids(g, gi):
                out[u] = have.get(u, now)
                if gi.busy:
                    busy.append(u)
    if write:
        gone = [u for u in have if u not in out]
        new = [u for u in out if u not in have]
        if gone or new or busy:
            with immediate(conn) as c:
                c.executemany("DELETE FROM idle_since WHERE node=? AND uuid=?", [(key, u) for u in gone])
                c.executemany("INSERT OR IGNORE INTO idle_since (node, uuid, since) VALUES (?,?,?)",
                              [(key, u, now) for u in new])
                c.executemany("UPDATE idle_since SET since=? WHERE node=? AND uuid=?", [(now, key, u) for u in busy])
    return out


def record_idle(conn: sqlite3.Connection, key: str, uuid: str, when: float | None = None) -> None:
    """A lease on ``uuid`` ended: the instance is idle from now."""
    with immediate(conn) as c:
        c.execute("INSERT OR REPLACE INTO idle_since (node, uuid, since) VALUES (?,?,?)",
                  (key, uuid, time.time() if when is None else when))


# ------------------------------------------------------------------------------------------------ planning
_FREE = Outcome("free", "a fitting instance, or room for one, is free now: no reshaping needed")


def _make_room(live: list[Any], req: Request, ok: Callable[[Any, Any], bool], blocked: set[int]
               ) -> _Change | Outcome | None:
    """Placer.make_room over ``live`` with idle instances passing ``ok(gpu, gi)``; GPUs in ``blocked`` excluded.
    :data:`_FREE` when the request fits without destroying anything (an idle fitting instance, free space)."""
    from migctl.planner.online import Placer
    from migctl.planner.online import Request as PRequest

    gpus = [g for g in live if g.index not in blocked]
    if not gpus:
        return None
    placer = Placer([g.model for g in gpus], "migctl")
    idle: dict[int, list[tuple[int, int]]] = {}
    by_key: dict[tuple[int, int, int], Any] = {}
    try:
        for i, g in enumerate(gpus):
            for gi in g.gis:
                placer.add(i, gi.profile_id, gi.start)
                by_key[(i, gi.profile_id, gi.start)] = gi
                if not gi.busy and ok(g, gi):
                    idle.setdefault(i, []).append((gi.profile_id, gi.start))
    except (ValueError, KeyError):
        return None  # a layout the catalog does not describe: not ours to reshape
    eligible = []
    for m in {g.model.key: g.model for g in gpus}.values():
        ids = tuple(p.id for p in eligible_profiles(m, req))
        if ids:
            eligible.append((m.key, ids))
    if not eligible:
        return None
    ok_ids = dict(eligible)
    if any(not gi.busy and gi.profile_id in ok_ids.get(g.model.key, ()) and any(c.profile == gi.profile for c in gi.cis)
           for g in gpus for gi in g.gis):  # an idle device of an eligible profile (its full-size CI) exists
        return _FREE
    if placer.choose(PRequest(tuple(eligible))) is not None:
        return _FREE
    made = placer.make_room(PRequest(tuple(eligible)), lambda i: idle.get(i, []))
    if made is None:
        return None
    drop, choice = made
    return _Change(gpus[choice.gpu], tuple(by_key[(choice.gpu, pid, s)] for pid, s in drop), choice.profile,
                   choice.placement.start)


def _decide(live: list[Any], req: Request, churn: Churn, since: dict[str, float], blocked: set[int],
            used: tuple[int, float | None], now: float) -> _Change | Outcome:
    def aged(g: Any, gi: Any) -> bool:
        return all(now - since.get(u, now) >= churn.hysteresis_s for u in _gi_uuids(g, gi))

    change = _make_room(live, req, aged, blocked)
    if isinstance(change, Outcome):
        return change
    if change is None:
        if churn.hysteresis_s > 0 and _make_room(live, req, lambda g, gi: True, blocked) is not None:
            ready = [since.get(u, now) + churn.hysteresis_s for g in live for gi in g.gis if not gi.busy
                     for u in _gi_uuids(g, gi) if since.get(u, now) + churn.hysteresis_s > now]
            return Outcome("young", f"idle instances are younger than the hysteresis ({churn.hysteresis_s:g}s)",
                           min(ready) if ready else None)
        return Outcome("none", f"no set of idle instances makes room for {req.describe()}")
    n, free_at = used
    if len(change.drop) > churn.max_per_min - n:
        return Outcome("budget", f"reshaping needs {len(change.drop)} destroy(s); {n} of "
                                 f"{churn.max_per_min} per minute used (--max-reconfig-per-min)", free_at)
    return change


def _describe(change: _Change) -> str:
    names = ", ".join(f"{gi.profile}@{gi.start}" for gi in sorted(change.drop, key=lambda x: x.start))
    return (f"reshaped GPU {change.gpu.index}: destroyed idle {names or 'nothing'}; "
            f"created {change.profile.name}@{change.start}")


def _apply(node: Any, conn: sqlite3.Connection, decide: Callable[[list[Any], float], _Change | Outcome],
           label: str, source: str, what: str, lock_timeout: float) -> Outcome:
    """Apply the change ``decide(live, now)`` makes, re-planned under the node lock; destroys are counted
    in the ``reshapes`` table in the same locked section."""
    from migctl.errors import UserError
    from migctl.reconcile.engine import ApplyFailed, BusyError, apply_desired
    from migctl.reconcile.live import desired_from_layout

    key = node_key(node)
    chosen: list[_Change] = []

    def resolve(live: list[Any]) -> dict[int, Any]:
        got = decide(live, time.time())
        if isinstance(got, Outcome):
            raise _Stale(got)
        chosen[:] = [got]
        g = got.gpu
        gone = {(gi.profile, gi.start) for gi in got.drop}
        layout = g.layout()
        layout["gis"] = [x for x in layout["gis"] if (x["profile"], x["start"]) not in gone]
        ci = got.profile.default_ci
        layout["gis"].append({"profile": got.profile.name, "start": got.start, "size": got.profile.placement_size,
                              "cis": [{"profile": ci.name, "start": 0, "size": ci.slices}]})
        return {g.index: desired_from_layout(g.index, layout, source="reshape")}

    def on_plan(plan: Any) -> None:
        if plan.blocked or not plan.ops or not chosen:
            return
        now = time.time()
        ch = chosen[0]
        with immediate(conn) as c:
            c.executemany("INSERT INTO reshapes (node, at, gpu, what) VALUES (?,?,?,?)",
                          [(key, now, ch.gpu.index, f"{what}: {gi.profile}@{gi.start}") for gi in ch.drop])
            c.executemany("DELETE FROM idle_since WHERE node=? AND uuid=?",
                          [(key, u) for gi in ch.drop for u in _gi_uuids(ch.gpu, gi)])
            c.execute("DELETE FROM reshapes WHERE node=? AND at < ?", (key, now - 3600))

    try:
        apply_desired(resolve, label, source=source, node=node, on_plan=on_plan, lock_timeout=lock_timeout)
    except _Stale as e:
        return e.outcome
    except BusyError as e:
        return Outcome("raced", f"an instance became busy before the reshaping was applied; nothing destroyed ({e})")
    except ApplyFailed as e:
        return Outcome("raced", str(e))
    except UserError as e:  # the node lock stayed held (LockBusy), or the layout is not ours to change
        return Outcome("raced", str(e))
    _record_created(node, conn, key, chosen[0])
    return Outcome("reshaped", _describe(chosen[0]))


def _record_created(node: Any, conn: sqlite3.Connection, key: str, ch: _Change) -> None:
    """The new instance is idle from its creation (until its job leases it)."""
    from migctl.busy import retry_nvml
    from migctl.reconcile.live import read_gpu

    try:
        g = retry_nvml(lambda: read_gpu(node.gpu(ch.gpu.index)))
    except Exception:  # noqa: BLE001 - only a record for the hysteresis: first-seen covers a miss
        return
    now = time.time()
    with immediate(conn) as c:
        c.executemany("INSERT OR REPLACE INTO idle_since (node, uuid, since) VALUES (?,?,?)",
                      [(key, u, now) for gi in g.gis if gi.start == ch.start and gi.profile == ch.profile.name
                       for u in _gi_uuids(g, gi)])


# ------------------------------------------------------------------------------------------------ entry points
def try_reshape(node: Any, req: Request, churn: Churn | None = None, *, job_id: int | None = None,
                limit: float | None = None, source: str = "run --reshape", conn: sqlite3.Connection | None = None,
                lock_timeout: float = 5.0) -> Outcome:
    """One reshaping attempt for ``req`` under ``churn``. ``job_id``/``limit``: the requester (a queued job
    and its time limit) for :mod:`migctl.jobs.reservations` (GPUs with a reservation it must keep clear of
    are not reshaped for it; a waiting run's own reservation, held for this process, is not in its way)."""
    import os

    from migctl.jobs import reservations
    from migctl.reconcile.engine import read_node

    churn = churn or Churn()
    conn = conn or connect()
    key = node_key(node)
    now = time.time()
    live = _mig(read_node(node), req.gpus)
    if not live:
        return Outcome("none", "no MIG-enabled GPU")
    if not any(eligible_profiles(g.model, req) for g in live):
        raise JobsError(f"no MIG profile on this node fits {req.describe()}")
    since = idle_records(conn, key, live, now)
    me = os.getpid()
    blocked = set(reservations.blocking(conn, key, job_id, limit, now, pid=me))
    pre = _decide(live, req, churn, since, blocked, _used(conn, key, now), now)
    if isinstance(pre, Outcome):
        return pre

    def decide(live2: list[Any], now2: float) -> _Change | Outcome:
        l2 = _mig(live2, req.gpus)
        s2 = idle_records(conn, key, l2, now2, write=False)
        b2 = set(reservations.blocking(conn, key, job_id, limit, now2, pid=me))
        return _decide(l2, req, churn, s2, b2, _used(conn, key, now2), now2)

    return _apply(node, conn, decide, f"reshape for {req.describe()}", source, "reshape", lock_timeout)


def reshape_reserved(node: Any, res: Any, source: str = "worker (reservation)", conn: sqlite3.Connection | None = None,
                     lock_timeout: float = 5.0) -> Outcome:
    """Create the reserved instance at its placement, destroying the idle instances in the way (no churn cap
    and no hysteresis: the reservation's job has waited long enough). Nothing happens while one of them is
    busy."""
    from migctl.reconcile.engine import read_node

    conn = conn or connect()

    def decide(live: list[Any], now: float) -> _Change | Outcome:
        g = next((x for x in live if x.index == res.gpu and x.model is not None and x.mig_current), None)
        p = g.model.profile(res.profile) if g is not None else None
        if g is None or p is None:
            return Outcome("none", f"GPU {res.gpu} cannot hold {res.profile} any more")
        way = tuple(gi for gi in g.gis if res.overlaps(gi.start, gi.size))
        if any(gi.busy for gi in way):
            return Outcome("none", "an instance in the reserved space is still busy")
        return _Change(g, way, p, res.start)

    pre = decide(read_node(node), time.time())
    if isinstance(pre, Outcome):
        return pre
    return _apply(node, conn, decide, f"reservation of {res.holder()}", source, "reservation", lock_timeout)


def reshape_for(node: Any, req: Request, churn: Churn | None = None) -> str | None:
    """Make room for ``req`` on ``node``; a one-line description of the change, or None if none was made."""
    out = try_reshape(node, req, churn)
    return out.note if out.done else None


def reshape_if_needed(node: Any, req: Request, churn: Churn | None = None) -> str | None:
    """Reshape only when no fitting device is free and there is no room to create one."""
    if LeaseManager(node)._looks_possible(req):
        return None
    return reshape_for(node, req, churn)


class Reshaper:
    """Paced reshaping attempts for a waiting requester (``run --reshape`` while it waits): after an attempt
    that changed nothing the next one comes after ``pause`` seconds, or later when the churn window or the
    hysteresis says when it could succeed (at most 5 s later: the layout may change meanwhile)."""

    def __init__(self, node: Any, churn: Churn, log: Callable[[str], None] | None = None, *, job_id: int | None = None,
                 limit: float | None = None, source: str = "run --reshape", pause: float = 0.5) -> None:
        self.node = node
        self.churn = churn
        self.log = log or (lambda s: None)
        self.job_id = job_id
        self.limit = limit
        self.source = source
        self.pause = pause
        self.conn = connect()
        self._next = 0.0
        self._said = ""

    def attempt(self, req: Request) -> bool:
        """One attempt if it is time; True when the node was reshaped."""
        if time.monotonic() < self._next:
            return False
        try:
            out = try_reshape(self.node, req, self.churn, job_id=self.job_id, limit=self.limit, source=self.source,
                              conn=self.conn)
        except Exception as e:  # noqa: BLE001 - NVML in flux while something changes the layout: try later
            from migctl.busy import transient

            if not transient(e):
                raise
            out = Outcome("raced", f"NVML in flux ({e})")
        if out.done:
            self.log(out.note)
            self._said = ""
            return True
        delay = self.pause
        if out.retry_at is not None:
            delay = min(max(self.pause, out.retry_at - time.time()), 5.0)
        self._next = time.monotonic() + delay
        if out.status in ("budget", "young", "raced") and out.status != self._said:
            self.log(f"not reshaping yet: {out.note}")
            self._said = out.status
        return False
