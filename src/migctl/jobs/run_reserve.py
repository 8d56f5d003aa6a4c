"""A waiting ``migctl run`` gets a reservation too (``run --reserve-after S|off``, default 300 s).

The run makes and takes its own reservation, so it works with no worker running:

* it records itself in the ``waiters`` table before its first attempt (:meth:`RunReservation.enter`: PID,
  start time, when it began waiting, its threshold, its request; a run that reaches this code another way
  does so once it has waited its ``--reserve-after``), so the worker knows an older waiting run comes
  first (:func:`migctl.jobs.reservations.older_run`; only runs past their threshold count there);
* once it has waited ``reserve_after`` seconds, no live reservation is held on the node and no run that
  began waiting earlier has waited its own threshold, it plans with the worker's function
  (:func:`migctl.jobs.reservations.plan_live`) and claims the node's one reservation (a row with
  ``job_id`` -PID and its PID; check and insert in one write transaction);
* while it holds it, each attempt (every :attr:`RunReservation.PAUSE` s at most, after a lease attempt that
  found nothing) re-plans a reservation whose start is unknown, as the worker does, and calls
  :func:`migctl.jobs.reshape.reshape_reserved` (the worker's path: the transactional apply, under the node
  lock, destroying only idle instances in the way) so the reserved instance is created once nothing busy
  is in the way; the next lease attempt leases it (its own reservation does not block it);
* a run that never creates (``--no-create``) reserves an instance that is already there (the one it can
  have earliest) and changes nothing: others keep clear of it, and its next lease attempt after the
  instance frees up takes it;
* :meth:`RunReservation.close` (after the lease, on an error, on Ctrl-C) removes its reservation and waiter
  rows. A run killed outright leaves them: its reservation blocks nothing from then on (a dead run's is
  ignored by :func:`migctl.jobs.reservations.blocking`) and the next worker pass or waiting run deletes
  both (:func:`migctl.jobs.reservations.prune`), as stale leases are (same PID and start-time check).

Runs that ask for the same thing are served in arrival order, below any threshold (a FIFO per request):
an exclusive run that may wait records itself in ``waiters`` before its first attempt (its request as
:func:`signature` gives it), refreshes its row's ``seen`` from its wait loop (:meth:`RunReservation.beat`),
and under the node lock leases nothing while a live waiting run with the same request that began waiting
before it has been seen within :attr:`RunReservation.STALE` seconds (:meth:`RunReservation.ahead`;
:func:`migctl.jobs.reservations.ahead_of`). A run that holds the node's reservation is exempt (the space it
reserved is its own to use), and a stopped or stuck run (no refresh) stops counting after ``STALE`` seconds.
A ``--no-wait`` run records nothing but defers the same way. Queued jobs with the same request are in that
order too (a run counts as priority 0): a run also defers to such a job queued before it began waiting, or
with a priority above 0, while the node's worker is alive and seen (:func:`migctl.jobs.reservations.jobs_ahead`),
and the worker leaves a job behind such a run (:meth:`migctl.jobs.queue.Worker.run_first`).

Oldest waiter first, jobs and runs together (a run counts as priority 0: a queued job above it goes first,
one below it after it): a run defers to an older waiting run past its own threshold
(:func:`migctl.jobs.reservations.older_run`) and to the queued job that the node's live worker reserves for
next when that job was queued before the run began waiting or has a priority above 0
(:func:`migctl.jobs.reservations.older_job`: the worker records itself and its ``--reserve-after`` in the
``workers`` table; with no worker, or one with ``--reserve-after off``, queued jobs get no reservation and a
run does not wait for them). The worker, in turn, leaves the reservation to a run that comes before its job
(:func:`migctl.jobs.reservations.run_first`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import replace
from functools import cached_property
from typing import Any

from migctl.jobs import reservations
from migctl.jobs.common import connect, immediate, node_key, proc_start
from migctl.jobs.leases import Request


def signature(req: Request, sharing: Any = None) -> str:
    """The request as runs that wait for the same thing share it (the key of their arrival order); a shared
    run's (``sharing``, a :class:`migctl.jobs.mps.Sharing` other than hard) names its sharing too."""
    base = [req.profile, req.mem_mib, list(req.gpus) if req.gpus else None, req.create]
    if sharing is None or sharing.kind == "mig":
        return json.dumps(base)
    return json.dumps([*base, [sharing.isolation, sharing.share, sharing.threads, sharing.mem_limit_mib]])


def job_signature(row: Any) -> str:
    """:func:`signature` of a queued job's row (``profile``, ``mem_mib``, ``gpus`` and its sharing columns): a
    run and a job with the same one wait for the same thing. "" for a row migctl would not write."""
    from migctl.jobs.mps import Sharing

    try:
        gpus = tuple(json.loads(row["gpus"])) if row["gpus"] else None
        req = Request(profile=row["profile"], mem_mib=row["mem_mib"], gpus=gpus)
        return signature(req, Sharing(row["isolation"] or "hard", row["share"], row["threads"], row["mps_mem_mib"]))
    except (ValueError, TypeError):
        return ""


