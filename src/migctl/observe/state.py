"""migctl's own state, read-only: leases and the job queue (SQLite), and the apply journal files.

Nothing here takes the node lock or writes: a scrape or a ``top`` refresh never waits for an apply. The
jobs database is opened with ``mode=ro`` (SQLite URI) and a short busy timeout; a database that does not
exist yet means no leases and no jobs. One that SQLite cannot read (not a database, damaged) reads as empty
too, and :attr:`StateReader.db_error` says why, so that the GPUs' own figures are still shown.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migctl.paths import node_slug, state_dir

# migctl.jobs.rows.STATES, written out: importing it would load the whole jobs package with this module
JOB_STATES = ("queued", "starting", "running", "done", "failed", "cancelled")
WAIT_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)


@dataclass(frozen=True)
class LeaseRow:
    uuid: str
    gpu: int
    gi: int
    ci: int
    profile: str
    pid: int
    job_id: int | None
    created: float


@dataclass
class QueueStats:
    depth: dict[str, int] = field(default_factory=lambda: dict.fromkeys(JOB_STATES, 0))
    wait_buckets: list[int] = field(default_factory=lambda: [0] * len(WAIT_BUCKETS))  # cumulative counts
    wait_count: int = 0
    wait_sum: float = 0.0
    running: list[dict[str, Any]] = field(default_factory=list)
    runs_waiting: int = 0  # live ``migctl run``s waiting for a device (table ``waiters``)
    runs_waiting_since: float | None = None  # when the one waiting longest began
    # waiting jobs (queued or starting) by why they wait (migctl.jobs.waiting: its codes, "none" before the
    # worker has looked at a job, "other" for a value migctl never writes; all "no-worker" without a live worker)
    waiting_reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class ApplyState:
    last_success: float | None = None
    last_outcome: str | None = None
    last_finished: float | None = None
    outcomes: dict[str, int] = field(default_factory=dict)  # counts from the apply history
    journal_pending: bool = False
    journal_started: float | None = None


_MAX_STATE_FILE = 4 << 20  # the history is trimmed to about 256 KiB by its writer; a larger file is damaged


def _text(path: Path) -> str:
    """The file's text, or "" when it is missing, not a regular file, too large or not UTF-8."""
    from migctl.inputs import InputError, read_text

    try:
        return read_text(path, "state file", _MAX_STATE_FILE)
    except InputError:
        return ""


def _json_object(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(_text(path) or "null")
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _time(value: Any) -> float | None:
    """A time stamp from a state file: a finite number of seconds, else None."""
    from migctl.inputs import finite_number

    return float(value) if finite_number(value) else None


def _connect_ro(path: Path) -> sqlite3.Connection | None:
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0, check_same_thread=False)
    except sqlite3.Error:
        return None
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout=2000")
    return conn


