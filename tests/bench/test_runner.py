"""migctl bench on the simulator: instances through the apply engine, busy instances untouched, the layout
restored after success, failure, Ctrl-C and SIGKILL of the profiler; crashes and hangs bounded by --timeout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from migctl.bench.runner import BenchError, BenchJournal, Settings, run_bench

REPORT = ("import json, os; b = int(os.environ['MIGCTL_BENCH_BATCH']); s = int(os.environ['MIGCTL_BENCH_SLICES']); "
          "print('warming up'); print(json.dumps({'throughput': 10.0 * s * b, 'latency_ms': 100.0 / s}))")
GOOD = [sys.executable, "-c", REPORT]


def _busy(sim, profile: str = "3g.40gb") -> tuple[subprocess.Popen[bytes], str]:
    """A 3g.40gb instance with a live client process: busy."""
    n = sim.node()
    g = n.gpu(0)
    gi = g.create_gi(g.profile(profile).id)
    ci = gi.create_ci()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    assert n.sim.add_client(0, proc.pid, gi.id, ci.id, name="server") == 0
    return proc, ci.mig_device().uuid


def _idle(sim, profile: str) -> None:
    g = sim.node().gpu(0)
    g.create_gi(g.profile(profile).id).create_ci()


def test_success_measures_every_size_restores_the_layout_and_never_touches_busy_instances(h100):
    server, busy_uuid = _busy(h100)
    try:
        _idle(h100, "1g.10gb")
        before = h100.layout()
        seen: list[bool] = []

        def on_run(_r):
            seen.append(busy_uuid in h100.uuids())

        res = run_bench(h100.node(), Settings(command=GOOD, batches=[1, 2], repeat=2, warmup=1, timeout=30),
                        on_run=on_run)
        assert seen and all(seen)
        assert h100.layout() == before and busy_uuid in h100.uuids()
        assert res.restored and not BenchJournal(h100.node()).path.exists()
        rows = {(r["target"], r["batch"]): r for r in res.rows()}
        # measured where the size fits next to the busy 3g.40gb (the idle 1g makes way and comes back)
        for name, slices in (("1g.10gb", 1), ("2g.20gb", 2), ("3g.40gb", 3), ("4g.40gb", 4)):
            r = rows[(name, 2)]
            assert r["ok"] == 2 and r["throughput"]["median"] == pytest.approx(20.0 * slices)
            assert r["latency_ms"]["median"] == pytest.approx(100.0 / slices)
            assert r["throughput_per_slice"] == pytest.approx(20.0)
        assert "does not fit next to the busy instances" in res.skipped["7g.80gb"]
        assert "in use" in res.skipped["whole"] and str(server.pid) in res.skipped["whole"]
        assert len([r for r in res.runs if r.warmup]) == 4 * 2
    finally:
        server.kill()
        server.wait()


def test_whole_gpu_is_measured_with_mig_disabled_and_mig_comes_back(h100):
    _idle(h100, "2g.20gb")
    before = h100.layout()
    cmd = [sys.executable, "-c", "import os, json; print(json.dumps({'throughput': 1, 'latency_ms': 1, "
           "'unit': os.environ['CUDA_VISIBLE_DEVICES'][:4] + os.environ['MIGCTL_MIG_PROFILE']}))"]
    res = run_bench(h100.node(), Settings(command=cmd, profiles=["whole", "1g.10gb"], repeat=1, warmup=0))
    units = {r.target: r.unit for r in res.runs}
    assert units == {"whole": "GPU-whole", "1g.10gb": "MIG-1g.10gb"}
    assert h100.layout() == before


def test_a_crash_and_a_hang_are_bounded_by_the_timeout(h100, tmp_path):
    pidfile = tmp_path / "grandchild"
    hang = [sys.executable, "-c", f"import subprocess, time; p = subprocess.Popen(['sleep', '300']); "
            f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(300)"]
    t0 = time.monotonic()
    res = run_bench(h100.node(), Settings(command=hang, profiles=["1g.10gb"], repeat=5, warmup=1, timeout=1.5))
    assert time.monotonic() - t0 < 30
    assert [r.status for r in res.runs] == ["timeout"]  # not repeated after the first timeout
    assert "did not finish within --timeout 1.5 s" in res.runs[0].error
    gc = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(gc):
        time.sleep(0.05)
    assert not _alive(gc), "the hanging command's own children are killed too"
    crash = [sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(7)"]
    res = run_bench(h100.node(), Settings(command=crash, profiles=["1g.10gb", "2g.20gb"], repeat=3, timeout=30))
    assert [(r.target, r.status, r.error) for r in res.runs] == [
        ("1g.10gb", "failed", "exit status 7: boom"), ("2g.20gb", "failed", "exit status 7: boom")]
    assert h100.layout() == {"mig": True, "gis": []}


def _alive(pid: int) -> bool:
    from migctl.proc import pid_alive

    return pid_alive(pid)


def test_failures_restore_the_layout(h100):
    _idle(h100, "1g.10gb")
    before = h100.layout()

    def explode(_r):
        raise RuntimeError("observer failed")

    with pytest.raises(RuntimeError, match="observer failed"):
        run_bench(h100.node(), Settings(command=GOOD, profiles=["3g.40gb"], repeat=1), on_run=explode)
    assert h100.layout() == before
    assert not BenchJournal(h100.node()).path.exists()
    # a driver failure while creating the instance: the apply rolls back, that size is skipped, the rest runs
    n = h100.node()
    n.sim.inject_fault(1)
    res = run_bench(n, Settings(command=GOOD, profiles=["2g.20gb", "4g.40gb"], repeat=1))
    assert "rolled back" in res.skipped["2g.20gb"]
    assert [r.target for r in res.runs] == ["4g.40gb", "4g.40gb"]
    assert h100.layout() == before


def _wait_file(p: Path, proc: subprocess.Popen[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.exists() and p.read_text():
            return p.read_text()
        if proc.poll() is not None:
            raise AssertionError(f"bench exited early: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError(f"{p} never appeared")


def test_sigkill_of_the_profiler_is_recovered(h100, tmp_path):
    _idle(h100, "1g.10gb")
    before = h100.layout()
    marker = tmp_path / "started"
    cmd = [sys.executable, "-c", f"import os, time; open({str(marker)!r}, 'w').write(str(os.getpid())); "
           "time.sleep(300)"]
    p = h100.popen("bench", "--profiles", "2g.20gb", "--warmup", "0", "--repeat", "1", "--timeout", "300", "--", *cmd)
    child = int(_wait_file(marker, p))
    during = h100.layout()
    assert any(g["profile"] == "2g.20gb" for g in during["gis"])
    os.kill(p.pid, signal.SIGKILL)
    p.communicate()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)
    assert not _alive(child), "the workload dies with the profiler (PR_SET_PDEATHSIG)"
    journal = BenchJournal(h100.node()).path
    assert journal.exists() and oct(journal.stat().st_mode & 0o777) == "0o600"
    assert h100.layout() == during  # nothing restored it yet
    r = h100.migctl("bench", "--recover")
    assert r.returncode == 0, r.stderr
    assert "restored GPU 0 to its layout before the interrupted bench" in r.stdout
    assert h100.layout() == before and not journal.exists()
    assert "nothing to recover" in h100.migctl("bench", "--recover").stdout
    assert json.loads(h100.migctl("bench", "--recover", "--json").stdout) == {"recovered": False, "message": None}


@pytest.mark.parametrize("field, value, expected", [
    ("mig", 0, "bench journal {j} is damaged (layout: expected a layout object with a boolean 'mig')"),
    ("pid", "x", "bench journal {j} is damaged ('pid' missing or not a process ID)"),
    ("layout", None, "bench journal {j} is damaged (layout: expected a layout object"),
    ("version", True, "bench journal {j} is damaged (version True"),
    ("profile", "9g.99gb", "the target cannot be built, nothing was changed: GPU 0: GI profile '9g.99gb'"),
])
def test_a_damaged_bench_journal_changes_nothing(h100, field, value, expected):
    """A bench journal whose fields were damaged: `bench --recover` says what is wrong in one line, keeps the
    journal and changes nothing. Before: "mig": 0 disabled MIG on the GPU, a bad PID or layout was a traceback,
    and an unknown profile was reported as "refusing to destroy instances in use" with none in use."""
    _idle(h100, "1g.10gb")
    before = h100.layout()
    dead = subprocess.Popen(["true"])
    dead.wait()
    j = BenchJournal(h100.node()).path
    data = {"format": "migctl-bench-journal", "version": 1, "pid": dead.pid, "pid_start": time.time() - 60,
            "started": time.time() - 50, "gpu_uuid": h100.node().gpu(0).uuid, "gpu_index": 0,
            "layout": {"mig": True, "gis": [{"profile": "2g.20gb", "start": 0, "size": 2,
                                            "cis": [{"profile": "2g.20gb", "start": 0, "size": 2}]}]}}
    if field in ("mig",):
        data["layout"][field] = value
    elif field == "profile":
        data["layout"]["gis"][0]["profile"] = value
    else:
        data[field] = value
    j.parent.mkdir(parents=True, exist_ok=True)
    j.write_text(json.dumps(data))
    r = h100.migctl("bench", "--recover")
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "note:" not in ln]
    assert len(lines) == 1 and expected.format(j=j) in lines[0], r.stderr
    assert h100.layout() == before and j.exists()


def test_the_next_bench_recovers_a_killed_one_first(h100, tmp_path):
    marker = tmp_path / "started"
    cmd = [sys.executable, "-c", f"import time; open({str(marker)!r}, 'w').write('x'); time.sleep(300)"]
    p = h100.popen("bench", "--profiles", "4g.40gb", "--repeat", "1", "--", *cmd)
    _wait_file(marker, p)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate()
    assert h100.layout()["gis"]
    r = h100.migctl("bench", "--profiles", "1g.10gb", "--repeat", "1", "--", *GOOD)
    assert r.returncode == 0, r.stderr
    assert "restored GPU 0 to its layout before the interrupted bench" in r.stderr
    assert h100.layout() == {"mig": True, "gis": []}


def test_ctrl_c_keeps_what_was_measured_and_restores(h100, tmp_path):
    marker = tmp_path / "hang"
    table = tmp_path / "table.csv"
    code = (REPORT.replace("print('warming up'); ", "") +
            f"\nif os.environ['MIGCTL_MIG_PROFILE'] == '2g.20gb':\n"
            f"    import time; open({str(marker)!r}, 'w').write('x'); time.sleep(300)\n")
    p = h100.popen("bench", "--profiles", "1g.10gb,2g.20gb,3g.40gb", "--repeat", "2", "-o", str(table),
                   "--", sys.executable, "-c", code)
    _wait_file(marker, p)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted" in err
    assert table.read_text().splitlines() == ["Mig instance,Batch size,Workload Number,Throughput,Latency",
                                              "1,1,1,10,0.1"]
    assert oct(table.stat().st_mode & 0o777) == "0o600"
    assert h100.layout() == {"mig": True, "gis": []}
    assert not BenchJournal(h100.node()).path.exists()


@pytest.mark.parametrize("args,msg", [
    ([], "no command given"),
    (["--batch", "x", "--", "true"], "--batch takes integers"),
    # other scripts' digits and '1_0' were read by int(); a batch of 10^23 was measured and written into a
    # table the serving planner then refuses
    (["--batch", "\u0661", "--", "true"], "--batch takes integers separated by commas (ASCII digits"),
    (["--procs", "1_0", "--", "true"], "--procs takes integers separated by commas (ASCII digits"),
    (["--batch", "1000001", "--", "true"], "--batch: give integers from 1 to 1000000"),
    (["--procs", "0", "--", "true"], "--procs: give integers from 1 to 64"),
    (["--repeat", "0", "--", "true"], "--repeat must be between 1 and 1000"),
    (["--timeout", "0", "--", "true"], "--timeout must be > 0"),
    (["--profiles", "9g.99gb", "--", "true"], "unknown profile '9g.99gb' on GPU 0 (H100-80GB); valid: 1g.10gb"),
    (["--gpu", "5", "--", "true"], "GPU 5 does not exist; valid: 0..0"),
    (["-o", "/nonexistent/dir/t.csv", "--", "true"], "directory /nonexistent/dir does not exist"),
])
def test_bad_input_is_one_line_and_changes_nothing(h100, args, msg):
    r = h100.migctl("bench", *args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("migctl: error: ") and msg in r.stderr and len(r.stderr.splitlines()) == 1
    assert "Traceback" not in r.stderr
    assert h100.layout() == {"mig": True, "gis": []}
    assert not BenchJournal(h100.node()).path.exists()


@pytest.mark.parametrize("cmd,code,msg", [
    (["no-such-profiler", "--x"], 127, "command 'no-such-profiler' not found in PATH"),
    (["/etc/passwd"], 126, "command '/etc/passwd' is not executable"),
    (["./missing.sh"], 127, "command './missing.sh' not found"),
])
def test_a_command_that_cannot_run_is_refused_before_the_gpu_is_touched(h100, cmd, code, msg):
    """As ``run`` does (exit 127/126, one line): bench used to reshape the GPU for every size and fail each
    run with the shell's message (a layout change per size on a real GPU for a typo)."""
    r = h100.migctl("bench", "--", *cmd)
    assert r.returncode == code, r.stderr
    assert r.stderr.startswith("migctl: error: ") and msg in r.stderr and len(r.stderr.splitlines()) == 1
    assert h100.layout() == {"mig": True, "gis": []}
    assert not BenchJournal(h100.node()).path.exists()


