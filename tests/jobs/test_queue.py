"""The local queue: submit/jobs/cancel/logs, worker ordering, batch, and kill -9 of the worker."""

from __future__ import annotations

import collections
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import SimEnv, wait_for
from migctl.jobs import JobsError, LeaseManager, Request
from migctl.jobs.common import db_path, proc_start
from migctl.jobs.queue import JobQueue, Worker


def _states(env: SimEnv) -> dict[int, str]:
    r = env.migctl("jobs", "--all", "--json")
    assert r.returncode == 0, r.stderr
    return {j["id"]: j["state"] for j in json.loads(r.stdout)["jobs"]}


def test_priority_then_fifo(a30: SimEnv) -> None:
    a30.layout(0, ["4g.24gb"])  # one device, no room: jobs run one at a time
    order = a30.tmp / "order"
    ids = []
    for name, prio in [("a", 0), ("b", 0), ("c", 5), ("d", 0), ("e", 5)]:
        r = a30.migctl("submit", "--priority", str(prio), "--name", name, "--", "sh", "-c", f"echo {name} >> {order}")
        assert r.returncode == 0, r.stderr
        ids.append(int(r.stdout))
    assert set(_states(a30).values()) == {"queued"}
    r = a30.migctl("worker", "--until-idle", "-q")
    assert r.returncode == 0, r.stderr
    assert order.read_text().split() == ["c", "e", "a", "b", "d"]
    assert set(_states(a30).values()) == {"done"}


def test_logs_exit_codes_and_cvd(a30: SimEnv) -> None:
    (uuid,) = a30.layout(0, ["1g.6gb"])
    ok = int(a30.migctl("submit", "--", "sh", "-c", "echo out $CUDA_VISIBLE_DEVICES; echo err >&2").stdout)
    bad = int(a30.migctl("submit", "--", "sh", "-c", "exit 3").stdout)
    assert a30.migctl("worker", "--until-idle", "-q").returncode == 0
    r = a30.migctl("logs", str(ok))
    assert r.stdout.split("\n")[:2] == [f"out {uuid}", "err"]
    jobs = {j["id"]: j for j in json.loads(a30.migctl("jobs", "--all", "--json").stdout)["jobs"]}
    assert (jobs[ok]["state"], jobs[ok]["exit_code"], jobs[ok]["mig_uuid"]) == ("done", 0, uuid)
    assert (jobs[bad]["state"], jobs[bad]["exit_code"]) == ("failed", 3)
    assert a30.migctl("logs", "999").returncode == 2


def test_cancel_queued_and_running(a30: SimEnv) -> None:
    a30.layout(0, ["4g.24gb"])
    mark = a30.tmp / "running"
    run_id = int(a30.migctl("submit", "--", "sh", "-c", f"touch {mark}; sleep 30").stdout)
    queued_id = int(a30.migctl("submit", "--", "touch", str(a30.tmp / "never")).stdout)
    w = a30.popen("worker", "-q")
    try:
        wait_for(mark.exists, what="job start")
        assert "cancelled" in a30.migctl("cancel", str(queued_id)).stdout
        assert "was running" in a30.migctl("cancel", str(run_id)).stdout
        wait_for(lambda: a30.migctl("jobs").stdout.startswith("no jobs"), what="queue to drain")
        jobs = {j["id"]: j for j in json.loads(a30.migctl("jobs", "--all", "--json").stdout)["jobs"]}
        assert jobs[run_id]["state"] == jobs[queued_id]["state"] == "cancelled"
        wait_for(lambda: a30.migctl("leases").stdout.strip() == "no leases", what="lease release")
        assert not (a30.tmp / "never").exists()
    finally:
        w.send_signal(signal.SIGTERM)
        w.wait(10)


def test_unsatisfiable_submit_fails(a30: SimEnv) -> None:
    r = a30.migctl("submit", "--profile", "3g.40gb", "--", "true")
    assert r.returncode == 2 and "no GPU offers MIG profile" in r.stderr


