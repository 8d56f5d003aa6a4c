"""A waiting ``migctl run`` gets a reservation too (``run --reserve-after S|off``, default 300 s).

The run makes and takes its own reservation, so it works with no worker running:

* its first lease attempt that finds nothing is when it began waiting; once it has waited its
  ``--reserve-after`` it records itself in the ``waiters`` table (PID, start time, when it began waiting,
  its threshold), so the worker knows an older waiting run comes first
  (:func:`migctl.jobs.reservations.older_run`; only runs past their threshold count, so a run that waits
  less writes nothing);
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

import os
import time
from collections.abc import Callable
from dataclasses import replace
from functools import cached_property
from typing import Any

from migctl.jobs import reservations
from migctl.jobs.common import connect, immediate, node_key, proc_start
from migctl.jobs.leases import Request


class RunReservation:
    """One waiting run's place in the reservation order, and its reservation once it has waited long enough."""

    PAUSE = 0.25  # seconds between two attempts, at least

    def __init__(self, node: Any, reserve_after: float, log: Callable[[str], None] | None = None) -> None:
        self.node = node
        self.reserve_after = reserve_after
        self.log = log or (lambda s: None)
        self.key = node_key(node)
        self.pid = os.getpid()
        self.pid_start = proc_start(self.pid) or 0.0
        self.since: float | None = None
        self.enlisted = False
        self._next = 0.0
        self._said = ""

    @cached_property
    def conn(self) -> Any:
        """The jobs database, opened when first needed (a run that waits less than its threshold never does)."""
        return connect()

    @property
    def job_id(self) -> int:
        return -self.pid

    def _enlist(self) -> None:
        assert self.since is not None
        self.enlisted = True
        with immediate(self.conn) as c:
            c.execute("INSERT OR REPLACE INTO waiters (node, pid, pid_start, since, reserve_after) VALUES (?,?,?,?,?)",
                      (self.key, self.pid, self.pid_start, self.since, self.reserve_after))

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
            return False  # (no database access before its threshold: many runs may be waiting)
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
