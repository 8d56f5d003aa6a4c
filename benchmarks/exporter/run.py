"""Benchmark of ``migctl exporter`` on a 64-GPU simulated node with 448 MIG devices.

    nice -n 10 python benchmarks/exporter/run.py [--scrapes 60] [--interval 15] [--out benchmarks/exporter]

Setup: ``64xH100-80GB`` simulated node (state file in a temp dir), MIG enabled, 7 x 1g.10gb GI + CI per GPU
= 448 MIG devices; 8 of them run a real client process (registered like ``migctl run`` does), so memory
and GPM activity are read from live processes.
Measures, against the real exporter process (``migctl exporter --listen 127.0.0.1:0``) over HTTP:
* scrape latency: N sequential GETs of /metrics (after 2 warm-up scrapes), p50/p99/max;
* CPU share at a 15 s scrape interval: the exporter's CPU seconds (psutil, user+system) per scrape, plus its
  CPU while idle for one interval, divided by interval x 2 cores (the share of a 2-core machine).
Writes results.json and results.md next to this file (or to --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPEC = "64xH100-80GB"


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def cpu_s(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scrapes", type=int, default=60)
    ap.add_argument("--interval", type=float, default=15.0)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="migctl-bench-exporter-"))
    env = dict(os.environ, MIGCTL_STATE_DIR=str(tmp / "state"), MIGCTL_SIM=SPEC, MIGCTL_SIM_STATE=str(tmp / "sim.json"),
               PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    os.environ.update({k: env[k] for k in ("MIGCTL_STATE_DIR", "MIGCTL_SIM", "MIGCTL_SIM_STATE")})
    sys.path.insert(0, str(ROOT / "src"))
    from migctl.device import open_node

    node = open_node(SPEC, str(tmp / "sim.json"))
    t0 = time.perf_counter()
    for g in node.gpus():
        g.set_mig_mode(True)
        p = g.profile("1g.10gb")
        assert p is not None
        for _ in range(7):
            g.create_gi(p.id).create_ci()
    setup_s = time.perf_counter() - t0
    devices = sum(len(g.mig_devices()) for g in node.gpus())
    assert devices == 448, devices
    clients = []
    for i in range(8):  # 8 busy devices, one per GPU 0..7, GI of device 0
        c = subprocess.Popen([sys.executable, "-c", "import time\nb = bytearray(b'x' * (64 << 20))\ntime.sleep(3600)"])
        d = node.gpu(i).mig_devices()[0]
        assert node.sim.add_client(i, c.pid, d.gi_id, d.ci_id, name="bench") == 0
        clients.append(c)
    exp = subprocess.Popen([sys.executable, "-m", "migctl.cli.main", "exporter", "--listen", "127.0.0.1:0"],
                           env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert exp.stderr is not None
        m = re.search(r":(\d+)/metrics", exp.stderr.readline())
        assert m, "exporter did not start"
        url = f"http://127.0.0.1:{m.group(1)}/metrics"

        def scrape() -> tuple[float, int]:
            t = time.perf_counter()
            with urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 - loopback
                body = r.read()
            return time.perf_counter() - t, len(body)

        for _ in range(2):
            scrape()
        c0 = cpu_s(exp.pid)
        lat, size = [], 0
        for _ in range(args.scrapes):
            dt, size = scrape()
            lat.append(dt)
        cpu_per_scrape = (cpu_s(exp.pid) - c0) / args.scrapes
        c1 = cpu_s(exp.pid)
        time.sleep(args.interval)
        idle_cpu = cpu_s(exp.pid) - c1
    finally:
        exp.terminate()
        exp.wait(10)
        for c in clients:
            c.kill()
            c.wait()
    share = (cpu_per_scrape + idle_cpu) / (args.interval * args.cores)
    ms = [x * 1000 for x in lat]
    res = {
        "command": (f"nice -n {os.nice(0)} " if os.nice(0) else "") + "python benchmarks/exporter/run.py" + ("" if args.scrapes == 60 else f" --scrapes {args.scrapes}")
        + ("" if args.interval == 15.0 else f" --interval {args.interval:g}"),
        "node": SPEC, "mig_devices": devices, "busy_devices": len(clients), "setup_s": round(setup_s, 2),
        "scrapes": args.scrapes, "response_bytes": size,
        "latency_ms": {"p50": round(pct(ms, 50), 1), "p99": round(pct(ms, 99), 1), "max": round(max(ms), 1),
                       "mean": round(statistics.mean(ms), 1)},
        "cpu_s_per_scrape": round(cpu_per_scrape, 4), "idle_cpu_s_per_interval": round(idle_cpu, 4),
        "interval_s": args.interval, "cores": args.cores, "cpu_share_of_machine": round(share, 5),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    md = f"""# Exporter benchmark

`{res['command']}` ({res['date']}; {res['machine']['cpus']} CPUs shared with other work, Python {res['machine']['python']})

Node: simulated {SPEC}, {devices} MIG devices (7 x 1g.10gb per GPU), {len(clients)} of them with a live client process.
Each scrape reads every GPU, GI and MIG device through NVML (the simulator under pynvml), per-GI GPM activity,
the jobs database and the apply journal, and renders {size / 1024:.0f} KiB of metrics.

| | |
|---|---|
| scrape latency p50 | {res['latency_ms']['p50']} ms |
| scrape latency p99 | {res['latency_ms']['p99']} ms (max {res['latency_ms']['max']} ms, {args.scrapes} scrapes) |
| CPU per scrape | {res['cpu_s_per_scrape'] * 1000:.0f} ms |
| CPU while idle, per {args.interval:g} s | {res['idle_cpu_s_per_interval'] * 1000:.0f} ms |
| share of a {args.cores}-core machine at a {args.interval:g} s scrape interval | {100 * share:.2f}% |

CPU per scrape is the exporter's own cost (psutil, user+system). Wall-clock latency also includes waiting
for a CPU: the benchmark runs under `nice -n 10` on a machine shared with other work, so p99 mostly measures
that contention.
"""
    (args.out / "results.md").write_text(md, encoding="utf-8")
    print(md)


if __name__ == "__main__":
    main()
