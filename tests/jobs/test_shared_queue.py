"""``migctl submit --isolation soft|none`` and batch files with share keys: queued jobs started by the worker as
MPS clients or time-sliced clients (jobs/shared.py's one admission-and-launch step), on the simulator with
the stand-in MPS control daemon, through the real CLI and real processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import SimEnv, stop_daemons_under, wait_for
from migctl.busy import busy_view
from migctl.jobs import batch
from migctl.jobs.common import JobsError
from migctl.jobs.leases import Request
from migctl.jobs.mps import MpsManager, Share, Sharing, sharing_options
from migctl.jobs.queue import JobQueue, Worker
from migctl.reconcile.live import read_gpu

# each job records its CUDA variables, then waits for its own go file (jobs run with the submitter's env)
SCRIPT = ('env | grep -E "^CUDA_(MPS|VIS)" | sort > "$D/env$MIGCTL_JOB_ID"; '
          'while [ ! -e "$D/go$MIGCTL_JOB_ID" ]; do sleep 0.05; done')
BIG = {"version": "v1", "mig-configs": {
    "small": [{"devices": "all", "mig-enabled": True, "mig-devices": {"1g.6gb": 4}}],
}}


def _short(se: SimEnv, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimEnv]:
    # the MPS control endpoint is a Unix socket: its path (under the state dir) must stay short
    short = tempfile.mkdtemp(prefix="mq")
    se.env["MIGCTL_STATE_DIR"] = short
    se.env["D"] = str(se.tmp)
    monkeypatch.setenv("MIGCTL_STATE_DIR", short)
    yield se
    stop_daemons_under(short)
    shutil.rmtree(short, ignore_errors=True)


@pytest.fixture
def whole(a30: SimEnv, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimEnv]:
    """The A30 as one 4g.24gb MIG device (no free space: a job that finds no room must wait)."""
    a30.layout(0, ["4g.24gb"])
    yield from _short(a30, monkeypatch)


@pytest.fixture
def l4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimEnv]:
    """One simulated NVIDIA L4: no MIG."""
    state = tmp_path / "sim.json"
    monkeypatch.setenv("MIGCTL_SIM", "1xL4")
    monkeypatch.setenv("MIGCTL_SIM_STATE", str(state))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "src") + os.pathsep + env.get("PYTHONPATH", "")
    yield from _short(SimEnv(spec="1xL4", state=state, env=env, tmp=tmp_path), monkeypatch)


def _submit(se: SimEnv, *opts: str, script: str = SCRIPT) -> int:
    r = se.migctl("submit", *opts, "--", "bash", "-c", script)
    assert r.returncode == 0, r.stderr
    return int(r.stdout)


def _job(se: SimEnv, jid: int) -> Any:
    return JobQueue(se.node()).get(jid)


def _env(se: SimEnv, jid: int) -> str:
    p = se.tmp / f"env{jid}"
    wait_for(lambda: p.exists() and p.read_text(), timeout=30, what=f"job {jid} to start")
    return p.read_text()


def _go(se: SimEnv, jid: int) -> None:
    (se.tmp / f"go{jid}").touch()


def _stop(p: subprocess.Popen[str]) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)


def test_submit_mps_two_clients_third_waits_apply_refuses(whole: SimEnv) -> None:
    se = whole
    (dev,) = se.node().gpu(0).mig_devices()
    half = dev.memory_mib // 2
    ids = [_submit(se, "--isolation", "soft", "--share", "2") for _ in range(3)]
    listing = se.migctl("jobs")
    assert listing.returncode == 0 and listing.stdout.count("mps 1/2") == 3
    w = se.popen("worker", "-q")
    try:
        envs = [_env(se, i) for i in ids[:2]]
        for e in envs:
            assert "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50\n" in e
            assert f"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0={half}M\n" in e
            assert f"CUDA_VISIBLE_DEVICES={dev.uuid}\n" in e
        jobs = json.loads(se.migctl("jobs", "--json").stdout)["jobs"]
        assert [(j["state"], j["isolation"], j["share"]) for j in jobs[:2]] == [("running", "soft", 2)] * 2
        assert jobs[2]["state"] in ("queued", "starting") and jobs[2]["pid"] is None  # (a pass may be trying it)
        assert jobs[0]["mig_uuid"] == jobs[1]["mig_uuid"] == dev.uuid
        gi = read_gpu(se.node().gpu(0)).gis[0]
        assert gi.busy and len(gi.pids) == 3  # the MPS server and the two job processes (the clients)
        (server,) = MpsManager(se.node()).servers(dev.uuid)
        cfg = se.tmp / "mig.json"
        cfg.write_text(json.dumps(BIG))
        r = se.migctl("apply", "-f", str(cfg), "-c", "small")
        assert r.returncode == 3 and "refusing to destroy instances in use" in r.stderr, r.stderr
        assert _job(se, ids[2]).child_pid is None  # no room: 2 x 50 % taken, and no free space to create
        _go(se, ids[0])
        third = _env(se, ids[2])  # starts once the first one ends, on the same device and daemon
        assert "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50\n" in third and dev.uuid in third
        assert _job(se, ids[0]).state == "done" and MpsManager(se.node()).servers(dev.uuid) == [server]
        _go(se, ids[1])
        _go(se, ids[2])
        wait_for(lambda: all(_job(se, i).state == "done" for i in ids), timeout=30, what="all jobs done")
    finally:
        for i in ids:
            _go(se, i)
        _stop(w)
    assert [(_job(se, i).state, _job(se, i).exit_code) for i in ids] == [("done", 0)] * 3
    assert read_gpu(se.node().gpu(0)).gis[0].pids == []  # the daemon stopped with the last client
    assert MpsManager(se.node()).servers(dev.uuid) == []


@pytest.mark.parametrize("isolation", ["soft", "none"])
def test_worker_sigkill_keeps_and_reaps_shared_clients(whole: SimEnv, isolation: str) -> None:
    """MPS and time-sliced jobs through submit; the worker dies with SIGKILL mid-run: the clients keep running
    (and the device), a restarted worker reaps the one that ended meanwhile, adopts the other; a cancelled
    job and one killed outright are released too, and the device is free after the last."""
    se = whole
    (dev,) = se.node().gpu(0).mig_devices()
    q = JobQueue(se.node())  # (queued in-process to keep the test short; the CLI path is tested above)
    ids = [q.submit(["bash", "-c", SCRIPT], Request(), env={"D": str(se.tmp)}, sharing=Sharing(isolation, 2))
           for _ in range(3)]
    w = se.popen("worker", "-q")
    try:
        for i in ids[:2]:
            e = _env(se, i)
            assert f"CUDA_VISIBLE_DEVICES={dev.uuid}\n" in e
            assert ("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50\n" in e) == (isolation == "soft")
        assert _job(se, ids[2]).child_pid is None  # --share 2: no room for a third client
        # the busy authority names them (even before a CUDA context exists on a real GPU)
        ours = sorted(h.text() for h in busy_view(se.node()).of_device(0, dev.gi_id, dev.ci_id) if h.kind == "mps")
        if isolation == "none":
            assert ours == sorted(f"time-sliced client PID {_job(se, i).child_pid}" for i in ids[:2])
        else:  # the server, and the admitted clients whatever the daemon answers
            assert sorted(x for x in ours if x.startswith("MPS client")) == sorted(
                f"MPS client PID {_job(se, i).child_pid}" for i in ids[:2])
            assert len([x for x in ours if x.startswith("MPS server PID")]) == 1, ours
        os.kill(w.pid, signal.SIGKILL)
        w.wait()
        servers = MpsManager(se.node()).servers(dev.uuid)
        assert len(servers) == (isolation == "soft")  # the daemon outlives the worker, with its clients
        _go(se, ids[0])  # the first ends while no worker runs
        wait_for(lambda: _pid_gone(_job(se, ids[0]).child_pid), what="job 1's process to end")
        assert _job(se, ids[1]).state == "running"
        w = se.popen("worker", "-q")
        third = _env(se, ids[2])  # the restarted worker reaped job 1 and admitted job 3 in its place
        assert dev.uuid in third
        assert (_job(se, ids[0]).state, _job(se, ids[0]).exit_code) == ("done", 0)
        assert _job(se, ids[1]).state == "running"  # adopted, not restarted
        assert MpsManager(se.node()).servers(dev.uuid) == servers  # the same daemon throughout
        r = se.migctl("cancel", str(ids[1]))
        assert r.returncode == 0, r.stderr
        os.killpg(_job(se, ids[2]).child_pid, signal.SIGKILL)  # killed outright: no exit status
        wait_for(lambda: _job(se, ids[2]).state == "failed" and _job(se, ids[1]).exit_code is not None,
                 timeout=30, what="both reaped")
        wait_for(lambda: not MpsManager(se.node()).clients(dev.uuid) and not read_gpu(se.node().gpu(0)).gis[0].pids,
                 what="the device to be free")
    finally:
        for i in ids:
            _go(se, i)
        _stop(w)
    assert _job(se, ids[1]).state == "cancelled"
    assert (_job(se, ids[2]).state, _job(se, ids[2]).exit_code) == ("failed", 128 + signal.SIGKILL)
    assert MpsManager(se.node()).servers(dev.uuid) == []


def _pid_gone(pid: int | None) -> bool:
    from migctl.proc import pid_alive

    return not pid_alive(pid)


def test_worker_restart_stops_an_orphaned_daemon(whole: SimEnv) -> None:
    """A client admitted but never started (its worker died in between) leaves a daemon with no live client:
    the next worker's recovery stops it."""
    se = whole
    node = se.node()
    (dev,) = node.gpu(0).mig_devices()
    m = MpsManager(node)
    p = subprocess.Popen(["sleep", "60"])
    import psutil

    m.admit(dev.uuid, Share.of(2, dev.memory_mib), dev.memory_mib, p.pid, psutil.Process(p.pid).create_time())
    assert len(m.servers(dev.uuid)) == 1
    p.kill()
    p.wait()
    w = Worker(JobQueue(node))
    assert w.acquire()
    w.release()
    assert m.servers(dev.uuid) == [] and read_gpu(node.gpu(0)).gis[0].pids == []


