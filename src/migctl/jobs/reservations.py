"""Reservations: the space a starving queued job will start in, kept clear of jobs that would delay it.

A reservation is one row of the ``reservations`` table (jobs database): job, GPU, GI profile, placement
(memory-slice start and size) and ``at``, the time by which the busy instances in its way reach their
time limit (NULL when one of them has no limit: the start is then unknown). It is made by the queue
worker (:mod:`migctl.jobs.demand`) for the oldest job that has waited longer than ``--reserve-after``,
or by a waiting ``migctl run`` for itself (:mod:`migctl.jobs.run_reserve`; its row has ``job_id`` -PID and
the run's PID and start time), one at a time per node, and it outlives a worker restart. A run's
reservation whose process is gone is ignored at once and swept by the next worker pass or run.
Waiting runs (table ``waiters``) and queued jobs take turns oldest first (:func:`older_run`, :func:`older_job`);
runs that wait for the same thing are leased in arrival order (:func:`ahead_of`).

Every lease respects it (:meth:`migctl.jobs.leases.LeaseManager.try_acquire`): another requester may use
an existing device, or create one, that overlaps a reserved placement only when its own time limit ends
by ``at`` (conservative backfill). ``migctl run`` and jobs without ``--time-limit`` count as unbounded, so
they never start in reserved space; reshaping for anyone but the reserved job never acts on a GPU with a
reservation that blocks it.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from dataclasses import dataclass, replace
from typing import Any

from migctl.jobs.common import immediate
from migctl.jobs.rows import sound


@dataclass(frozen=True)
class Reservation:
    job_id: int
    gpu: int
    profile: str
    start: int
    size: int
    at: float | None  # None: unknown (something without a time limit is in the way)
    made: float
    pid: int | None = None  # a waiting run's reservation: the run's PID and start time (None for a job's)
    pid_start: float | None = None

    @property
    def alive(self) -> bool:
        """A job's reservation, or a run's whose process still runs."""
        from migctl.proc import pid_alive

        return self.pid is None or pid_alive(self.pid, self.pid_start)

    def holder(self) -> str:
        return f"job {self.job_id}" if self.pid is None else f"run (pid {self.pid})"

    def overlaps(self, start: int, size: int) -> bool:
        return start < self.start + self.size and self.start < start + size

    def blocks(self, job_id: int | None, limit: float | None, now: float, pid: int | None = None) -> bool:
        """Whether a requester (``job_id``, or the process ``pid``; time limit ``limit`` seconds, None =
        unbounded) must keep clear."""
        if job_id is not None and job_id == self.job_id:
            return False
        if self.pid is not None and pid == self.pid:
            return False
        return self.at is None or limit is None or now + limit > self.at

    def describe(self) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(self.at)) if self.at is not None else "unknown (no limit in the way)"
        return f"GPU {self.gpu} {self.profile}@{self.start}, from {when}"

    def to_json(self) -> dict[str, Any]:
        return {"gpu": self.gpu, "profile": self.profile, "start": self.start, "size": self.size, "at": self.at,
                "made": self.made}


def _from_row(r: sqlite3.Row) -> Reservation:
    return Reservation(job_id=r["job_id"], gpu=r["gpu"], profile=r["profile"], start=r["start"], size=r["size"],
                       at=r["at"], made=r["made"], pid=r["pid"], pid_start=r["pid_start"])


def load(conn: sqlite3.Connection, key: str, live: bool = False) -> list[Reservation]:
    """The node's reservations (with ``live``, not those of runs whose process is gone)."""
    rows = conn.execute("SELECT * FROM reservations WHERE node=? ORDER BY made, job_id", (key,)).fetchall()
    out = [_from_row(r) for r in sound("reservations", rows)]
    return [r for r in out if r.alive] if live else out


def blocking(conn: sqlite3.Connection, key: str, job_id: int | None, limit: float | None,
             now: float | None = None, pid: int | None = None) -> dict[int, list[Reservation]]:
    """GPU index -> the reservations there that a requester (``job_id`` or process ``pid``) must keep clear of
    (a dead run's reservation blocks nothing)."""
    now = time.time() if now is None else now
    out: dict[int, list[Reservation]] = {}
    for r in load(conn, key, live=True):
        if r.blocks(job_id, limit, now, pid):
            out.setdefault(r.gpu, []).append(r)
    return out


