"""migctl.busy in-process: MPS servers count as busy, transient NVML errors are retried, an ephemeral
release asks the authority, the lease table is read outside any write transaction."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pynvml
import pytest

from conftest import SimEnv
from migctl import busy
from migctl.jobs import JobsError, LeaseManager, Request
from migctl.reconcile import BusyError, apply_config

CFG = {"version": "v1", "mig-configs": {
    "big": [{"devices": "all", "mig-enabled": True, "mig-devices": {"4g.24gb": 1}}],
    "small": [{"devices": "all", "mig-enabled": True, "mig-devices": {"1g.6gb": 4}}],
}}


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield p
    p.kill()
    p.wait()


def test_an_mps_server_makes_its_instance_busy(a30: SimEnv, sleeper: subprocess.Popen[bytes]) -> None:
    n = a30.node()
    apply_config(CFG, "big", node=n)
    (d,) = n.gpu(0).mig_devices()

    def provider(node: object) -> list[tuple[int, int | None, int | None, int, str]]:
        return [(0, d.gi_id, None, sleeper.pid, "nvidia-cuda-mps-server")]

    busy.register_mps_provider(provider)
    try:
        view = busy.busy_view(n)
        assert [h.kind for h in view.of_device(0, d.gi_id, d.ci_id)] == ["mps"]
        with pytest.raises(BusyError, match=str(sleeper.pid)):
            apply_config(CFG, "small", node=n)
        # and a run does not lease it either
        assert LeaseManager(n).try_acquire(Request(create=False)) is None
    finally:
        busy.MPS_PROVIDERS.remove(provider)
    assert apply_config(CFG, "small", node=n).applied


def test_transient_nvml_errors_are_retried_others_are_not() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return "ok"

    assert busy.retry_nvml(flaky, delay=0.001) == "ok" and len(calls) == 3
    calls.clear()

    def broken() -> str:
        calls.append(1)
        raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)

    with pytest.raises(pynvml.NVMLError):
        busy.retry_nvml(broken, delay=0.001)
    assert len(calls) == 1


def test_a_request_is_never_declared_impossible_on_nvml_errors(a30: SimEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """Errors that outlive the retries mean "try again" (exit 75), never "can never be satisfied" (2)."""
    mgr = LeaseManager(a30.node())
    monkeypatch.setattr(mgr, "check_satisfiable",
                        lambda req: (_ for _ in ()).throw(pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)))
    with pytest.raises(JobsError) as e:
        mgr._settled_check(Request(profile="1g.6gb"))
    assert e.value.exit_code == 75
    with pytest.raises(JobsError) as e:
        LeaseManager(a30.node()).check_satisfiable(Request(profile="9g.99gb"))
    assert e.value.exit_code == 2 and "valid here" in str(e.value)


def test_ephemeral_release_keeps_an_instance_someone_else_holds(a30: SimEnv,
                                                                sleeper: subprocess.Popen[bytes]) -> None:
    n = a30.node()
    mgr = LeaseManager(n)
    lease = mgr.try_acquire(Request(profile="2g.12gb"))
    assert lease is not None and lease.created_instance
    assert n.sim.add_client(0, sleeper.pid, lease.gi, lease.ci) == 0  # a CUDA process started outside migctl
    note = mgr.release(lease, destroy=True)
    assert note is not None and f"process PID {sleeper.pid}" in note
    assert [d.uuid for d in n.gpu(0).mig_devices()] == [lease.uuid]
    assert mgr.leases() == []
    n.sim.remove_client(0, sleeper.pid)
    lease = mgr.try_acquire(Request(profile="2g.12gb"))
    assert lease is not None and mgr.release(lease, destroy=True) is None  # nobody else holds it now
    assert n.gpu(0).mig_devices() == [] and n.gpu(0).gpu_instances() == []


def test_a_dead_holder_with_a_live_group_is_still_busy(a30: SimEnv) -> None:
    """The lease's process group outlives its holder: the device stays busy for apply too."""
    n = a30.node()
    apply_config(CFG, "big", node=n)
    grp = subprocess.Popen(["sh", "-c", "sleep 30 & wait"], start_new_session=True)
    holder = subprocess.Popen(["true"])
    holder.wait()
    mgr = LeaseManager(n)
    lease = mgr.try_acquire(Request(), pid=grp.pid)
    assert lease is not None
    try:
        mgr.set_holder(lease, grp.pid, lease.pid_start, pgid=grp.pid)
        import os
        import signal

        os.kill(grp.pid, signal.SIGKILL)  # the holder (the group's leader) dies; its `sleep` runs on
        grp.wait()
        assert [x.uuid for x in mgr.leases()] == [lease.uuid]
        from migctl.observe.state import StateReader

        assert [x.uuid for x in StateReader(n).leases()] == [lease.uuid]  # the exporter counts it too
        with pytest.raises(BusyError, match="refusing to destroy"):
            apply_config(CFG, "small", node=n)
    finally:
        import os
        import signal

        try:
            os.killpg(grp.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    import time

    deadline = time.monotonic() + 10
    while mgr.leases() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mgr.leases() == []
    assert apply_config(CFG, "small", node=n).applied


def test_sim_delayed_registration(a30: SimEnv, sleeper: subprocess.Popen[bytes]) -> None:
    """`migctl sim client-delay`: a client shows in NVML (and blocks a destroy) only after the delay."""
    import time

    n = a30.node()
    (uuid,) = a30.layout(0, ["4g.24gb"])
    d = n.find_mig_device(uuid)
    r = a30.migctl("sim", "client-delay", "1.5")
    assert r.returncode == 0, r.stderr
    t = time.monotonic()
    assert n.sim.add_client(0, sleeper.pid, d.gi_id, d.ci_id) == 0
    assert n.gpu(0).processes() == [] or time.monotonic() - t >= 1.5
    deadline = time.monotonic() + 10
    while not n.gpu(0).processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p.pid for p in n.gpu(0).processes()] == [sleeper.pid] and time.monotonic() - t >= 1.5
    with pytest.raises(pynvml.NVMLError_InUse):
        n.gpu(0).gpu_instance(d.gi_id).compute_instances()[0].destroy()
    r = a30.migctl("sim", "client-delay", "--", "-5")
    assert r.returncode != 0 and r.stderr.startswith("migctl: error: client delay") and "Traceback" not in r.stderr


