"""`migctl run`: leasing, CUDA_VISIBLE_DEVICES, exit codes, signals, dynamic creation, kill -9 reclaim."""

from __future__ import annotations

import os
import re
import shlex
import signal
import sqlite3
import sys
from pathlib import Path

import pynvml
import pytest

from conftest import SimEnv, make_env, wait_for
from migctl.jobs import JobsError, LeaseManager, Request, parse_mem
from migctl.jobs.common import db_path

UUID = re.compile(r"MIG-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def test_parse_mem() -> None:
    assert parse_mem("12GiB") == 12 * 1024
    assert parse_mem("20gb") == 20 * 1024
    assert parse_mem("500MiB") == 500
    assert parse_mem("3") == 3 * 1024
    with pytest.raises(JobsError):
        parse_mem("lots")
    # a 400-digit size was an OverflowError traceback; other scripts' digits were read as theirs
    for bad in ("9" * 400, "\u0661\u0660GB", "1_0GB"):
        with pytest.raises(JobsError, match="cannot parse memory size"):
            parse_mem(bad)


def test_durations_are_ascii_digits() -> None:
    """`submit --time-limit ١h` queued a job with a one-hour limit."""
    from migctl.jobs.limits import parse_duration

    assert parse_duration("1h30m") == 5400
    for bad in ("\u0661h", "1h\u0663\u0660m", "\uff11\uff10"):
        with pytest.raises(JobsError, match="cannot parse duration"):
            parse_duration(bad)


def test_run_exactly_one_uuid_and_exit_code(a30: SimEnv) -> None:
    (uuid,) = a30.layout(0, ["1g.6gb"])
    r = a30.migctl("run", "--profile", "1g.6gb", "--", "sh", "-c", 'echo "CVD=$CUDA_VISIBLE_DEVICES"; exit 7')
    assert r.returncode == 7, r.stderr
    assert r.stdout.strip() == f"CVD={uuid}"
    assert LeaseManager(a30.node()).leases() == []  # released


def test_run_killed_by_signal_exits_128_plus_n(a30: SimEnv) -> None:
    a30.layout(0, ["1g.6gb"])
    r = a30.migctl("run", "--", "sh", "-c", "kill -KILL $$")
    assert r.returncode == 128 + 9


def test_smallest_fitting_existing_device_is_chosen(a30: SimEnv) -> None:
    big, small = a30.layout(0, ["2g.12gb", "1g.6gb"])
    r = a30.migctl("run", "--mem", "4GiB", "--no-create", "--", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES")
    assert r.stdout.strip() == small
    r = a30.migctl("run", "--mem", "8GiB", "--no-create", "--", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES")
    assert r.stdout.strip() == big


def test_dynamic_creation_keep_and_ephemeral(a30: SimEnv) -> None:
    n = a30.node()
    assert n.gpu(0).mig_devices() == []
    r = a30.migctl("run", "--profile", "2g.12gb", "--keep", "--", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES")
    assert r.returncode == 0, r.stderr
    kept = r.stdout.strip()
    assert [d.uuid for d in n.gpu(0).mig_devices()] == [kept]
    # the kept instance is reused, an ephemeral one is created next to it and destroyed afterwards
    r = a30.migctl("run", "--profile", "2g.12gb", "--", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES")
    assert r.stdout.strip() == kept
    r = a30.migctl("run", "--profile", "1g.6gb", "--ephemeral", "--", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES")
    assert r.returncode == 0, r.stderr
    assert UUID.fullmatch(r.stdout.strip()) and r.stdout.strip() != kept
    assert [d.uuid for d in n.gpu(0).mig_devices()] == [kept]


def test_creation_uses_the_placement_rule_that_strands_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    """A 3g.40gb next to the driver's three 1g.10gb (at 4, 5 and 6) on the fullest GPU could only go to
    start 0 and would strand memory slice 7 (no 1g.10gb placement there): migctl's rule puts it on the
    empty GPU instead, at an explicit placement."""
    env = make_env(tmp_path, monkeypatch, "2xA100-80GB")
    env.layout(0, ["1g.10gb"] * 3)
    n = env.node()
    assert sorted(gi.placement.start for gi in n.gpu(0).gpu_instances()) == [4, 5, 6]
    r = env.migctl("run", "--profile", "3g.40gb", "--keep", "--", "true")
    assert r.returncode == 0, r.stderr
    assert len(n.gpu(0).gpu_instances()) == 3
    (gi,) = n.gpu(1).gpu_instances()
    assert (gi.profile().name, gi.placement.start) == ("3g.40gb", 4)


def test_a_created_3g_leaves_room_for_a_4g(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On an empty A100 a 3g.40gb at start 0 would leave four free memory slices where no 4g.40gb can go
    (its only placement is 0): `run --profile 4g.40gb` beside it must fit."""
    env = make_env(tmp_path, monkeypatch, "1xA100-80GB")
    inner = f"{shlex.quote(sys.executable)} -m migctl.cli.main run --profile 4g.40gb --wait 5 -- true"  # (PATH-free)
    r = env.migctl("run", "--profile", "3g.40gb", "--", "sh", "-c", inner)
    assert r.returncode == 0, r.stderr
    gis = {gi.profile().name: gi.placement.start for gi in env.node().gpu(0).gpu_instances()}
    assert gis == {"3g.40gb": 4, "4g.40gb": 0}


def test_timeout_says_what_would_help(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No room on GPU 0 (two idle 2g.12gb) and GPU 1 not in MIG mode: the timeout of a run (exclusive or
    shared) names both ways out, and `--reshape` (which the message suggests) then makes room."""
    env = make_env(tmp_path, monkeypatch, "2xA30")
    env.layout(0, ["2g.12gb", "2g.12gb"])
    r = env.migctl("mode", "disable", "-i", "1")
    assert r.returncode == 0, r.stderr
    r = env.migctl("run", "--profile", "1g.6gb", "--wait", "0.5", "--", "true")
    assert r.returncode == 75, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert "2 idle MIG device(s) that do not fit it: `--reshape`" in line, line
    assert "GPU 1 not in MIG mode (`migctl mode enable -i 1`)" in line, line
    r = env.migctl("run", "--profile", "1g.6gb", "--no-create", "--wait", "0.5", "--", "true")
    assert r.returncode == 2 and "--reshape" not in r.stderr, r.stderr  # it would not create anyway
    assert r.stderr.strip().splitlines()[-1] == (
        "migctl: error: no MIG device of profile 1g.6gb exists and --no-create forbids creating one (devices "
        "here: 2g.12gb, 2g.12gb); valid: without --no-create, or create one first (migctl gi create 1g.6gb -C)")
    # the same for a shared run (MPS client): it used to print a bare "no shared device had room" line
    r = env.migctl("run", "--profile", "1g.6gb", "--isolation", "soft", "--share", "2", "--wait", "0.5", "--", "true")
    assert r.returncode == 75, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("migctl: error: no shared device had room for profile 1g.6gb in time; waited 0.5s; "
                           "2 idle MIG device(s) that do not fit it: `--reshape`"), line
    assert "GPU 1 not in MIG mode" in line, line
    r = env.migctl("run", "--profile", "1g.6gb", "--reshape", "--wait", "5", "--", "true")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("limit_b", ["3h", None])
def test_queued_job_with_a_time_limit_goes_where_it_delays_no_drain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    limit_b: str | None) -> None:
    """Two GPUs, each with one busy 1g.10gb: job A on GPU 0 ends within 100 s, job B on GPU 1 in 3 h (or has no
    limit: never known). A job limited to 1 h goes to GPU 1, where it does not push back the time the GPU
    empties; GPU 0 empties soon for a large request. (Without time limits the rule's tie-break is GPU 0.)"""
    env = make_env(tmp_path, monkeypatch, "2xA100-80GB")
    gate = tmp_path / "gate"
    hold = ["--", "sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.1; done"]

    def submit(*args: str) -> int:
        r = env.migctl("submit", "--profile", "1g.10gb", *args)
        assert r.returncode == 0, r.stderr
        return int(r.stdout)

    def jobs() -> dict[int, dict]:
        from migctl.jobs.queue import JobQueue

        return {j.id: j.to_json() for j in JobQueue(env.node()).list()}

    def gpu_of(uuid: str) -> int:
        return next(i for i in (0, 1) if uuid in {d.uuid for d in env.node().gpu(i).mig_devices()})

    w = env.popen("worker")
    try:
        a = submit("--gpu", "0", "--time-limit", "100", *hold)
        wait_for(lambda: jobs()[a]["state"] == "running", what="job A running")
        b = submit("--gpu", "1", *(("--time-limit", limit_b) if limit_b else ()), *hold)
        wait_for(lambda: jobs()[b]["state"] == "running", what="job B running")
        c = submit("--time-limit", "1h", "--", "true")
        wait_for(lambda: jobs()[c]["state"] == "done", what="job C done")
        assert [gpu_of(jobs()[j]["mig_uuid"]) for j in (a, b, c)] == [0, 1, 1]
        gate.touch()
        wait_for(lambda: {jobs()[j]["state"] for j in (a, b)} == {"done"}, what="jobs A and B done")
    finally:
        gate.touch()
        w.terminate()
        w.wait(20)


def test_creation_never_touches_busy_instances(a30: SimEnv) -> None:
    """A 4g.24gb request on an A30 with a busy 1g: no room, so it fails rather than destroying anything."""
    (uuid,) = a30.layout(0, ["1g.6gb"])
    holder = a30.popen("run", "--profile", "1g.6gb", "--", "sh", "-c", "echo up; sleep 20")
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "up"
        r = a30.migctl("run", "--profile", "4g.24gb", "--no-wait", "--", "true")
        assert r.returncode == 75
        assert "no free MIG device" in r.stderr and "4g.24gb" in r.stderr
        assert [d.uuid for d in a30.node().gpu(0).mig_devices()] == [uuid]
    finally:
        holder.kill()
        holder.wait()


def test_child_counts_as_client_and_blocks_destroy(a30: SimEnv) -> None:
    a30.layout(0, ["1g.6gb"])
    mark = a30.tmp / "up"
    p = a30.popen("run", "--", "sh", "-c", f"echo $$ > {mark}; sleep 20")
    try:
        pid = int(wait_for(lambda: mark.exists() and mark.read_text().strip(), what="child start"))
        n = a30.node()
        g = n.gpu(0)
        (d,) = g.mig_devices()
        assert [x.pid for x in d.processes()] == [pid]  # the user's command itself (exec keeps the PID)
        gi = g.gpu_instances()[0]
        with pytest.raises(pynvml.NVMLError_InUse):
            gi.compute_instances()[0].destroy()
        os.kill(p.pid, signal.SIGTERM)  # forwarded to the child
        assert p.wait(60) == 128 + signal.SIGTERM
        assert d.processes() == []
    finally:
        if p.poll() is None:
            p.kill()


def test_sigterm_forwarded_child_exit_code_propagates(a30: SimEnv) -> None:
    a30.layout(0, ["1g.6gb"])
    code = ("import signal,sys,time\n"
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(42))\n"
            "print('ready', flush=True)\n"
            "time.sleep(30)\n")
    p = a30.popen("run", "--", "python3", "-c", code)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGTERM)
    assert p.wait(60) == 42
    # a single process (a shell could take the signal between `echo` and forking `sleep` and defer it)
    p2 = a30.popen("run", "--", "python3", "-c", "import time; print('ready', flush=True); time.sleep(30)")
    assert p2.stdout is not None and p2.stdout.readline().strip() == "ready"
    p2.send_signal(signal.SIGINT)
    assert p2.wait(60) == 128 + signal.SIGINT


def test_sigkill_runner_lease_reclaimed(a30: SimEnv) -> None:
    """kill -9 of the runner: its command dies with it, and the lease is reclaimed by PID liveness."""
    (uuid,) = a30.layout(0, ["4g.24gb"])  # the only device; no room for another
    mark = a30.tmp / "child"
    p = a30.popen("run", "--", "sh", "-c", f"echo $$ > {mark}; exec sleep 30")
    child = int(wait_for(lambda: mark.exists() and mark.read_text().strip(), what="child start"))
    r = a30.migctl("run", "--no-wait", "--", "true")
    assert r.returncode == 75 and "no free MIG device" in r.stderr
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    wait_for(lambda: not _alive(child), what="child to die with its runner")
    rows = sqlite3.connect(db_path()).execute("SELECT uuid, pid FROM leases").fetchall()
    assert rows == [(uuid, p.pid)]  # the stale row is still there...
    r = a30.migctl("run", "--no-wait", "--", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES")
    assert r.returncode == 0, r.stderr  # ...and reclaimed by the next runner
    assert r.stdout.strip() == uuid


def test_reused_pid_is_stale(a30: SimEnv) -> None:
    """A lease whose PID exists but started at another time (PID reuse) is reclaimed."""
    a30.layout(0, ["4g.24gb"])
    m = LeaseManager(a30.node())
    lease = m.try_acquire(Request(), pid=os.getpid(), pid_start=12345.0)
    assert lease is not None
    assert m.try_acquire(Request(create=False)) is not None  # our PID, but not our start time: stale


def test_unsatisfiable_requests_fail_at_once(a30: SimEnv) -> None:
    r = a30.migctl("run", "--profile", "7g.80gb", "--", "true")
    assert r.returncode == 2 and "no GPU offers MIG profile '7g.80gb'" in r.stderr and "1g.6gb" in r.stderr
    r = a30.migctl("run", "--mem", "100GiB", "--", "true")
    assert r.returncode == 2 and "can hold" in r.stderr
    r = a30.migctl("run", "--gpu", "3", "--", "true")
    assert r.returncode == 2 and "GPU 3 does not exist" in r.stderr
    r = a30.migctl("run", "--profile", "1g.6gb")
    assert r.returncode == 2 and "no command" in r.stderr


@pytest.mark.parametrize("at", [1, 2])
def test_a_device_failure_is_exit_1_not_impossible(a30: SimEnv, at: int) -> None:
    """NVML failing the run's instance creation (its GI, or the CI after the GI) is one line and exit 1 (the
    device failed), not 2 (the request can never be satisfied; a wrapper would stop retrying), and the GI a
    failed CI leaves is rolled back; the same run then succeeds."""
    a30.node().sim.inject_fault(at)
    r = a30.migctl("run", "--profile", "1g.6gb", "--", "true")
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("migctl: error: NVML: Unknown Error"), r.stderr
    assert a30.node().gpu(0).gpu_instances() == []
    a30.node().sim.inject_fault(None)
    assert a30.migctl("run", "--profile", "1g.6gb", "--", "true").returncode == 0


def test_a_release_that_fails_keeps_the_commands_exit_status(shared: SimEnv, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The jobs database or the disk fails as the run lets its device go (a full disk: ``database or disk is
    full``; an MPS client list that cannot be written): the run still returns its command's own exit status,
    with one warning line, and what it left is reclaimed once the command has ended. Before, a command that
    exited 7 made ``migctl run`` exit 2 with ``migctl: error: ... database or disk is full``."""
    import errno

    from migctl.jobs import mps, runner
    from migctl.jobs import shared as shared_mod
    from migctl.jobs.mps import Sharing

    a30 = shared
    a30.layout(0, ["1g.6gb", "1g.6gb"])

    def full(*_a: object, **_k: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(LeaseManager, "release", full)
    assert runner.run(a30.node(), ["sh", "-c", "exit 7"], Request(profile="1g.6gb")) == 7
    err = capsys.readouterr().err
    assert err.count("migctl: warning: releasing MIG-") == 1 and "database or disk is full" in err, err
    monkeypatch.undo()
    assert LeaseManager(a30.node()).leases() == []  # its holder has ended: the row went as stale

    def no_space(*_a: object, **_k: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(mps.MpsManager, "leave", no_space)
    sharing = Sharing(isolation="soft", share=2)
    assert shared_mod.run_shared(a30.node(), ["sh", "-c", "exit 5"], Request(profile="1g.6gb"), sharing=sharing) == 5
    err = capsys.readouterr().err
    assert err.count("migctl: warning: releasing MIG-") == 1 and "No space left on device" in err, err
    monkeypatch.undo()
    assert mps.shared_clients(a30.node()) == []  # the client has ended: it no longer counts
    assert len(shared_mod.sweep(a30.node())) == 1  # and the daemon it could not stop goes with the next sweep


def test_wait_then_run_when_device_frees(a30: SimEnv) -> None:
    """A run waits while the device is held and runs once it frees; a wait that runs out is exit 75. The holder
    lets go when the test says (a gate file), not after a sleep: under load a waiter could start after a
    `sleep 3` holder had already ended, and never wait (seen once on 2026-12-03, with four test processes on
    two cores)."""
    a30.layout(0, ["4g.24gb"])
    gate = a30.tmp / "release"
    hold = ["run", "--", "sh", "-c", f"echo up; while [ ! -e {gate} ]; do sleep 0.05; done"]
    holder = a30.popen(*hold)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "up"  # it holds its lease
    waiter = a30.popen("run", "--wait", "60", "--", "true")
    assert waiter.stderr is not None
    said = waiter.stderr.readline()  # the waiter says it waits before the holder lets go
    assert "waiting for a free MIG device" in said, said
    gate.touch()
    _, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, err
    holder.wait(timeout=60)
    gate.unlink()
    holder = a30.popen(*hold)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "up"
    r = a30.migctl("run", "--wait", "0.5", "--", "true")
    assert r.returncode == 75 and "waited 0.5s" in r.stderr
    gate.touch()
    holder.wait(timeout=60)


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
