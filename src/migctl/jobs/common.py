"""Shared plumbing for leases and the job queue: state dir, node key, SQLite connections, PID identity."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from migctl.paths import jobs_db_path, node_key, state_dir  # noqa: F401  (re-exported)
from migctl.proc import pid_alive  # noqa: F401  (re-exported)


class JobsError(RuntimeError):
    """A user-facing failure of the jobs layer (no device can ever fit, bad request, lease timeout...)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def damaged_row(job_id: int, field: str, why: str) -> JobsError:
    """A job row holding what migctl never writes (the database edited by hand): one line naming job and field."""
    return JobsError(f"the jobs database {db_path()}: job {job_id} has a damaged {field!r} ({why}); delete that "
                     "row with sqlite3, or move the database aside to start afresh")


def db_path() -> Path:
    """The SQLite database holding leases and jobs for every node of this state dir."""
    return jobs_db_path()


def key_slug(key: str) -> str:
    """A file-name-safe, stable short form of a node key (for lock and log file names)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", key)[:40]
    return f"{safe}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


# Write transactions are short (the node lock is never awaited inside one), so a writer waits at most this.
BUSY_TIMEOUT_S = 60.0


def connect(path: Path | None = None) -> sqlite3.Connection:
    """A connection in autocommit mode (explicit BEGIN IMMEDIATE for writes), WAL, long busy timeout."""
    from migctl.paths import private_file

    p = path or db_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    private_file(p, "jobs database")  # 0600 before SQLite opens it (its -wal and -shm files copy the mode)
    conn = sqlite3.connect(str(p), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        with contextlib.suppress(sqlite3.OperationalError):
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        _migrate(conn)
        from migctl.jobs.rows import drop_damaged

        drop_damaged(conn)  # (rows of the coordination tables edited by hand: migctl writes them again)
    except sqlite3.DatabaseError as e:
        conn.close()
        raise JobsError(unusable_db(p, e, opened=False), exit_code=75 if _locked(e) else 2) from None
    return conn


def _locked(e: Exception) -> bool:
    return isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e))


def unusable_db(path: Path, e: Exception, opened: bool = True) -> str:
    """The one line for a jobs database SQLite failed on (``opened``: found only after it was opened, when the
    command may have done part of its work): locked too long, refused by the system (read-only, I/O error:
    said as it is), or not a database or damaged (then the way out)."""
    unchanged = "" if opened else "; nothing was changed"
    if _locked(e):
        return (f"the jobs database {path} stayed write-locked by another migctl process for {BUSY_TIMEOUT_S:g}s ({e})"
                f"{unchanged}; retry, or look for a stuck migctl process")
    if isinstance(e, sqlite3.OperationalError):
        return f"the jobs database {path}: {e}{unchanged}"
    return (f"the jobs database {path} cannot be used ({e}){unchanged}. Move it aside to start afresh (its queue, "
            "leases and reservations are lost; running jobs keep running)")


def transient_failure(e: BaseException) -> str | None:
    """One line when ``e`` is a failure that may pass: storage (a full disk or quota, an I/O error, the database
    write-locked past the busy timeout), the system out of processes or memory for a moment (a fork that
    failed: EAGAIN, ENOMEM), or a :class:`JobsError` that says "try again" (exit code 75: NVML kept failing,
    a lock); None otherwise (a damaged database, a bug: those are not retried)."""
    import errno

    if isinstance(e, sqlite3.OperationalError):
        text = str(e).lower()
        if any(w in text for w in ("disk is full", "disk i/o error", "database is locked", "unable to open")):
            return f"the jobs database {db_path()}: {e}"
        return None
    if isinstance(e, JobsError) and e.exit_code == 75:  # (immediate(): write-locked past the busy timeout)
        return str(e)
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.ENOMEM):
        return f"{e.strerror}" + (f": {e.filename}" if e.filename is not None else "")
    return None


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (ROLLBACK on error): one writer at a time, node-wide."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as e:
        if not _locked(e):
            raise
        raise JobsError(unusable_db(db_path(), e), exit_code=75) from None
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        # SQLite may have rolled back already (SQLITE_FULL, SQLITE_IOERR end the transaction): a ROLLBACK then
        # fails with "no transaction is active" and would hide the error that matters.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    node TEXT NOT NULL,
    uuid TEXT NOT NULL,
    gpu INTEGER NOT NULL,
    gi INTEGER NOT NULL,
    ci INTEGER NOT NULL,
    profile TEXT NOT NULL,
    memory_mib INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    pid_start REAL NOT NULL,
    created REAL NOT NULL,
    created_instance INTEGER NOT NULL DEFAULT 0,
    job_id INTEGER,
    owner TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (node, uuid)
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    cmd TEXT NOT NULL,
    cwd TEXT NOT NULL,
    env TEXT NOT NULL DEFAULT '{}',
    profile TEXT,
    mem_mib INTEGER,
    gpus TEXT,
    priority INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'queued',
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    exit_code INTEGER,
    reason TEXT NOT NULL DEFAULT '',
    log_path TEXT NOT NULL DEFAULT '',
    worker_pid INTEGER,
    worker_start REAL,
    child_pid INTEGER,
    child_start REAL,
    mig_uuid TEXT,
    ephemeral INTEGER NOT NULL DEFAULT 0,
    batch TEXT
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (node, state, priority DESC, id);
-- the queued jobs with one request, which a waiting run looks for every 0.1 s (jobs/reservations.py, jobs_ahead)
CREATE INDEX IF NOT EXISTS jobs_request ON jobs (node, profile, mem_mib, state);
CREATE TABLE IF NOT EXISTS reshapes (
    node TEXT NOT NULL,
    at REAL NOT NULL,
    gpu INTEGER NOT NULL,
    what TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS idle_since (
    node TEXT NOT NULL,
    uuid TEXT NOT NULL,
    since REAL NOT NULL,
    PRIMARY KEY (node, uuid)
);
CREATE TABLE IF NOT EXISTS reservations (
    job_id INTEGER PRIMARY KEY,
    node TEXT NOT NULL,
    gpu INTEGER NOT NULL,
    profile TEXT NOT NULL,
    start INTEGER NOT NULL,
    size INTEGER NOT NULL,
    at REAL,
    made REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS waiters (
    node TEXT NOT NULL,
    pid INTEGER NOT NULL,
    pid_start REAL NOT NULL,
    since REAL NOT NULL,
    reserve_after REAL NOT NULL,
    PRIMARY KEY (node, pid)
);
CREATE TABLE IF NOT EXISTS workers (
    node TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    pid_start REAL NOT NULL,
    reserve_after REAL
);
"""


