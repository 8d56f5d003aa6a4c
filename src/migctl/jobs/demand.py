"""The queue worker follows demand: reshaping for queued jobs that do not fit, and reservations.

After each pass of :meth:`migctl.jobs.queue.Worker.start_ready` (reuse and creation in free space, in
priority-then-age order with backfill), :meth:`Demand.after_pass`:

1. **reservations** (``reserve_after`` set): the oldest queued job (priority, then arrival, whatever the
   start order) that has waited longer than ``reserve_after`` gets the placement where it can start earliest reserved
   (:func:`migctl.jobs.reservations.plan`), one reservation per node at a time, kept in the jobs database,
   unless a waiting ``migctl run`` that comes first has waited its own ``--reserve-after`` (a run counts as
   priority 0: one that began waiting before a priority-0 job was queued, any run before a job below 0, none
   before a job above 0; :func:`migctl.jobs.reservations.run_first`): that run reserves for itself
   (:mod:`migctl.jobs.run_reserve`) and the worker leaves it alone (a run's reservation is neither re-planned nor taken by the worker).
   As soon as no busy instance is left in that placement, the idle ones in the way are destroyed and the
   reserved instance is created (no churn cap, no hysteresis), and the job starts;
2. **reshaping** (``reshape``): for each queued job in queue order (one attempt per distinct request; a
   later job with a shorter time limit only while the node has a reservation, :class:`Closed`),
   :func:`migctl.jobs.reshape.try_reshape` destroys the fewest idle instances on one GPU
   under the churn policy; the job starts at once. When the churn cap is what stops the job whose turn it
   is, the pass ends there (later jobs do not spend the budget first).

Nothing busy or leased is ever destroyed: both paths go through the transactional apply, which re-reads
the holders under the node lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from migctl.jobs import reservations
from migctl.jobs.common import JobsError
from migctl.jobs.leases import Request
from migctl.jobs.limits import DEFAULT_GRACE_S
from migctl.jobs.reshape import Churn, reshape_reserved, try_reshape
from migctl.jobs.rows import problem, sound_queued

DEFAULT_WORKER_HYSTERESIS_S = 5.0
DEFAULT_RESERVE_AFTER_S = 300.0


@dataclass(frozen=True)
class WorkerPolicy:
    """What ``migctl worker`` does beyond plain backfill (its flags)."""

    reshape: bool = True
    churn: Churn = field(default_factory=lambda: Churn(hysteresis_s=DEFAULT_WORKER_HYSTERESIS_S))
    reserve_after: float | None = DEFAULT_RESERVE_AFTER_S
    limit_grace: float = DEFAULT_GRACE_S
    order: str = "sjf-request"  # start order within a priority: "fifo" or "sjf-request" (:func:`start_order`;
    # jobs without a time limit count as longest, so without limits the two are the same)


ORDERS = ("fifo", "sjf-request")


def start_order(rows: list[Any], order: str, reserved: set[int]) -> list[Any]:
    """Queued jobs (``rows``, in priority-then-age order) in the order the worker tries them.

    "fifo" keeps them. "sjf-request" (the planner's ``Policy(order="sjf-request")``, docs/dynamic.md) lets the
    shortest time limit go first among jobs that ask for the same thing (priority, profile or memory, GPUs,
    isolation and shares; no limit counts as longest) and keeps arrival order between different requests;
    the jobs in ``reserved`` keep their place at the front.
    """
    if order == "fifo":
        return rows
    from migctl.planner.dynamic import shortest_first_within

    return shortest_first_within(
        rows, same=lambda r: (r["priority"], r["profile"], r["mem_mib"], r["gpus"], r["isolation"], r["share"],
                              r["threads"], r["mps_mem_mib"]),
        limit=lambda r: float("inf") if r["time_limit"] is None else float(r["time_limit"]),
        fixed=lambda r: r["id"] in reserved)


class Closed:
    """Requests that found no room in one pass, so later jobs asking for the same thing are not tried.

    A time limit matters only against reservations: a shorter one may backfill where a longer one may not.
    So with no reservation on the node (``reservations`` False) every limit fails where one did, and with one,
    every limit no shorter than the shortest that failed (None: no limit, the longest). The simulated
    scheduler closes requests the same way (:meth:`migctl.planner.dynamic.Scheduler.step`). Trying the later
    job anyway would let it overtake the earlier one whenever a device frees up between the two attempts
    (a job's lease ends with its process, not at the next pass)."""

    def __init__(self, reservations: bool) -> None:
        self.reservations = reservations
        self._failed: dict[Any, tuple[float, Any]] = {}  # request -> (shortest failed limit, what it found)

    def get(self, what: Any, limit: float | None) -> Any:
        """What the earlier failure found, if a job asking for ``what`` with ``limit`` fails the same way."""
        got = self._failed.get(what)
        if got is None or (self.reservations and _limit(limit) < got[0]):
            return None
        return got[1]

    def close(self, what: Any, limit: float | None, found: Any) -> None:
        got = self._failed.get(what)
        self._failed[what] = (min(_limit(limit), got[0]) if got else _limit(limit), found)

    def reopen(self, what: Any) -> None:
        self._failed.pop(what, None)


def _limit(limit: float | None) -> float:
    return float("inf") if limit is None else float(limit)


def has_reservations(conn: Any, key: str) -> bool:
    return conn.execute("SELECT 1 FROM reservations WHERE node=? LIMIT 1", (key,)).fetchone() is not None


def reserved_jobs(conn: Any, key: str) -> set[int]:
    return {r.job_id for r in reservations.load(conn, key)}


def queued_rows(conn: Any, key: str, order: str = "fifo", log: Callable[[str], None] | None = None) -> list[Any]:
    """The node's queued jobs in the order the worker tries them: a reserved job first, then priority, then
    arrival (or ``order``, :func:`start_order`). Both the start pass and reshaping read them this way. A job
    whose row is damaged (edited by hand) fails instead, with one line saying why (``log``)."""
    rows = conn.execute(
        "SELECT id, profile, mem_mib, gpus, created, time_limit, priority, isolation, share, threads, mps_mem_mib "
        "FROM jobs WHERE node=? AND state='queued' "
        "ORDER BY (id IN (SELECT job_id FROM reservations WHERE node=?)) DESC, priority DESC, id",
        (key, key)).fetchall()
    rows = sound_queued(conn, rows, log)
    return start_order(rows, order, reserved_jobs(conn, key)) if order != "fifo" else rows


def _request(row: Any) -> Request:
    import json

    return Request(profile=row["profile"], mem_mib=row["mem_mib"],
                   gpus=tuple(json.loads(row["gpus"])) if row["gpus"] else None)


class Demand:
    """Reshaping and reservations for one :class:`~migctl.jobs.queue.Worker`."""

    PAUSE = 0.5  # seconds between reshaping evaluations that found nothing to do (unless jobs came or went)
    MIN_GAP = 0.2  # seconds between two evaluations, whatever happens

    def __init__(self, worker: Any, policy: WorkerPolicy) -> None:
        self.w = worker
        self.policy = policy
        self.conn = worker.q.conn
        self.key = worker.q.key
        self.node = worker.node
        self._next = 0.0
        self._next_res = 0.0
        self._said: dict[int, str] = {}

    def log(self, text: str) -> None:
        self.w.log(text)

    def _queued(self) -> list[Any]:
        return queued_rows(self.conn, self.key, self.policy.order, self.log)

    def after_pass(self, changed: bool = False) -> int:
        """Reservations, then reshaping; returns the number of jobs started. ``changed``: jobs started or
        ended in this pass (the layout's holders changed: evaluate again now)."""
        if changed:
            soon = time.monotonic() + self.MIN_GAP
            self._next, self._next_res = min(self._next, soon), min(self._next_res, soon)
        if has_reservations(self.conn, self.key):
            reservations.prune(self.conn, self.key)
        queued = self._queued()
        if not queued:
            return 0
        started = 0
        try:
            if self.policy.reserve_after is not None and time.monotonic() >= self._next_res:
                self._next_res = time.monotonic() + self.PAUSE / 2
                started += self._reservations(queued)
            if self.policy.reshape and time.monotonic() >= self._next:
                if self._maybe_idle():
                    started += self._reshape(self._queued())
                else:
                    self.w.reasons.nothing_to_reshape()
                    self._next = time.monotonic() + self.PAUSE
        except Exception as e:  # noqa: BLE001 - NVML in flux: the next pass looks again
            from migctl.busy import transient

            if not transient(e):
                raise
            self._next = self._next_res = time.monotonic() + self.PAUSE
        return started

    def _maybe_idle(self) -> bool:
        """A cheap look (no process scan): is any instance unleased? When every MIG device has a live-looking
        lease row and every GI a device, nothing can be reshaped: skip the full evaluation."""
        from migctl.busy import retry_nvml, transient

        leased = {r["uuid"] for r in self.conn.execute("SELECT uuid FROM leases WHERE node=?", (self.key,)).fetchall()}
        try:
            for g in retry_nvml(self.node.gpus):
                if not retry_nvml(g.mig_capable) or retry_nvml(g.mig_mode)[0] != 1:
                    continue
                devices = retry_nvml(g.mig_devices)
                if any(d.uuid not in leased for d in devices):
                    return True
                if len(retry_nvml(g.gpu_instances)) > len({d.gi_id for d in devices}):
                    return True  # a GI without a compute instance
        except Exception as e:  # noqa: BLE001 - NVML in flux: let the full evaluation decide
            if transient(e):
                return True
            raise
        return False

    def _start(self, job_id: int) -> bool:
        row = self.conn.execute("SELECT * FROM jobs WHERE id=? AND state='queued'", (job_id,)).fetchone()
        job = self.w.queued_job(row)
        return job is not None and bool(self.w._start(job))

    # ------------------------------------------------------------------ reservations
    def _reservations(self, queued: list[Any]) -> int:
        held = reservations.load(self.conn, self.key, live=True)
        now = time.time()
        if not held:
            # the oldest starving job (priority, then arrival), whatever the start order: as the planner's
            # scheduler does and as a waiting run is told (reservations.older_job)
            row = min((r for r in queued if now - float(r["created"]) >= (self.policy.reserve_after or 0.0)),
                      key=lambda r: (-int(r["priority"]), int(r["id"])), default=None)
            if row is None:
                return 0
            if reservations.run_first(self.conn, self.key, int(row["priority"]), float(row["created"]), now):
                return 0  # a waiting run comes first (an older one, or any once the job's priority is below 0)
            res = self._plan(row, now)
            if res is None or not reservations.claim(self.conn, self.key, res):
                return 0
            self.log(f"job {row['id']}: waited {now - float(row['created']):.0f}s; reserved {res.describe()}")
            held = [res]
        started = 0
        for res in held:
            if res.pid is not None:  # a waiting run's: the run takes it itself
                continue
            if res.at is None:  # start unknown: a better placement may have appeared
                row = self.conn.execute("SELECT * FROM jobs WHERE id=?", (res.job_id,)).fetchone()
                sound = row is not None and problem(row) is None
                better = self._plan(row, now, exclude=res.job_id) if sound else None
                res = reservations.moved(self.conn, self.key, res, better)
            out = reshape_reserved(self.node, res, conn=self.conn)
            if out.done:
                self.log(f"job {res.job_id}: reserved space free; {out.note}")
                if self._start(res.job_id):
                    started += 1
            elif out.status == "raced" and self._said.get(res.job_id) != out.note:
                self._said[res.job_id] = out.note
                self.log(f"job {res.job_id}: reservation not taken yet: {out.note}")
        return started

    def _plan(self, row: Any, now: float, exclude: int | None = None) -> reservations.Reservation | None:
        return reservations.plan_live(self.node, self.conn, self.key, _request(row), int(row["id"]), now, exclude)

    # ------------------------------------------------------------------ reshaping
    def _reshape(self, queued: list[Any]) -> int:
        started = 0
        tried = Closed(has_reservations(self.conn, self.key))  # request -> outcome (status, note)
        wake: list[float] = []
        why = self.w.reasons
        for n, row in enumerate(queued):
            req = _request(row)
            limit = None if row["time_limit"] is None else float(row["time_limit"])
            earlier = tried.get(req, limit)
            if earlier is not None:
                why.reshaped(int(row["id"]), *earlier)
                continue
            if self.w.run_first(row) is not None:
                why.not_reshaped(int(row["id"]))  # (the start pass said why: a run goes first)
                continue  # not its turn: the earlier run with the same request reshapes for itself
            tried.close(req, limit, ("", ""))
            try:
                out = try_reshape(self.node, req, self.policy.churn, job_id=int(row["id"]), limit=limit,
                                  source="migctl worker", conn=self.conn, lock_timeout=1.0)
            except JobsError as e:  # no profile here fits it any more: starting it will fail it with the reason
                if self._said.get(int(row["id"])) != "error":
                    self._said[int(row["id"])] = "error"
                    self.log(f"job {row['id']}: not reshaping: {e}")
                continue
            why.reshaped(int(row["id"]), out.status, out.note)
            if out.done:
                self.log(f"job {row['id']}: {out.note}")
                if self._start(int(row["id"])):
                    started += 1
                tried.reopen(req)  # the next job with the same request may need another reshape
                continue
            if out.status == "free":  # something freed up since the pass: start it now
                if self._start(int(row["id"])):
                    started += 1
                    tried.reopen(req)
                continue
            tried.close(req, limit, (out.status, out.note))
            if out.retry_at is not None:
                wake.append(out.retry_at)
            if out.status != "none" and self._said.get(int(row["id"])) != out.status:
                self._said[int(row["id"])] = out.status
                self.log(f"job {row['id']}: not reshaping yet: {out.note}")
            if out.status in ("budget", "raced"):
                for later in queued[n + 1:]:
                    why.reshaped(int(later["id"]), out.status, f"behind job {row['id']}: {out.note}")
                break  # its turn: later jobs do not spend the budget first
        if not started:
            pause = self.PAUSE
            if wake:
                pause = min(max(pause, min(wake) - time.time()), 5.0)
            self._next = time.monotonic() + pause
        return started
