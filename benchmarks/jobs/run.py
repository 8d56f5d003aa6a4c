"""Benchmark of leases and the local queue on a simulated 8xH100-80GB node.

    python benchmarks/jobs/run.py [--jobs 1000] [--out benchmarks/jobs]

Measures (all on the simulator, state in a temp dir, real child processes):
* lease latency: try_acquire + release of an existing free 1g.10gb device (56 exist), in-process;
* lease latency with dynamic creation: create GI+CI, lease, release with --ephemeral (destroy);
* `migctl run -- true` end to end (process start, lease, child, release);
* queue throughput: N short jobs (`true`) submitted, one worker: jobs started per second and
  total wall time until all are recorded done.
Writes results.json and results.md next to this file (or to --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def summary(xs: list[float]) -> dict[str, float]:
    ms = [x * 1000 for x in xs]
    return {"n": len(ms), "p50_ms": round(pct(ms, 50), 3), "p95_ms": round(pct(ms, 95), 3),
            "max_ms": round(max(ms), 3), "mean_ms": round(statistics.mean(ms), 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="migctl-bench-"))
    spec = "8xH100-80GB"
    os.environ.update(MIGCTL_STATE_DIR=str(tmp / "state"), MIGCTL_SIM=spec, MIGCTL_SIM_STATE=str(tmp / "sim.json"))

    from migctl.device import open_node
    from migctl.jobs import LeaseManager, Request
    from migctl.jobs.queue import JobQueue, Worker

    node = open_node(spec, str(tmp / "sim.json"))
    for g in node.gpus():
        g.set_mig_mode(True)
    results: dict[str, object] = {
        "node": spec, "cpus": os.cpu_count(), "python": platform.python_version(),
        "machine": platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }

    # --- dynamic creation latency (ephemeral: create, lease, destroy)
    mgr = LeaseManager(node)
    creates, releases = [], []
    for _ in range(30):
        t = time.perf_counter()
        lease = mgr.try_acquire(Request(profile="1g.10gb"))
        creates.append(time.perf_counter() - t)
        assert lease is not None and lease.created_instance
        t = time.perf_counter()
        mgr.release(lease, destroy=True)
        releases.append(time.perf_counter() - t)
    results["lease_create_instance"] = summary(creates)
    results["release_destroy_instance"] = summary(releases)

    # --- fill the node: 7 x 1g.10gb per GPU = 56 devices
    for g in node.gpus():
        p = g.profile("1g.10gb")
        for _ in range(7):
            g.create_gi(p.id).create_ci()
    lat, rel = [], []
    for _ in range(300):
        t = time.perf_counter()
        lease = mgr.try_acquire(Request(profile="1g.10gb", create=False))
        lat.append(time.perf_counter() - t)
        assert lease is not None
        t = time.perf_counter()
        mgr.release(lease)
        rel.append(time.perf_counter() - t)
    results["lease_existing_device"] = summary(lat)
    results["release"] = summary(rel)
    # with 55 of 56 devices leased (worst case scan)
    held = [mgr.try_acquire(Request(create=False)) for _ in range(55)]
    lat = []
    for _ in range(100):
        t = time.perf_counter()
        lease = mgr.try_acquire(Request(create=False))
        lat.append(time.perf_counter() - t)
        assert lease is not None
        mgr.release(lease)
    results["lease_existing_device_55_of_56_held"] = summary(lat)
    for h in held:
        assert h is not None
        mgr.release(h)

    # --- migctl run end to end
    e2e = []
    for _ in range(10):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "migctl.cli.main", "run", "--", "true"], check=True)
        e2e.append(time.perf_counter() - t)
    results["migctl_run_true_end_to_end"] = summary(e2e)

    # --- queue throughput
    q = JobQueue(node)
    t = time.perf_counter()
    ids = q.submit_many([{"cmd": ["true"], "req": Request(profile="1g.10gb")} for _ in range(args.jobs)])
    submit_s = time.perf_counter() - t
    w = Worker(q, poll=0.005)
    assert w.acquire()
    t0 = time.perf_counter()
    try:
        w.run(until_idle=True, ids=ids)
    finally:
        w.release()
    total = time.perf_counter() - t0
    rows = q.conn.execute(f"SELECT state, started, finished FROM jobs WHERE id IN ({','.join(map(str, ids))})").fetchall()
    states = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    starts = sorted(r["started"] for r in rows if r["started"])
    span = starts[-1] - starts[0] if len(starts) > 1 else total
    results["queue"] = {
        "jobs": args.jobs, "job": "true (exits at once)", "devices": 56,
        "submit_s": round(submit_s, 3), "wall_s_until_all_recorded": round(total, 3),
        "started_per_s": round(len(starts) / span, 1) if span else None,
        "completed_per_s": round(args.jobs / total, 1), "states": states,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    md = ["# migctl jobs benchmark", "",
          f"Simulated {spec} ({results['cpus']} CPUs, Python {results['python']}, {results['date']}).", "",
          "| measurement | n | p50 ms | p95 ms | max ms |", "|---|---|---|---|---|"]
    for k in ("lease_existing_device", "lease_existing_device_55_of_56_held", "release", "lease_create_instance",
              "release_destroy_instance", "migctl_run_true_end_to_end"):
        s = results[k]
        assert isinstance(s, dict)
        md.append(f"| {k} | {s['n']} | {s['p50_ms']} | {s['p95_ms']} | {s['max_ms']} |")
    qr = results["queue"]
    assert isinstance(qr, dict)
    md += ["", f"Queue: {qr['jobs']} jobs (`true`) on {qr['devices']} 1g.10gb devices, one worker: "
               f"**{qr['started_per_s']} jobs/s started**, {qr['completed_per_s']} jobs/s end to end "
               f"({qr['wall_s_until_all_recorded']} s until all recorded; submit {qr['submit_s']} s); "
               f"final states {qr['states']}.", ""]
    (out / "results.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
