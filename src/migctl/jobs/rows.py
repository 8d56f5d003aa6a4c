"""What a row of the jobs database may hold, column by column: the one check of rows read back from it.

migctl writes every column itself, so a value outside these checks means the database was edited by hand or
damaged. What happens to such a row depends on its table:

* ``jobs`` (:data:`CHECKS`): :func:`problem` names the first damaged column (``None`` when sound); `jobs` and
  `cancel` say it in one line and change nothing. The worker fails a damaged queued job with that line as its
  reason and leaves a damaged running one alone (its lease keeps its device), so one row does not stop the queue.
* the coordination tables (:data:`DERIVED`): migctl writes them again, so a damaged row is passed over by
  readers (:func:`sound`) and dropped (:func:`drop_damaged`).
* ``leases`` (:data:`LEASES`): a lease marks a device in use, so a damaged one keeps it in use
  (:func:`lease_problem`) until someone deletes the row.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from migctl.inputs import finite_number
from migctl.jobs.common import JobsError, damaged_row

STATES = ("queued", "starting", "running", "done", "failed", "cancelled")
MAX_TIME = 1e10  # seconds since the epoch (the year 2286): what time.localtime and the listings can show
MAX_LIMIT_S = 10_000_000.0  # --time-limit's bound: about 115 days, the CLI-wide limit on seconds (docs/cli.md)


def _int(lo: int | None = None, hi: int | None = None, null: bool = True) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if v is None:
            return None if null else "empty"
        if type(v) is not int:
            return "not a whole number"
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            return f"{v} is out of range"
        return None
    return check


def _text(null: bool = True) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if v is None:
            return None if null else "empty"
        return None if isinstance(v, str) else "not text"
    return check


def _time(null: bool = True) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if v is None:
            return None if null else "empty"
        if not finite_number(v) or not 0 <= v <= MAX_TIME:
            return "not a time"
        return None
    return check


def _one_of(values: tuple[str, ...], null: bool = False) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if v is None and null:
            return None
        return None if v in values else f"not one of {', '.join(values)}"
    return check


def _json(kind: type, items_ok: Callable[[Any], bool], what: str, empty_ok: bool) -> Callable[[Any], str | None]:
    """A column holding JSON of ``kind`` whose items (a dict: the dict) ``items_ok`` accepts."""
    def check(v: Any) -> str | None:
        if v in (None, "") and empty_ok:
            return None
        try:
            value = json.loads(v) if isinstance(v, str) else None
        except (ValueError, RecursionError):
            value = None
        if not isinstance(value, kind):
            return f"not a JSON {'list' if kind is list else 'object'}"
        if (kind is list and not empty_ok and not value) or not items_ok(value):
            return f"not {what}"
        return None
    return check


def _strings(values: Any) -> bool:
    """All items text without NUL (exec refuses a NUL): at C speed, as a listing checks every row."""
    values = list(values)
    return set(map(type, values)) <= {str} and "\x00" not in "".join(values)


def _environment(env: dict[str, Any]) -> bool:
    """Variables as exec takes them: names not empty and without '=' or NUL, values text without NUL."""
    names = "\x00".join(env)
    return "" not in env and "=" not in names and _strings(env) and _strings(env.values())


def _limit(v: Any) -> str | None:
    if v is None:
        return None
    if not finite_number(v) or not 0 < v <= MAX_LIMIT_S:
        return f"{v!r} is not a time limit (more than 0 s, at most {MAX_LIMIT_S:.0f} s)"
    return None


CHECKS: dict[str, Callable[[Any], str | None]] = {
    "node": _text(null=False),
    "name": _text(null=False),
    # (no NUL, and no '=' in a variable's name: exec refuses them, so such a job could never start)
    "cmd": _json(list, _strings, "a list of strings", empty_ok=False),
    "cwd": _text(null=False),
    "env": _json(dict, _environment, "an object of variables and their text", empty_ok=True),
    "profile": _text(),
    "mem_mib": _int(lo=0),  # (`--mem 0` is accepted: any device)
    "gpus": _json(list, lambda gs: all(type(g) is int and g >= 0 for g in gs), "a list of GPU indices", empty_ok=True),
    "priority": _int(null=False),
    "state": _one_of(STATES),
    "created": _time(null=False),
    "started": _time(),
    "finished": _time(),
    "exit_code": _int(),
    "reason": _text(null=False),
    "log_path": _text(null=False),
    "worker_pid": _int(lo=1),
    "worker_start": _time(),
    "child_pid": _int(lo=1),
    "child_start": _time(),
    "mig_uuid": _text(),
    "ephemeral": _int(lo=0, hi=1, null=False),
    "batch": _text(),
    "isolation": _one_of(("hard", "soft", "none"), null=True),
    "share": _int(lo=1, hi=100),
    "threads": _int(lo=1, hi=100),
    "mps_mem_mib": _int(lo=1),
    "time_limit": _limit,
    "limit_term": _time(),
    "wait_reason": _text(),
    "wait_detail": _text(),
}


def _number(lo: float = 0.0, null: bool = False) -> Callable[[Any], str | None]:
    """A number >= ``lo``; infinity allowed (a waiting run without ``--reserve-after`` records inf)."""
    def check(v: Any) -> str | None:
        if v is None:
            return None if null else "empty"
        if type(v) not in (int, float) or v != v or v < lo:
            return "not a number"
        return None
    return check


# The coordination tables beside ``jobs``: what migctl keeps there is derived (a reservation is planned again, a
# waiting run and the worker record themselves again, an instance first seen idle counts as idle from then),
# so a damaged row is dropped (:func:`drop_damaged`) rather than refused. (``leases`` is not among them: a
# lease row marks a device in use; :mod:`migctl.jobs.leases` reads it.)
DERIVED: dict[str, dict[str, Callable[[Any], str | None]]] = {
    "reservations": {"job_id": _int(null=False), "node": _text(null=False), "gpu": _int(lo=0, null=False),
                     "profile": _text(null=False), "start": _int(lo=0, null=False), "size": _int(lo=1, null=False),
                     "at": _time(), "made": _time(null=False), "pid": _int(lo=1), "pid_start": _time()},
    "waiters": {"node": _text(null=False), "pid": _int(lo=1, null=False), "pid_start": _time(null=False),
                "since": _time(null=False), "reserve_after": _number(), "request": _text(null=False),
                "seen": _time(null=False)},
    "workers": {"node": _text(null=False), "pid": _int(lo=1, null=False), "pid_start": _time(null=False),
                "reserve_after": _number(null=True), "seen": _time(null=False)},
    "idle_since": {"node": _text(null=False), "uuid": _text(null=False), "since": _time(null=False)},
    "reshapes": {"node": _text(null=False), "at": _time(null=False), "gpu": _int(lo=0, null=False),
                 "what": _text(null=False)},
}


# A lease row marks a device in use, so a damaged one is not dropped: its holder cannot be checked, so its
# device counts as in use until someone deletes the row (``migctl leases`` says so). Only a row whose uuid is
# not text names no device, protects nothing, and is dropped.
LEASES: dict[str, Callable[[Any], str | None]] = {
    "node": _text(null=False), "uuid": _text(null=False), "gpu": _int(lo=0, null=False), "gi": _int(lo=0, null=False),
    "ci": _int(lo=0, null=False), "profile": _text(null=False), "memory_mib": _int(lo=0, null=False),
    "pid": _int(lo=1, null=False), "pid_start": _time(null=False), "created": _time(null=False),
    "created_instance": _int(lo=0, hi=1, null=False), "job_id": _int(), "owner": _text(null=False),
    "pgid": _int(lo=1), "pgid_start": _time(), "pidns": _text(null=False),
}


def _first_damaged(row: Any, checks: dict[str, Callable[[Any], str | None]]) -> tuple[str, str] | None:
    """The first column of ``row`` (any of its columns) that ``checks`` refuses, and why."""
    for name, value in zip(row.keys(), row, strict=True):  # (a listing checks every row: no lookup by name)
        check = checks.get(name)
        if check is not None:
            why = check(value)
            if why is not None:
                return name, why
    return None


def lease_problem(row: Any) -> str | None:
    """The first damaged column of a ``leases`` row and why, e.g. "pid not a whole number"."""
    bad = _first_damaged(row, LEASES)
    return None if bad is None else " ".join(bad)


def sound(table: str, rows: Iterable[Any]) -> list[Any]:
    """``rows`` of a :data:`DERIVED` table (any of its columns) without the damaged ones: a row edited by hand
    under a live process is passed over until the next :func:`drop_damaged` removes it."""
    return [r for r in rows if _first_damaged(r, DERIVED[table]) is None]


def drop_damaged(conn: Any, log: Callable[[str], None] | None = None) -> int:
    """Delete the rows of the :data:`DERIVED` tables that migctl would not have written (the database edited by
    hand); returns how many. Called when a process opens the database and by the worker every few seconds;
    readers pass over such a row meanwhile (:func:`sound`)."""
    from migctl.jobs.common import immediate

    found: dict[str, list[int]] = {}
    for table, checks in DERIVED.items():
        for r in conn.execute(f"SELECT rowid AS _rowid, * FROM {table}").fetchall():  # noqa: S608 (fixed names)
            bad = _first_damaged(r, checks)
            if bad is not None:
                found.setdefault(table, []).append(int(r["_rowid"]))
                if log is not None:
                    log(f"the jobs database: dropped a damaged {table} row ({' '.join(bad)}); migctl writes it again")
    if not found:
        return 0
    with immediate(conn) as c:
        for table, ids in found.items():
            c.execute(f"DELETE FROM {table} WHERE rowid IN ({','.join('?' * len(ids))})", ids)  # noqa: S608
    return sum(map(len, found.values()))


def problem(row: Any) -> JobsError | None:
    """The one-line error for the first damaged column of a ``jobs`` row (any of its columns), or None when
    they are all as migctl writes them."""
    bad = _first_damaged(row, CHECKS)
    return None if bad is None else damaged_row(row["id"], *bad)


def sound_fields(row: Any, checks: dict[str, Callable[[Any], str | None]] | None = None) -> dict[str, Any]:
    """``row`` as a dict, each value that ``checks`` (default: the ``jobs`` table's) refuses read as None (for
    views that show what they can: `top`, the exporter)."""
    checks = CHECKS if checks is None else checks
    return {name: None if name in checks and checks[name](value) is not None else value
            for name, value in dict(row).items()}


def check(row: Any) -> None:
    """Raise :func:`problem`'s error, if any."""
    err = problem(row)
    if err is not None:
        raise err


def fail_queued(conn: Any, job_id: int, reason: str, log: Callable[[str], None] | None = None) -> bool:
    """A queued job that must never start (its row is damaged) ends ``failed`` with ``reason``; logged."""
    import time

    from migctl.jobs.common import immediate

    with immediate(conn) as c:
        got = c.execute("UPDATE jobs SET state='failed', reason=?, finished=? WHERE id=? AND state='queued'",
                        (reason, time.time(), job_id)).rowcount
    if got and log is not None:
        log(f"job {job_id}: not started: {reason}")
    return bool(got)


def sound_queued(conn: Any, rows: list[Any], log: Callable[[str], None] | None = None) -> list[Any]:
    """``rows`` (queued jobs, any columns) less the damaged ones, which :func:`fail_queued` ends."""
    sound = []
    for r in rows:
        err = problem(r)
        if err is None:
            sound.append(r)
        else:
            fail_queued(conn, int(r["id"]), str(err), log)
    return sound