_INSERT = ("INSERT OR REPLACE INTO reservations (job_id, node, gpu, profile, start, size, at, made, pid, pid_start) "
           "VALUES (?,?,?,?,?,?,?,?,?,?)")


def _values(key: str, res: Reservation) -> tuple[Any, ...]:
    return (res.job_id, key, res.gpu, res.profile, res.start, res.size, res.at, res.made, res.pid, res.pid_start)


def save(conn: sqlite3.Connection, key: str, res: Reservation) -> None:
    with immediate(conn) as c:
        c.execute(_INSERT, _values(key, res))


def moved(conn: sqlite3.Connection, key: str, res: Reservation, better: Reservation | None) -> Reservation:
    """A reservation whose start is unknown (``res.at`` None) takes the place of ``better``, a fresh plan for the
    same requester, when that one has a known start or is elsewhere; saved. Returns the reservation kept."""
    if res.at is not None or better is None or (better.at is None and (better.gpu, better.start) == (res.gpu, res.start)):
        return res
    res = replace(better, job_id=res.job_id, made=res.made, pid=res.pid, pid_start=res.pid_start)
    save(conn, key, res)
    return res


def claim(conn: sqlite3.Connection, key: str, res: Reservation) -> bool:
    """Save ``res`` unless the node already has another live reservation (one per node at a time: the check
    and the insert are one write transaction, so the worker and runs cannot both get one)."""
    with immediate(conn) as c:
        for r in sound("reservations", c.execute("SELECT * FROM reservations WHERE node=? AND job_id<>?",
                                                 (key, res.job_id)).fetchall()):
            if _from_row(r).alive:
                return False
        c.execute(_INSERT, _values(key, res))
    return True


def drop(conn: sqlite3.Connection, job_id: int) -> None:
    with immediate(conn) as c:
        c.execute("DELETE FROM reservations WHERE job_id=?", (job_id,))


def prune(conn: sqlite3.Connection, key: str) -> None:
    """Drop reservations of jobs that are no longer queued (started, cancelled, failed), and the reservations
    and waiter rows of runs whose process is gone (killed while waiting). Reads first: the write transaction
    is opened only when there is something to drop."""
    from migctl.proc import pid_alive

    gone_jobs = "pid IS NULL AND job_id NOT IN (SELECT id FROM jobs WHERE node=? AND state IN ('queued', 'starting'))"
    jobs = conn.execute(f"SELECT 1 FROM reservations WHERE node=? AND {gone_jobs} LIMIT 1", (key, key)).fetchone()
    runs = [(int(r["job_id"]), int(r["pid"])) for r in sound("reservations", conn.execute(
        "SELECT job_id, pid, pid_start FROM reservations WHERE node=? AND pid IS NOT NULL", (key,)).fetchall())
        if not pid_alive(r["pid"], r["pid_start"])]
    waiters = [(int(r["pid"]), float(r["pid_start"])) for r in sound("waiters", conn.execute(
        "SELECT pid, pid_start FROM waiters WHERE node=?", (key,)).fetchall()) if not pid_alive(r["pid"], r["pid_start"])]
    if not (jobs or runs or waiters):
        return
    with immediate(conn) as c:
        c.execute(f"DELETE FROM reservations WHERE node=? AND {gone_jobs}", (key, key))
        c.executemany("DELETE FROM reservations WHERE job_id=? AND pid=?", runs)
        c.executemany("DELETE FROM waiters WHERE node=? AND pid=? AND pid_start=?", [(key, *w) for w in waiters])


