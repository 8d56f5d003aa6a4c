"""``migctl run --isolation soft|none``: MPS clients and time-sliced jobs sharing one MIG device (simulator,
stand-in MPS control daemon), through the real CLI."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from migctl.jobs import mps as mps_mod
from migctl.jobs.leases import Request
from migctl.reconcile.live import read_gpu


def _popen(se: Any, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "migctl.cli.main", *args], env={**se.env, **env}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


# The job writes its CUDA environment to $OUT whole (a temp file renamed into place: a reader never sees a
# file the shell has created but not yet written), then runs until $GO exists (2 min at most).
ENV_THEN_WAIT = ('env | grep -E "^CUDA_(MPS|VIS)" | sort > "$OUT.tmp" && mv "$OUT.tmp" "$OUT"; '
                 'for _ in $(seq 2400); do [ -e "$GO" ] && break; sleep 0.05; done')


def _wait_file(p: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not p.exists():  # complete once it exists (renamed into place)
        assert time.monotonic() < deadline, f"timed out waiting for {p}"
        time.sleep(0.05)


def _two_clients(a30: Any, *run_args: str) -> tuple[Path, list[subprocess.Popen[str]]]:
    """Two `migctl run RUN_ARGS -- ENV_THEN_WAIT` clients, each past writing its environment (env0, env1);
    they exit once the returned gate file exists."""
    go = a30.tmp / "go"
    procs = []
    try:
        for i in range(2):
            env = {"OUT": str(a30.tmp / f"env{i}"), "GO": str(go)}
            procs.append(_popen(a30, env, "run", *run_args, "--", "bash", "-c", ENV_THEN_WAIT))
        for i in range(2):
            _wait_file(a30.tmp / f"env{i}")
    except BaseException:
        go.touch()
        for p in procs:
            p.wait(timeout=60)
        raise
    return go, procs


def test_two_mps_clients_share_a_device_and_a_third_waits(shared: Any) -> None:
    a30 = shared
    a30.layout(0, ["2g.12gb"])
    go, procs = _two_clients(a30, "--isolation", "soft", "--share", "2", "--profile", "2g.12gb")
    try:
        envs = [(a30.tmp / f"env{i}").read_text() for i in range(2)]
        for e in envs:
            assert "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50" in e and "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=5984M" in e
            assert "CUDA_VISIBLE_DEVICES=MIG-" in e
        assert envs[0].splitlines()[-1] == envs[1].splitlines()[-1]  # the same device
        node = a30.node()
        gi = read_gpu(node.gpu(0)).gis[0]
        assert gi.busy and len(gi.pids) == 3  # the MPS server and the two clients
        # the device is full (2 x 50%) and --no-create forbids a new instance: no room
        r = a30.migctl("run", "--no-wait", "--no-create", "--isolation", "soft", "--share", "2", "--profile",
                       "2g.12gb", "--", "true")
        assert r.returncode == 75, r.stderr
        # with creation allowed, the third client gets a new instance in free space (and its own daemon)
        r = a30.migctl("run", "--no-wait", "--isolation", "soft", "--share", "2", "--profile", "2g.12gb", "--",
                       "bash", "-c", 'echo "$CUDA_VISIBLE_DEVICES"')
        assert r.returncode == 0 and r.stdout.strip().startswith("MIG-") and r.stdout.strip() not in envs[0]
    finally:
        go.touch()
        for p in procs:
            p.wait(timeout=60)
    assert [p.returncode for p in procs] == [0, 0], [p.stderr.read() for p in procs if p.stderr]
    assert read_gpu(a30.node().gpu(0)).gis[0].pids == []  # daemon stopped with the last client


def test_time_sliced_jobs_share_without_limits(shared: Any) -> None:
    a30 = shared
    a30.layout(0, ["1g.6gb"])
    go, procs = _two_clients(a30, "--isolation", "none", "--share", "2")
    try:
        for i in range(2):
            e = (a30.tmp / f"env{i}").read_text()
            assert "CUDA_MPS" not in e and "CUDA_VISIBLE_DEVICES=MIG-" in e
        assert len(read_gpu(a30.node().gpu(0)).gis) == 1  # both on the one device: nothing was created
        r = a30.migctl("run", "--no-wait", "--no-create", "--isolation", "none", "--share", "2", "--", "true")
        assert r.returncode == 75, r.stderr
    finally:
        go.touch()
        for p in procs:
            p.wait(timeout=60)
    assert [p.returncode for p in procs] == [0, 0], [p.stderr.read() for p in procs if p.stderr]


def test_a_time_sliced_client_is_never_given_more_company_than_its_share(shared: Any) -> None:
    """A client that allows at most one client per device (``--share 1``) is not joined by a client that
    would allow two; two clients that both allow two share, and a third is turned away."""
    a30 = shared
    a30.layout(0, ["1g.6gb"])
    go = a30.tmp / "go"
    env = {"OUT": str(a30.tmp / "env0"), "GO": str(go)}
    alone = _popen(a30, env, "run", "--isolation", "none", "--share", "1", "--no-create", "--", "bash", "-c",
                   ENV_THEN_WAIT)
    try:
        _wait_file(a30.tmp / "env0")
        r = a30.migctl("run", "--no-wait", "--no-create", "--isolation", "none", "--share", "2", "--", "true")
        assert r.returncode == 75, r.stderr
    finally:
        go.touch()
        alone.wait(timeout=60)
    assert alone.returncode == 0, alone.stderr.read() if alone.stderr else ""
    go.unlink()
    _, procs = _two_clients(a30, "--isolation", "none", "--share", "2", "--no-create")
    try:
        r = a30.migctl("run", "--no-wait", "--no-create", "--isolation", "none", "--share", "3", "--", "true")
        assert r.returncode == 75, r.stderr  # (it would allow three; the two there allow two)
    finally:
        go.touch()
        for p in procs:
            p.wait(timeout=60)
    assert [p.returncode for p in procs] == [0, 0]


def test_mps_files_are_private_under_any_umask(shared: Any) -> None:
    """With umask 0, an MPS run leaves only private directories and files in the state dir (the ``mps``
    parent, the daemon's pipe and log directories, the select and node locks)."""
    import os
    import stat

    old = os.umask(0)
    try:
        r = shared.migctl("run", "--isolation", "soft", "--share", "2", "--profile", "1g.6gb", "--", "true")
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    root = Path(shared.env["MIGCTL_STATE_DIR"])
    seen = [p for p in root.rglob("*") if p.is_dir() or p.is_file()]
    assert any(p.name == "mps" for p in seen) and any(p.name == "select.lock" for p in seen)
    assert [(str(p), oct(stat.S_IMODE(p.stat().st_mode))) for p in seen if stat.S_IMODE(p.stat().st_mode) & 0o077] == []


def test_sharing_options_bad_input(a30: Any) -> None:
    r = a30.migctl("run", "--share", "2", "--", "true")
    assert r.returncode == 2 and r.stderr.startswith("migctl: error: --share") and "Traceback" not in r.stderr
    r = a30.migctl("run", "--isolation", "medium", "--", "true")
    assert r.returncode == 2 and "hard, soft or none" in r.stderr
    r = a30.migctl("run", "--isolation", "soft", "--share", "0", "--", "true")
    assert r.returncode == 2 and "valid: 1..100" in r.stderr


def test_a_damaged_mps_client_list_is_one_line_and_blocks_the_device(shared: Any) -> None:
    """A client list that is not JSON, or not a list of clients, makes who shares the device unknown: a shared
    run and apply each stop with one line naming the file (nothing changed) instead of a traceback."""
    a30 = shared
    r = a30.migctl("run", "--isolation", "soft", "--share", "2", "--profile", "1g.6gb", "--", "true")
    assert r.returncode == 0, r.stderr
    [clients] = list(Path(a30.env["MIGCTL_STATE_DIR"]).glob("mps/*/*/clients.json"))
    cfg = a30.tmp / "c.yaml"
    cfg.write_text("version: v1\nmig-configs:\n  a:\n    - devices: all\n      mig-enabled: true\n"
                   "      mig-devices: {2g.12gb: 2}\n")
    before = [(g.profile, g.start) for g in read_gpu(a30.node().gpu(0)).gis]
    for text in ("{garbage", '{"a": 1}', '[{"x": 1}]'):
        clients.write_text(text)
        for args in (("run", "--isolation", "soft", "--share", "2", "--profile", "1g.6gb", "--", "true"),
                     ("apply", "-f", str(cfg), "-c", "a")):
            r = a30.migctl(*args)
            errors = [ln for ln in r.stderr.splitlines() if ln.startswith("migctl: error:")]
            assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, (text, args, r.stderr)
            assert f"the MPS client list {clients} is damaged" in errors[0], (text, args, errors)
        assert [(g.profile, g.start) for g in read_gpu(a30.node().gpu(0)).gis] == before


def test_leases_lists_shared_clients(shared: Any) -> None:
    """``migctl leases`` shows who shares a device (MPS clients with their limits, time-sliced clients with
    their share), which are not leases; a damaged client list is one warning and the rest is still listed."""
    import json

    a30 = shared
    uuids = a30.layout(0, ["2g.12gb", "1g.6gb"])
    go, procs = _two_clients(a30, "--isolation", "soft", "--share", "2", "--profile", "2g.12gb")
    go2 = a30.tmp / "go2"
    ts = _popen(a30, {"OUT": str(a30.tmp / "env_ts"), "GO": str(go2)}, "run", "--isolation", "none", "--share", "3",
                "--profile", "1g.6gb", "--", "bash", "-c", ENV_THEN_WAIT)
    try:
        _wait_file(a30.tmp / "env_ts")
        r = a30.migctl("leases", "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["leases"] == [] and out["damaged"] == []
        got = sorted((c["uuid"], c["kind"], c["threads"], c["mem_mib"], c["share"]) for c in out["shared"])
        assert got == sorted([(uuids[0], "mps", 50, 5984, None)] * 2 + [(uuids[1], "timeslice", None, None, 3)])
        assert len({c["pid"] for c in out["shared"]}) == 3  # (each client's command, which the run started)
        text = a30.migctl("leases").stdout.splitlines()
        assert sum("shared: MPS client pid" in ln and "50% of threads, 5984 MiB" in ln for ln in text) == 2, text
        assert sum("shared: time-sliced client pid" in ln and "(--share 3)" in ln for ln in text) == 1, text
        [mps_list] = [f for f in Path(a30.env["MIGCTL_STATE_DIR"]).glob("mps/*/*/clients.json")
                      if "timeslice" not in f.read_text()]
        good = mps_list.read_text()
        mps_list.write_text("{garbage")
        r = a30.migctl("leases")
        assert r.returncode == 0 and "time-sliced client" in r.stdout, r.stdout + r.stderr
        assert r.stderr.count("migctl: warning:") == 1 and "is damaged" in r.stderr, r.stderr
        assert len(json.loads(a30.migctl("leases", "--json").stdout)["damaged"]) == 1
        mps_list.write_text(good)
    finally:
        go.touch()
        go2.touch()
        for p in [*procs, ts]:
            p.wait(timeout=60)
    assert [p.returncode for p in [*procs, ts]] == [0, 0, 0]
    assert a30.migctl("leases").stdout.strip() == "no leases"


def _daemons(pipe: Path) -> list[Any]:
    """The stand-in MPS control daemons serving ``pipe`` (CUDA_MPS_PIPE_DIRECTORY): ``-d`` forks the daemon,
    which keeps that command line, and returns once it serves."""
    import psutil

    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "migctl.sim.mps_control" in " ".join(p.info["cmdline"] or []) and \
                    p.environ().get("CUDA_MPS_PIPE_DIRECTORY") == str(pipe) and "-d" in p.info["cmdline"]:
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def test_a_dead_mps_daemon_is_restarted_and_does_not_fail_its_clients(shared: Any) -> None:
    """The device's MPS control daemon killed under a running client (an admin, the OOM killer): the next client
    gets a new daemon (its limits need one), and the clients' runs end with their commands' own exit status,
    the last one stopping the new daemon; none is left running."""
    a30 = shared
    a30.layout(0, ["2g.12gb"])
    args = ("run", "--no-create", "--isolation", "soft", "--share", "2", "--profile", "2g.12gb")
    go = a30.tmp / "go"
    first = _popen(a30, {"OUT": str(a30.tmp / "env0"), "GO": str(go)}, *args, "--", "bash", "-c", ENV_THEN_WAIT)
    try:
        _wait_file(a30.tmp / "env0")
        [pipe] = [Path(ln.split("=", 1)[1]) for ln in (a30.tmp / "env0").read_text().splitlines()
                  if ln.startswith("CUDA_MPS_PIPE_DIRECTORY=")]
        [daemon] = _daemons(pipe)
        daemon.kill()
        daemon.wait(10)
        r = a30.migctl(*args, "--", "true")
        assert r.returncode == 0, r.stderr
        assert len(_daemons(pipe)) == 1  # a new daemon for the new client (it stays: the first client remains)
    finally:
        go.touch()
        first.wait(timeout=60)
    err = first.stderr.read() if first.stderr else ""
    assert first.returncode == 0 and "error" not in err, err
    deadline = time.monotonic() + 10
    while _daemons(pipe) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _daemons(pipe) == []
    assert json.loads(a30.migctl("leases", "--json").stdout)["shared"] == []


def test_joining_a_shared_device_never_races_an_exclusive_lease(shared: Any, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    """A run joins a device migctl already shares (time-sliced client A there) just as A ends and an exclusive
    run R asks for a device: A's leave leaves the device without clients, no lease and (before a CUDA call) no
    NVML process, so it reads free. Joining must happen under the node lock R's lease takes, so R either
    leases before the join (and the joiner sees it) or sees the joined client; never both on the device.
    Found by the soak: a time-sliced client and an exclusive job on one MIG device at once."""
    from migctl.jobs import shared as shared_mod
    from migctl.jobs.mps import MpsManager, Sharing

    a30 = shared
    a30.layout(0, ["1g.6gb"])  # the only device; nothing is created (--no-create)
    assert a30.migctl("sim", "client-delay", "600").returncode == 0
    log = a30.tmp / "log"
    go_a = a30.tmp / "go_a"
    a = _popen(a30, {"OUT": str(a30.tmp / "env_a"), "GO": str(go_a)}, "run", "--no-create", "--isolation", "none",
               "--share", "2", "--profile", "1g.6gb", "--", "bash", "-c", ENV_THEN_WAIT)
    _wait_file(a30.tmp / "env_a")
    real = MpsManager.clients
    r_proc: list[subprocess.Popen[str]] = []

    def clients(self: MpsManager, uuid: str) -> list[dict[str, Any]]:
        out = real(self, uuid)
        if out and not r_proc:  # the joiner has just seen A: now A ends and R asks for a device
            go_a.touch()
            a.wait(timeout=60)
            r_proc.append(_popen(a30, {}, "run", "--no-create", "--no-wait", "--profile", "1g.6gb", "--", "sh", "-c",
                                 f'echo "R $(date +%s.%N)" >> {log}; sleep 2; echo "R $(date +%s.%N)" >> {log}'))
            time.sleep(2.0)  # R leases the device now unless the joiner holds the node lock
        return out

    monkeypatch.setattr(MpsManager, "clients", clients)
    rc = shared_mod.run_shared(a30.node(), ["sh", "-c", f'echo "B $(date +%s.%N)" >> {log}; sleep 1; '
                                                          f'echo "B $(date +%s.%N)" >> {log}'],
                               Request(profile="1g.6gb", create=False), sharing=Sharing(isolation="none", share=2))
    monkeypatch.undo()
    assert rc == 0 and r_proc, rc
    r = r_proc[0]
    r.wait(timeout=60)
    lines = log.read_text().split("\n")[:-1]
    spans = {w: [float(ln.split()[1]) for ln in lines if ln.startswith(w + " ")] for w in ("B", "R")}
    overlap = len(spans["R"]) == 2 and spans["R"][0] < spans["B"][1] and spans["B"][0] < spans["R"][1]
    assert not overlap, (lines, r.returncode)
    assert a.returncode == 0 and r.returncode == 75 and spans["R"] == [], (r.returncode, lines)


def test_shared_clients_hold_their_device_whatever_nvml_and_the_daemon_answer(shared: Any) -> None:
    """The busy authority counts migctl's admitted MPS and time-sliced clients from their list, so their device
    is busy before any CUDA context (``sim client-delay``) even when NVML fails the MIG device enumeration for
    a moment (concurrent changes: retried, never taken for a GPU without MIG) or the MPS daemon does not answer
    ``get_server_list``. Found by the soak: an exclusive run leased a device an MPS job was running on."""
    import pynvml

    from migctl.busy import busy_view
    from migctl.jobs import mps as mps_mod

    a30 = shared
    (gi_a, uuid_a), (gi_b, uuid_b) = [(a30.node().find_mig_device(u).gi_id, u)
                                       for u in a30.layout(0, ["1g.6gb", "2g.12gb"])]
    assert a30.migctl("sim", "client-delay", "600").returncode == 0
    go = a30.tmp / "go"
    procs = [_popen(a30, {"OUT": str(a30.tmp / f"env{i}"), "GO": str(go)}, "run", "--no-create", "--profile", prof,
                    "--isolation", iso, "--share", "2", "--", "bash", "-c", ENV_THEN_WAIT)
             for i, (prof, iso) in enumerate([("1g.6gb", "none"), ("2g.12gb", "soft")])]
    try:
        for i in range(2):
            _wait_file(a30.tmp / f"env{i}")
        node = a30.node()
        gpu_cls = type(node.gpu(0))
        real = gpu_cls.mig_devices
        failed: list[int] = []

        def flaky(self: Any) -> Any:  # NVML in flux once, as a concurrent create or destroy makes it
            if not failed:
                failed.append(1)
                raise pynvml.NVMLError_NotFound()
            return real(self)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(gpu_cls, "mig_devices", flaky)
            holders = mps_mod.mps_holders(node)
        assert failed and {(h[1], h[4].split(" of ")[0]) for h in holders} >= {
            (gi_a, "time-sliced client"), (gi_b, "MPS client"), (gi_b, "MPS server")}, holders
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(mps_mod.MpsManager, "servers", lambda self, uuid: [])  # the daemon does not answer
            view = busy_view(node)
        assert [h.text().split(" PID")[0] for h in view.of_device(0, gi_b, 0)] == ["MPS client"]
        assert [h.text().split(" PID")[0] for h in view.of_device(0, gi_a, 0)] == ["time-sliced client"]
        r = a30.migctl("gi", "destroy", "--all")
        assert r.returncode == 3 and "MPS client PID" in r.stderr, r.stderr
    finally:
        go.touch()
        for p in procs:
            p.wait(timeout=60)
    assert [p.returncode for p in procs] == [0, 0]


def test_an_exclusive_lease_never_sees_a_shared_device_between_its_lease_and_its_client(shared: Any) -> None:
    """A shared run takes a free device through a lease, admits its client, then drops the lease. An exclusive
    lease decision reads the clients (busy_view) and then the lease table: if the hand-over from lease to
    client fell between those two reads, it saw neither. Found by the soak: a time-sliced client and an
    exclusive job on one device. The decision now also reads the lease table before the clients and counts a
    lease whose live holder dropped it in between as held (first fixed by taking the node lock for the
    hand-over, which made a shared command wait for an apply: see the next test)."""
    import threading

    from migctl.jobs import leases as leases_mod
    from migctl.jobs import mps as mps_mod
    from migctl.jobs import shared as shared_mod
    from migctl.jobs.mps import Sharing

    a30 = shared
    a30.layout(0, ["1g.6gb"])  # the only device; nothing is created
    assert a30.migctl("sim", "client-delay", "600").returncode == 0
    node = a30.node()
    snapshot, released, admitting = threading.Event(), threading.Event(), threading.Event()
    real_view, real_admit = leases_mod.busy_view, mps_mod.MpsManager.admit_timeslice
    got: dict[str, Any] = {}

    def view_then_pause(*a: Any, **k: Any) -> Any:  # the exclusive decision: its busy check, then a pause
        v = real_view(*a, **k)
        if threading.current_thread() is threading.main_thread():
            return v  # (the shared run's own lease decision)
        snapshot.set()
        released.wait(3)  # (the hand-over lands here: after the holders read, before the lease table's)
        return v

    def admit_after_snapshot(self: Any, *a: Any, **k: Any) -> Any:
        admitting.set()
        snapshot.wait(30)
        return real_admit(self, *a, **k)

    def shared_run() -> None:
        got["shared"] = shared_mod.run_shared(node, ["sleep", "2"], Request(profile="1g.6gb", create=False),
                                              sharing=Sharing(isolation="none", share=2))

    def exclusive() -> None:
        admitting.wait(30)  # the shared run holds its lease and is admitting its client
        got["lease"] = leases_mod.LeaseManager(node).try_acquire(Request(profile="1g.6gb", create=False), precheck=False,
                                                      lock_timeout=30)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(leases_mod, "busy_view", view_then_pause)
        mp.setattr(mps_mod.MpsManager, "admit_timeslice", admit_after_snapshot)
        real_release = leases_mod.LeaseManager.release

        def release_and_say(self: Any, *a: Any, **k: Any) -> Any:
            out = real_release(self, *a, **k)
            released.set()
            return out

        mp.setattr(leases_mod.LeaseManager, "release", release_and_say)
        t = threading.Thread(target=exclusive)  # (the run installs signal handlers: it runs in this thread)
        t.start()
        try:
            shared_run()
        finally:
            t.join(60)
    assert got.get("shared") == 0 and "lease" in got, got
    assert got["lease"] is None, "an exclusive lease on the device the shared client runs on"


def test_a_shared_command_does_not_wait_for_an_apply_that_took_the_node_lock_after_its_lease(shared: Any) -> None:
    """An apply takes the node lock just after a shared run leased its device and admitted its client. Dropping
    the lease no longer needs that lock, so the command starts while the apply holds it (it waited for the
    lock, up to two minutes, behind the closed gate; then dropped the lease without it)."""
    import threading

    from migctl.jobs import leases as leases_mod
    from migctl.jobs import mps as mps_mod
    from migctl.jobs import shared as shared_mod
    from migctl.jobs.mps import Sharing

    a30 = shared
    a30.layout(0, ["1g.6gb"])
    node = a30.node()
    started = a30.tmp / "started"
    holding, seen = threading.Event(), threading.Event()
    real_admit = mps_mod.MpsManager.admit_timeslice

    def apply_holds_the_lock() -> None:
        with leases_mod.LeaseManager(node).node_lock(30, what="an apply (test)"):
            holding.set()
            deadline = time.monotonic() + 20
            while not started.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            if started.exists():
                seen.set()

    def admit_then_apply(self: Any, *a: Any, **k: Any) -> Any:
        out = real_admit(self, *a, **k)
        threading.Thread(target=apply_holds_the_lock, daemon=True).start()
        assert holding.wait(30)
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mps_mod.MpsManager, "admit_timeslice", admit_then_apply)
        rc = shared_mod.run_shared(node, ["touch", str(started)], Request(profile="1g.6gb", create=False),
                                   sharing=Sharing(isolation="none", share=2))
    assert rc == 0
    assert seen.wait(30), "the command started only after the apply released the node lock"


def test_a_worker_whose_shared_release_fails_keeps_the_jobs_status(shared: Any) -> None:
    """The client list cannot be written as a shared job ends (a full disk): the worker records the job's own
    exit status, says why in one line and goes on; the client, ended, no longer counts."""
    import errno
    import os

    from migctl.jobs import mps as mps_mod
    from migctl.jobs.mps import Sharing
    from migctl.jobs.queue import JobQueue, Worker

    a30 = shared
    a30.layout(0, ["1g.6gb"])
    q = JobQueue(a30.node())
    jid = q.submit(["sh", "-c", "exit 4"], Request(profile="1g.6gb"), sharing=Sharing(isolation="none", share=2))
    said: list[str] = []
    w = Worker(q, log=said.append)

    def no_space(*_a: object, **_k: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    assert w.acquire()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(mps_mod.MpsManager, "leave", no_space)
            w.run(until_idle=True)
    finally:
        w.release()
    job = q.get(jid)
    assert (job.state, job.exit_code) == ("failed", 4), (job.reason, said)
    assert any(f"job {jid}: releasing" in x and "No space left on device" in x for x in said), said
    assert mps_mod.shared_clients(a30.node()) == []


def test_a_daemon_left_by_a_killed_run_is_stopped_once_its_command_ends(shared: Any) -> None:
    """`migctl run --isolation soft` killed with SIGKILL: the command's processes left in its process group keep
    the device while they run (the command itself dies with its wrapper); once they have ended, nothing holds
    the device but the MPS daemon's server nobody stopped. The next decision under the node lock (an exclusive
    lease, a destroy) stops that daemon and gets the device, rather than calling the device busy until a queue
    worker happens to start."""
    a30 = shared
    [(gi, _)] = a30.create(0, ["1g.6gb"])
    go, out = a30.tmp / "go", a30.tmp / "env0"
    wrapper = _popen(a30, {"OUT": str(out), "GO": str(go)}, "run", "--no-create", "--isolation", "soft", "--share",
                     "2", "--profile", "1g.6gb", "--", "bash", "-c", f"({ENV_THEN_WAIT}) & wait")
    try:
        _wait_file(out)
        [pipe] = [Path(ln.split("=", 1)[1]) for ln in out.read_text().splitlines()
                  if ln.startswith("CUDA_MPS_PIPE_DIRECTORY=")]
        [client] = json.loads(a30.migctl("leases", "--json").stdout)["shared"]
        wrapper.kill()
        wrapper.wait(10)
        # the command's group still runs: its device stays held, by its client and its daemon's server
        r = a30.migctl("gi", "destroy", "--gpu", "0", "--gi", str(gi))
        assert r.returncode != 0 and "MPS client" in r.stderr and "MPS server" in r.stderr, r.stderr
        assert len(_daemons(pipe)) == 1
    finally:
        go.touch()
    deadline = time.monotonic() + 30
    with contextlib.suppress(ProcessLookupError):
        while time.monotonic() < deadline:
            os.killpg(client["pid"], 0)  # (the command led its own process group)
            time.sleep(0.05)
    r = a30.migctl("run", "--no-create", "--profile", "1g.6gb", "--wait", "0", "--", "true")
    assert r.returncode == 0, r.stderr
    assert _daemons(pipe) == []
    r = a30.migctl("gi", "destroy", "--gpu", "0", "--gi", str(gi))
    assert r.returncode == 0, r.stderr


def test_reads_show_a_daemon_left_by_a_killed_run_as_an_idle_server_not_as_busy(shared: Any) -> None:
    """Between its last client's end and the next decision, a daemon left by a killed `run --isolation soft`
    serves nobody: `top`, the exporter and `gpus --map` called its device busy (its server is an NVML process)
    until then, on an idle node for good. They show the server as idle and the device as free; decisions are
    unchanged (the next one stops the daemon)."""
    a30 = shared
    [(gi, uuid)] = a30.create(0, ["1g.6gb"])
    out = a30.tmp / "env0"
    wrapper = _popen(a30, {"OUT": str(out), "GO": str(a30.tmp / "go")}, "run", "--no-create", "--isolation", "soft",
                     "--share", "2", "--profile", "1g.6gb", "--", "bash", "-c", ENV_THEN_WAIT)
    try:
        _wait_file(out)
        [pipe] = [Path(ln.split("=", 1)[1]) for ln in out.read_text().splitlines()
                  if ln.startswith("CUDA_MPS_PIPE_DIRECTORY=")]
        [server] = _daemons_servers(a30)
        assert _busy_series(a30, uuid) == [" 1.0"]  # its client runs
        top = a30.migctl("top", "--once").stdout
        assert f"{server} (idle MPS server)" not in top and str(server) in top, top
        wrapper.kill()  # the client's run, killed before it could stop the daemon
        wrapper.wait(10)
    finally:
        (a30.tmp / "go").touch()
    deadline = time.monotonic() + 30
    while mps_mod.shared_clients(a30.node()):  # (the command ends: the gate exists)
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert len(_daemons(pipe)) == 1  # the orphan: nobody stopped it
    assert _busy_series(a30, uuid) == [" 0.0"]
    top = a30.migctl("top", "--once").stdout
    assert f"{server} (idle MPS server)" in top, top
    picture = a30.migctl("gpus", "--map").stdout
    assert "#" not in picture.split("GI", 1)[1].splitlines()[0], picture  # its compute slice drawn idle
    assert len(_daemons(pipe)) == 1  # reads stop nothing
    r = a30.migctl("gi", "destroy", "--gpu", "0", "--gi", str(gi))  # a decision: stops the daemon, then destroys
    assert r.returncode == 0, r.stderr
    assert _daemons(pipe) == []


def _busy_series(se: Any, uuid: str) -> list[str]:
    """The values of the exporter's migctl_mig_device_busy series of device ``uuid`` (" 1.0" busy)."""
    metrics = se.migctl("exporter", "--once").stdout
    return [ln[ln.rindex(" "):] for ln in metrics.splitlines()
            if ln.startswith("migctl_mig_device_busy{") and f'mig_uuid="{uuid}"' in ln]


def _daemons_servers(se: Any) -> list[int]:
    """PIDs of the MPS servers migctl's daemons run on the node (as the busy authority reads them)."""
    return [pid for *_, pid, detail in mps_mod.mps_holders(se.node()) if "MPS server" in detail]


def test_a_timeout_names_the_fitting_devices_held_without_a_lease(shared: Any) -> None:
    """`run --wait 0` finds both 1g.6gb devices held, neither by a lease: one by a CUDA process, one by an MPS
    run (its client, before any CUDA call, and its daemon's server). The timeout said only "0 device(s) leased
    on this node"; it now names each fitting device and what holds it (the server once, not also as a process)."""
    a30 = shared
    [(_, by_process), (_, by_mps)] = a30.create(0, ["1g.6gb", "1g.6gb"])
    sleeper = subprocess.Popen(["sleep", "120"])
    go, out = a30.tmp / "go", a30.tmp / "env0"
    run = None
    try:
        r = a30.migctl("sim", "add-client", str(sleeper.pid), "--device", by_process)
        assert r.returncode == 0, r.stderr
        run = _popen(a30, {"OUT": str(out), "GO": str(go)}, "run", "--no-create", "--isolation", "soft", "--share",
                     "2", "--profile", "1g.6gb", "--", "bash", "-c", ENV_THEN_WAIT)
        _wait_file(out)
        [client] = json.loads(a30.migctl("leases", "--json").stdout)["shared"]
        r = a30.migctl("run", "--no-create", "--profile", "1g.6gb", "--wait", "0", "--", "true")
        assert r.returncode == 75, r.stderr
        line = r.stderr.strip().splitlines()[-1]
        assert "(0 device(s) leased on this node)" in line and "2 fitting device(s) held without a lease: " in line, line
        assert f"{by_process} (GPU 0, 1g.6gb) by process PID {sleeper.pid}" in line, line
        held = line.split(f"{by_mps} (GPU 0, 1g.6gb) by ", 1)[1].split(";")[0]
        kinds = sorted(w.rsplit(" PID ", 1)[0] for w in held.split(", "))
        assert kinds == ["MPS client", "MPS server"] and f"MPS client PID {client['pid']}" in held, line
    finally:
        go.touch()
        sleeper.kill()
        sleeper.wait()
        if run is not None:
            run.wait(60)


def test_a_dead_daemons_endpoint_costs_no_control_call_per_decision(shared: Any) -> None:
    """An MPS daemon killed (SIGKILL) under its only client leaves its control endpoint; the client's leave finds
    it dead. Every later decision (busy_view) used to ask that endpoint again: one `get_server_list` for its
    servers, and, since the reclaim, a `quit` and another `get_server_list`, about 0.4 s per lease attempt on
    the simulator. Now a daemon found dead is remembered with its endpoint (until a new daemon is started
    there), so a decision asks nothing; the next client starts a new daemon as before."""
    from migctl.busy import busy_view
    from migctl.jobs import mps as mps_mod

    a30 = shared
    a30.layout(0, ["1g.6gb"])
    args = ("run", "--no-create", "--isolation", "soft", "--share", "2", "--profile", "1g.6gb")
    go, out = a30.tmp / "go", a30.tmp / "env0"
    first = _popen(a30, {"OUT": str(out), "GO": str(go)}, *args, "--", "bash", "-c", ENV_THEN_WAIT)
    try:
        _wait_file(out)
        [pipe] = [Path(ln.split("=", 1)[1]) for ln in out.read_text().splitlines()
                  if ln.startswith("CUDA_MPS_PIPE_DIRECTORY=")]
        [daemon] = _daemons(pipe)
        daemon.kill()
        daemon.wait(10)
    finally:
        go.touch()
        first.wait(60)
    assert first.returncode == 0, first.stderr.read() if first.stderr else ""
    assert (pipe / "control").exists()  # (a dead daemon's endpoint stays: the next start replaces it)
    calls: list[tuple[str, ...]] = []
    real = mps_mod.MpsManager.control

    def counted(self: Any, uuid: str, *commands: str, **kw: Any) -> str:
        calls.append(commands)
        return real(self, uuid, *commands, **kw)

    node = a30.node()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mps_mod.MpsManager, "control", counted)
        for _ in range(3):
            busy_view(node)
    assert calls == [], calls
    r = a30.migctl(*args, "--", "true")  # a new client: a new daemon, stopped when it leaves
    assert r.returncode == 0, r.stderr
    assert _daemons(pipe) == []


def test_a_device_its_last_shared_client_left_is_idle_from_then(shared: Any) -> None:
    """Reshaping's hysteresis (``--hysteresis``) spares an instance idle for less than that. A shared run's device
    was recorded idle when the lease that took it was dropped (its first client admitted), and nothing recorded
    it when its last client left: it read idle for as long as the client had run, so it could be destroyed at
    once. Now the last client's leave records it idle from then, as a released lease does."""
    import sqlite3

    from migctl.jobs.common import db_path

    a30 = shared
    [uuid] = a30.layout(0, ["1g.6gb"])
    r = a30.migctl("run", "--no-create", "--isolation", "none", "--share", "2", "--profile", "1g.6gb", "--",
                   "sleep", "2")
    ended = time.time()
    assert r.returncode == 0, r.stderr
    conn = sqlite3.connect(db_path())
    [(since,)] = conn.execute("SELECT since FROM idle_since WHERE uuid=?", (uuid,)).fetchall()
    conn.close()
    assert ended - 1.0 <= since <= ended, (since, ended)


def test_a_whole_gpus_mps_shares_split_what_cuda_can_allocate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real H200 (driver 580.159.04): NVML's total 143771 MiB, of which the driver reserves 615 MiB; PyTorch saw
    150109880320 B (143156 MiB). Two half shares were given 71885M each, more than the GPU can hold together;
    now they split the usable 143155 MiB (the reserve rounded up, as nvidia-smi shows it)."""
    import shutil
    import tempfile

    from simenv import make_sim, stop_daemons_under

    h200 = make_sim(tmp_path, monkeypatch, "1xH200@580.159.04", mig=False)
    short = tempfile.mkdtemp(prefix="mig")
    h200.env["MIGCTL_STATE_DIR"] = short
    try:
        assert h200.node().gpu(0).usable_memory_mib() == 143155
        r = h200.migctl("run", "--isolation", "soft", "--share", "2", "--", "sh", "-c",
                        "echo $CUDA_MPS_PINNED_DEVICE_MEM_LIMIT")
        assert r.returncode == 0 and r.stdout.strip() == "0=71577M", r.stdout + r.stderr
        big = h200.migctl("run", "--no-wait", "--isolation", "soft", "--mps-mem", "143500MiB", "--", "true")
        assert big.returncode == 2 and "no device fits >= 143500 MiB" in big.stderr, big.stderr  # (143771 before)
    finally:
        stop_daemons_under(short)
        shutil.rmtree(short, ignore_errors=True)