def waiting_runs(conn: Any, key: str, now: float | None = None) -> list[dict[str, Any]]:
    """The live runs waiting on the node, oldest first, as ``migctl jobs`` shows them: PID, what it asks for,
    when it began waiting, its place among the runs and queued jobs waiting for the same thing (1 = next;
    None when it has not been seen for :attr:`RunReservation.STALE` s and so holds nobody back) and when it
    was last seen."""
    from migctl.proc import pid_alive

    now = time.time() if now is None else now
    from migctl.jobs.rows import sound

    rows = [r for r in sound("waiters", conn.execute("SELECT pid, pid_start, since, request, seen FROM waiters "
                                                     "WHERE node=? ORDER BY since, pid", (key,)).fetchall())
            if pid_alive(r["pid"], r["pid_start"])]
    places: dict[str, int] = {}
    out = []
    for r in rows:
        fresh = float(r["seen"]) > now - RunReservation.STALE
        place = None
        if fresh and r["request"]:
            place = places[r["request"]] = places.get(r["request"], 0) + 1
            place += reservations.jobs_ahead(conn, key, r["request"], float(r["since"]), now - RunReservation.STALE)
        out.append({"pid": int(r["pid"]), "request": _described(r["request"]), "since": float(r["since"]),
                    "place": place, "seen": float(r["seen"]) or None})
    return out


def _described(request: str) -> str:
    if not request:
        return "a shared device"  # (a row written before requests were recorded)
    try:
        profile, mem, gpus, create, *shared = json.loads(request)
        text = Request(profile=profile, mem_mib=mem, gpus=tuple(gpus) if gpus else None, create=create).describe()
        if shared:
            from migctl.jobs.mps import Sharing

            isolation, share, threads, mem_limit = shared[0]
            text += ", shared " + Sharing(isolation, share, threads, mem_limit).describe()
    except (ValueError, TypeError):  # (a row in a form this version does not know: shown as it is)
        from migctl.inputs import printable

        return printable(request, 80)
    return text + ("" if create else ", existing instance")