def test_submit_sharing_bad_input_queues_nothing(whole: SimEnv) -> None:
    se = whole
    for opts, msg in [
        (("--share", "2"), "--share needs --isolation soft (MPS) or none"),
        (("--isolation", "soft", "--share", "2", "--threads", "50"), "not both"),
        (("--isolation", "soft", "--mps-mem", "lots"), "--mps-mem: cannot parse memory size"),
    ]:
        r = se.migctl("submit", *opts, "--", "true")
        assert r.returncode == 2, (opts, r.stderr)
        assert r.stderr.startswith("migctl: error: ") and msg in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert json.loads(se.migctl("jobs", "--all", "--json").stdout)["jobs"] == []
    # the rest of the rules: the one validation that run, submit and batch files call
    for kw, msg in [
        (dict(isolation="medium"), "--isolation must be hard, soft or none, not 'medium'"),
        (dict(isolation="soft", share=0), "--share '0' is out of range; valid: 1..100"),
        (dict(isolation="none", threads=50), "--threads and --mps-mem are MPS limits"),
        (dict(isolation="soft", threads=101), "--threads '101' is out of range; valid: 1..100"),
        (dict(isolation="soft", ephemeral=True), "--ephemeral needs --isolation hard"),
        (dict(isolation="soft", mps_mem="0MiB"), "--mps-mem must be at least 1 MiB"),
        (dict(isolation="hard", threads=5, mps_mem="1G"), "--threads, --mps-mem need --isolation soft"),
    ]:
        with pytest.raises(JobsError, match=re.escape(msg)) as e:
            sharing_options(**kw)  # type: ignore[arg-type]
        assert e.value.exit_code == 2
    assert sharing_options("soft", threads=30, mps_mem="2G") == Sharing("soft", None, 30, 2048)


