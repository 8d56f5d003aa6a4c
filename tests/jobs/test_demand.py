"""The queue follows demand on a live (simulated) node: the worker and ``run --reshape`` reshape idle
instances (never busy ones) under a shared churn policy, reservations bound the wait of a large job, and
time limits are enforced. Real processes: ``migctl`` subprocesses on the simulator."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from typing import Any

import pytest

from conftest import SimEnv, wait_for
from migctl.busy import lease_processes
from migctl.jobs.common import db_path
from migctl.jobs.leases import Request
from migctl.reconcile.live import read_gpu


def _gis(env: SimEnv) -> list[tuple[str, int]]:
    return [(g.profile, g.start) for g in sorted(read_gpu(env.node().gpu(0)).gis, key=lambda g: g.start)]


def _busy_1g_at_0(env: SimEnv) -> tuple[subprocess.Popen[bytes], int]:
    """Four 1g.6gb on the A30, the one at start 0 used by a process (an NVML client, no lease)."""
    env.layout(0, ["1g.6gb"] * 4)
    holder = subprocess.Popen(["sleep", "120"])
    gi0 = next(g for g in read_gpu(env.node().gpu(0)).gis if g.start == 0)
    assert env.node().sim.add_client(0, holder.pid, gi0.id, 0) == 0
    return holder, gi0.id


def _jobs(env: SimEnv, cli: bool = False) -> dict[int, dict[str, Any]]:
    """``migctl jobs --all --json`` (in-process unless ``cli``: the same function builds the JSON)."""
    if cli:
        r = env.migctl("jobs", "--all", "--json")
        assert r.returncode == 0, r.stderr
        return {j["id"]: j for j in json.loads(r.stdout)["jobs"]}
    from migctl.cli.jobs import _jobs_json
    from migctl.jobs.queue import JobQueue

    q = JobQueue(env.node())
    return {j["id"]: j for j in _jobs_json(q, q.list())}


def _state(env: SimEnv, jid: int) -> str:
    from migctl.jobs.queue import JobQueue

    return JobQueue(env.node()).get(jid).state


def _leased(env: SimEnv) -> list[str]:
    from migctl.jobs.leases import LeaseManager

    return [x.profile for x in LeaseManager(env.node()).leases()]


def _queue(env: SimEnv, profile: str, *cmd: str, limit: float | None = None) -> int:
    """Queue a job in-process (what ``submit`` does; the CLI path is covered by the time-limit tests)."""
    from migctl.jobs.queue import JobQueue

    return JobQueue(env.node()).submit(list(cmd), Request(profile=profile), time_limit=limit)


def _submit(env: SimEnv, *args: str) -> int:
    r = env.migctl("submit", *args)
    assert r.returncode == 0, r.stderr
    return int(r.stdout)


def _age_reshapes(seconds: float) -> None:
    """Move the recorded reshaping destroys into the past (as if ``seconds`` had gone by)."""
    conn = sqlite3.connect(str(db_path()))
    with conn:
        conn.execute("UPDATE reshapes SET at = at - ?", (seconds,))
    conn.close()


def test_worker_reshapes_idle_instances_for_a_queued_job(a30: SimEnv) -> None:
    """The issue's A30 case through the queue: four kept 1g.6gb, one busy; a queued 2g.12gb starts once the
    worker replaces two idle ones; the busy one keeps its GI and its process."""
    holder, gi0 = _busy_1g_at_0(a30)
    try:
        jid = _submit(a30, "--profile", "2g.12gb", "--", "sh", "-c", "echo $MIGCTL_MIG_PROFILE")
        w = a30.popen("worker", "--no-reshape")  # plain backfill: the job cannot start
        time.sleep(1.0)
        w.terminate()
        w.wait(10)
        assert _state(a30, jid) == "queued"  # (a worker stopped by SIGTERM leaves nothing starting)
        r = a30.migctl("worker", "--until-idle", "--hysteresis", "0")
        assert r.returncode == 0, r.stderr
        assert f"job {jid}: reshaped GPU 0: destroyed idle 1g.6gb@2, 1g.6gb@3; created 2g.12gb@2" in r.stderr
        job = _jobs(a30)[jid]
        assert job["state"] == "done", job
        assert a30.migctl("logs", str(jid)).stdout.strip() == "2g.12gb"
        assert _gis(a30) == [("1g.6gb", 0), ("1g.6gb", 1), ("2g.12gb", 2)]
        after = next(g for g in read_gpu(a30.node().gpu(0)).gis if g.start == 0)
        assert after.id == gi0 and holder.pid in after.pids  # the busy instance is untouched
    finally:
        holder.kill()
        holder.wait()


def test_churn_cap_is_shared_between_run_and_worker(a30: SimEnv) -> None:
    a30.layout(0, ["1g.6gb"] * 4)
    first = a30.popen("run", "--reshape", "--max-reconfig-per-min", "2", "--no-wait", "-v", "--profile", "2g.12gb",
                      "--", "sleep", "30")
    try:
        wait_for(lambda: _leased(a30) == ["2g.12gb"], what="first reshape and lease")
        # the second 2g needs the two other 1g destroyed: 2 more than the window allows
        r = a30.migctl("run", "--reshape", "--max-reconfig-per-min", "2", "--wait", "1", "-v", "--profile", "2g.12gb",
                       "--", "true")
        assert r.returncode == 75, r.stderr
        assert "not reshaping yet" in r.stderr and "--max-reconfig-per-min" in r.stderr
        assert [p for p, _ in _gis(a30)].count("1g.6gb") == 2
        # the worker shares the budget: its queued 2g waits as well ...
        jid = _queue(a30, "2g.12gb", "true")
        w = a30.popen("worker", "--max-reconfig-per-min", "2", "--hysteresis", "0")
        try:
            time.sleep(1.0)
            assert _state(a30, jid) in ("queued", "starting")  # (starting: claimed for one lease attempt)
            _age_reshapes(61)  # ... until the window has passed
            wait_for(lambda: _state(a30, jid) == "done", what="queued 2g after the window")
        finally:
            w.terminate()
            w.wait(10)
        assert sorted(p for p, _ in _gis(a30)) == ["2g.12gb", "2g.12gb"]
    finally:
        first.terminate()
        first.wait(10)


def test_hysteresis_spares_recently_idle_instances(a30: SimEnv) -> None:
    a30.layout(0, ["1g.6gb"] * 4)
    r = a30.migctl("run", "--reshape", "--hysteresis", "60", "--wait", "0.5", "-v", "--profile", "2g.12gb", "--", "true")
    assert r.returncode == 75 and "younger than the hysteresis (60s)" in r.stderr, r.stderr
    assert [p for p, _ in _gis(a30)] == ["1g.6gb"] * 4
    conn = sqlite3.connect(str(db_path()))
    first_seen = [s for (s,) in conn.execute("SELECT since FROM idle_since")]
    assert len(first_seen) == 4  # recorded by the first run, which saw them first
    r = a30.migctl("run", "--reshape", "--hysteresis", "2", "--wait", "20", "-v", "--profile", "2g.12gb", "--",
                   "true")
    assert r.returncode == 0, r.stderr
    assert "reshaped GPU 0" in r.stderr
    (at,) = conn.execute("SELECT MIN(at) FROM reshapes").fetchone()
    conn.close()
    assert at >= max(first_seen) + 2  # not before the destroyed instances had been idle for the hysteresis


def test_run_reshapes_while_waiting(a30: SimEnv) -> None:
    """``run --reshape --wait``: the space is leased when it starts waiting, and idle once the holder ends:
    the waiting run reshapes then (not only once before waiting)."""
    a30.layout(0, ["1g.6gb"] * 2)
    busy = a30.popen("run", "--profile", "2g.12gb", "--", "sleep", "1.5")  # takes 2g@... in free space
    wait_for(lambda: "2g.12gb" in _leased(a30), what="2g lease")
    r = a30.migctl("run", "--reshape", "--wait", "20", "-v", "--profile", "4g.24gb", "--", "true")
    assert busy.wait(60) == 0
    assert r.returncode == 0, r.stderr
    assert "reshaped GPU 0: destroyed idle" in r.stderr and "created 4g.24gb@0" in r.stderr
    assert _gis(a30) == [("4g.24gb", 0)]


def test_concurrent_mixed_runs_complete(a30: SimEnv) -> None:
    """Mixed 1g/2g runs started at once on an A30 holding four kept 1g.6gb: without reshaping every 2g
    times out (kept idle 1g instances block it); with --reshape none does."""
    a30.layout(0, ["1g.6gb"] * 4)

    def launch(sizes: list[str], extra: list[str], wait: str) -> list[int]:
        procs = [a30.popen("run", *extra, "--wait", wait, "--profile", p, "--", "sleep", "0.2",
                           stdout=subprocess.DEVNULL) for p in sizes]
        return [p.wait(120) for p in procs]

    assert launch(["2g.12gb", "1g.6gb"], [], "1") == [75, 0]
    assert launch(["2g.12gb", "1g.6gb"] * 3, ["--reshape"], "60") == [0] * 6  # (waits bounded: 60 s)


def test_reshape_race_nothing_busy_destroyed(a30: SimEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """An instance becomes busy after the lock-free plan (the locked re-plan sees it and gives up), or after
    the locked plan itself (the driver refuses the destroy and the apply rolls back): nothing busy is
    destroyed either way."""
    from migctl.jobs import reshape
    from migctl.reconcile import engine

    holder, _ = _busy_1g_at_0(a30)
    late = [subprocess.Popen(["sleep", "120"]) for _ in range(2)]
    try:
        node = a30.node()
        req = Request(profile="2g.12gb")
        gi2 = next(g for g in read_gpu(node.gpu(0)).gis if g.start == 2)
        real_apply = reshape._apply

        def busy_then_apply(*a: Any, **kw: Any) -> Any:
            assert node.sim.add_client(0, late[0].pid, gi2.id, 0) == 0  # after the plan, before the lock
            return real_apply(*a, **kw)

        monkeypatch.setattr(reshape, "_apply", busy_then_apply)
        out = reshape.try_reshape(node, req, reshape.Churn(hysteresis_s=0))
        assert out.status == "none", out
        monkeypatch.setattr(reshape, "_apply", real_apply)
        node.sim.remove_client(0, late[0].pid)

        gi3 = next(g for g in read_gpu(node.gpu(0)).gis if g.start == 3)
        real_plan = engine.plan_node

        def plan_then_busy(*a: Any, **kw: Any) -> Any:
            plan = real_plan(*a, **kw)
            assert node.sim.add_client(0, late[1].pid, gi3.id, 0) == 0  # after the locked plan
            return plan

        monkeypatch.setattr(engine, "plan_node", plan_then_busy)
        out = reshape.try_reshape(node, req, reshape.Churn(hysteresis_s=0))
        assert out.status == "raced" and "rolled back" in out.note, out
        after = {g.start: g for g in read_gpu(a30.node().gpu(0)).gis}
        assert sorted((g.profile, s) for s, g in after.items()) == [("1g.6gb", s) for s in range(4)]
        assert holder.pid in after[0].pids and late[1].pid in after[3].pids
        assert after[3].id == gi3.id  # the busy one was never destroyed (not recreated either)
    finally:
        for p in [holder, *late]:
            p.kill()
            p.wait()


def test_time_limit_terminates_then_kills(a30: SimEnv) -> None:
    a30.layout(0, ["1g.6gb"] * 2)
    polite = _submit(a30, "--time-limit", "1", "--profile", "1g.6gb", "--", "sleep", "120")
    stubborn = _submit(a30, "--time-limit", "1s", "--profile", "1g.6gb", "--", "sh", "-c", "trap '' TERM; sleep 120")
    t0 = time.monotonic()
    r = a30.migctl("worker", "--until-idle", "--limit-grace", "1", timeout=150)
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 100  # neither ran its 120 s
    jobs = _jobs(a30)
    for jid in (polite, stubborn):
        assert (jobs[jid]["state"], jobs[jid]["reason"], jobs[jid]["time_limit"]) == ("failed", "time limit", 1.0)
    assert jobs[polite]["exit_code"] == 143
    assert f"job {stubborn}: still running 1s after SIGTERM, SIGKILL sent" in r.stderr
    assert _leased(a30) == []


def _main(*args: str) -> tuple[int, str]:
    """``migctl ARGS`` in-process (error paths only: nothing is changed): exit status and stderr."""
    import contextlib
    import io

    from migctl.cli.main import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(list(args))
    return rc, err.getvalue()


def test_bad_time_limit_is_one_line(a30: SimEnv) -> None:
    from migctl.jobs import JobsError
    from migctl.jobs.limits import parse_duration

    assert [parse_duration(x) for x in ("90", "90s", "5m", "1h30m", "1.5h", "2d")] == [90, 90, 300, 5400, 5400, 172800]
    for bad in ("0", "5x", "1h 2", "200d", "", "h"):
        with pytest.raises(JobsError):
            parse_duration(bad)
    for bad in ("-5", "abc"):
        rc, err = _main("submit", "--time-limit", bad, "--", "true")
        assert rc == 2 and err.count("\n") == 1 and "migctl: error:" in err, err
    assert _jobs(a30) == {}


def test_bad_churn_flags_are_one_line(a30: SimEnv) -> None:
    for args in (["worker", "--max-reconfig-per-min", "0"], ["worker", "--hysteresis", "-1"],
                 ["worker", "--reserve-after", "soon"], ["worker", "--order", "lifo"],
                 ["run", "--hysteresis", "2", "--", "true"],
                 ["run", "--reshape", "--max-reconfig-per-min", "x", "--", "true"],
                 ["run", "--reshape", "--no-create", "--", "true"],
                 ["run", "--reshape", "--isolation", "soft", "--share", "2", "--hysteresis", "-1", "--", "true"]):
        rc, err = _main(*args)
        assert rc == 2 and err.count("\n") == 1 and "migctl: error:" in err, (args, err)


@pytest.mark.parametrize("order", ["fifo", "sjf-request", None])
def test_worker_start_order(a30: SimEnv, order: str | None) -> None:
    """Three jobs for the whole A30 (4g.24gb), one at a time: without a limit, then limited to 1 h, then to
    60 s. "fifo" starts them in that order; "sjf-request", the default (None: no --order), the shortest limit
    first (no limit last), as the planner's order of that name does; a 1g.6gb job keeps its place (another
    request)."""
    from migctl.jobs.demand import start_order
    from migctl.jobs.queue import JobQueue

    q = JobQueue(a30.node())
    whole = Request(profile="4g.24gb")
    ids = [q.submit(["sleep", "0.3"], whole), q.submit(["sleep", "0.3"], whole, time_limit=3600),
           q.submit(["sleep", "0.3"], whole, time_limit=60)]
    r = a30.migctl("worker", "--until-idle", *(("--order", order) if order else ()), timeout=120)
    assert r.returncode == 0, r.stderr
    jobs = _jobs(a30)
    started = sorted(ids, key=lambda j: jobs[j]["started"])
    assert started == (ids if order == "fifo" else ids[::-1]), r.stderr
    row = {"priority": 0, "profile": "4g.24gb", "mem_mib": None, "gpus": None, "isolation": "hard", "share": None,
           "threads": None, "mps_mem_mib": None}
    rows = [{**row, "id": 1, "time_limit": 50}, {**row, "id": 2, "profile": "1g.6gb", "time_limit": 90},
            {**row, "id": 3, "time_limit": 10}, {**row, "id": 4, "time_limit": None}, {**row, "id": 5, "time_limit": 5}]
    assert [r["id"] for r in start_order(rows, "sjf-request", set())] == [5, 2, 3, 1, 4]
    assert [r["id"] for r in start_order(rows, "sjf-request", {5})] == [3, 2, 1, 4, 5]  # 5 keeps its place
    assert start_order(rows, "fifo", set()) == rows


@pytest.mark.parametrize("path", ["start pass", "reshaping"])
def test_a_later_job_does_not_overtake_when_a_device_frees_mid_pass(a30: SimEnv, monkeypatch: pytest.MonkeyPatch,
                                                                    path: str) -> None:
    """Job 1 holds the whole A30; jobs 2 (1 h limit) and 3 (60 s) ask for it too. Job 1 ends just after job 2
    was tried in a pass, before job 3 is: job 3 must not start first (its shorter limit matters only against
    a reservation, and there is none). This race is the likely cause of test_worker_start_order's failures
    under load (job 3 started before job 2 there too)."""
    from migctl.jobs import demand
    from migctl.jobs.demand import WorkerPolicy
    from migctl.jobs.queue import JobQueue, Worker
    from migctl.jobs.reshape import Churn

    q = JobQueue(a30.node())
    whole = Request(profile="4g.24gb")
    first = whole
    if path == "reshaping":  # job 1 on one of two 2g.12gb: job 2 and 3 need both destroyed
        a30.layout(0, ["2g.12gb", "2g.12gb"])
        first = Request(profile="2g.12gb")
    ids = [q.submit(["sleep", "60"], first), q.submit(["true"], whole, time_limit=3600),
           q.submit(["true"], whole, time_limit=60)]
    policy = (WorkerPolicy(churn=Churn(hysteresis_s=0), reserve_after=None, order="fifo") if path == "reshaping"
              else None)  # (arrival order: with "sjf-request", the default, job 3 comes first by right)
    log: list[str] = []
    w = Worker(q, policy=policy, log=log.append)
    w.step()
    assert [_state(a30, j) for j in ids] == ["running", "queued", "queued"]

    def end_job_1() -> None:
        p = w.procs[ids[0]]
        os.killpg(p.pid, signal.SIGKILL)  # the job's wrapper and command (its own process group)
        p.wait()
        wait_for(lambda: not lease_processes(p.pid, 0.0, p.pid, None), what="job 1's processes to be gone")

    with monkeypatch.context() as m:
        if path == "start pass":
            start = w._start

            def start_then_end(job: Any) -> bool:
                ok = start(job)
                if job.id == ids[1] and not ok and w.procs[ids[0]].poll() is None:
                    end_job_1()
                return ok

            m.setattr(w, "_start", start_then_end)
            w.start_ready()
            assert w.procs[ids[0]].poll() is not None  # job 2 was tried, then job 1 ended
        else:
            reshape = demand.try_reshape

            def reshape_then_end(*a: Any, **kw: Any) -> Any:
                out = reshape(*a, **kw)
                if kw.get("job_id") == ids[1] and w.procs[ids[0]].poll() is None:
                    end_job_1()
                return out

            m.setattr(demand, "try_reshape", reshape_then_end)
            w.start_ready()
            w.demand._next = 0.0  # reshape in this pass (not only after the pause that the first pass set)
            w.demand.after_pass(changed=True)
            assert w.procs[ids[0]].poll() is not None  # job 2 was tried for reshaping, then job 1 ended
    assert [_state(a30, j) for j in ids] == ["running", "queued", "queued"]  # job 1 not reaped yet
    if w.demand is not None:
        w.demand._next = 0.0
    w.step()
    j2, j3 = q.get(ids[1]), q.get(ids[2])  # job 2 first (job 3 may follow at once: job 2 is `true`)
    assert j2.started is not None and (j3.started is None or j3.started >= j2.started), log


def _stream(env: SimEnv) -> tuple[int, list[int]]:
    """A large job (4g.24gb: the whole A30) queued behind one small job, then a stream of overlapping small
    jobs (1g.6gb, 0.6-1.2 s each, time limit 3 s) that keeps some slice busy at all times."""
    from migctl.jobs.queue import JobQueue

    q = JobQueue(env.node())
    small = Request(profile="1g.6gb")
    first = q.submit(["sleep", "1.2"], small, time_limit=3)
    large = q.submit(["sleep", "0.2"], Request(profile="4g.24gb"))
    rest = [q.submit(["sleep", f"{0.6 + 0.2 * (k % 4):.1f}"], small, time_limit=3) for k in range(11)]
    return large, [first, *rest]


def test_without_reservations_a_large_job_starves(a30: SimEnv) -> None:
    large, small = _stream(a30)
    r = a30.migctl("worker", "--until-idle", "--hysteresis", "0", "--reserve-after", "off", timeout=120)
    assert r.returncode == 0, r.stderr
    jobs = _jobs(a30)
    assert all(jobs[j]["state"] == "done" for j in [large, *small])
    assert jobs[large]["started"] > max(jobs[j]["started"] for j in small)  # starved until the stream ended


def test_reservation_bounds_the_wait_of_a_large_job(a30: SimEnv) -> None:
    large, small = _stream(a30)
    t0 = time.time()
    r = a30.migctl("worker", "--until-idle", "--hysteresis", "0", "--reserve-after", "0.5", "--limit-grace", "1",
                   timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"job {large}: waited" in r.stderr and "reserved GPU 0 4g.24gb@0" in r.stderr
    jobs = _jobs(a30)
    assert all(jobs[j]["state"] == "done" for j in [large, *small]), jobs
    later = [j for j in small if jobs[j]["started"] > jobs[large]["started"]]
    assert len(later) >= 4  # it did not wait for the stream to end
    wait = jobs[large]["started"] - max(jobs[large]["created"], t0)
    bound = 0.5 + 3 + 1  # --reserve-after + the longest time limit in the way + --limit-grace
    assert wait <= bound + 3.0, (wait, r.stderr)  # (+ the worker's passes and process start-up on a busy machine)
    assert jobs[large]["reservation"] is None  # dropped once it started


def test_reservation_is_kept_shown_and_respected(a30: SimEnv) -> None:
    """A reservation whose start is unknown (a process without a time limit is in the way) survives a
    worker restart, is shown by ``jobs``, keeps ``run`` out of the reserved space although there is room,
    and the job starts once the process ends."""
    from migctl.jobs.demand import WorkerPolicy
    from migctl.jobs.queue import JobQueue, Worker
    from migctl.jobs.reshape import Churn

    holder, _ = _busy_1g_at_0(a30)
    try:
        large = _queue(a30, "4g.24gb", "true")
        policy = WorkerPolicy(churn=Churn(hysteresis_s=0), reserve_after=0.0)
        w = Worker(JobQueue(a30.node()), policy=policy)
        w.step()
        job = _jobs(a30, cli=True)[large]
        assert job["state"] == "queued"
        assert job["reservation"] is not None
        assert {k: job["reservation"][k] for k in ("gpu", "profile", "start", "size", "at")} == \
            {"gpu": 0, "profile": "4g.24gb", "start": 0, "size": 4, "at": None}
        assert f"job {large} has a reservation: GPU 0 4g.24gb@0, from unknown" in a30.migctl("jobs").stdout
        made = job["reservation"]["made"]
        w2 = Worker(JobQueue(a30.node()), policy=policy)  # a restarted worker keeps it
        w2.step()
        assert _jobs(a30)[large]["reservation"]["made"] == made
        # three 1g.6gb are idle and free, but they are in the reserved space: an unbounded run keeps out
        r = a30.migctl("run", "--no-wait", "--profile", "1g.6gb", "--", "true")
        assert r.returncode == 75, r.stderr
        small = _queue(a30, "1g.6gb", "true", limit=60)
        w2.step()
        assert _state(a30, small) == "queued"  # its limit does not end before an unknown start
        holder.kill()
        holder.wait()
        a30.node().sim.remove_client(0, holder.pid)
        wait_for(lambda: w2.step() or _state(a30, large) != "queued", what="reserved job start")
        assert _gis(a30) == [("4g.24gb", 0)]
        wait_for(lambda: (w2.step(), _state(a30, large))[1] == "done", what="reserved job end")
        assert _jobs(a30)[large]["reservation"] is None
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_the_reservation_goes_to_the_oldest_starving_job_whatever_the_order(a30: SimEnv) -> None:
    """Two jobs for the whole A30, the older with a 1 h limit, the newer with 60 s, both past --reserve-after
    while a process holds a 1g.6gb: with the default start order (sjf-request) the newer is tried first, but
    the reservation goes to the older, as the planner's scheduler does and as a waiting ``run`` is told
    (``reservations.older_job``); with the start order's first job it went to the newer."""
    from migctl.jobs import reservations
    from migctl.jobs.demand import WorkerPolicy
    from migctl.jobs.queue import JobQueue, Worker
    from migctl.jobs.reshape import Churn

    holder, _ = _busy_1g_at_0(a30)
    try:
        older = _queue(a30, "4g.24gb", "true", limit=3600)
        newer = _queue(a30, "4g.24gb", "true", limit=60)
        policy = WorkerPolicy(churn=Churn(hysteresis_s=0), reserve_after=0.0)
        assert policy.order == "sjf-request"
        q = JobQueue(a30.node())
        w = Worker(q, policy=policy)
        w.step()
        jobs = _jobs(a30)
        assert jobs[older]["reservation"] is not None and jobs[newer]["reservation"] is None, jobs
        assert reservations.older_job(q.conn, q.key, time.time() + 1, time.time()) == older
    finally:
        holder.kill()
        holder.wait()


