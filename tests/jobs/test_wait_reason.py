"""Why a queued job waits (migctl.jobs.waiting): ``migctl jobs`` shows it in the DEVICE column, ``--json`` as
``wait`` (reason and detail), from what a real worker found in its last pass."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import SimEnv, wait_for
from migctl.jobs.waiting import CODES


def _submit(env: SimEnv, *args: str) -> int:
    r = env.migctl("submit", *args)
    assert r.returncode == 0, r.stderr
    return int(r.stdout)


def _wait(env: SimEnv, jid: int) -> dict[str, Any] | None:
    r = env.migctl("jobs", "--all", "--json")
    assert r.returncode == 0, r.stderr
    return next(j for j in json.loads(r.stdout)["jobs"] if j["id"] == jid)["wait"]


def _reason(env: SimEnv, jid: int) -> str | None:
    """The reason in-process (the same function builds the CLI's JSON)."""
    from migctl.cli.jobs import _jobs_json
    from migctl.jobs.queue import JobQueue

    q = JobQueue(env.node())
    w = next(j for j in _jobs_json(q, q.list()) if j["id"] == jid)["wait"]
    return None if w is None else w["reason"]


def _table_device(env: SimEnv, jid: int) -> str:
    r = env.migctl("jobs")
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.split()[0] == str(jid))
    return row.split()[4]


def test_no_worker_then_resources_then_started(a30: SimEnv, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    a = _submit(a30, "--profile", "4g.24gb", "--", "sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.1; done")
    b = _submit(a30, "--profile", "1g.6gb", "--", "true")
    w = _wait(a30, b)
    assert w is not None and w["reason"] == "no-worker" and "migctl worker" in w["detail"]
    assert _table_device(a30, b) == "(no-worker)"
    worker = a30.popen("worker", "--hysteresis", "0", "--reserve-after", "off")
    try:
        wait_for(lambda: _reason(a30, b) == "resources", what="job B waiting for resources")
        w = _wait(a30, b)
        assert w is not None and w["detail"] == "nothing free fits profile 1g.6gb and there is no room to create it"
        assert _table_device(a30, b) == "(resources)"
        assert _wait(a30, a) is None  # running
        gate.touch()  # A ends; its idle 4g.24gb is reshaped for B
        wait_for(lambda: _reason(a30, b) is None and _wait(a30, b) is None, what="job B started")
    finally:
        gate.touch()
        worker.terminate()
        worker.wait(20)
    r = a30.migctl("jobs", "--json")
    assert all(j["wait"] is None for j in json.loads(r.stdout)["jobs"])


def test_churn_budget_and_the_job_behind_it(a30: SimEnv) -> None:
    """Four idle 1g.6gb: a 4g.24gb needs four destroys, the cap allows one per minute; the 2g.12gb behind
    it waits for the same budget (later jobs do not spend it first)."""
    a30.layout(0, ["1g.6gb"] * 4)
    big = _submit(a30, "--profile", "4g.24gb", "--", "true")
    small = _submit(a30, "--profile", "2g.12gb", "--", "true")
    worker = a30.popen("worker", "--max-reconfig-per-min", "1", "--hysteresis", "0", "--reserve-after", "off")
    try:
        wait_for(lambda: _reason(a30, big) == "churn" and _reason(a30, small) == "churn", what="churn reasons")
        wb, ws = _wait(a30, big), _wait(a30, small)
        assert wb is not None and "--max-reconfig-per-min" in wb["detail"] and "4 destroy" in wb["detail"]
        assert ws is not None and ws["detail"].startswith(f"behind job {big}: ")
        assert _table_device(a30, big) == "(churn)"
    finally:
        worker.terminate()
        worker.wait(20)


def test_hysteresis(a30: SimEnv) -> None:
    a30.layout(0, ["1g.6gb"] * 4)
    jid = _submit(a30, "--profile", "2g.12gb", "--", "true")
    worker = a30.popen("worker", "--hysteresis", "3600", "--reserve-after", "off")
    try:
        wait_for(lambda: _reason(a30, jid) == "hysteresis", what="hysteresis reason")
        w = _wait(a30, jid)
        assert w is not None and "3600" in w["detail"]
    finally:
        worker.terminate()
        worker.wait(20)


def test_reserved(a30: SimEnv, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    _submit(a30, "--profile", "4g.24gb", "--time-limit", "1h", "--", "sh", "-c",
            f"while [ ! -e {gate} ]; do sleep 0.1; done")
    jid = _submit(a30, "--profile", "1g.6gb", "--", "true")
    worker = a30.popen("worker", "--reserve-after", "0")
    try:
        wait_for(lambda: _reason(a30, jid) == "reserved", what="reserved reason")
        w = _wait(a30, jid)
        assert w is not None and "1g.6gb" in w["detail"] and "GPU 0" in w["detail"]
        assert _table_device(a30, jid) == "(reserved)"
    finally:
        gate.touch()
        worker.terminate()
        worker.wait(20)


def test_node_locked(a30: SimEnv) -> None:
    from migctl.paths import node_lock

    jid = _submit(a30, "--profile", "1g.6gb", "--", "true")
    with node_lock(a30.node(), timeout=0, what="migctl apply 'test'"):
        worker = a30.popen("worker", "--reserve-after", "off")
        try:
            # (the worker claims the job while it waits for the lock: the job is "starting" meanwhile)
            w = wait_for(lambda: (x := _wait(a30, jid)) is not None and x["reason"] == "node-locked" and x,
                         what="node-locked reason")
            assert "migctl apply 'test'" in w["detail"]
        finally:
            worker.terminate()
            worker.wait(20)


def test_codes_are_documented() -> None:
    from migctl.cli import jobs

    text = Path(jobs.__file__).read_text()
    for code in CODES:
        assert f"({code})" in text