def test_submit_on_a_gpu_without_mig(l4: SimEnv) -> None:
    se = l4
    gpu = se.node().gpu(0)
    r = se.migctl("submit", "--isolation", "hard", "--", "true")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "no MIG" in r.stderr and "NVIDIA L4" in r.stderr and "--isolation soft" in r.stderr
    r = se.migctl("run", "--", "true")  # run says the same
    assert r.returncode == 2 and "no MIG" in r.stderr
    r = se.migctl("submit", "--isolation", "soft", "--profile", "1g.6gb", "--", "true")  # no MIG device to share
    assert r.returncode == 2 and "no device fits profile 1g.6gb" in r.stderr and r.stderr.count("\n") == 1
    jid = _submit(se, "--isolation", "soft", "--threads", "25", "--mps-mem", "4GiB", script=SCRIPT.split(";")[0])
    r = se.migctl("worker", "--until-idle", "-q")
    assert r.returncode == 0, r.stderr
    e = (se.tmp / f"env{jid}").read_text()
    assert f"CUDA_VISIBLE_DEVICES={gpu.uuid}\n" in e and "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25\n" in e
    assert "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=4096M\n" in e
    j = _job(se, jid)
    assert (j.state, j.exit_code, j.mig_uuid) == ("done", 0, gpu.uuid)
    assert j.to_json()["threads"] == 25 and j.to_json()["mps_mem_mib"] == 4096
    assert gpu.processes() == []  # the daemon is gone with its client


