"""A waiting ``migctl run`` gets a reservation too (``run --reserve-after``): it bounds the wait of a large
run behind a stream of small queued jobs, the worker's leases keep clear of it, and a run that ends, is
interrupted or is killed does not leave it behind. Real processes: ``migctl`` subprocesses on the simulator."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import SimEnv, wait_for
from migctl.jobs.common import db_path
from migctl.jobs.leases import Request
from migctl.reconcile.live import read_gpu


def _rows(table: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(str(db_path()))
    try:
        return [tuple(r) for r in conn.execute(f"SELECT * FROM {table}")]  # noqa: S608 - fixed table names
    finally:
        conn.close()


def _run_reservations(env: SimEnv) -> list[dict[str, Any]]:
    r = env.migctl("jobs", "--json")
    assert r.returncode == 0, r.stderr
    return list(json.loads(r.stdout)["run_reservations"])


def _gis(env: SimEnv) -> list[tuple[str, int]]:
    return [(g.profile, g.start) for g in sorted(read_gpu(env.node().gpu(0)).gis, key=lambda g: g.start)]


def _busy_1g_at_0(env: SimEnv) -> subprocess.Popen[bytes]:
    """Four 1g.6gb on the A30, the one at start 0 used by a process without a lease (no time limit)."""
    env.layout(0, ["1g.6gb"] * 4)
    holder = subprocess.Popen(["sleep", "120"])
    gi0 = next(g for g in read_gpu(env.node().gpu(0)).gis if g.start == 0)
    assert env.node().sim.add_client(0, holder.pid, gi0.id, 0) == 0
    return holder


def _large_run(env: SimEnv, stamp: Path, *flags: str) -> subprocess.Popen[str]:
    """A waiting 4g.24gb run (the whole A30) whose command writes the time it started to ``stamp``."""
    return env.popen("run", "--wait", "60", "-v", "--profile", "4g.24gb", *flags, "--",
                     "sh", "-c", f'date +%s.%N > "{stamp}"')


def _stream(env: SimEnv, n: int = 24) -> list[int]:
    """Overlapping small jobs (1g.6gb, 0.6-1.2 s each, time limit 3 s) that keep some slice busy."""
    from migctl.jobs.queue import JobQueue

    q = JobQueue(env.node())
    small = Request(profile="1g.6gb")
    return [q.submit(["sleep", f"{0.6 + 0.2 * (k % 4):.1f}"], small, time_limit=3) for k in range(n)]


def _started(env: SimEnv, ids: list[int]) -> list[float]:
    from migctl.jobs.queue import JobQueue

    q = JobQueue(env.node())
    return [float(q.get(i).started or 0) for i in ids]


def _leased(env: SimEnv) -> list[str]:
    from migctl.jobs.leases import LeaseManager

    return [x.profile for x in LeaseManager(env.node()).leases()]


@pytest.mark.parametrize("reserve", ["off", "0.5"])
def test_large_run_behind_a_stream(a30: SimEnv, tmp_path: Path, reserve: str) -> None:
    """Without a reservation (``off``; ``--reshape`` would destroy idle instances, but never are all four idle
    at once) the large run starts only after every small job has started; with ``--reserve-after 0.5`` it
    starts within the bound: 0.5 s + the longest time limit in the way (3 s) + the worker's grace (1 s).
    The worker is stopped once the run has ended (small jobs it did not start stay queued)."""
    small = _stream(a30)
    stamp = tmp_path / "large.started"
    w = a30.popen("worker", "--hysteresis", "0", "--reserve-after", "60", "--limit-grace", "1")
    try:
        wait_for(lambda: len(_leased(a30)) >= 2, what="the stream to start")
        t0 = time.time()
        run = _large_run(a30, stamp, "--reshape", "--reserve-after", reserve)
        out, err = run.communicate(timeout=90)
        assert run.returncode == 0, err
    finally:
        w.terminate()
        w.wait(20)
    started = float(stamp.read_text())
    small_started = _started(a30, small)
    if reserve == "off":
        assert "reserved" not in err
        assert all(small_started) and started > max(small_started)  # starved until the stream ended
        return
    assert "reserved GPU 0 4g.24gb@0" in err, err
    assert sum(1 for s in small_started if not s or s > started) >= 2  # it did not wait for the stream to end
    assert started - t0 <= 0.5 + 3 + 1 + 3.0, err  # (+ passes and process start-up on a busy 2-core machine)
    assert _rows("reservations") == [] and _rows("waiters") == []  # removed once it started


def test_run_reservation_is_kept_clear_of_shown_and_taken(a30: SimEnv, tmp_path: Path) -> None:
    """A run's reservation with an unknown start (a process without a time limit is in the way): shown by
    ``jobs``; a queued job without a time limit does not take the idle instances in the reserved space; once
    the process ends the run destroys the idle ones in the way, creates its instance and starts."""
    from migctl.jobs.demand import WorkerPolicy
    from migctl.jobs.queue import JobQueue, Worker
    from migctl.jobs.reshape import Churn

    holder = _busy_1g_at_0(a30)
    stamp = tmp_path / "large.started"
    run = _large_run(a30, stamp, "--reserve-after", "0")
    try:
        got = wait_for(lambda: _run_reservations(a30), what="the run's reservation")
        assert [{k: g[k] for k in ("pid", "gpu", "profile", "start", "size", "at")} for g in got] == \
            [{"pid": run.pid, "gpu": 0, "profile": "4g.24gb", "start": 0, "size": 4, "at": None}]
        assert f"run (pid {run.pid}) has a reservation: GPU 0 4g.24gb@0, from unknown" in a30.migctl("jobs").stdout
        q = JobQueue(a30.node())
        small = q.submit(["true"], Request(profile="1g.6gb"))  # no time limit: unbounded
        w = Worker(q, policy=WorkerPolicy(churn=Churn(hysteresis_s=0), reserve_after=0.0))
        for _ in range(3):
            w.step()
        assert q.get(small).state == "queued"  # three 1g.6gb are idle, but in the run's reserved space
        assert _leased(a30) == [] and run.poll() is None
        holder.kill()
        holder.wait()
        a30.node().sim.remove_client(0, holder.pid)
        out, err = run.communicate(timeout=30)
        assert run.returncode == 0, err
        assert "reserved space free" in err and stamp.exists(), err
        assert _gis(a30) == [("4g.24gb", 0)]
        assert _rows("reservations") == [] and _rows("waiters") == []
        assert q.get(small).state == "queued"  # it starts once the run's instance is free (reused or reshaped)
        wait_for(lambda: (w.step(), q.get(small).state)[1] == "done", what="the small job after the run")
    finally:
        for p in (holder, run):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_killed_run_is_swept_interrupted_run_removes_its_own(a30: SimEnv, tmp_path: Path) -> None:
    from migctl.jobs.demand import WorkerPolicy
    from migctl.jobs.queue import JobQueue, Worker

    holder = _busy_1g_at_0(a30)
    first = _large_run(a30, tmp_path / "first", "--reserve-after", "0")
    second: subprocess.Popen[str] | None = None
    try:
        wait_for(lambda: _run_reservations(a30), what="the first run's reservation")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert len(_rows("reservations")) == 1 and len(_rows("waiters")) == 1  # left behind ...
        assert _run_reservations(a30) == []  # ... but not shown, and it blocks nothing:
        r = a30.migctl("run", "--no-wait", "--profile", "1g.6gb", "--", "true")
        assert r.returncode == 0, r.stderr
        # the next run sweeps it and gets the reservation itself
        second = _large_run(a30, tmp_path / "second", "--reserve-after", "0")
        wait_for(lambda: [g["pid"] for g in _run_reservations(a30)] == [second.pid], what="the second reservation")
        assert [r[0] for r in _rows("reservations")] == [-second.pid]
        assert [r[1] for r in _rows("waiters")] == [second.pid]
        second.send_signal(signal.SIGINT)  # Ctrl-C while waiting (no terminal: it reaches the run itself)
        _, err = second.communicate(timeout=60)
        assert second.returncode == 130, err
        assert _rows("reservations") == [] and _rows("waiters") == []
        # a killed run's rows are swept by the next worker pass too
        third = _large_run(a30, tmp_path / "third", "--reserve-after", "0")
        wait_for(lambda: _run_reservations(a30), what="the third run's reservation")
        third.send_signal(signal.SIGKILL)
        third.wait(10)
        assert len(_rows("reservations")) == 1
        Worker(JobQueue(a30.node()), policy=WorkerPolicy()).step()
        assert _rows("reservations") == [] and _rows("waiters") == []
        assert not (tmp_path / "first").exists() and not (tmp_path / "third").exists()
    finally:
        for p in (holder, first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def _holder_of(env: SimEnv) -> list[str]:
    """Who holds the node's reservation(s), as ``jobs`` prints it."""
    from migctl.jobs import reservations
    from migctl.jobs.common import connect, node_key

    return [r.holder() for r in reservations.load(connect(), node_key(env.node()), live=True)]


