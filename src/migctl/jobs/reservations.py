"""Reservations: the space a starving queued job will start in, kept clear of jobs that would delay it.

A reservation is one row of the ``reservations`` table (jobs database): job, GPU, GI profile, placement
(memory-slice start and size) and ``at``, the time by which the busy instances in its way reach their
time limit (NULL when one of them has no limit: the start is then unknown). It is made by the queue
worker (:mod:`migctl.jobs.demand`) for the oldest job that has waited longer than ``--reserve-after``,
one at a time per node, and it outlives a worker restart.

Every lease respects it (:meth:`migctl.jobs.leases.LeaseManager.try_acquire`): another requester may use
an existing device, or create one, that overlaps a reserved placement only when its own time limit ends
by ``at`` (conservative backfill). ``migctl run`` and jobs without ``--time-limit`` count as unbounded, so
they never start in reserved space; reshaping for anyone but the reserved job never acts on a GPU with a
reservation that blocks it.
"""

from __future__ import annotations

import math
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from migctl.jobs.common import immediate


@dataclass(frozen=True)
class Reservation:
    job_id: int
    gpu: int
    profile: str
    start: int
    size: int
    at: float | None  # None: unknown (something without a time limit is in the way)
    made: float

    def overlaps(self, start: int, size: int) -> bool:
        return start < self.start + self.size and self.start < start + size

    def blocks(self, job_id: int | None, limit: float | None, now: float) -> bool:
        """Whether a requester (``job_id``, time limit ``limit`` seconds, None = unbounded) must keep clear."""
        if job_id is not None and job_id == self.job_id:
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
                       at=r["at"], made=r["made"])


def load(conn: sqlite3.Connection, key: str) -> list[Reservation]:
    rows = conn.execute("SELECT * FROM reservations WHERE node=? ORDER BY made, job_id", (key,)).fetchall()
    return [_from_row(r) for r in rows]


def blocking(conn: sqlite3.Connection, key: str, job_id: int | None, limit: float | None,
             now: float | None = None) -> dict[int, list[Reservation]]:
    """GPU index -> the reservations there that a requester must keep clear of."""
    now = time.time() if now is None else now
    out: dict[int, list[Reservation]] = {}
    for r in load(conn, key):
        if r.blocks(job_id, limit, now):
            out.setdefault(r.gpu, []).append(r)
    return out


def save(conn: sqlite3.Connection, key: str, res: Reservation) -> None:
    with immediate(conn) as c:
        c.execute("INSERT OR REPLACE INTO reservations (job_id, node, gpu, profile, start, size, at, made) "
                  "VALUES (?,?,?,?,?,?,?,?)", (res.job_id, key, res.gpu, res.profile, res.start, res.size, res.at,
                                               res.made))


def drop(conn: sqlite3.Connection, job_id: int) -> None:
    with immediate(conn) as c:
        c.execute("DELETE FROM reservations WHERE job_id=?", (job_id,))


def prune(conn: sqlite3.Connection, key: str) -> None:
    """Drop reservations of jobs that are no longer queued (started, cancelled, failed)."""
    with immediate(conn) as c:
        c.execute("DELETE FROM reservations WHERE node=? AND job_id NOT IN "
                  "(SELECT id FROM jobs WHERE node=? AND state IN ('queued', 'starting'))", (key, key))


def job_ends(conn: sqlite3.Connection, key: str) -> dict[int, float]:
    """Running jobs with a time limit -> when the limit ends (started + limit)."""
    rows = conn.execute("SELECT id, started, time_limit FROM jobs WHERE node=? AND state='running' AND "
                        "time_limit IS NOT NULL AND started IS NOT NULL", (key,)).fetchall()
    return {int(r["id"]): float(r["started"]) + float(r["time_limit"]) for r in rows}


def plan(live: list[Any], eligible: dict[int, list[Any]], ends: dict[int, float], leases: list[tuple[Any, tuple[int, ...]]],
         taken: list[Reservation], job_id: int, now: float) -> Reservation | None:
    """The placement where the job can start earliest (pure: no I/O).

    ``live``: the node's GPUs as :func:`migctl.reconcile.engine.read_node` reads them (holders as PIDs);
    ``eligible``: GPU index -> catalog GI profiles that serve the job; ``ends``: job id -> end of its time
    limit; ``leases``: live lease rows with their processes (:func:`migctl.busy.live_leases`); ``taken``:
    existing reservations (not overlapped). An instance in the way is free at once when idle, at its job's
    limit when every process on it belongs to leases of time-limited jobs, else never known (``at`` None).
    Ranked by start time, then fewest instances in the way, then GPU and start.
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
