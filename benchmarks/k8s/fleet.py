"""Benchmark: a fleet of node agents, one process each, against one stand-in API server.

    nice -n 10 python benchmarks/k8s/fleet.py [--nodes 50] [--out benchmarks/k8s]

N Nodes (each a simulated 1xA100-40GB with its own state), N `k8s agent` processes forked from one
launcher (tests/k8s/fleet.py: imports paid once), the stand-in API server of the tests (tests/k8s/apiserver.py:
the real HTTP API, the official client unmodified). Phase 1: every node labelled all-balanced reaches
state success with its layout; phase 2: all N relabelled all-1g.5gb converge too. Checked for every node:
the state label went pending -> success twice, operands deployed again. Measured: seconds per phase and the
requests the server answered. The test suite runs the same scenario with 8 nodes
(tests/k8s/test_agent_proc.py::test_a_fleet_of_agent_processes).
Writes results.json and results.md next to this file (or to --out).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds each phase may take")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    args = ap.parse_args()
    sys.path[:0] = [str(ROOT), str(ROOT / "src")]
    os.environ["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")
    from tests.k8s.apiserver import ApiServer
    from tests.k8s.fleet import run_fleet

    load_before = os.getloadavg()[0]
    server = ApiServer().start()
    try:
        with tempfile.TemporaryDirectory(prefix="migctl-fleet-") as d:
            t = time.monotonic()
            took = run_fleet(server, Path(d), args.nodes, timeout=args.timeout)
            total = time.monotonic() - t
        methods = collections.Counter(m for m, _, _ in server.requests)
    finally:
        server.stop()
    load = os.getloadavg()
    res = {"nodes": args.nodes, "gpu": "1xA100-40GB", **{k: round(v, 2) for k, v in took.items()},
           "total_s": round(total, 2), "requests": dict(sorted(methods.items())),
           "all_nodes_converged": True, "cpus": os.cpu_count(), "loadavg_1m_before": round(load_before, 2),
           "loadavg_1m_at_end": round(load[0], 2),
           "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "results.md").write_text(
        "# k8s agent fleet benchmark\n\n"
        f"`python benchmarks/k8s/fleet.py --nodes {args.nodes}` ({res['cpus']} CPUs, Python {res['python']}, "
        f"{res['date']}; 1-minute load average {res['loadavg_1m_before']} before, {res['loadavg_1m_at_end']} at the "
        "end, the agents' own load included: the machine was shared).\n\n"
        f"{args.nodes} Nodes, {args.nodes} agent processes, one stand-in API server; every node converged in both "
        "phases with the label sequence pending -> success twice.\n\n"
        "| phase | seconds |\n|---|---|\n"
        f"| start {args.nodes} agents, apply all-balanced on every node | {res['start_and_apply_s']} |\n"
        f"| relabel all to all-1g.5gb, converge | {res['relabel_s']} |\n\n"
        f"Requests answered by the server: {res['requests']}.\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