@pytest.mark.parametrize("priorities", [(0, 0), (-1, 5)])
def test_oldest_waiter_gets_the_next_reservation(a30: SimEnv, tmp_path: Path, priorities: tuple[int, int]) -> None:
    """Jobs and runs in one order, by priority (a run counts as 0), then by when they began waiting: while a
    first run holds the reservation, job J1 is queued, then run R1 begins waiting, then job J2 is queued (all
    past their thresholds). Each time the reservation is released the first remaining waiter gets it. At equal
    priorities: J1 (R1 defers to the worker's job), then R1 (the worker defers to the run), then J2. With J1 at
    priority -1 and J2 at 5: J2, R1, J1. The worker runs in-process, stepped by the test, so that who goes
    first is not a race between the worker's passes and the run's attempts."""
    from migctl.jobs.demand import WorkerPolicy
    from migctl.jobs.queue import JobQueue, Worker
    from migctl.jobs.reshape import Churn

    holder = _busy_1g_at_0(a30)  # (every reservation's start stays unknown: nothing starts in it)
    q = JobQueue(a30.node())
    w = Worker(q, policy=WorkerPolicy(churn=Churn(hysteresis_s=0), reserve_after=0.0))
    assert w.acquire()  # the node's worker (recorded with its --reserve-after), stepped below
    procs: list[subprocess.Popen[Any]] = [holder]
    try:
        r0 = _large_run(a30, tmp_path / "r0", "--reserve-after", "0")
        procs.append(r0)
        wait_for(lambda: _holder_of(a30) == [f"run (pid {r0.pid})"], what="the first run's reservation")
        j1 = q.submit(["true"], Request(profile="4g.24gb"), priority=priorities[0])
        r1 = _large_run(a30, tmp_path / "r1", "--reserve-after", "0")
        procs.append(r1)
        wait_for(lambda: r1.pid in [r[1] for r in _rows("waiters")], what="the second run waiting")
        time.sleep(0.05)  # (J2 queued strictly after R1 began waiting)
        j2 = q.submit(["true"], Request(profile="4g.24gb"), priority=priorities[1])
        first, last = (j1, j2) if priorities == (0, 0) else (j2, j1)
        w.step()
        assert _holder_of(a30) == [f"run (pid {r0.pid})"]  # one at a time: the worker waits
        r0.send_signal(signal.SIGINT)
        assert r0.wait(60) == 130
        time.sleep(1.0)  # R1 attempts every 0.25 s: it leaves the reservation to the first job
        assert _holder_of(a30) == [] and r1.poll() is None
        wait_for(lambda: (w.step(), _holder_of(a30))[1] == [f"job {first}"], what="the first job's reservation")
        assert a30.migctl("cancel", str(first)).returncode == 0
        w.step()  # its reservation is dropped; the worker leaves the next one to R1
        assert _holder_of(a30) in ([], [f"run (pid {r1.pid})"])
        wait_for(lambda: _holder_of(a30) == [f"run (pid {r1.pid})"], what="R1's reservation")
        w.step()
        assert _holder_of(a30) == [f"run (pid {r1.pid})"]
        r1.send_signal(signal.SIGINT)
        assert r1.wait(60) == 130
        wait_for(lambda: (w.step(), _holder_of(a30))[1] == [f"job {last}"], what="the last job's reservation")
        assert q.get(last).state == "queued" and _rows("waiters") == []
    finally:
        w.release()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(20)
    assert _rows("workers") == []