def test_a_running_bench_is_not_recovered_under_its_feet(h100, tmp_path):
    marker = tmp_path / "started"
    cmd = [sys.executable, "-c", f"import time; open({str(marker)!r}, 'w').write('x'); time.sleep(300)"]
    p = h100.popen("bench", "--profiles", "1g.10gb", "--repeat", "1", "--", *cmd)
    try:
        _wait_file(marker, p)
        r = h100.migctl("bench", "--recover")
        assert r.returncode == 4 and f"another migctl bench (PID {p.pid}) is measuring" in r.stderr
        with pytest.raises(BenchError):
            run_bench(h100.node(), Settings(command=GOOD))
    finally:
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=60)
    assert h100.layout() == {"mig": True, "gis": []}


def test_whole_only_on_a_gpu_with_mig_off_changes_nothing(tmp_path, monkeypatch):
    """scripts/real-gpu-check runs ``bench -p whole`` on a real GPU whose MIG mode may not change: with MIG already
    off, the bench makes no mutating NVML call at all (the simulator counts them)."""
    from tests.bench.conftest import make_sim

    off = make_sim(tmp_path, monkeypatch, "1xH200", mig=False)
    node = off.node()
    ops = node.sim.op_count()
    cmd = [sys.executable, "-c", "import json; print(json.dumps({'throughput': 2, 'latency_ms': 1, 'unit': 'x/s'}))"]
    res = run_bench(node, Settings(command=cmd, profiles=["whole"], repeat=1, warmup=1))
    assert [(r.target, r.status, r.throughput) for r in res.runs if not r.warmup] == [("whole", "ok", 2)]
    assert node.sim.op_count() == ops and node.gpu(0).mig_mode() == (0, 0)
