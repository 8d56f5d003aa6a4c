"""MPS sharing (jobs/mps.py) through the stand-in nvidia-cuda-mps-control (sim/mps_control.py): one daemon
per device, admission by shares, the server as a process on the device (busy for apply), the daemon
stopped when the last client leaves; the control commands themselves."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from migctl.jobs.common import JobsError
from migctl.jobs.mps import MpsManager, Share, mechanism, shares_from
from migctl.reconcile.live import read_gpu


@pytest.fixture
def short_root() -> Iterator[Path]:
    # the control endpoint is a Unix socket: keep its path short (pytest's tmp_path can be long)
    d = Path(tempfile.mkdtemp(prefix="mps"))
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


def _sleeper() -> tuple[subprocess.Popen[bytes], float]:
    p = subprocess.Popen(["sleep", "60"])
    return p, psutil.Process(p.pid).create_time()


def test_two_half_shares_on_a_mig_device(a30: Any, short_root: Path) -> None:
    (uuid,) = a30.layout(0, ["2g.12gb"])
    node = a30.node()
    dev = node.find_mig_device(uuid)
    assert dev is not None
    m = MpsManager(node, root=short_root)
    (p1, s1), (p2, s2) = _sleeper(), _sleeper()
    try:
        env = m.admit(uuid, Share.of(2, dev.memory_mib), dev.memory_mib, p1.pid, s1)
        half = dev.memory_mib // 2
        assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "50"
        assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == f"0={half}M"
        pipe = Path(env["CUDA_MPS_PIPE_DIRECTORY"])
        assert (pipe / "control").exists() and oct(pipe.stat().st_mode & 0o777) == "0o700"
        servers = m.servers(uuid)
        assert len(servers) == 1
        # the server is a process on the MIG device: NVML lists it, so apply sees the instance as busy
        assert [p.pid for p in dev.processes()] == servers
        gi = [g for g in read_gpu(node.gpu(0)).gis if g.id == dev.gi_id][0]
        assert gi.busy
        m.admit(uuid, Share.of(2, dev.memory_mib), dev.memory_mib, p2.pid, s2)
        with pytest.raises(JobsError, match="0% of its threads") as e:
            m.admit(uuid, Share(threads=10, mem_mib=None), dev.memory_mib, os.getpid(), None)
        assert e.value.exit_code == 75
        assert m.servers(uuid) == servers  # one daemon, one server per device
        assert not m.leave(uuid, p1.pid)
        assert m.servers(uuid) == servers
        assert m.leave(uuid, p2.pid)  # the last client: the daemon is stopped
        assert m.servers(uuid) == [] and not (pipe / "control").exists()
        assert dev.processes() == []
        log = (pipe.parent / "log" / "control.log").read_text()
        assert "start_server -uid" in log and "Control daemon exited" in log
    finally:
        for p in (p1, p2):
            p.kill()
            p.wait()


def test_dead_clients_free_their_share(a30: Any, short_root: Path) -> None:
    (uuid,) = a30.layout(0, ["1g.6gb"])
    node = a30.node()
    dev = node.find_mig_device(uuid)
    assert dev is not None
    m = MpsManager(node, root=short_root)
    p1, s1 = _sleeper()
    m.admit(uuid, Share(threads=100, mem_mib=None), dev.memory_mib, p1.pid, s1)
    p1.kill()
    p1.wait()
    p2, s2 = _sleeper()
    try:
        m.admit(uuid, Share(threads=60, mem_mib=1000), dev.memory_mib, p2.pid, s2)
        assert [c["pid"] for c in m.clients(uuid)] == [p2.pid]
        assert m.leave(uuid, p2.pid)
    finally:
        p2.kill()
        p2.wait()


def _ctl(env: dict[str, str], *lines: str, daemon: bool = False) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "migctl.sim.mps_control"] + (["-d"] if daemon else [])
    return subprocess.run(args, input="\n".join(lines) + "\n", env=env, text=True, capture_output=True, timeout=60)


def test_stand_in_speaks_the_control_commands(a30: Any, short_root: Path) -> None:
    (uuid,) = a30.layout(0, ["4g.24gb"])
    env = dict(a30.env, CUDA_VISIBLE_DEVICES=uuid, CUDA_MPS_PIPE_DIRECTORY=str(short_root / "p"),
               CUDA_MPS_LOG_DIRECTORY=str(short_root / "l"))
    assert _ctl(env, "get_server_list").returncode == 1  # no daemon yet
    assert _ctl(env, daemon=True).returncode == 0
    assert _ctl(env, daemon=True).returncode == 1  # one daemon per pipe directory
    r = _ctl(env, "get_server_list")
    assert r.returncode == 0 and r.stdout.strip() == ""
    assert _ctl(env, "set_default_active_thread_percentage 40").stdout.strip() == "40.0"
    assert _ctl(env, "get_default_active_thread_percentage").stdout.strip() == "40.0"
    assert _ctl(env, "set_default_active_thread_percentage 140").returncode == 1
    assert _ctl(env, "set_default_device_pinned_mem_limit 0 2G").returncode == 0
    assert _ctl(env, "get_default_device_pinned_mem_limit 0").stdout.strip() == "2048M"
    assert "Unknown command" in _ctl(env, "frobnicate").stderr
    r = _ctl(env, f"start_server -uid {os.getuid()}", "get_server_list")
    (pid,) = [int(x) for x in r.stdout.split()]
    dev = a30.node().find_mig_device(uuid)
    assert dev is not None and [p.pid for p in dev.processes()] == [pid]
    assert _ctl(env, "quit").returncode == 0
    assert _ctl(env, "get_server_list").returncode == 1
    assert dev.processes() == []


def test_mechanism_and_share_requests() -> None:
    assert [mechanism(i) for i in ("hard", "soft", "none")] == ["mig", "mps", "timeslice"]
    with pytest.raises(JobsError, match="valid: hard, soft, none"):
        mechanism("medium")
    assert Share.of(3, 12000) == Share(threads=33, mem_mib=4000)
    with pytest.raises(JobsError, match="valid: 1..100"):
        Share.of(0, 12000)
    assert shares_from(25, None, None, 8000) == Share(threads=25, mem_mib=2000)
    assert shares_from(None, None, None, 8000) == Share(threads=100, mem_mib=None)
    with pytest.raises(JobsError, match="valid: 1..8000 MiB"):
        shares_from(50, 9000, None, 8000)


def test_mps_on_a_gpu_without_mig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, short_root: Path) -> None:
    from migctl.sim.plain_gpus import PLAIN_GPUS

    monkeypatch.setenv("MIGCTL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("MIGCTL_SIM", "2xL4")
    monkeypatch.setenv("MIGCTL_SIM_STATE", str(tmp_path / "sim.json"))
    from migctl.device import open_node

    node = open_node()
    gpu = node.gpu(1)
    assert gpu.name == "NVIDIA L4" and not gpu.mig_capable()
    total = gpu.memory_mib()[0]
    assert total == PLAIN_GPUS["L4"].memory_mib == 23034
    m = MpsManager(node, root=short_root)
    p, s = _sleeper()
    try:
        env = m.admit(gpu.uuid, Share.of(4, total), total, p.pid, s)
        assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"
        (server,) = m.servers(gpu.uuid)
        assert [x.pid for x in gpu.processes()] == [server]
        assert m.leave(gpu.uuid, p.pid) and gpu.processes() == []
    finally:
        p.kill()
        p.wait()


def test_busy_authority_counts_migctl_mps_servers(a30: Any, short_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An MPS server started by migctl is a holder of its own kind in migctl.busy (not only as an NVML process:
    on a real GPU the server may have no CUDA context yet)."""
    from migctl import busy

    monkeypatch.setenv("MIGCTL_STATE_DIR", str(short_root))
    (uuid,) = a30.layout(0, ["2g.12gb"])
    node = a30.node()
    dev = node.find_mig_device(uuid)
    assert dev is not None
    m = MpsManager(node)  # the default root, the one the authority reads
    p, s = _sleeper()
    try:
        m.admit(uuid, Share.of(2, dev.memory_mib), dev.memory_mib, p.pid, s)
        (server,) = m.servers(uuid)
        kinds = {(h.kind, h.pid) for h in busy.busy_view(node).of_device(0, dev.gi_id, dev.ci_id)}
        assert ("mps", server) in kinds
        assert m.leave(uuid, p.pid)
        assert not [h for h in busy.busy_view(node).of_device(0, dev.gi_id, dev.ci_id) if h.kind == "mps"]
    finally:
        p.kill()
        p.wait()