def test_shared_run_gets_a_reservation_and_reshapes(shared: SimEnv, tmp_path: Path) -> None:
    """A waiting MPS run (``--isolation soft``) takes the node's reservation like a plain run: for the device
    of its own request (4g.24gb, the whole A30) while a process without a lease holds 1g.6gb@0; once that
    process ends it destroys the idle instances in the way, creates the device and starts as its MPS client.
    Then a second shared run with ``--reshape`` destroys idle instances for a new device."""
    a30 = shared
    holder = _busy_1g_at_0(a30)
    stamp = tmp_path / "shared.started"
    run = a30.popen("run", "--isolation", "soft", "--share", "2", "--wait", "60", "-v", "--profile", "4g.24gb",
                    "--reserve-after", "0", "--", "sh", "-c", f'echo "$CUDA_MPS_ACTIVE_THREAD_PERCENTAGE" > "{stamp}"')
    try:
        got = wait_for(lambda: _run_reservations(a30), what="the shared run's reservation")
        assert [(g["pid"], g["profile"], g["start"], g["at"]) for g in got] == [(run.pid, "4g.24gb", 0, None)]
        holder.kill()
        holder.wait()
        a30.node().sim.remove_client(0, holder.pid)
        out, err = run.communicate(timeout=30)
        assert run.returncode == 0, err
        assert "reserved space free" in err and "MPS client on MIG-" in err, err
        assert stamp.read_text().strip() == "50"  # an MPS client with half the threads
        assert _gis(a30) == [("4g.24gb", 0)]
        assert _rows("reservations") == [] and _rows("waiters") == []
    finally:
        for p in (holder, run):
            if p.poll() is None:
                p.kill()
                p.wait()
    # the idle 4g.24gb blocks two 2g.12gb: without --reshape a shared run times out, with it the run starts
    r = a30.migctl("run", "--isolation", "soft", "--share", "2", "--profile", "2g.12gb", "--wait", "1", "--", "true")
    assert r.returncode == 75 and _gis(a30) == [("4g.24gb", 0)], r.stderr
    r = a30.migctl("run", "--isolation", "soft", "--share", "2", "--profile", "2g.12gb", "--reshape", "-v", "--wait",
                   "30", "--", "true")
    assert r.returncode == 0, r.stderr
    assert "destroyed idle" in r.stderr and "MPS client on MIG-" in r.stderr, r.stderr
    assert ("2g.12gb", 0) in _gis(a30) or ("2g.12gb", 2) in _gis(a30)


