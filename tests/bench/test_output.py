"""Bench output: the ParvaGPU table reads back through the planner's reader; JSON; the plot."""

from __future__ import annotations

import json
import sys

import pytest

from migctl.bench import output
from migctl.bench.runner import Settings, run_bench
from migctl.planner.serving import WHOLE, read_profile_csv

CMD = [sys.executable, "-c", "import json, os; s = int(os.environ['MIGCTL_BENCH_SLICES']); "
       "p = int(os.environ['MIGCTL_BENCH_PROCS']); "
       "print(json.dumps({'throughput': 7.0 * s / p, 'latency_ms': 50.0 / s, 'unit': 'req/s', 'note': 'x'}))"]


def test_table_json_and_plot(h100, tmp_path):
    res = run_bench(h100.node(), Settings(command=CMD, profiles=["1g.10gb", "3g.40gb", "whole"], procs=[1, 2],
                                          repeat=1, warmup=0))
    table = tmp_path / "t.csv"
    output.write_private(table, output.to_table_csv(res))
    rows = read_profile_csv(table)
    got = {(r.size, r.procs): r.throughput for r in rows}
    lat = {(r.size, r.procs): r.latency_s for r in rows}
    assert lat == pytest.approx({(1, 1): 0.05, (1, 2): 0.05, (3, 1): 50 / 3 / 1000, (3, 2): 50 / 3 / 1000,
                                 (WHOLE, 1): 50 / 7 / 1000, (WHOLE, 2): 50 / 7 / 1000}, rel=1e-5)
    assert got == pytest.approx({(1, 1): 7.0, (1, 2): 3.5, (3, 1): 21.0, (3, 2): 10.5, (WHOLE, 1): 49.0,
                                 (WHOLE, 2): 24.5}, rel=1e-5)
    assert all(r.batch == 1 for r in rows)
    data = json.loads(output.to_json(res))
    row = next(r for r in data["rows"] if r["target"] == "3g.40gb" and r["procs"] == 2)
    assert row["instance_throughput"] == 21.0 and row["throughput_per_slice"] == 7.0
    assert row["throughput"] == {"n": 1, "median": 10.5, "min": 10.5, "max": 10.5, "spread": 0.0}
    assert data["runs"][0]["extra"] == {"note": "x"} and data["restored"] is True
    lines = output.summary_lines(res)
    assert lines[0].split()[:3] == ["target", "batch", "procs"] and len(lines) == 7
    png = tmp_path / "p.png"
    output.plot(res, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
