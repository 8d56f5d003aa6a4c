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
    r = a30.migctl("worker", "--until-idle", "--json", timeout=60)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    said = [line for line in r.stderr.splitlines() if f"job {bad}:" in line]
    assert len(said) == 1 and f"has a damaged {column!r}" in said[0] and "not started" in said[0], r.stderr
    ended = json.loads(r.stdout)  # (it was one error line after the queue had run, and no JSON)
    assert [j["id"] for j in ended["jobs"]] == [good] and [d["id"] for d in ended["damaged"]] == [bad]
    row = _row(bad)
    assert row["state"] == "failed" and f"damaged {column!r}" in row["reason"]
    assert not (a30.tmp / "never").exists()
    assert mark.exists() and _row(good)["state"] == "done"
    # `jobs` lists the other jobs and names the damaged row in one warning line (it listed nothing and exited
    # 2 while the row stayed, or was a traceback for 'created')
    r = a30.migctl("jobs", "--all")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    warned, = r.stderr.strip().splitlines()
    assert warned.startswith("migctl: warning:") and f"job {bad} has a damaged {column!r}" in warned
    assert warned.endswith("(not listed)")
    assert [line.split()[0] for line in r.stdout.splitlines()[1:]] == [str(good)]
    listed = json.loads(a30.migctl("jobs", "--all", "--json").stdout)
    assert [j["id"] for j in listed["jobs"]] == [good] and [d["id"] for d in listed["damaged"]] == [bad]


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


def _insert(sql: str, args: tuple) -> None:
    conn = sqlite3.connect(db_path())
    with conn:
        conn.execute(sql, args)
    conn.close()


def _count(table: str) -> int:
    conn = sqlite3.connect(db_path())
    n = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # noqa: S608 (names from the list below)
    conn.close()
    return int(n)


# One row of each coordination table as migctl writes it but for one value, and how to find that row. The two
# reservations, the waiter and the worker row were tracebacks from `jobs --json` or `run` on 2026-12-03 (found by
# damaging one column at a time with a worker and a waiting run live); the other two stayed, for reshaping to read.
ROWS = [
    ("reservations", "start='abc'", "INSERT INTO reservations (job_id, node, gpu, profile, start, size, at, made) "
     "VALUES (1,?,0,'4g.24gb','abc',4,?,?)", lambda node, now, me: (node, now + 60, now)),
    ("reservations", "pid=-1", "INSERT INTO reservations (job_id, node, gpu, profile, start, size, at, made, pid, "
     "pid_start) VALUES (?,?,0,'4g.24gb',0,4,NULL,?,-1,?)", lambda node, now, me: (-me[0], node, now, me[1])),
    ("waiters", "since='abc'", "INSERT INTO waiters (node, pid, pid_start, since, reserve_after, request, seen) "
     "VALUES (?,?,?,'abc',300,'[]',?)", lambda node, now, me: (node, me[0], me[1], now)),
    ("workers", "pid='abc'", "INSERT INTO workers (node, pid, pid_start, reserve_after) VALUES (?,'abc',?,0)",
     lambda node, now, me: (node, me[1])),
    ("idle_since", "since='abc'", "INSERT INTO idle_since (node, uuid, since) VALUES (?,'MIG-x','abc')",
     lambda node, now, me: (node,)),
    ("reshapes", "at='abc'", "INSERT INTO reshapes (node, at, gpu, what) VALUES (?,'abc',0,'')", lambda node, now, me: (node,)),
]


def _damaged_rows(table: str, where: str) -> int:
    conn = sqlite3.connect(db_path())
    n = conn.execute(f"SELECT COUNT(*) FROM {table} WHERE {where}").fetchone()[0]  # noqa: S608 (from ROWS)
    conn.close()
    return int(n)


@pytest.mark.parametrize("table, where, sql, values", ROWS, ids=[f"{t}:{w}" for t, w, _, _ in ROWS])
def test_a_damaged_coordination_row_is_dropped(a30: SimEnv, table: str, where: str, sql: str, values) -> None:
    """Reservations, waiting runs, the worker's record, idle times and reshape times are derived (migctl writes
    them again), so a damaged row is dropped by the next process that opens the database."""
    import time

    from migctl.jobs.common import proc_start

    a30.layout(0, ["1g.6gb"])
    assert a30.migctl("submit", "--profile", "4g.24gb", "--", "true").returncode == 0
    conn = sqlite3.connect(db_path())
    with conn:
        conn.execute(sql, values(_row(1)["node"], time.time(), (os.getpid(), proc_start(os.getpid()))))
    conn.close()
    assert _damaged_rows(table, where) == 1
    for args in (("jobs", "--json"), ("exporter", "--once"), ("run", "--no-wait", "--", "true")):
        r = a30.migctl(*args)
        assert r.returncode == 0 and "Traceback" not in r.stderr, (args, r.stderr)
    assert _damaged_rows(table, where) == 0


