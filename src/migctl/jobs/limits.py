"""Job time limits (``migctl submit --time-limit``): parsing, storing, and the worker's enforcement.

At its limit a running job's process group gets SIGTERM; if anything of it still runs ``grace`` seconds
later, SIGKILL. The job ends ``failed`` with reason ``time limit`` (its exit code is whatever the command
returned, 143 for a plain SIGTERM; none when it had to be killed). The moment of the SIGTERM is stored
(``jobs.limit_term``), so a restarted worker still sends the SIGKILL in time. Reservations
(:mod:`migctl.jobs.reservations`) trust these limits.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import time
from collections.abc import Callable

from migctl.jobs.common import JobsError, immediate, signal_group
from migctl.jobs.rows import MAX_LIMIT_S, check, problem

DEFAULT_GRACE_S = 10.0
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``5m``, ``1h30m``, ``2d``, ``1.5h`` -> seconds (> 0, at most 10,000,000)."""
    t = (text or "").strip().lower()
    parts = re.findall(r"([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)", t, re.ASCII)
    if not t or not parts or re.sub(r"([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)", "", t, flags=re.ASCII).strip() or (
            len(parts) > 1 and any(u == "" for _, u in parts)):
        raise JobsError(f"cannot parse duration {text!r}; use e.g. 90, 90s, 5m, 1h30m or 2d")
    total = sum(float(n) * _UNIT[u] for n, u in parts)
    if not 0 < total <= MAX_LIMIT_S:
        raise JobsError(f"duration {text!r} is out of range (valid: more than 0 s, at most 10000000 s = 115 days)")
    return total


def limit_of(conn: sqlite3.Connection, job_id: int) -> float | None:
    r = conn.execute("SELECT id, time_limit FROM jobs WHERE id=?", (job_id,)).fetchone()
    if r is None or r["time_limit"] is None:
        return None
    check(r)  # only a hand-edited database holds anything else
    return float(r["time_limit"])


def enforce(conn: sqlite3.Connection, key: str, grace: float = DEFAULT_GRACE_S,
            log: Callable[[str], None] | None = None, now: float | None = None) -> int:
    """Signal running jobs past their limit (SIGTERM at the limit, SIGKILL ``grace`` s later); returns how
    many were signalled."""
    from migctl.busy import lease_processes

    now = time.time() if now is None else now
    rows = conn.execute("SELECT id, child_pid, child_start, started, time_limit, limit_term FROM jobs WHERE node=? "
                        "AND state='running' AND time_limit IS NOT NULL AND started IS NOT NULL AND child_pid IS NOT NULL",
                        (key,)).fetchall()
    n = 0
    for r in rows:
        if problem(r) is not None:  # a damaged row (edited by hand): the worker says so once (Worker.reap)
            continue
        pid = int(r["child_pid"])
        if r["limit_term"] is None:
            if now < float(r["started"]) + float(r["time_limit"]):
                continue
            with immediate(conn) as c:
                got = c.execute("UPDATE jobs SET limit_term=?, reason='time limit' WHERE id=? AND state='running' "
                                "AND limit_term IS NULL", (now, r["id"])).rowcount
            if got:
                signal_group(pid, signal.SIGTERM)
                n += 1
                if log:
                    log(f"job {r['id']}: time limit ({float(r['time_limit']):g}s) reached, SIGTERM sent")
        elif now >= float(r["limit_term"]) + grace and lease_processes(pid, r["child_start"] or 0.0, pid, r["child_start"]):
            signal_group(pid, signal.SIGKILL)
            n += 1
            if log:
                log(f"job {r['id']}: still running {grace:g}s after SIGTERM, SIGKILL sent")
    return n