class RunReservation:
    """One waiting run's place in the arrival order and in the reservation order, and its reservation once it
    has waited long enough (``reserve_after`` seconds; None: never)."""

    PAUSE = 0.25  # seconds between two attempts, at least
    BEAT = 1.0  # seconds between two refreshes of the waiter row's ``seen``, at least
    STALE = 5.0  # a waiter not seen for this long stops counting in the arrival order
    POLL = 0.1  # seconds between two looks of a run in an arrival order (its turn, or a free device), at most

    def __init__(self, node: Any, reserve_after: float | None, log: Callable[[str], None] | None = None) -> None:
        self.node = node
        self.reserve_after = math.inf if reserve_after is None else reserve_after
        self.log = log or (lambda s: None)
        self.key = node_key(node)
        self.pid = os.getpid()
        self.pid_start = proc_start(self.pid) or 0.0
        self.since: float | None = None
        self.enlisted = False
        self._next = 0.0
        self._said = ""
        self._request = ""
        self._beaten = 0.0

    @cached_property
    def conn(self) -> Any:
        """The jobs database, opened when first needed (a run that neither waits nor asks its turn never does)."""
        return connect()

    @property
    def job_id(self) -> int:
        return -self.pid

    def _enlist(self) -> None:
        assert self.since is not None
        self.enlisted = True
        self._beaten = time.monotonic()
        with immediate(self.conn) as c:
            c.execute("INSERT OR REPLACE INTO waiters (node, pid, pid_start, since, reserve_after, request, seen) "
                      "VALUES (?,?,?,?,?,?,?)", (self.key, self.pid, self.pid_start, self.since,
                                                 self.reserve_after, self._request, time.time()))

    def enter(self, req: Request, waits: bool = True, sharing: Any = None) -> None:
        """Before the first attempt: take a place in the arrival order of runs with the same request and
        ``sharing`` (only a run that may wait: ``waits``)."""
        self._request = signature(req, sharing)
        if waits and not self.enlisted:
            reservations.prune(self.conn, self.key)  # (rows of runs killed while waiting go first)
            self.since = time.time()
            self._enlist()

    def beat(self) -> None:
        """From the wait loop: refresh ``seen`` (at most every :attr:`BEAT` s), so a run that stops looping
        (stopped, stuck) stops holding back the runs behind it."""
        if self.enlisted and time.monotonic() - self._beaten >= self.BEAT:
            self._beaten = time.monotonic()
            with immediate(self.conn) as c:
                c.execute("UPDATE waiters SET seen=? WHERE node=? AND pid=?", (time.time(), self.key, self.pid))

    def ahead(self, first: bool = False) -> int:
        """How many live waiting runs with the same request began waiting before this one and were seen within
        :attr:`STALE` s, and how many queued jobs with the same request come before it while the node's worker
        was seen within :attr:`STALE` s (:func:`migctl.jobs.reservations.jobs_ahead`) (0: its turn; with
        ``first``, at most 1: whether there is one). Called under the node lock before a device is chosen (and
        without it, as a look, between attempts). A run holding the node's reservation does not wait for them
        (its reserved space is its own to use)."""
        return sum(self._ahead(first))  # (with first: at most 1 in all)

    def first(self) -> int:
        """:meth:`ahead` with ``first``: 1 while anyone comes first (the check under the node lock, which needs
        no count: a long queue is not scanned there)."""
        return self.ahead(first=True)

    def _ahead(self, first: bool = False) -> tuple[int, int]:
        if not self._request:
            return 0, 0
        if self.enlisted and self.mine() is not None:
            return 0, 0
        now = time.time()
        since = self.since if self.since is not None else now
        runs = reservations.ahead_of(self.conn, self.key, self._request, since, self.pid, now - self.STALE,
                                     first=first)
        if first and runs:
            return runs, 0
        return runs, reservations.jobs_ahead(self.conn, self.key, self._request, since, now - self.STALE, first=first)

    def ahead_note(self) -> str:
        """For a timeout's message: "; N earlier run(s) ... come first", or "" when none does."""
        runs, jobs = self._ahead()
        what = " and ".join(x for x in (f"{runs} earlier run(s)" if runs else "",
                                        f"{jobs} queued job(s)" if jobs else "") if x)
        return f"; {what} waiting for the same request come first" if what else ""

    def mine(self) -> reservations.Reservation | None:
        return next((r for r in reservations.load(self.conn, self.key) if r.job_id == self.job_id
                     and r.pid == self.pid and r.pid_start == self.pid_start), None)

    def attempt(self, req: Request) -> bool:
        """One step if it is time (an ``on_retry`` hook of :meth:`LeaseManager.acquire`); True when the
        reserved instance was just created (the next lease attempt follows at once)."""
        if self.since is None:
            self.since = time.time()
        if time.monotonic() < self._next:
            return False
        self._next = time.monotonic() + self.PAUSE
        try:
            return self._step(req, time.time())
        except Exception as e:  # noqa: BLE001 - NVML in flux while something changes the layout: try later
            from migctl.busy import transient

            if not transient(e):
                raise
            return False

    def _step(self, req: Request, now: float) -> bool:
        from migctl.jobs.reshape import reshape_reserved

        assert self.since is not None
        if now - self.since < self.reserve_after:
            return False  # (nothing to reserve before its threshold)
        if not self.enlisted:
            self._enlist()
        reservations.prune(self.conn, self.key)
        res = self.mine()
        if res is None:
            if reservations.load(self.conn, self.key, live=True):
                return False  # one reservation per node at a time
            if reservations.older_run(self.conn, self.key, self.since, now, self.pid) is not None:
                return False  # an older waiting run comes first
            if reservations.older_job(self.conn, self.key, self.since, now) is not None:
                return False  # so does the older queued job the worker reserves for next
            res = self._plan(req, now)
            if res is None or not reservations.claim(self.conn, self.key, res):
                return False
            self.log(f"waited {now - self.since:.0f}s; reserved {res.describe()}")
        elif res.at is None:  # start unknown: a better placement may have appeared (as the worker does)
            res = reservations.moved(self.conn, self.key, res, self._plan(req, now))
        if not req.create:
            return False  # an existing instance, kept clear of others: the next lease attempt takes it once free
        out = reshape_reserved(self.node, res, source="migctl run (reservation)", conn=self.conn)
        if out.done:
            self.log(f"reserved space free; {out.note}")
            return True
        if out.status == "raced" and out.note != self._said:
            self._said = out.note
            self.log(f"reservation not taken yet: {out.note}")
        return False

    def _plan(self, req: Request, now: float) -> reservations.Reservation | None:
        res = reservations.plan_live(self.node, self.conn, self.key, req, self.job_id, now)
        return None if res is None else replace(res, pid=self.pid, pid_start=self.pid_start)

    def close(self) -> None:
        """Remove this run's reservation and waiter rows (it got its lease, gave up, or was interrupted)."""
        if not self.enlisted:
            return
        with immediate(self.conn) as c:
            c.execute("DELETE FROM reservations WHERE job_id=? AND pid=?", (self.job_id, self.pid))
            c.execute("DELETE FROM waiters WHERE node=? AND pid=?", (self.key, self.pid))
        self.enlisted = False