# Columns added after the first release (ALTER TABLE on databases that lack them).
ADDED_COLUMNS = {
    "leases": (("pgid", "INTEGER"), ("pgid_start", "REAL"), ("pidns", "TEXT NOT NULL DEFAULT ''")),
    # sharing (jobs/mps.py Sharing): isolation hard|soft|none, --share N, --threads P, --mps-mem in MiB;
    # time limits (jobs/limits.py): seconds, and when the SIGTERM was sent
    "jobs": (("isolation", "TEXT NOT NULL DEFAULT 'hard'"), ("share", "INTEGER"), ("threads", "INTEGER"),
             ("mps_mem_mib", "INTEGER"), ("time_limit", "REAL"), ("limit_term", "REAL"),
             # why a queued job waits (jobs/waiting.py), written by the worker
             ("wait_reason", "TEXT"), ("wait_detail", "TEXT")),
    # a waiting ``migctl run``'s reservation (jobs/run_reserve.py): its PID and start time (NULL for a
    # queued job's); its job_id is then -PID (the column stays the primary key)
    "reservations": (("pid", "INTEGER"), ("pid_start", "REAL")),
    # the arrival order of runs waiting for the same thing (jobs/run_reserve.py): the request's signature,
    # and when the run's wait loop last refreshed the row
    "waiters": (("request", "TEXT NOT NULL DEFAULT ''"), ("seen", "REAL NOT NULL DEFAULT 0")),
    # when the node's worker last refreshed its row (each pass): its queued jobs count in the runs' arrival
    # order only while it is seen (jobs/reservations.py, jobs_ahead)
    "workers": (("seen", "REAL NOT NULL DEFAULT 0"),),
}


def _migrate(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)
    for table, cols in ADDED_COLUMNS.items():
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})").fetchall()}
        for name, decl in cols:
            if name not in have:
                with contextlib.suppress(sqlite3.OperationalError):  # a concurrent migration added it
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")


def proc_start(pid: int) -> float | None:
    """psutil create_time of ``pid`` (None when it does not exist)."""
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


_UNITS = {"": 1024, "g": 1024, "gb": 1024, "gib": 1024, "m": 1, "mb": 1, "mib": 1, "t": 1 << 20, "tb": 1 << 20, "tib": 1 << 20}


def parse_mem(text: str) -> int:
    """``12GiB``/``12G``/``12gb`` -> MiB (GB means GiB, as in MIG profile names); ``500MiB`` -> 500; bare number = GiB."""
    m = re.fullmatch(r"\s*([0-9]{1,9}(?:\.[0-9]{1,9})?)\s*([A-Za-z]*)\s*", text or "", re.ASCII)
    if not m or m.group(2).lower() not in _UNITS:
        raise JobsError(f"cannot parse memory size {text!r}; use e.g. 12GiB, 12G, 20gb or 500MiB "
                        "(ASCII digits, at most 9 before the point)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def exit_status(returncode: int) -> int:
    """Popen returncode -> shell-style exit status (128+N when killed by signal N)."""
    return 128 - returncode if returncode < 0 else returncode


def signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group led by ``pid`` (a job's session), or to ``pid`` alone when it leads
    none; a process that is gone or not ours is left alone."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
