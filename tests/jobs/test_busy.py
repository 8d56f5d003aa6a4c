"""One authority for "busy" and one lock order (issue 9), attacked with real processes.

Runs, queued jobs, workers and applies run as separate `migctl` processes on one simulated node; the
simulator's delayed registration (`migctl sim client-delay`) makes a client appear in NVML only seconds
after it starts, as a CUDA process does on a real GPU.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SimEnv, wait_for
from migctl.jobs import LeaseManager
from migctl.jobs.common import db_path

SMALL = {"version": "v1", "mig-configs": {
    "small": [{"devices": "all", "mig-enabled": True, "mig-devices": {"1g.6gb": 4}}],
    "big": [{"devices": "all", "mig-enabled": True, "mig-devices": {"4g.24gb": 1}}],
    "two": [{"devices": "all", "mig-enabled": True, "mig-devices": {"2g.12gb": 2}}],
}}


def _config(env: SimEnv) -> Path:
    p = env.tmp / "mig.json"
    p.write_text(json.dumps(SMALL))
    return p


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _slow_hooks(env: SimEnv, seconds: float, hook: str = "pre-apply-config") -> Path:
    p = env.tmp / "hooks.json"
    p.write_text(json.dumps({"version": "v1", "hooks": {hook: [
        {"command": "/bin/sh", "args": ["-c", f"sleep {seconds}"]}]}}))
    return p


def test_apply_refuses_a_leased_device_whose_client_is_not_yet_in_nvml(a30: SimEnv) -> None:
    assert a30.migctl("sim", "client-delay", "60").returncode == 0  # the client stays invisible to NVML
    cfg = _config(a30)
    assert a30.migctl("apply", "-f", str(cfg), "-c", "big", "-q").returncode == 0
    (uuid,) = [d.uuid for d in a30.node().gpu(0).mig_devices()]
    mark = a30.tmp / "cvd"
    p = a30.popen("run", "--", "sh", "-c", f"echo $CUDA_VISIBLE_DEVICES > {mark}; exec sleep 60")
    try:
        wait_for(lambda: mark.exists() and mark.read_text().strip(), what="the run to start")
        assert mark.read_text().strip() == uuid
        assert a30.node().gpu(0).processes() == []  # NVML does not list it (delayed registration)
        r = a30.migctl("apply", "-f", str(cfg), "-c", "small")
        assert r.returncode == 3, r.stdout + r.stderr
        assert "refusing to destroy instances in use" in r.stderr and "Traceback" not in r.stderr
        assert [d.uuid for d in a30.node().gpu(0).mig_devices()] == [uuid]
        # --force signals the lease holder (visible here), which forwards to its command
        r = a30.migctl("apply", "-f", str(cfg), "-c", "small", "--force", "-q")
        assert r.returncode == 0, r.stderr
        assert p.wait(timeout=60) != 0
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
    assert sorted(d.profile_name for d in a30.node().gpu(0).mig_devices()) == ["1g.6gb"] * 4


def test_instances_an_apply_creates_are_not_leasable_before_it_commits(a30: SimEnv) -> None:
    """Runs started during an apply that then fails: rollback restores the old layout (never blocked by a
    lease on an instance the apply made), and the runs get old-layout devices afterwards."""
    cfg = _config(a30)
    assert a30.migctl("apply", "-f", str(cfg), "-c", "two", "-q").returncode == 0
    old = a30.node().gpu(0).mig_devices()
    old_layout = sorted((d.profile_name, d.gi_id) for d in old)
    hooks = _slow_hooks(a30, 1.5)
    a30.node().sim.inject_fault(6)  # destroy 2 CIs + 2 GIs, create GI + CI, then: the 7th op fails
    ap = a30.popen("apply", "-f", str(cfg), "-c", "small", "-k", str(hooks), "-q")
    wait_for(lambda: any(Path(a30.env["MIGCTL_STATE_DIR"]).glob("apply-*.lock.owner")), what="apply to lock")
    log = a30.tmp / "runs.log"
    runs = [a30.popen("run", "--profile", p, "--wait", "60", "--", "sh", "-c",
                      f"echo $CUDA_VISIBLE_DEVICES >> {log}") for p in ("2g.12gb",) * 3]
    assert ap.wait(timeout=60) == 5
    err = ap.stderr.read() if ap.stderr else ""
    assert "rolled back" in err and "rollback failed" not in err, err
    rcs = [r.wait(timeout=60) for r in runs]
    now = a30.node().gpu(0).mig_devices()
    assert sorted((d.profile_name, d.gi_id) for d in now) == old_layout  # the old layout
    used = log.read_text().split()
    assert rcs == [0, 0, 0] and set(used) <= {d.uuid for d in now}, (rcs, used)


def test_sigkill_of_a_queued_jobs_wrapper_keeps_its_device_until_the_command_ends(a30: SimEnv) -> None:
    (uuid,) = a30.layout(0, ["4g.24gb"])  # the only device, no room for another
    log = a30.tmp / "ev.log"
    body = 'echo "start {n} $(date +%s.%N)" >> {log}; sleep {t}; echo "end {n} $(date +%s.%N)" >> {log}'
    a = a30.migctl("submit", "--", "sh", "-c", body.format(n="A", log=log, t=6))
    assert a.returncode == 0, a.stderr
    w = a30.popen("worker")
    try:
        ja = int(a.stdout)
        pid = wait_for(lambda: _child_pid(ja), what="job A to run")
        wait_for(lambda: log.exists() and "start A" in log.read_text(), what="A's command to start")
        os.kill(pid, signal.SIGKILL)  # the wrapper, which held the lease; its command runs on
        b = a30.migctl("submit", "--", "sh", "-c", body.format(n="B", log=log, t=0))
        wait_for(lambda: "end B" in log.read_text(), timeout=30, what="job B to run")
        ev = {e.split()[0] + e.split()[1]: float(e.split()[2]) for e in log.read_text().splitlines()}
        assert ev["startB"] >= ev["endA"], f"B started on {uuid} while A still ran: {ev}"
        assert _job(a30, int(b.stdout))["state"] == "done"
        assert _job(a30, ja)["state"] == "failed"  # its wrapper was killed: no exit status
    finally:
        w.send_signal(signal.SIGTERM)
        w.wait(timeout=20)


def _child_pid(jid: int) -> int | None:
    conn = sqlite3.connect(db_path(), timeout=10)
    try:
        row = conn.execute("SELECT child_pid FROM jobs WHERE id=? AND state='running'", (jid,)).fetchone()
    finally:
        conn.close()
    return int(row[0]) if row and row[0] else None


def _job(env: SimEnv, jid: int) -> dict:
    r = env.migctl("jobs", "--all", "--json")
    return next(j for j in json.loads(r.stdout)["jobs"] if j["id"] == jid)


def test_sigkill_of_run_keeps_the_lease_while_its_process_group_runs(a30: SimEnv) -> None:
    a30.layout(0, ["4g.24gb"])
    mark, gate = a30.tmp / "bg", a30.tmp / "gate"
    # the command forks a background worker in its process group (it runs until the gate file appears),
    # then the runner is killed
    bg_loop = f"for _ in $(seq 2400); do [ -e {gate} ] && break; sleep 0.05; done"  # bounded: 2 min at most
    p = a30.popen("run", "--", "sh", "-c", f"({bg_loop}) & echo $! > {mark}; wait")
    try:
        bg = int(wait_for(lambda: mark.exists() and mark.read_text().strip(), what="background child"))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        assert _alive(bg)
        r = a30.migctl("run", "--no-wait", "--", "true")
        assert r.returncode == 75 and "no free MIG device" in r.stderr, r.stderr
        assert [x.pid for x in LeaseManager(a30.node()).leases()] == [p.pid]
        assert _alive(bg)
    finally:
        gate.touch()  # the background child ends (also when an assertion above failed)
    wait_for(lambda: not _alive(bg), timeout=60, what="the background child to end")
    r = a30.migctl("run", "--no-wait", "--", "true")
    assert r.returncode == 0, r.stderr


def test_node_lock_is_never_awaited_inside_a_sqlite_write_transaction(a30: SimEnv) -> None:
    """Behind an apply with a slow hook: submit, leases and jobs answer at once; a waiting run holds no
    SQLite write lock; a run whose wait ends names the lock holder in one line."""
    a30.layout(0, ["1g.6gb"])
    cfg = _config(a30)
    gate = a30.tmp / "gate"  # the apply-start hook runs until the checks below are done (2 min at most)
    hooks = a30.tmp / "hooks.json"
    hooks.write_text(json.dumps({"version": "v1", "hooks": {"apply-start": [{"command": "/bin/sh", "args": [
        "-c", f"for _ in $(seq 2400); do [ -e {gate} ] && break; sleep 0.05; done"]}]}}))
    ap = a30.popen("apply", "-f", str(cfg), "-c", "small", "-k", str(hooks), "-q")
    wait_for(lambda: any(Path(a30.env["MIGCTL_STATE_DIR"]).glob("apply-*.lock.owner")), what="apply to lock")
    run = a30.popen("run", "--wait", "30", "--", "true")
    time.sleep(0.5)
    conn = sqlite3.connect(db_path(), timeout=0.5, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")  # would fail ("database is locked") if the waiting run held a write txn
    conn.execute("ROLLBACK")
    conn.close()
    env = {**a30.env, "MIGCTL_LOCK_WAIT": "1"}
    r = subprocess.run([sys.executable, "-m", "migctl.cli.main", "run", "--no-wait", "--", "true"], env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 75, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert f"PID {ap.pid} (migctl apply 'small', held" in r.stderr, r.stderr
    procs = [a30.popen(*args) for args in (("submit", "--profile", "1g.6gb", "--", "true"), ("leases",), ("jobs",))]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0 and "Traceback" not in err, (p.args, err)
    assert ap.poll() is None  # all of that while the apply still holds the node lock
    gate.touch()
    assert ap.wait(timeout=60) == 0
    assert run.wait(timeout=60) == 0  # it got a device once the apply committed


def test_crash_between_gi_and_ci_is_recovered_and_visible(a30: SimEnv) -> None:
    n = a30.node()
    crash_at = n.sim.op_count() + 2  # create GI = 1st mutating op, create CI = 2nd: die in between
    env = {**a30.env, "MIGCTL_SIM_CRASH_AT": str(crash_at)}
    r = subprocess.run([sys.executable, "-m", "migctl.cli.main", "run", "--profile", "2g.12gb", "--", "true"],
                       env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == -9
    gis = n.gpu(0).gpu_instances()
    assert len(gis) == 1 and gis[0].compute_instances() == []
    g = a30.migctl("gpus")
    assert "no compute instance" in g.stdout, g.stdout
    gj = json.loads(a30.migctl("gpus", "--json").stdout)
    assert gj["gpus"][0]["orphan_gis"][0]["gi_id"] == gis[0].id
    e = a30.migctl("export")
    assert e.returncode == 0 and "no compute instance" in e.stderr, e.stderr
    r = a30.migctl("recover")
    assert r.returncode == 0 and "left without a compute instance" in r.stdout, r.stdout
    assert n.gpu(0).gpu_instances() == []


def _killed_between_gi_and_ci(a30: SimEnv) -> Path:
    """Kill a `run` between creating its GI and its CI; the instance-creation record it leaves."""
    env = {**a30.env, "MIGCTL_SIM_CRASH_AT": str(a30.node().sim.op_count() + 2)}
    r = subprocess.run([sys.executable, "-m", "migctl.cli.main", "run", "--profile", "2g.12gb", "--", "true"],
                       env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == -9
    (record,) = Path(a30.env["MIGCTL_STATE_DIR"]).glob("create-*.json")
    return record


@pytest.mark.parametrize("content", ["5", "null", "{}", '{"gpu": "x", "start": 0, "profile_id": 14}',
                                     '{"gpu": 0}', '{"gpu": 99, "start": 0, "profile_id": 14}', "{not json"])
def test_a_damaged_instance_creation_record_is_removed_with_one_line(a30: SimEnv, content: str) -> None:
    """The record a run killed between GI and CI leaves behind, damaged: `recover` and the next run remove
    it with one line saying why and where a half-made instance shows (before: a traceback from every run,
    apply and recover for all but unparseable JSON; a record naming a GPU the node lacks stopped every run
    with "GPU 99 does not exist")."""
    record = _killed_between_gi_and_ci(a30)
    for verb in (("recover",), ("run", "--profile", "1g.6gb", "--no-wait", "--", "true")):
        record.write_text(content)
        r = a30.migctl(*verb)
        assert r.returncode == 0 and "Traceback" not in r.stderr, (verb, r.stdout + r.stderr)
        assert not record.exists(), verb
    r = a30.migctl("recover")
    assert r.returncode == 0 and "instance-creation record" not in r.stdout, r.stdout  # removed once
    assert json.loads(a30.migctl("gpus", "--json").stdout)["gpus"][0]["orphan_gis"]  # the half-made GI shows


def test_a_damaged_instance_creation_record_is_reported_by_recover(a30: SimEnv) -> None:
    record = _killed_between_gi_and_ci(a30)
    record.write_text('{"gpu": 99, "start": 0, "profile_id": 14}')
    r = a30.migctl("recover")
    assert r.returncode == 0, r.stderr
    assert (f"removed an unreadable instance-creation record {record} (it names GPU 99, which this node does "
            "not have); a GPU instance it may have left without a compute instance is listed by `migctl gpus`"
            in r.stdout), r.stdout


def test_crash_between_gi_and_ci_is_recovered_by_the_next_run(a30: SimEnv) -> None:
    a30.layout(0, ["2g.12gb"])
    n = a30.node()
    env = {**a30.env, "MIGCTL_SIM_CRASH_AT": str(n.sim.op_count() + 2)}
    r = subprocess.run([sys.executable, "-m", "migctl.cli.main", "run", "--profile", "2g.12gb", "--no-create",
                        "--", "sleep", "0"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0  # reused the existing one: nothing created
    hold = a30.popen("run", "--profile", "2g.12gb", "--", "sleep", "30")
    try:
        wait_for(lambda: LeaseManager(a30.node()).leases(), what="first lease")
        env = {**a30.env, "MIGCTL_SIM_CRASH_AT": str(n.sim.op_count() + 2)}
        r = subprocess.run([sys.executable, "-m", "migctl.cli.main", "run", "--profile", "2g.12gb", "--", "true"],
                           env=env, capture_output=True, text=True, timeout=30)
        assert r.returncode == -9
        assert any(not gi.compute_instances() for gi in n.gpu(0).gpu_instances())
        # without any recover: the next run cleans up the half-made instance and creates a whole one
        r = a30.migctl("run", "--profile", "2g.12gb", "--no-wait", "--", "true")
        assert r.returncode == 0, r.stderr
        assert all(gi.compute_instances() for gi in n.gpu(0).gpu_instances())
    finally:
        hold.kill()
        hold.wait()


@pytest.mark.skipif(subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                                   capture_output=True).returncode != 0,
                    reason="needs unshare(1) with PID namespaces (root)")
def test_force_refuses_pids_of_another_pid_namespace(a30: SimEnv) -> None:
    """A client registered from another PID namespace (as NVML reports host PIDs inside a container): its PID
    means nothing here, so --force names it and refuses, signalling nothing."""
    cfg = _config(a30)
    assert a30.migctl("apply", "-f", str(cfg), "-c", "big", "-q").returncode == 0
    (uuid,) = [d.uuid for d in a30.node().gpu(0).mig_devices()]
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "migctl.cli.main",
                        "sim", "add-client", "1", "--device", uuid], env=a30.env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    assert [p.pid for p in a30.node().gpu(0).processes()] == [1]  # PID 1 of that namespace, still "running"
    r = a30.migctl("apply", "-f", str(cfg), "-c", "small", "--force")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "cannot see in its own PID namespace" in r.stderr and "PID 1 (process) belongs to PID namespace" in r.stderr
    assert [d.uuid for d in a30.node().gpu(0).mig_devices()] == [uuid]


def test_instances_of_a_killed_apply_are_never_leased(a30: SimEnv) -> None:
    """An apply SIGKILLed after creating new instances: the next run rolls it back (under the node lock)
    before leasing, so it never leases the dead apply's instances, and `recover` has nothing left to do."""
    cfg = _config(a30)
    assert a30.migctl("apply", "-f", str(cfg), "-c", "two", "-q").returncode == 0
    n = a30.node()
    # 2 CIs + 2 GIs destroyed (4 ops), two 1g.6gb GI+CI created (8), SIGKILL at the 9th operation
    env = {**a30.env, "MIGCTL_SIM_CRASH_AT": str(n.sim.op_count() + 9)}
    r = subprocess.run([sys.executable, "-m", "migctl.cli.main", "apply", "-f", str(cfg), "-c", "small", "-q"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == -9
    assert [d.profile_name for d in n.gpu(0).mig_devices()] == ["1g.6gb", "1g.6gb"]  # the dead apply's
    r = a30.migctl("run", "--profile", "1g.6gb", "--no-create", "--no-wait", "--", "true")
    assert r.returncode == 75, r.stdout + r.stderr  # rolled back first: no 1g.6gb device is left to lease
    assert "migctl: note: rolled back the interrupted apply of 'small'" in r.stderr
    assert sorted(d.profile_name for d in n.gpu(0).mig_devices()) == ["2g.12gb", "2g.12gb"]
    r = a30.migctl("recover")
    assert r.returncode == 0 and "nothing to recover" in r.stdout, r.stdout + r.stderr


def test_crash_between_gi_and_ci_is_recovered_by_the_next_apply(a30: SimEnv) -> None:
    """A runner killed between creating a GI and its CI: the next `migctl apply` (no recover, no run) finishes
    or removes the half-made instance before it plans, and leaves no GI without a CI."""
    n = a30.node()
    env = {**a30.env, "MIGCTL_SIM_CRASH_AT": str(n.sim.op_count() + 2)}
    r = subprocess.run([sys.executable, "-m", "migctl.cli.main", "run", "--profile", "2g.12gb", "--", "true"],
                       env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == -9
    assert any(not gi.compute_instances() for gi in n.gpu(0).gpu_instances())  # the orphan GI
    r = a30.migctl("apply", "-f", str(_config(a30)), "-c", "small")
    assert r.returncode == 0, r.stdout + r.stderr
    gis = n.gpu(0).gpu_instances()
    assert gis and all(gi.compute_instances() for gi in gis)