def test_worker_reshapes_for_a_queued_mps_job(a30: SimEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shared job (``submit --isolation soft``) that fits nowhere gets a device by reshaping too."""
    import shutil
    import tempfile

    short = tempfile.mkdtemp(prefix="md")  # the MPS control socket's path (under the state dir) must stay short
    a30.env["MIGCTL_STATE_DIR"] = short
    monkeypatch.setenv("MIGCTL_STATE_DIR", short)
    try:
        a30.layout(0, ["1g.6gb"] * 4)
        jid = _submit(a30, "--isolation", "soft", "--share", "2", "--profile", "2g.12gb", "--", "sh", "-c",
                      "echo $CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")
        r = a30.migctl("worker", "--until-idle", "--hysteresis", "0")
        assert r.returncode == 0, r.stderr
        assert f"job {jid}: reshaped GPU 0: destroyed idle" in r.stderr and "started as MPS client" in r.stderr
        assert _jobs(a30)[jid]["state"] == "done"
        assert a30.migctl("logs", str(jid)).stdout.strip() == "50"
        assert sorted(p for p, _ in _gis(a30)) == ["1g.6gb", "1g.6gb", "2g.12gb"]
    finally:
        shutil.rmtree(short, ignore_errors=True)


def test_an_idle_gi_without_a_full_size_device_is_reshaped(a30: SimEnv) -> None:
    """A 2g.12gb GI whose only compute instance is 1c.2g.12gb offers no ``2g.12gb`` device: it is not "a
    free fitting device", so reshaping replaces it (one destroy) rather than waiting for it forever."""
    from migctl.jobs.reshape import Churn, try_reshape

    node = a30.node()
    g = node.gpu(0)
    g.create_gi(g.profile("2g.12gb").id).create_ci(0)  # CI profile 0: one slice (1c.2g.12gb)
    a30.layout(0, ["1g.6gb", "1g.6gb"])
    assert _gis(a30) == [("2g.12gb", 0), ("1g.6gb", 2), ("1g.6gb", 3)]
    before = time.time()
    out = try_reshape(node, Request(profile="2g.12gb"), Churn(hysteresis_s=0))
    assert out.done and out.note == "reshaped GPU 0: destroyed idle 2g.12gb@0; created 2g.12gb@0", out
    gi0 = next(x for x in read_gpu(a30.node().gpu(0)).gis if x.start == 0)
    assert [c.profile for c in gi0.cis] == ["2g.12gb"]
    conn = sqlite3.connect(str(db_path()))
    (since,) = conn.execute("SELECT since FROM idle_since WHERE uuid=?", (gi0.cis[0].uuid,)).fetchone()
    conn.close()
    assert since >= before  # idle from its creation (the hysteresis counts from there)


def test_global_options_after_the_new_value_options(a30: SimEnv) -> None:
    """``--sim-state`` after ``--hysteresis S`` / ``--time-limit D`` is still migctl's, not the command's."""
    a30.layout(0, ["1g.6gb"])
    r = a30.migctl("run", "--reshape", "--hysteresis", "0", "--max-reconfig-per-min", "5", "--sim-state",
                   str(a30.state), "--no-wait", "--profile", "1g.6gb", "--", "true")
    assert r.returncode == 0, r.stderr
    r = a30.migctl("submit", "--time-limit", "5m", "--sim-state", str(a30.state), "--profile", "1g.6gb", "--", "true")
    assert r.returncode == 0, r.stderr
    assert _jobs(a30)[int(r.stdout)]["time_limit"] == 300