def older_run(conn: sqlite3.Connection, key: str, since: float, now: float, pid: int | None = None) -> int | None:
    """The PID of a live waiting run (other than ``pid``) that began waiting before ``since`` and has waited
    its own ``--reserve-after``: it comes first (oldest waiter first). None when there is none."""
    from migctl.proc import pid_alive

    rows = conn.execute("SELECT pid, pid_start, since FROM waiters WHERE node=? AND (since < ? OR (since = ? AND "
                        "pid < ?)) AND ? - since >= reserve_after ORDER BY since, pid",
                        (key, since, since, pid if pid is not None else -1, now)).fetchall()
    for r in sound("waiters", rows):
        if r["pid"] != pid and pid_alive(r["pid"], r["pid_start"]):
            return int(r["pid"])
    return None


def ahead_of(conn: sqlite3.Connection, key: str, request: str, since: float, pid: int, seen_after: float,
             first: bool = False) -> int:
    """How many live waiting runs other than ``pid`` wait for the same ``request`` (a
    :func:`migctl.jobs.run_reserve.signature`), began waiting before ``since`` and were seen after
    ``seen_after``: the runs served before a run that began waiting at ``since`` (``first``: stop at the first
    one found, so at most 1)."""
    from migctl.proc import pid_alive

    rows = conn.execute("SELECT pid, pid_start FROM waiters WHERE node=? AND request=? AND pid != ? AND seen > ? "
                        "AND (since < ? OR (since = ? AND pid < ?)) ORDER BY since DESC",
                        (key, request, pid, seen_after, since, since, pid)).fetchall()
    n = 0
    for r in sound("waiters", rows):  # (the latest first: the run just before this one is the likeliest to be alive)
        if pid_alive(r["pid"], r["pid_start"]):
            n += 1
            if first:
                break
    return n


def run_first(conn: sqlite3.Connection, key: str, priority: int, created: float, now: float) -> bool:
    """Whether a live waiting run past its threshold comes before a queued job of ``priority`` queued at
    ``created``. A run counts as priority 0: a job above it goes first, a job below it after any such run,
    a job at 0 after the runs that began waiting before it was queued."""
    if priority > 0:
        return False
    return older_run(conn, key, math.inf if priority < 0 else created, now) is not None


def older_job(conn: sqlite3.Connection, key: str, since: float, now: float) -> int | None:
    """The queued job that the node's live worker reserves for next (the first in queue order that has
    waited its ``--reserve-after``), when it comes before a run that began waiting at ``since``: queued
    earlier at priority 0, or at any time with a priority above 0 (a run counts as priority 0; see
    :func:`run_first`). None when there is none, or no live worker with reservations on serves the node
    (its reservation would never be used)."""
    w = live_worker(conn, key)
    if w is None or w["reserve_after"] is None:
        return None
    r = conn.execute("SELECT id, created, priority FROM jobs WHERE node=? AND state='queued' AND created <= ? "
                     "ORDER BY priority DESC, id LIMIT 1", (key, now - float(w["reserve_after"]))).fetchone()
    from migctl.jobs.rows import problem

    if r is None or problem(r) is not None or int(r["priority"]) < 0:  # (a damaged row: the worker fails it)
        return None
    return int(r["id"]) if int(r["priority"]) > 0 or float(r["created"]) < since else None


def worker_serves(conn: sqlite3.Connection, key: str, pid: int, pid_start: float, reserve_after: float | None) -> None:
    """Record the node's worker and its ``--reserve-after`` (None: off) for :func:`older_job`."""
    with immediate(conn) as c:
        c.execute("INSERT OR REPLACE INTO workers (node, pid, pid_start, reserve_after, seen) VALUES (?,?,?,?,?)",
                  (key, pid, pid_start, reserve_after, time.time()))


def worker_beat(conn: sqlite3.Connection, key: str, pid: int, pid_start: float, reserve_after: float | None) -> None:
    """The worker's refresh of its row (each pass, at most every second): see :func:`jobs_ahead`. A row that is
    gone (dropped as damaged, :func:`migctl.jobs.rows.drop_damaged`) is written again."""
    with immediate(conn) as c:
        if not c.execute("UPDATE workers SET seen=? WHERE node=? AND pid=?", (time.time(), key, pid)).rowcount:
            c.execute("INSERT OR REPLACE INTO workers (node, pid, pid_start, reserve_after, seen) VALUES (?,?,?,?,?)",
                      (key, pid, pid_start, reserve_after, time.time()))