def test_one_worker_per_node(a30: SimEnv) -> None:
    w = a30.popen("worker", "-q")
    try:
        time.sleep(1.0)
        r = a30.migctl("worker")
        assert r.returncode == 3 and "another worker" in r.stderr
    finally:
        w.send_signal(signal.SIGTERM)
        assert w.wait(60) == 0


def test_batch_four_programs(a30: SimEnv) -> None:
    """The seed's pattern: four programs, one MIG device each, in one command."""
    out = a30.tmp / "out"
    out.mkdir()
    jobs = "\n".join(
        # each waits (up to 60 s, then exit 9) until all four have started: run one after another, the first
        # would never see the others, so four "done (exit 0)" prove they ran at the same time
        f"  - {{name: prog{i}, command: 'echo $CUDA_VISIBLE_DEVICES > {out}/{i}; touch {out}/up{i}; n=0; "
        f"while [ $(ls {out} | grep -c ^up) -lt 4 ]; do n=$((n+1)); [ $n -gt 600 ] && exit 9; sleep 0.1; done'}}"
        for i in range(4)
    )
    (a30.tmp / "jobs.yaml").write_text(f"defaults: {{profile: 1g.6gb}}\njobs:\n{jobs}\n")
    r = a30.migctl("batch", str(a30.tmp / "jobs.yaml"), timeout=120)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert r.stdout.count(": done (exit 0)") == 4
    uuids = [(out / str(i)).read_text().strip() for i in range(4)]
    assert len(set(uuids)) == 4 and all(u.startswith("MIG-") for u in uuids)
    assert len(a30.node().gpu(0).mig_devices()) == 4  # four 1g.6gb created (kept)
    (a30.tmp / "bad.yaml").write_text("jobs:\n  - {name: x, command: 'exit 1'}\n  - {command: ['true']}\n"
                                      f"  - {{name: long, command: [echo, {'q' * 200_000}]}}\n")
    r = a30.migctl("batch", str(a30.tmp / "bad.yaml"))
    assert r.returncode == 1 and ": failed (exit 1)" in r.stdout
    # a command the kernel refuses (one argument over MAX_ARG_STRLEN) fails, and the line says why
    assert "long: failed (exit -: cannot start: [Errno 7] Argument list too long" in r.stdout, r.stdout
    (a30.tmp / "worse.yaml").write_text("jobs:\n  - {name: x, comand: 'true'}\n")
    r = a30.migctl("batch", str(a30.tmp / "worse.yaml"))
    assert r.returncode == 2 and "unknown key(s) comand" in r.stderr


@pytest.mark.parametrize("entry, expected", [
    ('{command: ["echo", "a\\0b"]}', "job 1: 'command' contains a NUL character"),
    ('{command: "true", env: {"A=B": x}}', "job 1: 'env' has the name 'A=B'; a name is not empty and has no '='"),
    ('{command: "true", env: {A: true}}', "job 1: 'env: A' must be text, not true, false or null (quote it)"),
    ('{command: "true", env: [A]}', "job 1: 'env' must be a mapping of NAME: value"),
    ('{command: [echo, [1]]}', "job 1: 'command' must be text, not a list or mapping"),
    ('{command: "true", gpu: abc}', "job 1: 'gpu' must be a GPU index or a list of them"),
    ('{command: "true", gpu: [1.5]}', "job 1: 'gpu' must be a GPU index"),
    ('{command: "true", gpu: []}', "job 1: 'gpu' must be a GPU index or a list of them (e.g. 0, [0, 1] or \"0,1\"), "
     "not []"),  # (it said "no MIG-enabled GPU on this node")
    ('{command: "true", gpu: "\uff11"}', "job 1: 'gpu' must be a GPU index"),  # (a full-width 1: it meant GPU 1)
    ('{command: "true", priority: abc}', "job 1: 'priority' must be a whole number from -1000000 to 1000000"),
    ('{command: "true", priority: 99999999999999999999}', "'priority' must be a whole number"),
    ('{command: "true", cwd: [a]}', "job 1: 'cwd' must be text"),
    ('{command: "true", ephemeral: yes please}', "job 1: 'ephemeral' must be true or false"),
    ('{command: "true", mem: [1]}', "job 1: 'mem' must be a size such as 12GiB or 500MiB"),
    ('{command: "true", profile: 5}', "job 1: 'profile' must be a profile name such as 1g.10gb"),
])
def test_a_bad_jobs_file_entry_is_one_line_and_queues_nothing(a30: SimEnv, entry: str, expected: str) -> None:
    """Each was a traceback (ValueError, TypeError, AttributeError, OverflowError), a silent conversion (GPU 1.5
    to 1, ephemeral "yes please" to true), or, for a NUL, a queued job that stopped every worker at its start."""
    a30.layout(0, ["1g.6gb"])
    f = a30.tmp / "bad.yaml"
    f.write_text(f"jobs:\n  - {{command: 'true'}}\n  - {entry}\n".replace("job 1", "job 2"))
    r = a30.migctl("batch", str(f), timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f"migctl: error: {f}: ") and expected.replace("job 1", "job 2") in line, line
    assert _states(a30) == {}


