"""The exporter's own series (apply state, queue, leases), its HTTP surface, bad input, and that a scrape never
waits for the node lock."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from tests.observe.conftest import Env, make_env, start_exporter, stop, wait_for

from migctl.jobs.leases import Request
from migctl.reconcile.live import read_gpu
from simenv import kill_left, stop_daemons_under

CONFIG = """version: v1
mig-configs:
  a:
    - devices: all
      mig-enabled: true
      mig-devices: {"1g.10gb": 3}
  b:
    - devices: all
      mig-enabled: true
      mig-devices: {"2g.20gb": 2}
"""


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the first sample of ``name`` whose labels include ``labels``."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return None


def scrape(env: Env) -> str:
    r = env.migctl("exporter", "--once")
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_apply_state_series(h100x2: Env) -> None:
    cfg = h100x2.tmp / "cfg.yaml"
    cfg.write_text(CONFIG, encoding="utf-8")
    t0 = time.time()
    assert h100x2.migctl("apply", "-f", str(cfg), "-c", "a", "-q").returncode == 0
    out = scrape(h100x2)
    assert sample(out, "migctl_apply_total", outcome="applied") == 1
    assert sample(out, "migctl_apply_journal_pending") == 0
    last = sample(out, "migctl_apply_last_success_timestamp_seconds")
    assert last is not None and t0 - 1 <= last <= time.time() + 1
    assert sample(out, "migctl_gpu_memory_slices", gpu="0", state="used") == 3
    assert sample(out, "migctl_gpu_compute_slices", gpu="0", state="free") == 4
    # an apply killed in the middle (simulator crash hook): a journal needs recovery
    env = dict(h100x2.env, MIGCTL_SIM_CRASH_AT="3")
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "migctl.cli.main", "apply", "-f", str(cfg), "-c", "b", "-q"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    out = scrape(h100x2)
    assert sample(out, "migctl_apply_journal_pending") == 1
    assert h100x2.migctl("recover").returncode == 0
    out = scrape(h100x2)
    assert sample(out, "migctl_apply_journal_pending") == 0
    assert sample(out, "migctl_apply_total", outcome="recovered") == 1
    assert sample(out, "migctl_apply_total", outcome="applied") == 1


def test_queue_and_lease_series(h100x2: Env) -> None:
    h100x2.layout(0, ["1g.10gb"])
    for k in range(3):
        assert h100x2.migctl("submit", "-p", "1g.10gb", "--name", f"j{k}", "--", "true"
                             ).returncode == 0
    out = scrape(h100x2)
    assert sample(out, "migctl_queue_jobs", state="queued") == 3
    assert sample(out, "migctl_queue_wait_seconds_count") == 0
    assert sample(out, "migctl_queue_jobs_waiting", reason="no-worker") == 3  # no worker serves the node
    assert sample(out, "migctl_queue_jobs_waiting", reason="resources") == 0
    r = h100x2.migctl("worker", "--until-idle", "-q", timeout=120)
    assert r.returncode == 0, r.stderr
    out = scrape(h100x2)
    assert sample(out, "migctl_queue_jobs", state="queued") == 0
    assert sample(out, "migctl_queue_jobs", state="done") == 3
    assert sample(out, "migctl_queue_wait_seconds_count") == 3
    assert sample(out, "migctl_queue_wait_seconds_bucket", le="+Inf") == 3
    assert sample(out, "migctl_leases") == 0


def test_waiting_jobs_by_reason(h100x2: Env) -> None:
    """Queued jobs by why they wait, as `migctl jobs` says: with a live worker, the reason it wrote ("none"
    before it has looked at a job); with none, every waiting job is "no-worker". `top` shows the counts."""
    from migctl.jobs.common import connect, node_key
    from migctl.jobs.queue import JobQueue, Worker

    h100x2.layout(0, ["7g.80gb"])
    holder = subprocess.Popen(["sleep", "120"])
    try:
        [gi] = read_gpu(h100x2.node().gpu(0)).gis
        assert h100x2.node().sim.add_client(0, holder.pid, gi.id, 0) == 0  # the only instance, busy
        q = JobQueue(h100x2.node())
        ids = [q.submit(["true"], Request(profile="7g.80gb", gpus=(0,))) for _ in range(2)]
        w = Worker(q)
        assert w.acquire()
        try:
            out = scrape(h100x2)
            assert sample(out, "migctl_queue_jobs_waiting", reason="none") == 2  # not looked at yet
            assert sample(out, "migctl_queue_jobs_waiting", reason="no-worker") == 0
            w.step()
            out = scrape(h100x2)
            assert sample(out, "migctl_queue_jobs_waiting", reason="resources") == 2, out
            conn = connect()
            with conn:  # a value migctl never writes (edited by hand) is counted apart, never as a reason
                conn.execute("UPDATE jobs SET wait_reason='bogus' WHERE id=? AND node=?", (ids[1], node_key(h100x2.node())))
            out = scrape(h100x2)
            assert (sample(out, "migctl_queue_jobs_waiting", reason="resources"),
                    sample(out, "migctl_queue_jobs_waiting", reason="other")) == (1, 1)
            top = h100x2.migctl("top", "--once")
            assert "(waiting: 1 resources, 1 other)" in top.stdout, top.stdout
        finally:
            w.release()
        out = scrape(h100x2)
        assert sample(out, "migctl_queue_jobs_waiting", reason="no-worker") == 2
        assert sample(out, "migctl_queue_jobs_waiting", reason="resources") == 0
    finally:
        holder.kill()
        holder.wait()


def test_waiting_run_series(h100x2: Env) -> None:
    """A ``migctl run`` waiting for a device is counted (it is not a queued job), with how long the one
    waiting longest has waited, and ``top`` shows the count; both series go once it has started."""
    import json

    h100x2.layout(0, ["1g.10gb"])
    go = h100x2.tmp / "go"
    args = ("run", "--no-create", "-p", "1g.10gb")
    holder = h100x2.popen(*args, "--", "sh", "-c", f'while [ ! -e "{go}" ]; do sleep 0.05; done')
    waiter = None
    try:
        wait_for(lambda: sample(scrape(h100x2), "migctl_leases") == 1, what="the holder's lease")
        out = scrape(h100x2)
        assert sample(out, "migctl_runs_waiting") == 0 and sample(out, "migctl_runs_waiting_longest_seconds") is None
        waiter = h100x2.popen(*args, "--wait", "60", "--", "true")
        wait_for(lambda: json.loads(h100x2.migctl("jobs", "--json").stdout)["waiting_runs"], what="the waiting run")
        out = scrape(h100x2)
        assert sample(out, "migctl_runs_waiting") == 1 and sample(out, "migctl_queue_jobs", state="queued") == 0
        longest = sample(out, "migctl_runs_waiting_longest_seconds")
        assert longest is not None and 0 <= longest < 60
        top = h100x2.migctl("top", "--once")
        assert top.returncode == 0 and "runs waiting 1" in top.stdout, top.stdout + top.stderr
        go.touch()
        assert holder.wait(60) == 0 and waiter.wait(60) == 0
        out = scrape(h100x2)
        assert sample(out, "migctl_runs_waiting") == 0 and sample(out, "migctl_runs_waiting_longest_seconds") is None
    finally:
        for p in (holder, waiter):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(20)


def test_an_unreadable_jobs_database_keeps_the_gpu_series(h100x2: Env) -> None:
    """A jobs database that is not SQLite: the scrape still answers with every GPU and MIG series (it was a
    500 with none), says ``migctl_jobs_database_readable 0``, and ``top`` names the file; a readable one is
    1 again."""
    h100x2.layout(0, ["1g.10gb"])
    assert sample(scrape(h100x2), "migctl_jobs_database_readable") == 1
    db = h100x2.tmp / "state" / "jobs.sqlite"
    assert h100x2.migctl("submit", "--", "true").returncode == 0 and db.exists()
    for extra in ("-wal", "-shm"):
        db.with_name(db.name + extra).unlink(missing_ok=True)
    db.write_bytes(b"not a database " * 400)
    exp, port = start_exporter(h100x2)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:  # noqa: S310
            assert r.status == 200
            out = r.read().decode()
    finally:
        stop(exp)
    assert sample(out, "migctl_jobs_database_readable") == 0
    assert sample(out, "migctl_gpu_memory_slices", gpu="0", state="used") == 1
    assert sample(out, "DCGM_FI_DEV_FB_USED", gpu="0", GPU_I_PROFILE="1g.10gb") is not None
    top = h100x2.migctl("top", "--once")
    text = "".join(top.stdout.split())  # (the terminal width may wrap the line anywhere)
    assert top.returncode == 0 and f"JOBSDATABASEUNREADABLE({db}:fileisnotadatabase)" in text, top.stdout


def test_damaged_apply_history_and_journal_do_not_fail_the_scrape(h100x2: Env) -> None:
    """Apply history lines that are not objects or whose times are not numbers are skipped; a damaged last or
    pending journal is read as far as it can be. Each of these failed every scrape with a traceback before."""
    cfg = h100x2.tmp / "cfg.yaml"
    cfg.write_text(CONFIG, encoding="utf-8")
    assert h100x2.migctl("apply", "-f", str(cfg), "-c", "a", "-q").returncode == 0
    state = h100x2.tmp / "state"
    (history,) = state.glob("apply-*.history.jsonl")
    good = history.read_text().strip()
    finished = float(re.search(r'"finished": ([0-9.]+)', good).group(1))
    history.write_text("\n".join(["5", "null", "[]", good, '{"outcome": "applied", "finished": "x"}',
                                  '{"outcome": "applied", "finished": {}}', '{"outcome": [1]}', "{"]) + "\n")
    out = scrape(h100x2)
    assert sample(out, "migctl_apply_total", outcome="applied") == 3  # the good line and two with bad times
    assert sample(out, "migctl_apply_last_success_timestamp_seconds") == finished
    assert sample(out, "migctl_gpu_memory_slices", gpu="0", state="used") == 3
    history.unlink()
    (last,) = state.glob("apply-*.last.json")
    journal = last.with_name(last.name.replace(".last.json", ".journal.json"))
    for text in ("5", "null", '{"phase": "applied", "finished": "x", "started": []}'):
        last.write_text(text)
        journal.write_text(text)
        out = scrape(h100x2)
        assert sample(out, "migctl_apply_journal_pending") == 1, text  # there, if damaged: recover says what
        assert sample(out, "migctl_apply_last_success_timestamp_seconds") is None, text
    journal.unlink()
    assert sample(scrape(h100x2), "migctl_apply_journal_pending") == 0


def test_damaged_job_times_do_not_fail_top_or_skew_the_wait_histogram(h100x2: Env) -> None:
    """A running job whose start time was edited by hand: `top` shows the job without its age (a traceback
    before), and the wait histogram leaves the row out (SQLite read the text as 0: a sum of -1.8e9 s)."""
    import sqlite3

    h100x2.layout(0, ["1g.10gb"])
    gate = h100x2.tmp / "gate"
    assert h100x2.migctl("submit", "--", "sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done").returncode == 0
    assert h100x2.migctl("submit", "--", "true").returncode == 0
    w = h100x2.popen("worker", "-q")
    db = sqlite3.connect(h100x2.tmp / "state" / "jobs.sqlite")
    try:
        wait_for(lambda: db.execute("SELECT COUNT(*) FROM jobs WHERE state='running'").fetchone()[0] == 1,
                 what="job 1 running")
        stop(w)
        with db:
            db.execute("UPDATE jobs SET started='x' WHERE id=1")
            db.execute("UPDATE jobs SET started=created + 2.5, state='done' WHERE id=2")
        out = scrape(h100x2)
        assert sample(out, "migctl_queue_wait_seconds_count") == 1
        assert sample(out, "migctl_queue_wait_seconds_sum") == 2.5
        r = h100x2.migctl("top", "--once")
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert re.search(r"^\s*1\s+running\s+MIG-", r.stdout, re.M), r.stdout
    finally:
        gate.touch()
        db.close()


def test_http_surface_and_bad_listen(h100x2: Env) -> None:
    exp, port = start_exporter(h100x2)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:  # noqa: S310
            assert r.status == 200 and r.read() == b"ok\n"
        for path in ("/healthz", "/metrics"):  # HEAD: GET's status and headers, no body (was 501)
            head = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="HEAD")
            with urllib.request.urlopen(head, timeout=10) as r:  # noqa: S310
                assert r.status == 200 and int(r.headers["Content-Length"]) > 0 and r.read() == b""
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nope", timeout=10)  # noqa: S310
            raise AssertionError("expected 404")
        except urllib.error.HTTPError as e:
            assert e.code == 404
        busy = h100x2.migctl("exporter", "--listen", f"127.0.0.1:{port}", timeout=30)
        assert busy.returncode == 2 and busy.stderr.startswith("migctl: error: cannot listen on")
    finally:
        stop(exp)
    for bad in ("nonsense", "127.0.0.1:99999", "127.0.0.1:"):
        r = h100x2.migctl("exporter", "--listen", bad)
        assert r.returncode == 2, bad
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("migctl: error: --listen") and "HOST:PORT" in r.stderr
    r = h100x2.migctl("top", "--interval", "0")
    assert r.returncode == 2 and r.stderr.startswith("migctl: error: --interval")


def test_scrape_does_not_wait_for_the_node_lock(h100x2: Env) -> None:
    """An apply holds the node lock: a scrape still answers at once."""
    from migctl.observe.exporter import make_registry, render
    from migctl.reconcile.journal import node_lock

    node = h100x2.node()
    h100x2.layout(0, ["1g.10gb"])
    reg, _ = make_registry(node)
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with node_lock(node, timeout=5):
            held.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(60)
        result: dict[str, Any] = {}
        s = threading.Thread(target=lambda: result.setdefault("text", render(reg).decode()))
        s.start()
        s.join(20)
        assert not s.is_alive(), "a scrape waited for the node lock"
        assert sample(result["text"], "migctl_gpu_instances", gpu="0") == 1
    finally:
        release.set()
        t.join()


def test_smi_gpus_and_exporter_show_the_same_used_memory(h100x2: Env) -> None:
    """A client's real RSS is the MIG device's memory use, the same in `smi`, `gpus`, `gpus --map` and metrics."""
    import json
    import subprocess
    import sys

    (gi, uuid), _ = h100x2.layout(0, ["1g.10gb", "1g.10gb"])
    hog = subprocess.Popen([sys.executable, "-c", "import time\nb = bytearray(b'x' * (200 << 20))\nprint('up', flush=True)\n"
                            "time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert hog.stdout is not None and hog.stdout.readline().strip() == "up"
        assert h100x2.migctl("sim", "add-client", str(hog.pid), "-i", "0", "--device", uuid).returncode == 0
        dev = next(d for d in json.loads(h100x2.migctl("gpus", "--json").stdout)["gpus"][0]["mig_devices"]
                   if d["uuid"] == uuid)
        used = dev["memory_used_mib"]
        assert 200 + 25 <= used < 400, used  # 25 MiB baseline + the process's RSS
        smi = h100x2.migctl("smi").stdout
        assert re.search(rf"\b{used}MiB / +9984MiB", smi), smi
        out = scrape(h100x2)
        fb = sample(out, "DCGM_FI_DEV_FB_USED", gpu="0", GPU_I_ID=str(gi))
        assert fb is not None and abs(fb - used) <= 2  # RSS may move by a page or two between calls
        shown = {int(x) for x in re.findall(r"\b(\d+)M\b", h100x2.migctl("gpus", "--map").stdout)}
        assert any(abs(x - used) <= 2 for x in shown), (used, shown)
    finally:
        hog.kill()
        hog.wait()
    out = scrape(h100x2)
    assert sample(out, "DCGM_FI_DEV_FB_USED", gpu="0", GPU_I_ID=str(gi)) == 25  # the client is gone


def test_an_idle_connection_is_closed_and_scrapes_go_on() -> None:
    """Each connection holds a thread of the server: one that connected and sent nothing held it for ever.
    It is now closed after the idle timeout (60 s; 0.5 s here), while a scrape beside it is answered."""
    import socket
    import threading

    from prometheus_client import CollectorRegistry, Gauge

    from migctl.observe.exporter import serve

    reg = CollectorRegistry()
    Gauge("migctl_test_value", "A value.", registry=reg).set(1)
    server = serve(reg, "127.0.0.1", 0, idle_timeout=0.5)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        idle = socket.create_connection(("127.0.0.1", port), timeout=30)
        partial = socket.create_connection(("127.0.0.1", port), timeout=30)
        partial.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:  # noqa: S310
            assert b"migctl_test_value 1.0" in r.read()
        assert idle.recv(1) == b""  # closed by the server (a recv that timed out would raise instead)
        assert partial.recv(1) == b""
        idle.close()
        partial.close()
    finally:
        server.shutdown()
        server.server_close()


def test_shared_devices_are_busy_before_any_cuda_context(h100x2: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A device with an MPS server or a time-sliced client migctl started is busy in the exporter, ``top`` and
    the slice map from the start, as ``migctl.busy`` (which every destroy asks) counts it: a real driver lists
    such a process only after its first CUDA call (``sim client-delay``), and there is no lease."""
    short = tempfile.mkdtemp(prefix="mig")  # the MPS control socket's path must stay short
    h100x2.env["MIGCTL_STATE_DIR"] = short
    monkeypatch.setenv("MIGCTL_STATE_DIR", short)
    uuids = [u for _, u in h100x2.layout(0, ["1g.10gb", "1g.10gb"])]
    assert h100x2.migctl("sim", "client-delay", "600").returncode == 0
    go = h100x2.tmp / "go"
    hold = ("--", "sh", "-c", f'while [ ! -e "{go}" ]; do sleep 0.05; done')
    runs = [h100x2.popen("run", "--no-create", "-p", "1g.10gb", "--isolation", iso, "--share", "2", *hold)
            for iso in ("none", "soft")]
    try:
        def both_busy() -> bool:
            out = scrape(h100x2)
            return all(sample(out, "migctl_mig_device_busy", mig_uuid=u) == 1 for u in uuids)

        wait_for(both_busy, what="both shared devices busy")
        out = scrape(h100x2)
        assert all(sample(out, "migctl_mig_device_processes", mig_uuid=u) == 0 for u in uuids), out  # none in NVML
        assert sample(out, "migctl_leases") == 0, out
        top = h100x2.migctl("top", "--once")
        assert top.returncode == 0, top.stderr
        assert "MPS server" in top.stdout and "time-sliced client" in top.stdout, top.stdout
        gmap = h100x2.migctl("gpus", "--map", "-i", "0")
        assert gmap.returncode == 0 and "=" not in gmap.stdout.split("# busy")[0], gmap.stdout
        assert sample(out, "migctl_shared_clients_readable") == 1, out
        # a damaged client list: said (the series, top), not a failed scrape
        lists = sorted(Path(short).glob("mps/*/*/clients.json"))
        saved = [f.read_text() for f in lists]
        lists[0].write_text("{garbage")
        out = scrape(h100x2)
        assert sample(out, "migctl_shared_clients_readable") == 0 and sample(out, "DCGM_FI_DEV_FB_USED") is not None, out
        top = h100x2.migctl("top", "--once")
        assert top.returncode == 0 and "SHARED CLIENTS UNREADABLE" in top.stdout, top.stdout + top.stderr
        for f, text in zip(lists, saved, strict=True):
            f.write_text(text)
        go.touch()
        codes = [p.wait(60) for p in runs]
        assert codes == [0, 0], [(c, p.args, p.stderr.read() if p.stderr else "") for c, p in zip(codes, runs, strict=True)]
        out = scrape(h100x2)
        assert all(sample(out, "migctl_mig_device_busy", mig_uuid=u) == 0 for u in uuids), out
    finally:
        go.touch()
        kill_left(runs)
        stop_daemons_under(short)
        shutil.rmtree(short, ignore_errors=True)


