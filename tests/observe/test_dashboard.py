"""The shipped Grafana dashboard: every query's metric exists in the exporter's output, and every query runs
against a real Prometheus scraping the exporter."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.observe.conftest import Env, start_exporter, stop, wait_for
from tests.observe.test_prometheus import prometheus  # noqa: F401 - fixture

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "migctl-mig.json"
PROMQL_WORDS = {"sum", "by", "without", "rate", "increase", "irate", "histogram_quantile", "count", "time", "avg",
                "max", "min", "label_values", "on", "ignoring", "group_left", "group_right", "and", "or", "unless"}
CONFIG = """version: v1
mig-configs:
  a:
    - devices: all
      mig-enabled: true
      mig-devices: {"3g.40gb": 1, "1g.10gb": 2}
"""


def queries() -> list[str]:
    d = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    out = [t["expr"] for p in d["panels"] for t in p["targets"]]
    out += [v["query"] for v in d["templating"]["list"] if v["type"] == "query"]
    assert len(out) >= 10
    return out


def metric_names(expr: str) -> set[str]:
    e = re.sub(r'"[^"]*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", e)
    e = re.sub(r"label_values\(([^,]*),[^)]*\)", r"\1", e)
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", e)) - PROMQL_WORDS
    return {n for n in names if not re.fullmatch(r"\d+(\.\d+)?", n)}


def exporter_families(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def _scrape_twice(env: Env) -> str:
    """Two collections in one process (activity needs two GPM samples), after an apply and with a lease row."""
    from migctl.device import open_node
    from migctl.observe.exporter import make_registry, render

    reg, _ = make_registry(open_node(env.spec, str(env.state)))
    render(reg)
    return render(reg).decode()


def test_every_dashboard_metric_is_exported(h100x2: Env) -> None:
    cfg = h100x2.tmp / "cfg.yaml"
    cfg.write_text(CONFIG, encoding="utf-8")
    assert h100x2.migctl("apply", "-f", str(cfg), "-c", "a", "-q").returncode == 0
    exported = exporter_families(_scrape_twice(h100x2))
    used = set().union(*(metric_names(q) for q in queries()))
    assert {"DCGM_FI_DEV_FB_USED", "migctl_gpu_compute_slices", "migctl_queue_wait_seconds_bucket"} <= used
    missing = sorted(used - exported)
    assert missing == [], f"dashboard queries use metrics the exporter does not export: {missing}"


def test_every_dashboard_query_runs_on_prometheus(h100x2: Env, prometheus: Any) -> None:  # noqa: F811
    start, query = prometheus
    cfg = h100x2.tmp / "cfg.yaml"
    cfg.write_text(CONFIG, encoding="utf-8")
    assert h100x2.migctl("apply", "-f", str(cfg), "-c", "a", "-q").returncode == 0
    exp, port = start_exporter(h100x2)
    try:
        start(port)
        wait_for(lambda: query("DCGM_FI_PROF_GR_ENGINE_ACTIVE"), 30, "two scrapes")
        empty = []
        for q in queries():
            if q.startswith("label_values("):
                continue
            expr = q.replace("$instance", ".*")
            result = query(expr)  # asserts status == success: valid PromQL
            if not result and "histogram_quantile" not in expr and "increase(" not in expr:
                empty.append(expr)
        assert empty == [], f"queries with no data while the exporter runs: {empty}"
    finally:
        stop(exp)