def test_worker_sigkill_restart_loses_nothing_runs_nothing_twice(a30: SimEnv) -> None:
    """Four devices, twelve jobs: the first two end at once, the others run until a gate file appears. The
    worker is SIGKILLed when two are done, four running and six waiting (a state reached by the jobs
    themselves, not by timing); a new worker adopts the running four, runs the six, and no job runs twice."""
    a30.layout(0, ["1g.6gb"] * 4)
    runs, gate = a30.tmp / "runs", a30.tmp / "gate"
    n = 12
    q = JobQueue(a30.node())  # queued in-process: `migctl submit` itself is tested above
    log = f"echo $MIGCTL_JOB_ID >> {runs}"
    wait = f"{log}; for _ in $(seq 2400); do [ -e {gate} ] && break; sleep 0.05; done"  # bounded: 2 min at most
    ids = [q.submit(["sh", "-c", log if i < 2 else wait], Request()) for i in range(n)]
    w = a30.popen("worker", "-q")
    conn = sqlite3.connect(db_path())

    def count(state: str) -> int:
        return int(conn.execute("SELECT COUNT(*) FROM jobs WHERE state=?", (state,)).fetchone()[0])

    try:
        try:
            wait_for(lambda: count("done") == 2 and count("running") == 4, timeout=60, what="2 done, 4 running")
        finally:
            os.kill(w.pid, signal.SIGKILL)
            w.wait()
        running = conn.execute("SELECT id, child_pid FROM jobs WHERE state='running'").fetchall()
        assert sorted(i for i, _ in running) == ids[2:6]
        # the other six are queued, one of them perhaps claimed ('starting': its user code never started)
        assert count("queued") >= 5 and count("queued") + count("starting") == n - 6
        assert all(proc_start(pid) is not None for _, pid in running)  # jobs outlive the worker
    finally:
        gate.touch()  # the running jobs end (also when an assertion above failed)
    r = a30.migctl("worker", "--until-idle", "-q", timeout=120)
    assert r.returncode == 0, r.stderr
    states = _states(a30)
    assert [states[i] for i in ids] == ["done"] * n
    counts = collections.Counter(runs.read_text().split())
    assert counts == {str(i): 1 for i in ids}


def test_crash_between_claim_and_start_requeues(a30: SimEnv) -> None:
    """A job left 'starting' never ran user code (its gate never opened): it is queued again and runs once."""
    a30.layout(0, ["1g.6gb"])
    marker = a30.tmp / "ran"
    q = JobQueue(a30.node())
    jid = q.submit(["sh", "-c", f"echo x >> {marker}"], Request())
    q.conn.execute("UPDATE jobs SET state='starting', worker_pid=1 WHERE id=?", (jid,))
    w = Worker(q)
    assert w.acquire()
    try:
        w.run(until_idle=True)
    finally:
        w.release()
    assert q.get(jid).state == "done" and marker.read_text() == "x\n"