def test_no_create_run_reserves_an_existing_instance(a30: SimEnv, tmp_path: Path) -> None:
    """``run --no-create`` reserves the existing instance it can have earliest (the busy 2g.12gb@0, not the
    space of the two idle 1g.6gb, which it could not use) and changes no layout: once that instance is free
    others keep clear of it, and the run takes it. The run is stopped (SIGSTOP) while the test looks, so
    that it does not take the freed instance first."""
    from migctl.jobs.leases import LeaseManager

    uuids = a30.layout(0, ["2g.12gb", "1g.6gb", "1g.6gb"])
    holder = subprocess.Popen(["sleep", "120"])
    node = a30.node()
    gi0 = next(g for g in read_gpu(node.gpu(0)).gis if g.start == 0)
    assert node.sim.add_client(0, holder.pid, gi0.id, 0) == 0
    stamp = tmp_path / "run.cvd"
    run = a30.popen("run", "--no-create", "--profile", "2g.12gb", "--reserve-after", "0", "--wait", "60", "-v", "--",
                    "sh", "-c", f'echo "$CUDA_VISIBLE_DEVICES" > "{stamp}"')
    try:
        got = wait_for(lambda: _run_reservations(a30), what="the run's reservation")
        assert [(g["pid"], g["profile"], g["start"], g["at"]) for g in got] == [(run.pid, "2g.12gb", 0, None)]
        run.send_signal(signal.SIGSTOP)
        holder.kill()
        holder.wait()
        node.sim.remove_client(0, holder.pid)
        mgr = LeaseManager(node)
        assert mgr.try_acquire(Request(profile="2g.12gb", create=False), owner="test") is None  # reserved
        small = mgr.try_acquire(Request(profile="1g.6gb", create=False), owner="test")
        assert small is not None  # the rest of the GPU is not
        mgr.release(small)
        run.send_signal(signal.SIGCONT)
        out, err = run.communicate(timeout=30)
        assert run.returncode == 0, err
        assert stamp.read_text().strip() == uuids[0] and "reserved GPU 0 2g.12gb@0" in err, err
        assert {d.uuid for d in node.gpu(0).mig_devices()} == set(uuids)  # nothing destroyed or created
        assert _rows("reservations") == [] and _rows("waiters") == []
    finally:
        for p in (holder, run):
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait()


