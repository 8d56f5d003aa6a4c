"""The exporter against a real Prometheus server (Debian ``prometheus``, installed by scripts/install-prometheus.sh,
started here on loopback) and ``promtool check metrics``. A missing binary fails the test: it is never skipped."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from tests.observe.conftest import Env, free_port, start_exporter, stop, wait_for


def _binary(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} not found: run scripts/install-prometheus.sh (scripts/test.sh does, as root)"
    return path


def _get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback only
        return r.read().decode()


@pytest.fixture
def prometheus(tmp_path: Path) -> Any:
    """Start Prometheus with a scrape job built by the test; yields (start(target_port), query)."""
    procs: list[subprocess.Popen[bytes]] = []
    port = free_port()

    def start(target_port: int) -> None:
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: migctl\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{target_port}']\n", encoding="utf-8")
        log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen(
            [_binary("prometheus"), f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"], stdout=log, stderr=log))
        wait_for(lambda: "Ready" in _get(f"http://127.0.0.1:{port}/-/ready"), 30, "prometheus ready")

    def query(expr: str) -> list[dict[str, Any]]:
        q = urllib.parse.urlencode({"query": expr})
        data = json.loads(_get(f"http://127.0.0.1:{port}/api/v1/query?{q}"))
        assert data["status"] == "success", data
        return data["data"]["result"]

    yield start, query
    for p in procs:
        p.terminate()
        p.wait(15)


def _values(result: list[dict[str, Any]]) -> list[float]:
    return [float(r["value"][1]) for r in result]


WORKLOAD = (
    "import time\n"
    "buf = bytearray(b'x' * (300 << 20))\n"  # touched: 300 MiB resident
    "end = time.time() + 60\n"
    "import os, sys\n"
    "while time.time() < end and not os.path.exists(sys.argv[1]):\n"
    "    pass\n"
)


def test_prometheus_scrapes_per_instance_values_while_a_job_runs_and_after(h100x2: Env, prometheus: Any) -> None:
    start, query = prometheus
    (gi_a, uuid_a), (gi_b, uuid_b) = h100x2.layout(0, ["1g.10gb", "1g.10gb"])
    exp, port = start_exporter(h100x2)
    stop_file = h100x2.tmp / "stop"
    job = None
    try:
        assert _get(f"http://127.0.0.1:{port}/healthz").strip() == "ok"
        start(port)
        wait_for(lambda: query('up{job="migctl"} == 1'), 30, "first scrape")
        # idle: every MIG device idle, the driver's 25 MiB baseline per instance
        assert sorted(_values(query('DCGM_FI_DEV_FB_USED{GPU_I_ID!=""}'))) == [25.0, 25.0]
        assert _values(query("migctl_leases")) == [0.0]
        job = h100x2.popen("run", "--no-create", "-p", "1g.10gb", "--", sys.executable, "-c", WORKLOAD, str(stop_file))
        held = wait_for(lambda: query('migctl_mig_device_busy == 1'), 30, "a busy MIG device")
        assert len(held) == 1
        busy_uuid, busy_gi = held[0]["metric"]["mig_uuid"], held[0]["metric"]["GPU_I_ID"]
        assert busy_uuid in (uuid_a, uuid_b) and int(busy_gi) in (gi_a, gi_b)
        idle_gi = str(gi_b if int(busy_gi) == gi_a else gi_a)
        # memory of the busy instance = 25 MiB + the job's real RSS (>= 300 MiB); the other stays at 25
        big = wait_for(lambda: _values(query(f'DCGM_FI_DEV_FB_USED{{GPU_I_ID="{busy_gi}",gpu="0"}} > 300')),
                       30, "job memory in FB_USED")
        assert 300 < big[0] < 10 * 1024
        assert _values(query(f'DCGM_FI_DEV_FB_USED{{GPU_I_ID="{idle_gi}",gpu="0"}}')) == [25.0]
        # engine activity (H100: NVML GPM): the spinning job makes its instance active, the other idle
        wait_for(lambda: query(f'DCGM_FI_PROF_GR_ENGINE_ACTIVE{{GPU_I_ID="{busy_gi}"}} > 0.2'), 30, "activity")
        assert _values(query(f'DCGM_FI_PROF_GR_ENGINE_ACTIVE{{GPU_I_ID="{idle_gi}"}}')) == [0.0]
        info = wait_for(lambda: query(f'migctl_mig_device_info{{mig_uuid="{busy_uuid}",lease_pid!=""}}'), 30, "lease")
        assert info[0]["metric"]["GPU_I_PROFILE"] == "1g.10gb"
        assert _values(query("migctl_leases")) == [1.0]
        # the job ends: values go back
        stop_file.write_text("")
        assert job.wait(60) == 0
        wait_for(lambda: _values(query("migctl_leases")) == [0.0], 30, "lease released")
        wait_for(lambda: sorted(_values(query('DCGM_FI_DEV_FB_USED{GPU_I_ID!=""}'))) == [25.0, 25.0], 30,
                 "memory back to baseline")
        wait_for(lambda: _values(query("sum(migctl_mig_device_busy)")) == [0.0], 30, "idle again")
        wait_for(lambda: _values(query(f'DCGM_FI_PROF_GR_ENGINE_ACTIVE{{GPU_I_ID="{busy_gi}"}}')) == [0.0], 30,
                 "activity back to 0")
    finally:
        stop_file.write_text("")
        if job is not None and job.poll() is None:
            job.kill()
        stop(exp)


def test_promtool_check_metrics(h100x2: Env) -> None:
    promtool = _binary("promtool")
    h100x2.layout(0, ["3g.40gb", "1g.10gb"])
    strict = h100x2.migctl("exporter", "--once", "--no-dcgm-compat")
    assert strict.returncode == 0, strict.stderr
    r = subprocess.run([promtool, "check", "metrics"], input=strict.stdout, text=True, capture_output=True)
    assert r.returncode == 0 and (r.stdout + r.stderr).strip() == "", r.stdout + r.stderr
    # dcgm-exporter's own label names (modelName) are camelCase: promtool's only remark, on DCGM_* series only
    compat = h100x2.migctl("exporter", "--once")
    r = subprocess.run([promtool, "check", "metrics"], input=compat.stdout, text=True, capture_output=True)
    remarks = [x for x in (r.stdout + r.stderr).splitlines() if x.strip()]
    assert remarks, "expected promtool to flag dcgm-exporter's camelCase label modelName"
    for line in remarks:
        assert line.startswith("DCGM_FI_") and "label names should be written in 'snake_case'" in line, line
    assert "migctl_mig_device_info{" in compat.stdout and 'modelName="NVIDIA H100 80GB HBM3"' in compat.stdout