class StateReader:
    """Reads leases, queue and apply state for one node (``key`` = :func:`migctl.jobs.common.node_key`)."""

    def __init__(self, node: Any, directory: Path | None = None) -> None:
        from migctl.jobs.common import node_key

        self.dir = directory or state_dir()
        self.key = node_key(node)
        self.slug = node_slug(node)
        self._conn: sqlite3.Connection | None = None
        self.db_error: str | None = None  # why the jobs database could not be read (kept until reset), if so

    def _db(self) -> sqlite3.Connection | None:
        if self._conn is None:
            self._conn = _connect_ro(self.dir / "jobs.sqlite")
        return self._conn

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[sqlite3.Row]:
        conn = self._db()
        if conn is None:
            return []
        try:
            rows = conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError:  # a table not created yet, or the database busy beyond the timeout
            return []
        except sqlite3.DatabaseError as e:  # not a database, or damaged: read as empty, and said
            self.db_error = f"{self.dir / 'jobs.sqlite'}: {e}"
            return []
        return rows

    def leases(self) -> list[LeaseRow]:
        """Live lease rows of this node: live as :mod:`migctl.busy` counts them (the holder, or a process of the
        lease's process group, still runs)."""
        from migctl.busy import lease_processes, process_groups

        rows = self._query("SELECT * FROM leases WHERE node = ?", (self.key,))
        groups = process_groups() if rows else {}
        out: list[LeaseRow] = []
        from migctl.jobs.rows import LEASES, lease_problem, sound_fields

        for r in rows:
            keys = r.keys()
            if lease_problem(r) is not None:  # edited by hand: in use (its holder cannot be checked), shown as known
                v = sound_fields(r, LEASES)
                if v["uuid"] is not None:
                    out.append(LeaseRow(uuid=v["uuid"], gpu=v["gpu"], gi=v["gi"], ci=v["ci"], profile=v["profile"],
                                        pid=v["pid"], job_id=v["job_id"], created=v["created"]))
                continue
            pgid = r["pgid"] if "pgid" in keys else None
            pgid_start = r["pgid_start"] if "pgid_start" in keys else None
            if not lease_processes(int(r["pid"]), float(r["pid_start"]), pgid, pgid_start, groups):
                continue
            out.append(LeaseRow(uuid=r["uuid"], gpu=r["gpu"], gi=r["gi"], ci=r["ci"], profile=r["profile"],
                                pid=r["pid"], job_id=r["job_id"], created=r["created"]))
        return out

    def queue(self) -> QueueStats:
        from migctl.jobs.rows import sound, sound_fields

        q = QueueStats()
        for r in self._query("SELECT state, COUNT(*) AS n FROM jobs WHERE node = ? GROUP BY state", (self.key,)):
            q.depth[str(r["state"])] = int(r["n"])
        cases = ", ".join(f"SUM(CASE WHEN started - created <= {b!r} THEN 1 ELSE 0 END)" for b in WAIT_BUCKETS)
        # (times that are not numbers, a row edited by hand, are left out: SQLite would count text as 0)
        rows = self._query(f"SELECT COUNT(*), COALESCE(SUM(started - created), 0), {cases} FROM jobs "
                           "WHERE node = ? AND typeof(started) IN ('integer', 'real') "
                           "AND typeof(created) IN ('integer', 'real')", (self.key,))
        if rows:
            r = tuple(rows[0])
            q.wait_count, q.wait_sum = int(r[0] or 0), float(r[1] or 0.0)
            q.wait_buckets = [int(x or 0) for x in r[2:]]
        q.running = [sound_fields(r) for r in self._query(
            "SELECT id, name, state, started, mig_uuid, child_pid FROM jobs WHERE node = ? AND state IN "
            "('starting', 'running') ORDER BY id", (self.key,))]
        from migctl.proc import pid_alive

        # (a row edited by hand is left out; the next process to open the database read-write drops it)
        since = [float(r["since"]) for r in sound("waiters", self._query(
            "SELECT pid, pid_start, since FROM waiters WHERE node = ?", (self.key,))) if pid_alive(r["pid"], r["pid_start"])]
        q.runs_waiting, q.runs_waiting_since = len(since), min(since, default=None)
        q.waiting_reasons = self._waiting_reasons(q.depth["queued"] + q.depth["starting"])
        return q

    def _waiting_reasons(self, waiting: int) -> dict[str, int]:
        """Waiting jobs by reason, as ``migctl jobs`` shows them (:func:`migctl.jobs.waiting.of_queued`)."""
        from migctl.jobs.waiting import CODES, worker_alive

        out = dict.fromkeys((*CODES, "none", "other"), 0)
        conn = self._db()
        try:
            alive = conn is not None and worker_alive(conn, self.key)
        except sqlite3.DatabaseError:  # (no workers table yet, busy, damaged: the queries below say the rest)
            alive = False
        if not alive:
            out["no-worker"] = waiting
            return out
        for r in self._query("SELECT wait_reason, COUNT(*) AS n FROM jobs WHERE node = ? AND state IN ('queued', "
                             "'starting') GROUP BY wait_reason", (self.key,)):
            reason = r["wait_reason"]
            code = "none" if reason is None else reason if reason in CODES and reason != "no-worker" else "other"
            out[code] += int(r["n"])
        return out

    def apply_state(self) -> ApplyState:
        """The apply journal and history, read as a scrape must: a damaged file or line is skipped, never an
        error (until 2026-12-03 a history line that was not an object, or a time that was not a number, failed
        every scrape)."""
        a = ApplyState()
        journal = _json_object(self.dir / f"apply-{self.slug}.journal.json")
        if journal is not None:
            a.journal_pending = True
            a.journal_started = _time(journal.get("started"))
        elif (self.dir / f"apply-{self.slug}.journal.json").exists():
            a.journal_pending = True  # there, but unreadable: still pending (recover says what is wrong)
        for line in _text(self.dir / f"apply-{self.slug}.history.jsonl").splitlines():
            try:
                ev = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if not isinstance(ev, dict) or not isinstance(ev.get("outcome"), str):
                continue
            outcome = ev["outcome"]
            a.outcomes[outcome] = a.outcomes.get(outcome, 0) + 1
            a.last_outcome, a.last_finished = outcome, _time(ev.get("finished"))
            if outcome == "applied" and a.last_finished is not None:
                a.last_success = a.last_finished
        if a.last_outcome is None:  # no history yet: the last journal, if any
            last = _json_object(self.dir / f"apply-{self.slug}.last.json")
            if last is not None and isinstance(last.get("phase"), str):
                a.last_outcome, a.last_finished = last["phase"], _time(last.get("finished"))
                if a.last_outcome == "applied":
                    a.last_success = a.last_finished
        return a

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