def test_a_gpu_used_whole_shows_who_uses_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An L4 (no MIG) shared by an MPS run, before any CUDA call: the exporter's ``migctl_gpu_busy`` is 1, ``top``
    has a ``whole GPU`` row naming the MPS client and server, and ``gpus --map`` says it is in use. They showed
    only "MIG not supported" (and no series said busy); ``leases`` and every lease decision saw the clients."""
    l4 = make_env(tmp_path, monkeypatch, "1xL4", mig=False)
    short = tempfile.mkdtemp(prefix="mig")  # the MPS control socket's path must stay short
    l4.env["MIGCTL_STATE_DIR"] = short
    monkeypatch.setenv("MIGCTL_STATE_DIR", short)
    assert l4.migctl("sim", "client-delay", "600").returncode == 0
    go = l4.tmp / "go"
    run = l4.popen("run", "--isolation", "soft", "--share", "2", "--", "sh", "-c",
                   f'while [ ! -e "{go}" ]; do sleep 0.05; done')
    try:
        wait_for(lambda: sample(scrape(l4), "migctl_gpu_busy", gpu="0") == 1, what="the L4 busy")
        [client] = json.loads(l4.migctl("leases", "--json").stdout)["shared"]
        top = l4.migctl("top", "--once")
        assert top.returncode == 0, top.stderr
        [row] = [ln for ln in top.stdout.splitlines() if "whole GPU" in ln]
        assert f"MPS client {client['pid']}" in row and "MPS server" in row, top.stdout
        gmap = l4.migctl("gpus", "--map")
        assert gmap.returncode == 0 and f"in use: MPS client {client['pid']}" in gmap.stdout, gmap.stdout
        go.touch()
        assert run.wait(60) == 0
        assert sample(scrape(l4), "migctl_gpu_busy", gpu="0") == 0
        top = l4.migctl("top", "--once")
        [row] = [ln for ln in top.stdout.splitlines() if "whole GPU" in ln]
        assert "MPS" not in row and "in use" not in l4.migctl("gpus", "--map").stdout, top.stdout
    finally:
        go.touch()
        kill_left([run])
        stop_daemons_under(short)
        shutil.rmtree(short, ignore_errors=True)


def test_an_idle_h200_reports_the_drivers_reserve_as_dcgm_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real idle H200 (driver 580.159.04, MIG off): NVML v2 said 0 B used, 644939776 B reserved, 150109880320 B
    free, and nvidia-smi printed 0 / 616 / 143156 MiB. The exporter counted the reserve as used (615) before."""
    h200 = make_env(tmp_path, monkeypatch, "1xH200@580.159.04", mig=False)
    out = scrape(h200)
    assert sample(out, "DCGM_FI_DEV_FB_USED", gpu="0") == 0, out
    assert sample(out, "DCGM_FI_DEV_FB_FREE", gpu="0") == 143156
    assert sample(out, "DCGM_FI_DEV_FB_RESERVED", gpu="0") == 616
    q = h200.migctl("smi", "--query-gpu=memory.used,memory.free,memory.reserved", "--format=csv,noheader")
    assert q.returncode == 0 and q.stdout.strip() == "0 MiB, 143156 MiB, 616 MiB", q.stdout + q.stderr