def test_the_destroying_verbs_ask_the_authority(a30: SimEnv, sleeper: subprocess.Popen[bytes]) -> None:
    """`gi destroy`, `ci destroy` and `reset` refuse an instance leased to a process that NVML does not list
    yet (a CUDA process shows there only after its first CUDA call), naming the lease; nothing changes. Before,
    they checked NVML's processes alone and destroyed the leased device under its running command."""
    n = a30.node()
    a30.layout(0, ["2g.12gb", "1g.6gb"])
    mgr = LeaseManager(n)
    lease = mgr.try_acquire(Request(profile="2g.12gb", create=False), pid=sleeper.pid, owner="migctl run")
    assert lease is not None and n.gpu(0).processes() == []
    d = n.find_mig_device(lease.uuid)
    before = [(x.id, [c.id for c in x.compute_instances()]) for x in n.gpu(0).gpu_instances()]
    for argv in (["gi", "destroy", "--all"], ["gi", "destroy", "--gi", str(d.gi_id)],
                 ["ci", "destroy", "--gi", str(d.gi_id), "--all"], ["reset", "-i", "0"]):
        r = a30.migctl(*argv)
        assert r.returncode == 3, (argv, r.stdout, r.stderr)
        line, = r.stderr.strip().splitlines()
        assert f"leased to PID {sleeper.pid} (migctl run)" in line and "Traceback" not in line, argv
        assert [(x.id, [c.id for c in x.compute_instances()]) for x in n.gpu(0).gpu_instances()] == before
    other = next(x.id for x in n.gpu(0).gpu_instances() if x.id != d.gi_id)
    r = a30.migctl("gi", "destroy", "--gi", str(other))  # what nothing holds still goes
    assert r.returncode == 0, r.stderr
    mgr.release(lease)
    r = a30.migctl("gi", "destroy", "--all")
    assert r.returncode == 0, r.stderr
    assert n.gpu(0).gpu_instances() == []