def test_running_job_without_process_or_status_is_lost_not_rerun(a30: SimEnv) -> None:
    a30.layout(0, ["1g.6gb"])
    q = JobQueue(a30.node())
    jid = q.submit(["true"], Request())
    q.conn.execute("UPDATE jobs SET state='running', child_pid=999999, child_start=1.0, started=1.0 WHERE id=?", (jid,))
    w = Worker(q)
    assert w.acquire()
    w.release()
    job = q.get(jid)
    assert job.state == "failed" and job.reason.startswith("lost")


def test_bad_request_in_library(a30: SimEnv) -> None:
    q = JobQueue(a30.node())
    with pytest.raises(JobsError):
        q.submit([], Request())


def _serve_until_idle(w: Worker, other: sqlite3.Connection) -> None:
    """Run ``w`` until the queue is idle, then close ``other`` (the connection that played another process)."""
    assert w.acquire()
    try:
        w.run(until_idle=True)
    finally:
        w.release()
        other.close()


def test_a_write_locked_database_does_not_end_the_worker(a30: SimEnv) -> None:
    """Another process holds the jobs database's write lock past the worker's busy timeout (a real SQLite
    "database is locked"; a full disk, SQLITE_FULL, takes the same path): the worker says so and tries again
    instead of ending, the jobs it started keep their exit statuses (it holds them), and once the lock is
    gone the rest of the queue runs. Before, the worker ended with one error line and the jobs it had
    started were left to the next worker (their exit files, or 'lost' when there was none)."""
    a30.layout(0, ["1g.6gb"] * 4)
    q = JobQueue(a30.node())
    ids = [q.submit(["sh", "-c", f"sleep 0.3; exit {i}"], Request()) for i in range(1, 7)]
    q.conn.execute("PRAGMA busy_timeout=50")
    other = sqlite3.connect(db_path(), isolation_level=None)
    said: list[str] = []

    def log(line: str) -> None:
        said.append(line)
        if len(said) == 2:
            other.execute("BEGIN IMMEDIATE")  # another process takes the write lock after two jobs started
        if sum("trying again in" in x for x in said) == 3 and other.in_transaction:
            other.execute("ROLLBACK")

    w = Worker(q, log=log)
    w.RETRY_MIN_S = 0.05
    _serve_until_idle(w, other)
    retries = [x for x in said if "trying again in" in x]
    assert len(retries) == 3 and all("write-locked" in x and "the jobs it started go on" in x for x in retries), said
    assert "the last try went through; serving the queue again" in said
    assert [(q.get(i).state, q.get(i).exit_code) for i in ids] == [("failed", i) for i in range(1, 7)]
    assert q.conn.execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 0


def test_a_lock_held_while_a_job_takes_its_device_requeues_it(a30: SimEnv) -> None:
    """The write lock held past the busy timeout just when a claimed job takes its lease: the job goes back to
    the queue and runs once the lock is gone. Before, the job was failed for good with the lock's message."""
    a30.layout(0, ["1g.6gb"])
    q = JobQueue(a30.node())
    jid = q.submit(["sh", "-c", "exit 3"], Request())
    other = sqlite3.connect(db_path(), isolation_level=None)
    said: list[str] = []

    w = Worker(q, log=said.append)
    w.RETRY_MIN_S = 0.05
    w.leases.conn.execute("PRAGMA busy_timeout=50")
    real = w.leases.try_acquire

    def locked_first(*args, **kw):  # another process holds the write lock between the claim and the lease
        if said:
            return real(*args, **kw)
        other.execute("BEGIN IMMEDIATE")
        try:
            return real(*args, **kw)
        finally:
            other.execute("ROLLBACK")  # and lets go right after

    w.leases.try_acquire = locked_first  # type: ignore[method-assign]
    _serve_until_idle(w, other)
    assert (q.get(jid).state, q.get(jid).exit_code) == ("failed", 3), (q.get(jid).reason, said)
    assert any("write-locked" in x and "trying again in" in x for x in said), said