def test_bad_reserve_after_is_one_line(a30: SimEnv) -> None:
    before = _gis(a30)
    for args in (["run", "--reserve-after", "soon", "--profile", "1g.6gb", "--", "true"],
                 ["run", "--reserve-after", "-1", "--", "true"],
                 ["run", "--reserve-after", "nan", "--", "true"],
                 ["run", "--reserve-after", "-5", "--isolation", "soft", "--share", "2", "--", "true"]):
        r = a30.migctl(*args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("migctl: error:"), (args, r.stderr)
        assert "--reserve-after" in r.stderr
    assert _gis(a30) == before == []
    if db_path().exists():  # (nothing may have opened it at all)
        assert _rows("reservations") == [] and _rows("waiters") == [] and _rows("leases") == []


def test_an_existing_database_gets_the_new_columns(a30: SimEnv) -> None:
    """A jobs database from before run reservations (no pid columns, no waiters table) keeps its job
    reservation, which stays a job's (pid NULL) and is shown as before."""
    from migctl.jobs import reservations
    from migctl.jobs.common import connect, node_key

    key = node_key(a30.node())
    db_path().parent.mkdir(parents=True, exist_ok=True)
    old = sqlite3.connect(str(db_path()))
    with old:
        old.execute("CREATE TABLE reservations (job_id INTEGER PRIMARY KEY, node TEXT NOT NULL, gpu INTEGER NOT NULL, "
                    "profile TEXT NOT NULL, start INTEGER NOT NULL, size INTEGER NOT NULL, at REAL, made REAL NOT NULL)")
        old.execute("INSERT INTO reservations VALUES (7, ?, 0, '4g.24gb', 0, 4, NULL, 1.0)", (key,))
    old.close()
    conn = connect()
    [res] = reservations.load(conn, key, live=True)
    assert (res.job_id, res.pid, res.pid_start, res.holder()) == (7, None, None, "job 7")
    assert _rows("waiters") == []
    reservations.prune(conn, key)  # job 7 is not queued (there is no such job): its reservation goes
    assert _rows("reservations") == []


def _whole_a30_held(env: SimEnv, go: Path) -> subprocess.Popen[str]:
    """A run holding the whole A30 (4g.24gb) until ``go`` exists."""
    holder = env.popen("run", "--profile", "4g.24gb", "--", "sh", "-c", f'while [ ! -e "{go}" ]; do sleep 0.05; done')
    wait_for(lambda: _leased(env) == ["4g.24gb"], what="the holder's lease")
    return holder


def _waiting(pid: int) -> bool:
    return pid in [r[1] for r in _rows("waiters")]


def _end(procs: list[Any]) -> None:
    """Kill what is still running of ``procs`` (None entries skipped) and reap it (a stopped one resumed)."""
    for p in procs:
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.kill()
            p.wait(20)


@pytest.mark.parametrize("reserve", ["300", "0"])
def test_runs_waiting_for_the_same_thing_start_in_arrival_order(a30: SimEnv, tmp_path: Path, reserve: str) -> None:
    """Five runs for the whole A30 begin waiting one after another behind a holder; each command writes its
    number and ends at once. They start in the order they began waiting, below the reservation threshold
    (each retries on its own) and past it (the handoff from one reservation to the next). Before runs took
    turns, a younger run took the device in that handoff (2026-12-03: 1 of 5 trials in order)."""
    go, out = tmp_path / "go", tmp_path / "order"
    holder = _whole_a30_held(a30, go)
    runs: list[subprocess.Popen[str]] = []
    try:
        for k in range(5):
            runs.append(a30.popen("run", "--wait", "120", "--reserve-after", reserve, "--profile", "4g.24gb", "--",
                                  "sh", "-c", f'echo {k} >> "{out}"'))
            wait_for(lambda: _waiting(runs[-1].pid), what=f"run {k} waiting")
        shown = json.loads(a30.migctl("jobs", "--json").stdout)["waiting_runs"]
        assert [(w["pid"], w["place"], w["request"]) for w in shown] == [
            (p.pid, k + 1, "profile 4g.24gb") for k, p in enumerate(runs)]
        text = a30.migctl("jobs").stdout
        assert f"run (pid {runs[0].pid}) waits for profile 4g.24gb since " in text and "(next)" in text, text
        assert f"run (pid {runs[4].pid}) waits for profile 4g.24gb since " in text and "(4 ahead of it)" in text
        go.touch()
        assert holder.wait(60) == 0
        for p in runs:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
        assert out.read_text().split() == ["0", "1", "2", "3", "4"]
        assert _rows("waiters") == [] and _rows("reservations") == [] and _leased(a30) == []
    finally:
        _end([holder, *runs])


def test_an_earlier_waiter_holds_back_only_while_it_is_seen(a30: SimEnv, tmp_path: Path) -> None:
    """A waiting run with the same request that began earlier comes first, for ``--no-wait`` and waiting runs
    alike, and the timeout says so; once its row has not been refreshed for ``STALE`` seconds (a stopped
    run) it no longer counts, and nothing is held back by a waiter for another request."""
    from migctl.jobs.common import connect, node_key
    from migctl.jobs.run_reserve import RunReservation, signature

    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        start = float(__import__("psutil").Process(sleeper.pid).create_time())
        conn = connect()

        def waiter(req: Request, seen: float) -> None:
            with conn:
                conn.execute("INSERT OR REPLACE INTO waiters (node, pid, pid_start, since, reserve_after, request, seen) "
                             "VALUES (?,?,?,?,?,?,?)", (node_key(a30.node()), sleeper.pid, start, time.time() - 1,
                                                        300.0, signature(req), seen))

        waiter(Request(profile="4g.24gb"), time.time() + 3600)
        for args in (["--no-wait"], ["--wait", "1"]):
            r = a30.migctl("run", *args, "--profile", "4g.24gb", "--", "true")
            assert r.returncode == 75 and r.stderr.count("\n") <= 2, r.stderr
            assert "1 earlier run(s) waiting for the same request come first" in r.stderr, r.stderr
        assert _leased(a30) == [] and _gis(a30) == []
        r = a30.migctl("run", "--no-wait", "--ephemeral", "--profile", "1g.6gb", "--", "true")  # not held back
        assert r.returncode == 0, r.stderr
        waiter(Request(profile="4g.24gb"), time.time() - RunReservation.STALE - 1)  # not seen lately
        r = a30.migctl("run", "--no-wait", "--ephemeral", "--profile", "4g.24gb", "--", "true")
        assert r.returncode == 0, r.stderr
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_stopped_waiter_stops_holding_back_the_runs_behind_it(a30: SimEnv, tmp_path: Path) -> None:
    """A run stopped while waiting (SIGSTOP) no longer refreshes its row: the run behind it gets the device
    once the row is ``STALE``; resumed, the stopped run takes its turn after that."""
    go, out = tmp_path / "go", tmp_path / "order"
    holder = _whole_a30_held(a30, go)
    runs: list[subprocess.Popen[str]] = []
    try:
        for k in range(2):
            runs.append(a30.popen("run", "--wait", "120", "--profile", "4g.24gb", "--", "sh", "-c",
                                  f'echo {k} >> "{out}"'))
            wait_for(lambda: _waiting(runs[-1].pid), what=f"run {k} waiting")
        runs[0].send_signal(signal.SIGSTOP)
        go.touch()
        assert holder.wait(60) == 0
        _, err = runs[1].communicate(timeout=60)
        assert runs[1].returncode == 0, err
        assert runs[0].poll() is None and out.read_text().split() == ["1"]
        [shown] = json.loads(a30.migctl("jobs", "--json").stdout)["waiting_runs"]
        assert (shown["pid"], shown["place"]) == (runs[0].pid, None)  # holds nobody back
        assert "(not seen lately)" in a30.migctl("jobs").stdout
        runs[0].send_signal(signal.SIGCONT)
        _, err = runs[0].communicate(timeout=60)
        assert runs[0].returncode == 0, err
        assert out.read_text().split() == ["1", "0"] and _rows("waiters") == []
    finally:
        _end([holder, *runs])


def test_shared_runs_waiting_for_the_same_thing_start_in_arrival_order(shared: SimEnv, tmp_path: Path) -> None:
    """Time-sliced runs that allow one client per device (``--isolation none --share 1``) for the whole A30
    begin waiting one after another behind a holder; they start in that order, and ``jobs`` names their
    sharing. A run with another sharing is not held back by them."""
    a30 = shared
    go, out = tmp_path / "go", tmp_path / "order"
    opts = ("--isolation", "none", "--share", "1", "--profile", "4g.24gb")
    holder = a30.popen("run", *opts, "--", "sh", "-c", f'while [ ! -e "{go}" ]; do sleep 0.05; done')
    runs: list[subprocess.Popen[str]] = []
    try:
        wait_for(lambda: _gis(a30) == [("4g.24gb", 0)], what="the holder's device")
        for k in range(4):
            runs.append(a30.popen("run", "--wait", "120", *opts, "--", "sh", "-c", f'echo {k} >> "{out}"'))
            wait_for(lambda: _waiting(runs[-1].pid), what=f"run {k} waiting")
        shown = json.loads(a30.migctl("jobs", "--json").stdout)["waiting_runs"]
        assert [(w["pid"], w["place"], w["request"]) for w in shown] == [
            (p.pid, k + 1, "profile 4g.24gb, shared ts <=1") for k, p in enumerate(runs)]
        r = a30.migctl("run", "--no-wait", "--isolation", "none", "--share", "2", "--profile", "4g.24gb", "--", "true")
        assert r.returncode == 75 and "earlier run" not in r.stderr, r.stderr  # no room, but not for that reason
        go.touch()
        assert holder.wait(60) == 0
        for p in runs:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
        assert out.read_text().split() == ["0", "1", "2", "3"]
        assert _rows("waiters") == []
    finally:
        _end([holder, *runs])


def test_a_killed_waiters_row_is_swept_by_the_next_waiting_run(a30: SimEnv, tmp_path: Path) -> None:
    """A run killed outright while waiting (below its threshold) leaves its row; the next run that waits
    removes it before recording itself."""
    go = tmp_path / "go"
    holder = _whole_a30_held(a30, go)
    procs: list[subprocess.Popen[str]] = [holder]
    try:
        first = a30.popen("run", "--wait", "120", "--profile", "4g.24gb", "--", "true")
        procs.append(first)
        wait_for(lambda: _waiting(first.pid), what="the first run waiting")
        first.send_signal(signal.SIGKILL)
        first.wait(60)
        assert _waiting(first.pid)  # left behind ...
        second = a30.popen("run", "--wait", "120", "--profile", "4g.24gb", "--", "true")
        procs.append(second)
        wait_for(lambda: _waiting(second.pid), what="the second run waiting")
        assert not _waiting(first.pid)  # ... and swept
        go.touch()
        assert holder.wait(60) == 0 and second.wait(60) == 0
    finally:
        _end(procs)


def _stepping(w: Any, until: Any, timeout: float = 60.0) -> None:
    """Step the in-process worker every 20 ms until ``until()`` is true."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "timed out stepping the worker"
        w.step()
        time.sleep(0.02)


def _held_with_a_worker(env: SimEnv, tmp_path: Path) -> tuple[Path, Path, subprocess.Popen[str], Any, Any]:
    """The whole A30 held until the gate (returned first) exists, the file the commands write their order
    to, the holder, the node's queue and its in-process worker (acquired, not stepped yet)."""
    from migctl.jobs.queue import JobQueue, Worker

    go, out = tmp_path / "go", tmp_path / "order"
    holder = _whole_a30_held(env, go)
    q = JobQueue(env.node())
    w = Worker(q)
    assert w.acquire()
    return go, out, holder, q, w


def test_a_run_waits_behind_an_older_queued_job_with_the_same_request(a30: SimEnv, tmp_path: Path) -> None:
    """Job J (the whole A30) is queued behind a holder, then run R begins waiting for the same request. When
    the holder ends, J goes first, then R: one arrival order per request for runs and queued jobs. `jobs` puts
    R second, and a `--no-wait` run for the same request says a queued job comes first. Before, runs were
    ordered only among themselves and R took the device within 0.1 s, before the worker's next pass. The
    worker runs in-process, stepped by the test (not for the first second after the holder ends)."""
    go, out, holder, q, w = _held_with_a_worker(a30, tmp_path)
    run = None
    try:
        job = q.submit(["sh", "-c", f'echo job >> "{out}"'], Request(profile="4g.24gb"))
        w.step()
        assert q.get(job).state == "queued"
        run = a30.popen("run", "--wait", "60", "--profile", "4g.24gb", "--", "sh", "-c", f'echo run >> "{out}"')
        wait_for(lambda: _waiting(run.pid), what="the run waiting")
        w.step()
        [shown] = json.loads(a30.migctl("jobs", "--json").stdout)["waiting_runs"]
        assert (shown["pid"], shown["place"]) == (run.pid, 2)  # the queued job is first
        r = a30.migctl("run", "--no-wait", "--profile", "4g.24gb", "--", "true")
        assert r.returncode == 75 and "1 earlier run(s) and 1 queued job(s) waiting for the same request come " \
            "first" in r.stderr, r.stderr
        go.touch()
        assert holder.wait(60) == 0
        time.sleep(1.0)  # the device is free, the worker not stepped: the run leaves it to the job
        assert run.poll() is None and not out.exists()
        _stepping(w, lambda: run.poll() is not None)
        assert run.returncode == 0 and out.read_text().split() == ["job", "run"]
        assert q.get(job).state == "done"
    finally:
        w.release()
        _end([holder, run])


def test_a_queued_job_waits_behind_an_older_run_with_the_same_request(a30: SimEnv, tmp_path: Path) -> None:
    """Run R begins waiting for the whole A30 behind a holder, then job J is queued for the same request: the
    worker leaves J queued with reason (runs-first) naming R, and when the holder ends R goes first, although
    the worker is stepped at once and every 20 ms. A job of priority above 0 is not held back (it comes before
    any run)."""
    go, out, holder, q, w = _held_with_a_worker(a30, tmp_path)
    run = None
    try:
        run = a30.popen("run", "--wait", "60", "--profile", "4g.24gb", "--", "sh", "-c", f'echo run >> "{out}"')
        wait_for(lambda: _waiting(run.pid), what="the run waiting")
        time.sleep(0.05)  # (J queued strictly after R began waiting)
        job = q.submit(["sh", "-c", f'echo job >> "{out}"'], Request(profile="4g.24gb"))
        w.step()
        jobs = {j["id"]: j for j in json.loads(a30.migctl("jobs", "--json").stdout)["jobs"]}
        assert jobs[job]["wait"]["reason"] == "runs-first", jobs[job]
        assert f"migctl run PID {run.pid} waits for the same request" in jobs[job]["wait"]["detail"]
        assert "(runs-first)" in a30.migctl("jobs").stdout
        urgent = q.submit(["true"], Request(profile="4g.24gb"), priority=5)
        time.sleep(w.FULL_PASS_S)  # (submitted through the worker's own connection: its next full pass)
        w.step()  # tried (it comes before any run): nothing free fits it
        jobs = {j["id"]: j for j in json.loads(a30.migctl("jobs", "--json").stdout)["jobs"]}
        assert jobs[urgent]["wait"]["reason"] == "resources", jobs[urgent]
        assert a30.migctl("cancel", str(urgent)).returncode == 0
        go.touch()
        assert holder.wait(60) == 0
        _stepping(w, lambda: q.get(job).state == "done")
        assert run.wait(60) == 0 and out.read_text().split() == ["run", "job"]
    finally:
        w.release()
        _end([holder, run])


def test_queued_jobs_hold_back_runs_only_while_a_worker_is_seen(a30: SimEnv) -> None:
    """A queued job for the whole A30 holds back a `--no-wait` run for the same request (the A30 free) only
    while the node's worker lives and has refreshed its row within STALE seconds (a stopped or stuck worker
    would never start it), and at priority 0 (a job queued before the run) or above (any job); a run for another
    request is never held back."""
    from migctl.jobs.common import connect
    from migctl.jobs.queue import JobQueue, Worker
    from migctl.jobs.reservations import worker_beat
    from migctl.jobs.run_reserve import RunReservation

    q = JobQueue(a30.node())
    w = Worker(q)
    assert w.acquire()
    try:
        job = q.submit(["true"], Request(profile="4g.24gb"))
        r = a30.migctl("run", "--no-wait", "--profile", "4g.24gb", "--", "true")
        assert r.returncode == 75 and "1 queued job(s) waiting for the same request come first" in r.stderr, r.stderr
        r = a30.migctl("run", "--no-wait", "--ephemeral", "--profile", "2g.12gb", "--", "true")
        assert r.returncode == 0, r.stderr
        conn = connect()
        with conn:  # the worker not seen lately (stopped, or stuck in a long pass)
            conn.execute("UPDATE workers SET seen=?", (time.time() - RunReservation.STALE - 1,))
        r = a30.migctl("run", "--no-wait", "--ephemeral", "--profile", "4g.24gb", "--", "true")
        assert r.returncode == 0, r.stderr
        worker_beat(conn, q.key, w.pid, w.pid_start, None)  # seen again (as its next pass would)
        r = a30.migctl("run", "--no-wait", "--profile", "4g.24gb", "--", "true")
        assert r.returncode == 75, r.stderr
        with conn:
            conn.execute("UPDATE jobs SET priority=-1 WHERE id=?", (job,))
        r = a30.migctl("run", "--no-wait", "--ephemeral", "--profile", "4g.24gb", "--", "true")
        assert r.returncode == 0, r.stderr
        with conn:
            conn.execute("UPDATE jobs SET priority=5, created=? WHERE id=?", (time.time() + 60, job))
        r = a30.migctl("run", "--no-wait", "--profile", "4g.24gb", "--", "true")  # (queued "later", but above 0)
        assert r.returncode == 75 and "1 queued job(s)" in r.stderr, r.stderr
        with conn:  # the worker's row edited by hand: not known to be seen (dropped, then written again)
            conn.execute("UPDATE workers SET seen='soon'")
        r = a30.migctl("run", "--no-wait", "--ephemeral", "--profile", "4g.24gb", "--", "true")
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        worker_beat(conn, q.key, w.pid, w.pid_start, None)
        assert [x[1] for x in _rows("workers")] == [w.pid]
    finally:
        w.release()
    r = a30.migctl("run", "--no-wait", "--ephemeral", "--profile", "4g.24gb", "--", "true")  # no worker
    assert r.returncode == 0, r.stderr
