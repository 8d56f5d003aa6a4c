"""The worker and a jobs database edited by hand: one damaged row never stops the queue (migctl.jobs.rows)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3

import pytest

from conftest import SimEnv, wait_for
from migctl.jobs.common import db_path


def _damage(job_id: int, column: str, value: object) -> None:
    conn = sqlite3.connect(db_path())
    with conn:
        conn.execute(f"UPDATE jobs SET {column}=? WHERE id=?", (value, job_id))  # noqa: S608 (names from the lists below)
    conn.close()


def _row(job_id: int) -> dict:
    conn = sqlite3.connect(db_path())
    conn.row_factory = sqlite3.Row
    r = dict(conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone())
    conn.close()
    return r


# Each was a traceback from `migctl worker` on 2026-12-03 (JSONDecodeError, TypeError, ValueError), or stopped it
# with one line while the jobs behind the damaged one waited (cmd, env).
QUEUED = [("gpus", "abc"), ("gpus", 3.5), ("gpus", "[1"), ("time_limit", "abc"), ("time_limit", -1.0),
          ("limit_term", "abc"), ("cmd", "x"), ("env", "[]"), ("created", "abc"), ("isolation", "x"),
          ("share", 0), ("mem_mib", "x"), ("priority", "x"),
          # exec refuses these: the worker stopped with a traceback at each start and the job stayed first in line
          ("cmd", '["echo", "a\\u0000b"]'), ("env", '{"A=B": "x"}')]


@pytest.mark.parametrize("column, value", QUEUED)
def test_a_damaged_queued_job_fails_and_the_rest_of_the_queue_runs(a30: SimEnv, column: str, value: object) -> None:
    a30.layout(0, ["1g.6gb"])
    mark = a30.tmp / "ran"
    bad = int(a30.migctl("submit", "--time-limit", "1h", "--", "touch", str(a30.tmp / "never")).stdout)
    good = int(a30.migctl("submit", "--", "touch", str(mark)).stdout)
    _damage(bad, column, value)
    r = a30.migctl("worker", "--until-idle", timeout=60)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    said = [line for line in r.stderr.splitlines() if f"job {bad}:" in line]
    assert len(said) == 1 and f"has a damaged {column!r}" in said[0] and "not started" in said[0], r.stderr
    row = _row(bad)
    assert row["state"] == "failed" and f"damaged {column!r}" in row["reason"]
    assert not (a30.tmp / "never").exists()
    assert mark.exists() and _row(good)["state"] == "done"
    # `jobs` names the row, one line (it listed nothing, or was a traceback for 'created')
    r = a30.migctl("jobs", "--all")
    assert r.returncode == 2 and f"job {bad} has a damaged {column!r}" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("column, value", [("time_limit", "abc"), ("limit_term", "x"), ("started", "x"),
                                           ("child_pid", "x"), ("cmd", "x")])
def test_a_damaged_running_job_is_left_alone_and_the_queue_runs(a30: SimEnv, column: str, value: object) -> None:
    """A running job's row damaged while no worker ran: the next worker says so once and leaves it (its process
    keeps its lease, so its device is not handed out), starts the others, and `--until-idle` still ends."""
    a30.layout(0, ["1g.6gb", "1g.6gb"])
    gate = a30.tmp / "gate"
    long = int(a30.migctl("submit", "--time-limit", "1h", "--", "sh", "-c",
                          f"for _ in $(seq 1200); do [ -e {gate} ] && break; sleep 0.05; done").stdout)
    w = a30.popen("worker", "-q")
    try:
        wait_for(lambda: _row(long)["state"] == "running", timeout=60, what="job running")
    finally:
        os.kill(w.pid, signal.SIGKILL)
        w.wait()
    pid = _row(long)["child_pid"]
    try:
        _damage(long, column, value)
        mark = a30.tmp / "ran"
        good = int(a30.migctl("submit", "--", "touch", str(mark)).stdout)
        r = a30.migctl("worker", "--until-idle", timeout=60)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        said = [line for line in r.stderr.splitlines() if f"job {long}:" in line]
        assert len(said) == 1 and "not tracked" in said[0] and f"damaged {column!r}" in said[0], r.stderr
        assert mark.exists() and _row(good)["state"] == "done"
        r = a30.migctl("cancel", str(long))  # one line, nothing changed (for child_pid: cancelled, then a traceback)
        assert r.returncode == 2 and f"job {long} has a damaged {column!r}" in r.stderr and "Traceback" not in r.stderr
        assert _row(long)["state"] == "running"
        os.kill(pid, 0)  # the damaged job still runs: nothing signalled it
        leases = json.loads(a30.migctl("leases", "--json").stdout)
        assert [x["pid"] for x in leases["leases"]] == [pid]  # and still holds its device
    finally:
        gate.touch()