def live_worker(conn: sqlite3.Connection, key: str) -> sqlite3.Row | None:
    """The row of the live worker that serves the node (``workers``: pid, pid_start, reserve_after, seen; the
    same process still runs), or None. A row edited by hand is passed over (:func:`migctl.jobs.rows.sound`)."""
    from migctl.proc import pid_alive

    w = next(iter(sound("workers", conn.execute("SELECT * FROM workers WHERE node=?", (key,)).fetchall())), None)
    return w if w is not None and pid_alive(int(w["pid"]), float(w["pid_start"])) else None


def _serving(conn: sqlite3.Connection, key: str, seen_after: float) -> bool:
    """Whether a live worker serves the node and refreshed its row after ``seen_after``."""
    w = live_worker(conn, key)
    return w is not None and float(w["seen"]) > seen_after


def jobs_ahead(conn: sqlite3.Connection, key: str, request: str, since: float, seen_after: float,
               first: bool = False) -> int:
    """How many queued jobs asking for the same ``request`` (a :func:`migctl.jobs.run_reserve.signature`) come
    before a run that began waiting at ``since``: queued earlier at priority 0, or with a priority above 0
    (a run counts as priority 0), jobs being started included. Only while a live worker serves the node and
    was seen after ``seen_after`` (none, or a stopped one, would never start them). ``first``: at most 1."""
    if not _serving(conn, key, seen_after):
        return 0
    from migctl.jobs.run_reserve import job_signature

    try:
        profile, mem_mib = json.loads(request)[:2]
    except (ValueError, TypeError):
        return 0
    rows = conn.execute("SELECT id, profile, mem_mib, gpus, isolation, share, threads, mps_mem_mib FROM jobs "
                        "WHERE node=? AND state IN ('queued', 'starting') AND profile IS ? AND mem_mib IS ? AND "
                        "(priority > 0 OR (priority = 0 AND created < ?))",  # (no order: any one answers first=True)
                        (key, profile, mem_mib, since))
    n = 0
    for r in rows:
        if job_signature(r) == request:
            n += 1
            if first:
                break
    return n


def fresh_waiters(conn: sqlite3.Connection, key: str, seen_after: float) -> dict[str, list[tuple[float, int, float]]]:
    """The node's waiting runs seen after ``seen_after``, by request signature: ``[(since, pid, pid_start)]``
    oldest first (read once per worker pass, for :func:`run_before`)."""
    out: dict[str, list[tuple[float, int, float]]] = {}
    rows = conn.execute("SELECT pid, pid_start, since, request FROM waiters WHERE node=? AND seen > ? AND request != '' "
                        "ORDER BY since, pid", (key, seen_after)).fetchall()
    for r in sound("waiters", rows):
        out.setdefault(r["request"], []).append((float(r["since"]), int(r["pid"]), float(r["pid_start"])))
    return out


def run_before(waiters: list[tuple[float, int, float]], created: float, priority: int) -> int | None:
    """The PID of a live run among ``waiters`` (one request's, from :func:`fresh_waiters`) that comes before a
    queued job with the same request, of ``priority``, queued at ``created``: the order of :func:`jobs_ahead`
    seen from the worker (a run counts as priority 0). None when there is none."""
    if priority > 0:
        return None
    from migctl.proc import pid_alive

    for since, pid, pid_start in waiters:
        if priority == 0 and since >= created:
            break
        if pid_alive(pid, pid_start):
            return pid
    return None


def worker_leaves(conn: sqlite3.Connection, key: str, pid: int) -> None:
    with immediate(conn) as c:
        c.execute("DELETE FROM workers WHERE node=? AND pid=?", (key, pid))