def test_batch_with_share_keys(whole: SimEnv) -> None:
    se = whole
    (dev,) = se.node().gpu(0).mig_devices()
    rec = 'env | grep -E "^CUDA_(MPS|VIS)" | sort > "$D/b$NAME"; sleep 0.3'
    jobs = "\n".join(f"  - {{name: j{i}, command: '{rec}', env: {{NAME: '{i}'}}}}" for i in range(2))
    f = se.tmp / "jobs.yaml"
    f.write_text(f"defaults: {{isolation: soft, share: 2}}\njobs:\n{jobs}\n"
                 f"  - {{name: ts, command: 'true', isolation: none}}\n")
    r = se.migctl("batch", str(f))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(": done (exit 0)") == 3
    for i in range(2):
        e = (se.tmp / f"b{i}").read_text()
        assert "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50\n" in e and f"CUDA_VISIBLE_DEVICES={dev.uuid}\n" in e
    assert MpsManager(se.node()).servers(dev.uuid) == []
    for body, msg in [
        ("jobs:\n  - {command: 'true', share: 0, isolation: soft}\n", "job 1: 'share' '0' is out of range; valid: 1..100"),
        ("jobs:\n  - {name: x, command: 'true', isolation: none, threads: 5}\n", "x: 'threads' and 'mps_mem' are MPS"),
    ]:
        f.write_text(body)
        r = se.migctl("batch", str(f))
        assert r.returncode == 2 and msg in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert len(json.loads(se.migctl("jobs", "--all", "--json").stdout)["jobs"]) == 3  # nothing more queued
    for body, msg in [  # the same checks, through the loader the command calls
        ("jobs:\n  - {command: 'true', share: 2}\n", "job 1: 'share' needs 'isolation' soft (MPS) or none"),
        ("jobs:\n  - {command: 'true', isolation: firm}\n", "'isolation' must be hard, soft or none, not 'firm'"),
        ("jobs:\n  - {command: 'true', isolation: soft, mps_mem: many}\n", "'mps_mem': cannot parse memory size"),
        ("jobs:\n  - {command: 'true', isolation: soft, share: '2'}\n", "'share' '2' is not a whole number"),
    ]:
        f.write_text(body)
        with pytest.raises(JobsError, match=re.escape(msg)):
            batch.load(f)
    f.write_text("jobs:\n  - {command: 'true', isolation: soft, threads: 40, mps_mem: 3}\n")
    assert batch.load(f)[0]["sharing"] == Sharing("soft", None, 40, 3072)  # a bare number is GiB, as for mem
