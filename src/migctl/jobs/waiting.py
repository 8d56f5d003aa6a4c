"""Why a queued job waits, as ``migctl jobs`` shows it (the REASON of Slurm's ``squeue``).

The worker notes, for every job still queued after a pass, the most specific reason it knows, and writes
it to the job's row (``wait_reason``, ``wait_detail``) only when it changed. In order of precedence:

* ``reserved``: the job holds the node's reservation (:mod:`migctl.jobs.reservations`); the detail says
  where and from when;
* ``node-locked``: an apply holds the node lock, so nothing could be leased in this pass;
* ``churn``: reshaping would make room, but the node's ``--max-reconfig-per-min`` budget is spent (or an
  earlier job waits for it: later jobs do not spend the budget first);
* ``hysteresis``: reshaping would make room once idle instances have been idle for ``--hysteresis``;
* ``raced``: a reshape for it was overtaken by another change of the node; it is tried again;
* ``resources``: nothing free fits, there is no room to create an instance and (with reshaping) no set
  of idle instances makes room;
* ``runs-first``: a ``migctl run`` waiting for the same request since before the job was queued (or any
  such run, for a job of priority below 0) comes first (:meth:`migctl.jobs.queue.Worker.run_first`).

``no-worker`` is not stored: ``migctl jobs`` shows it for every queued job while no live worker serves
the node (:func:`worker_alive`), whatever the last worker wrote.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from migctl.jobs.common import immediate

CODES = ("reserved", "node-locked", "churn", "hysteresis", "raced", "resources", "runs-first", "no-worker")
# migctl.jobs.reshape.Outcome.status -> reason
_OF_OUTCOME = {"budget": "churn", "young": "hysteresis", "raced": "raced", "none": "resources"}

Reason = tuple[str, str]  # (code, detail)


class Reasons:
    """The worker's reasons for the jobs it could not start (one per worker, kept across passes)."""

    def __init__(self, conn: sqlite3.Connection, key: str) -> None:
        self.conn = conn
        self.key = key
        self.start: dict[int, Reason] = {}  # this pass's start attempts
        self.reshape: dict[int, Reason] = {}  # the last reshaping evaluation's outcomes (it runs less often)
        self.written: dict[int, Reason] = {}

    def begin_pass(self) -> None:
        self.start = {}

    def not_started(self, job_id: int, code: str, detail: str) -> None:
        self.start[job_id] = (code, detail)

    def reshaped(self, job_id: int, status: str, note: str) -> None:
        """A reshaping attempt for the job ended with ``status`` (:class:`migctl.jobs.reshape.Outcome`)."""
        if status in _OF_OUTCOME:
            self.reshape[job_id] = (_OF_OUTCOME[status], note)
        else:  # reshaped or free: the start attempt says what happened
            self.reshape.pop(job_id, None)

    def not_reshaped(self, job_id: int) -> None:
        """No reshaping was evaluated for the job (not its turn): what an earlier evaluation said no longer holds."""
        self.reshape.pop(job_id, None)

    def nothing_to_reshape(self) -> None:
        """No instance is idle: no reshaping can help any job now."""
        self.reshape = {}

    def flush(self) -> int:
        """Write the reasons of the queued jobs that changed; returns how many rows were written."""
        from migctl.jobs import reservations

        held = {r.job_id: r for r in reservations.load(self.conn, self.key)}
        queued = [int(r["id"]) for r in self.conn.execute(
            "SELECT id FROM jobs WHERE node=? AND state='queued'", (self.key,)).fetchall()]
        now: dict[int, Reason] = {}
        for j in queued:
            start = self.start.get(j)
            if j in held:
                now[j] = ("reserved", held[j].describe())
            elif start is not None and start[0] == "node-locked":
                now[j] = start
            elif j in self.reshape:
                now[j] = self.reshape[j]
            elif start is not None:
                now[j] = start
            elif j in self.written:
                now[j] = self.written[j]  # not looked at in this pass: what was said stands
        changed = [(code, detail, j) for j, (code, detail) in now.items() if self.written.get(j) != (code, detail)]
        if changed:
            with immediate(self.conn) as c:
                c.executemany("UPDATE jobs SET wait_reason=?, wait_detail=? WHERE id=? AND state='queued'", changed)
        self.written = now
        self.reshape = {j: r for j, r in self.reshape.items() if j in now}
        return len(changed)


def worker_alive(conn: sqlite3.Connection, key: str) -> bool:
    """Whether a live worker serves this node's queue (its row in ``workers``, the same process)."""
    from migctl.jobs.reservations import live_worker

    return live_worker(conn, key) is not None


WAITING = ("queued", "starting")  # a job the worker is trying right now is "starting" for that moment


def of_queued(conn: sqlite3.Connection, key: str) -> dict[int, dict[str, Any]]:
    """``{"reason", "detail"}`` per waiting job of the node (queued, or claimed by the worker for an attempt
    that may fail again: "starting"); jobs with nothing said yet are absent."""
    if not worker_alive(conn, key):
        ids = conn.execute("SELECT id FROM jobs WHERE node=? AND state IN ('queued', 'starting')", (key,)).fetchall()
        return {int(r["id"]): {"reason": "no-worker",
                               "detail": "no migctl worker serves this node's queue (start one: migctl worker)"}
                for r in ids}
    rows = conn.execute("SELECT id, wait_reason, wait_detail FROM jobs WHERE node=? AND state IN ('queued', "
                        "'starting') AND wait_reason IS NOT NULL", (key,)).fetchall()
    return {int(r["id"]): {"reason": r["wait_reason"], "detail": r["wait_detail"] or ""} for r in rows}


def of_jobs(conn: sqlite3.Connection, key: str, jobs: Any) -> dict[int, dict[str, Any]]:
    """:func:`of_queued`, read only when ``jobs`` (rows with a ``state``) include a waiting one."""
    return of_queued(conn, key) if any(j.state in WAITING for j in jobs) else {}