def plan_live(node: Any, conn: sqlite3.Connection, key: str, req: Any, job_id: int, now: float,
              exclude: int | None = None) -> Reservation | None:
    """:func:`plan` on the node's live layout and leases for request ``req`` (a :class:`Request`), clear of
    the other live reservations (``exclude``: one more to ignore, the one being re-planned)."""
    from migctl.busy import live_leases
    from migctl.jobs.reshape import eligible_profiles
    from migctl.reconcile.engine import read_node

    live = [g for g in read_node(node) if g.model is not None and g.mig_current
            and (req.gpus is None or g.index in req.gpus)]
    eligible = {g.index: eligible_profiles(g.model, req) for g in live}
    taken = [r for r in load(conn, key, live=True) if r.job_id not in (job_id, exclude)]
    return plan(live, eligible, job_ends(conn, key), live_leases(node), taken, job_id, now,
                existing_only=not req.create)


def job_ends(conn: sqlite3.Connection, key: str) -> dict[int, float]:
    """Running jobs with a time limit -> when the limit ends (started + limit)."""
    rows = conn.execute("SELECT id, started, time_limit FROM jobs WHERE node=? AND state='running' AND "
                        "time_limit IS NOT NULL AND started IS NOT NULL", (key,)).fetchall()
    from migctl.jobs.rows import problem

    # (a damaged row, edited by hand, has no known end: it is treated as a job without a limit)
    return {int(r["id"]): float(r["started"]) + float(r["time_limit"]) for r in rows if problem(r) is None}


def plan(live: list[Any], eligible: dict[int, list[Any]], ends: dict[int, float], leases: list[tuple[Any, tuple[int, ...]]],
         taken: list[Reservation], job_id: int, now: float, existing_only: bool = False) -> Reservation | None:
    """The placement where the job can start earliest (pure: no I/O).

    ``live``: the node's GPUs as :func:`migctl.reconcile.engine.read_node` reads them (holders as PIDs);
    ``eligible``: GPU index -> catalog GI profiles that serve the job; ``ends``: job id -> end of its time
    limit; ``leases``: live lease rows with their processes (:func:`migctl.busy.live_leases`); ``taken``:
    existing reservations (not overlapped). An instance in the way is free at once when idle, at its job's
    limit when every process on it belongs to leases of time-limited jobs, else never known (``at`` None).
    Ranked by start time, then fewest instances in the way, then GPU and start. ``existing_only`` (a requester
    that never creates, ``run --no-create``): only placements an instance of that profile already fills.
    """
    from migctl.catalog.geometry import PlacedGI, conflict
    from migctl.catalog.model import Placement

    by_uuid: dict[str, tuple[float, set[int]]] = {}
    for row, procs in leases:
        end = ends.get(int(row["job_id"])) if row["job_id"] is not None else None
        by_uuid[row["uuid"]] = (math.inf if end is None else end, {int(row["pid"]), *procs})
    best: tuple[tuple, Reservation] | None = None
    for g in live:
        model = g.model
        if model is None or g.index not in eligible:
            continue
        for p in eligible[g.index]:
            for pl in p.placements:
                if any(r.gpu == g.index and r.overlaps(pl.start, pl.size) for r in taken):
                    continue
                way = [gi for gi in g.gis if gi.start < pl.start + pl.size and pl.start < gi.start + gi.size]
                if existing_only and [(gi.profile, gi.start, gi.size) for gi in way] != [(p.name, pl.start, pl.size)]:
                    continue  # (a requester that never creates: only an instance that is already there)
                rest = []
                for gi in g.gis:
                    cp = model.profile(gi.profile)
                    if gi not in way and cp is not None:
                        rest.append(PlacedGI(cp, Placement(gi.start, gi.size)))
                if conflict(model, rest, p, pl) is not None:
                    continue
                at, unbounded = now, 0
                for gi in way:
                    if not gi.pids:
                        continue
                    end, covered = 0.0, set()
                    for u in gi.uuids():
                        if u in by_uuid:
                            end = max(end, by_uuid[u][0])
                            covered |= by_uuid[u][1]
                    if not set(gi.pids) <= covered or math.isinf(end):
                        unbounded += 1
                    else:
                        at = max(at, end)
                rank = (unbounded, at, len(way), g.index, pl.start)
                if best is None or rank < best[0]:
                    best = (rank, Reservation(job_id, g.index, p.name, pl.start, pl.size,
                                              None if unbounded else at, now))
    return None if best is None else best[1]