def test_a_live_worker_drops_a_reservation_damaged_under_it_and_plans_again(a30: SimEnv) -> None:
    """Rows edited by hand while the worker runs: it passes over a damaged reservation and plans it again, and
    its sweep every 5 s drops a damaged row that nothing rewrites, said once (it stopped with a traceback)."""
    import time

    a30.layout(0, ["1g.6gb"])
    gate = a30.tmp / "gate"
    assert a30.migctl("submit", "--profile", "1g.6gb", "--time-limit", "1h", "--", "sh", "-c",
                      f"for _ in $(seq 1200); do [ -e {gate} ] && break; sleep 0.05; done").returncode == 0
    assert a30.migctl("submit", "--profile", "4g.24gb", "--", "true").returncode == 0
    w = a30.popen("worker", "--reserve-after", "0")
    try:
        wait_for(lambda: _damaged_rows("reservations", "job_id=2 AND start=0") == 1, timeout=60,
                 what="the reservation for job 2")
        conn = sqlite3.connect(db_path())
        with conn:
            conn.execute("UPDATE reservations SET start='abc' WHERE job_id=2")
            conn.execute("INSERT INTO reshapes (node, at, gpu, what) VALUES (?, 'abc', 0, '')", (_row(1)["node"],))
        conn.close()
        wait_for(lambda: _damaged_rows("reservations", "job_id=2 AND start=0") == 1, timeout=30,
                 what="the reservation planned again")
        wait_for(lambda: _damaged_rows("reshapes", "at='abc'") == 0, timeout=30, what="the reshapes row dropped")
        time.sleep(6)  # (another sweep: said once)
        assert w.poll() is None
    finally:
        gate.touch()
        w.send_signal(signal.SIGINT)
        _, err = w.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert err.count("dropped a damaged reshapes row (at not a time)") == 1, err


def test_readers_pass_over_damaged_coordination_rows(tmp_path) -> None:
    """Between two sweeps a live process may meet a row edited by hand: each reader of these tables passes over
    it (each of these calls raised on such a row before; found with a worker and a waiting run live), and the
    next sweep drops them."""
    import time

    from migctl.jobs import reservations, reshape, run_reserve, waiting
    from migctl.jobs.common import SCHEMA, proc_start

    conn = sqlite3.connect(tmp_path / "raw.sqlite", isolation_level=None)  # (not migctl's connect: no sweep)
    conn.row_factory = sqlite3.Row
    conn.executescript(SCHEMA)
    from migctl.jobs.common import _migrate

    _migrate(conn)
    now, me, start = time.time(), os.getpid(), proc_start(os.getpid())
    for pid in (-1, "abc", 3.5):  # a live process's row but for its PID
        conn.execute("INSERT INTO reservations (job_id, node, gpu, profile, start, size, at, made, pid, pid_start) "
                     "VALUES (?, 'n', 0, '1g.10gb', 0, 1, NULL, ?, ?, ?)", (hash(str(pid)) % 1000, now, pid, start))
        conn.execute("INSERT INTO waiters (node, pid, pid_start, since, reserve_after, request, seen) "
                     "VALUES ('n', ?, ?, 0, 0, 'r', ?)", (pid, start, now))
    conn.execute("INSERT INTO workers (node, pid, pid_start, reserve_after) VALUES ('n', 'abc', ?, 0)", (start,))
    conn.execute("INSERT INTO reshapes (node, at, gpu, what) VALUES ('n', 'abc', 0, '')")
    conn.execute("INSERT INTO idle_since (node, uuid, since) VALUES ('n', 'MIG-x', 'abc')")
    conn.execute("INSERT INTO waiters (node, pid, pid_start, since, reserve_after, request, seen) "
                 "VALUES ('n', ?, ?, 'abc', 0, 'r', 'abc')", (me, start))
    assert reservations.load(conn, "n", live=True) == []
    assert reservations.older_run(conn, "n", now, now) is None
    assert reservations.ahead_of(conn, "n", "r", now, me + 1, 0.0) == 0
    assert reservations.older_job(conn, "n", now, now) is None
    assert run_reserve.waiting_runs(conn, "n", now) == []
    assert waiting.worker_alive(conn, "n") is False
    assert reshape._used(conn, "n", now) == (0, None)
    assert reshape.idle_records(conn, "n", [], now, write=False) == {}
    from migctl.jobs.rows import drop_damaged

    assert drop_damaged(conn) == 10  # and the sweep drops them all
    for table in ("reservations", "waiters", "workers", "reshapes", "idle_since"):
        assert conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0, table  # noqa: S608