def test_the_instance_verbs_wait_for_the_node_lock(a30: SimEnv) -> None:
    """gi/ci create and destroy and reset take the node lock that apply, run and the worker hold while they
    change instances: a holder past --lock-timeout is one line naming it, exit 4, nothing changed."""
    from migctl.paths import node_lock

    n = a30.node()
    a30.layout(0, ["1g.6gb"])
    gi = str(n.gpu(0).gpu_instances()[0].id)
    with node_lock(n, 0, what="migctl apply 'test'"):
        for argv in (["gi", "create", "1g.6gb"], ["ci", "create", "--gi", gi], ["gi", "destroy", "--all"],
                     ["ci", "destroy", "--gi", gi, "--all"], ["reset"]):
            r = a30.migctl(*argv, "--lock-timeout", "0.2")
            assert r.returncode == 4, (argv, r.stderr)
            line, = r.stderr.strip().splitlines()
            assert "migctl apply 'test'" in line, argv
        for argv in (["gi", "destroy", "--gi", "9"], ["ci", "destroy", "--gi", "9", "--all"]):
            r = a30.migctl(*argv, "--lock-timeout", "30")  # bad input is said at once, lock or not
            assert r.returncode == 2 and "no GPU instance 9" in r.stderr, (argv, r.stderr)
    assert [x.profile().name for x in n.gpu(0).gpu_instances()] == ["1g.6gb"]


def test_sim_a_client_without_a_context_does_not_hold_its_instance(a30: SimEnv,
                                                                    sleeper: subprocess.Popen[bytes]) -> None:
    """Before its first CUDA call a process is unknown to the driver: its instance can be destroyed (the
    simulator used to refuse to write the state that destroy left, naming the client's gone instance)."""
    n = a30.node()
    (uuid,) = a30.layout(0, ["4g.24gb"])
    d = n.find_mig_device(uuid)
    n.sim.set_client_delay(60)
    assert n.sim.add_client(0, sleeper.pid, d.gi_id, d.ci_id) == 0
    r = a30.migctl("gi", "destroy", "--all")
    assert r.returncode == 0, r.stderr
    assert n.gpu(0).gpu_instances() == [] and n.sim.store.load().gpus[0].processes == []
    r = a30.migctl("sim", "status")
    assert r.returncode == 0, r.stderr


def test_a_mode_change_is_refused_while_migctl_holds_an_instance(a30: SimEnv,
                                                                 sleeper: subprocess.Popen[bytes]) -> None:
    """Disabling MIG destroys every instance: a lease the driver cannot see refuses it (exit 3, nothing changed);
    a GPU already in the asked mode is not refused."""
    n = a30.node()
    a30.layout(0, ["4g.24gb"])
    lease = LeaseManager(n).try_acquire(Request(create=False), pid=sleeper.pid, owner="migctl run")
    assert lease is not None
    r = a30.migctl("mode", "disable")
    assert r.returncode == 3, r.stderr
    line, = r.stderr.strip().splitlines()
    assert f"GPU 0: leased to PID {sleeper.pid} (migctl run)" in line and "nothing was changed" in line
    assert n.gpu(0).mig_mode() == (1, 1) and len(n.gpu(0).gpu_instances()) == 1
    assert a30.migctl("mode", "enable").returncode == 0  # already enabled: nothing to refuse
    LeaseManager(n).release(lease)
    r = a30.migctl("mode", "disable")
    assert r.returncode == 0, r.stderr
    assert n.gpu(0).mig_mode()[1] == 0