def test_logs_of_a_large_log_in_bounded_memory(a30: SimEnv) -> None:
    """`migctl logs` copies a 200 MB log in 1 MiB pieces: its peak memory stays far below the log's size (it
    read the whole file at once: about 230 MB for this log on 2026-12-03)."""
    q = JobQueue(a30.node())
    jid = q.submit(["true"], Request())
    log = q.log_file(jid)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as f:
        for _ in range(200):
            f.write(b"x" * 1023 + b"\n" * 1 + b"y" * (1 << 20) + b"\n")
    size = log.stat().st_size
    peak = subprocess.run(
        [sys.executable, "-c", "import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], stdout=subprocess."
         "PIPE, check=True); print(len(p.stdout), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)",
         sys.executable, "-m", "migctl.cli.main", "logs", str(jid)], env=a30.env, capture_output=True, text=True,
        timeout=120)
    assert peak.returncode == 0, peak.stderr
    copied, rss_kib = map(int, peak.stdout.split())
    assert copied == size and rss_kib < 120 * 1024, (copied, size, rss_kib)


def test_the_start_pass_runs_when_something_changed(a30: SimEnv) -> None:
    """With the device held and the queue blocked, the worker's start pass (which reads and checks every
    queued job) runs about once per FULL_PASS_S, not every poll; a write to the jobs database by another
    process (a submit) or a job of its own ending makes the next step run it at once. (It ran every step:
    20 passes a second, 85% of a core in front of 10,000 blocked jobs on 2026-12-03.)"""
    a30.layout(0, ["4g.24gb"])
    holder = LeaseManager(a30.node()).try_acquire(Request(), pid=os.getpid(), owner="test")
    assert holder is not None
    q = JobQueue(a30.node())
    for _ in range(3):
        q.submit(["true"], Request(profile="4g.24gb"))
    w = Worker(q)
    passes: list[float] = []
    real = w.start_ready

    def counted() -> int:
        passes.append(time.monotonic())
        return real()

    w.start_ready = counted  # type: ignore[method-assign]
    assert w.acquire()
    try:
        w.FULL_PASS_S = 10.0  # (no pass falls due by the clock within this test)
        for _ in range(20):
            w.step()
        assert len(passes) == 1  # the first step, then nothing changed
        JobQueue(a30.node()).submit(["true"], Request(profile="4g.24gb"))  # another process writes
        w.step()
        assert len(passes) == 2
        for _ in range(5):
            w.step()
        assert len(passes) == 2
        w._next_full = 0.0  # the clock: a pass falls due
        w.step()
        assert len(passes) == 3
    finally:
        w.release()
        LeaseManager(a30.node()).release(holder)


@pytest.mark.parametrize("errno_name", ["ENOSPC", "EAGAIN"])
def test_a_job_that_cannot_be_started_for_a_moment_is_not_failed(a30: SimEnv, errno_name: str) -> None:
    """Its log cannot be created (a full disk) or its process cannot be forked (the system out of processes
    for a moment): the job goes back to the queue and starts on the next try, and its device is free
    meanwhile. Before, it was failed for good ('cannot start: [Errno 28] No space left on device')."""
    import errno

    a30.layout(0, ["1g.6gb"])
    q = JobQueue(a30.node())
    jid = q.submit(["sh", "-c", "exit 4"], Request())
    said: list[str] = []
    w = Worker(q, log=said.append)
    w.RETRY_MIN_S = 0.05
    real = w._spawn
    refused = [False]

    def spawn(job, extra):  # the system refuses the first start
        if not refused[0]:
            refused[0] = True
            code = getattr(errno, errno_name)
            raise OSError(code, os.strerror(code))
        return real(job, extra)

    w._spawn = spawn  # type: ignore[method-assign]
    assert w.acquire()
    try:
        w.run(until_idle=True)
    finally:
        w.release()
    job = q.get(jid)
    assert (job.state, job.exit_code) == ("failed", 4), (job.reason, said)  # it ran: its own status
    assert any(os.strerror(getattr(errno, errno_name)) in x and "trying again" in x for x in said), said