def test_a_damaged_lease_row_keeps_its_device_in_use(a30: SimEnv) -> None:
    """A lease row edited by hand: its holder cannot be checked, so its device stays in use (no run gets it,
    apply refuses to destroy it, and --force has no process to signal) until someone deletes the row; every
    verb says so in one line. Each of `leases`, `run`, the exporter and `top` was a traceback before."""
    import time

    (uuid,) = a30.layout(0, ["4g.24gb"])
    assert a30.migctl("submit", "--", "true").returncode == 0  # (the node's key, as migctl writes it)
    key = _row(1)["node"]
    conn = sqlite3.connect(db_path())
    with conn:
        conn.execute("DELETE FROM jobs")
        conn.execute("INSERT INTO leases (node, uuid, gpu, gi, ci, profile, memory_mib, pid, pid_start, created, "
                     "created_instance, job_id, owner, pidns) VALUES (?,?,0,0,0,'4g.24gb',24000,'abc',?,?,0,NULL,'','')",
                     (key, uuid, time.time(), time.time()))
        conn.execute("INSERT INTO leases (node, uuid, gpu, gi, ci, profile, memory_mib, pid, pid_start, created, "
                     "created_instance, job_id, owner, pidns) VALUES (?,5,0,0,0,'4g.24gb',24000,1,1,1,0,NULL,'','')",
                     (key,))
    conn.close()
    r = a30.migctl("leases")
    assert r.returncode == 0 and f"{uuid}: a damaged lease row (pid not a whole number)" in r.stdout, r
    leases = json.loads(a30.migctl("leases", "--json").stdout)["leases"]
    assert [(x["uuid"], x["damaged"]) for x in leases] == [(uuid, "pid not a whole number")]  # (uuid 5: dropped)
    r = a30.migctl("run", "--no-wait", "--", "true")
    assert r.returncode != 0 and "no free MIG device" in r.stderr and "Traceback" not in r.stderr, r.stderr
    for args in (("exporter", "--once"), ("top", "--once"), ("jobs", "--json")):
        r = a30.migctl(*args)
        assert r.returncode == 0 and "Traceback" not in r.stderr, (args, r.stderr)
    cfg = a30.tmp / "c.yaml"
    cfg.write_text("version: v1\nmig-configs:\n  a:\n    - devices: all\n      mig-enabled: true\n"
                   "      mig-devices: {1g.6gb: 4}\n")
    for force in ((), ("--force",)):
        r = a30.migctl("apply", "-f", str(cfg), "-c", "a", *force)
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        assert ("a damaged lease row (pid not a whole number)" in r.stderr) == bool(force), r.stderr
        assert [x["uuid"] for x in json.loads(a30.migctl("leases", "--json").stdout)["leases"]] == [uuid]
    assert a30.uuids(0) == [uuid]  # nothing was destroyed


@pytest.mark.parametrize("column, value, damaged", [
    ("env", '{"": "x"}', True), ("env", '{"A=B": "x"}', True), ("env", '{"A\\u0000": "x"}', True),
    ("env", '{"A": 1}', True), ("env", '{"A": "x\\u0000"}', True), ("env", '{"A": "x=y", "B": ""}', False),
    ("env", "{}", False), ("env", "", False), ("env", "[]", True),
    ("cmd", '["a", 1]', True), ("cmd", '["a\\u0000"]', True), ("cmd", "[]", True), ("cmd", '["sh", "-c", "x"]', False),
    ("gpus", "[-1]", True), ("gpus", '["a"]', True), ("gpus", "[1.0]", True), ("gpus", "[0, 3]", False),
    ("gpus", "[true]", True),
])
def test_the_json_columns_are_checked_item_by_item(column: str, value: str, damaged: bool) -> None:
    """What a listing checks in every row, at C speed since 2026-12-03: the same refusals as before."""
    from migctl.jobs.rows import CHECKS

    assert (CHECKS[column](value) is not None) == damaged


def test_a_lease_row_deleted_by_hand_during_a_decision_does_not_fail_it() -> None:
    """A lease decision reads the lease table twice (LeaseManager._acquire_locked); a row seen the first time
    and gone the second, whose holder still runs, keeps its device this time. A damaged row (a PID that is not a
    number) deleted by hand in between, as the damaged-row message tells the operator to do, must read as not
    running: pid_alive itself raises on such a PID."""
    import os

    from migctl.jobs.common import proc_start
    from migctl.jobs.leases import _still_runs
    from migctl.proc import pid_alive

    with pytest.raises(TypeError):
        pid_alive("abc", 1.0)  # type: ignore[arg-type]
    assert not any(_still_runs(pid, start) for pid, start in
                   (("abc", 1.0), (1, "y"), (True, 1.0), (None, None), (-1, 1.0), (1.5, 1.0)))
    assert _still_runs(os.getpid(), proc_start(os.getpid()))
