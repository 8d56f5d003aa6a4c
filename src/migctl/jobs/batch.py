"""``migctl batch jobs.yaml``: queue a set of jobs and drive them to completion.

File format (YAML)::

    defaults:            # optional, applied to every job
      profile: 1g.10gb
    jobs:                # or the file is just this list
      - name: prog-a
        command: ./vector_add          # a string runs under ``sh -c``; a list runs as is
        profile: 2g.20gb               # or mem: 12GiB; optional gpu: 0 (or [0, 1]); priority: 5
        env: {OMP_NUM_THREADS: "4"}
        cwd: /path                     # default: the directory of the jobs file
        ephemeral: false               # destroy an instance created for this job afterwards
      - name: shared
        command: ./infer
        isolation: soft                # hard (default): a MIG device of its own; soft: an MPS client;
        share: 2                       #   none: time-sliced. share: N clients per device, or (soft only)
                                       #   threads: 50 and mps_mem: 4GiB (as submit's --share/--threads/--mps-mem)
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from migctl.jobs.common import JobsError, parse_mem
from migctl.jobs.leases import Request
from migctl.jobs.mps import Sharing, sharing_options
from migctl.jobs.queue import TERMINAL, Job, JobQueue, Worker

KEYS = {"name", "command", "cmd", "profile", "mem", "gpu", "gpus", "priority", "env", "cwd", "ephemeral",
        "isolation", "share", "threads", "mps_mem"}


def _gpus(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value,)
    if isinstance(value, str):
        return tuple(int(x) for x in value.split(",") if x.strip())
    return tuple(int(x) for x in value)


def load(path: str | Path) -> list[dict[str, Any]]:
    """Parse a jobs file into submit specs (see the module doc); errors name the job and the key."""
    from migctl.inputs import InputError, load_yaml_file

    p = Path(path)
    try:
        data = load_yaml_file(p, "jobs file")
    except InputError as e:
        raise JobsError(str(e)) from None
    defaults: dict[str, Any] = {}
    if isinstance(data, dict):
        defaults = data.get("defaults") or {}
        data = data.get("jobs")
    if not isinstance(data, list) or not data:
        raise JobsError(f"{p}: expected a list of jobs (or a mapping with 'jobs:')")
    specs = []
    for i, raw in enumerate(data):
        if not isinstance(raw, dict):
            raise JobsError(f"{p}: job {i + 1} must be a mapping with at least 'command'")
        item = {**defaults, **raw}
        unknown = set(item) - KEYS
        label = item.get("name") or f"job {i + 1}"
        if unknown:
            raise JobsError(f"{p}: {label}: unknown key(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(KEYS))}")
        cmd = item.get("command", item.get("cmd"))
        if isinstance(cmd, str):
            cmd = ["sh", "-c", cmd]
        if not cmd or not isinstance(cmd, list):
            raise JobsError(f"{p}: {label}: 'command' must be a string or a list")
        mem = item.get("mem")
        if item.get("profile") is not None and mem is not None:
            where = " (one of them from defaults:)" if ("profile" in defaults) != ("mem" in defaults) else ""
            raise JobsError(f"{p}: {label}: give 'profile' or 'mem', not both{where}")
        req = Request(profile=item.get("profile"), mem_mib=parse_mem(str(mem)) if mem is not None else None,
                      gpus=_gpus(item.get("gpu", item.get("gpus"))))
        try:  # the same validation as submit's --isolation/--share/--threads/--mps-mem
            sharing = sharing_options(item.get("isolation"), item.get("share"), item.get("threads"),
                                      item.get("mps_mem"), ephemeral=bool(item.get("ephemeral")), opt="")
        except JobsError as e:
            raise JobsError(f"{p}: {label}: {e}") from None
        cwd = item.get("cwd")
        cwd = str((p.parent / cwd).resolve()) if cwd else str(p.parent.resolve())
        env = {str(k): str(v) for k, v in (item.get("env") or {}).items()}
        specs.append(dict(cmd=[str(x) for x in cmd], req=req, name=str(item.get("name") or ""),
                          priority=int(item.get("priority") or 0), cwd=cwd, env=env,
                          ephemeral=bool(item.get("ephemeral")), sharing=sharing))
    return specs


def run_batch(queue: JobQueue, specs: list[dict[str, Any]], on_finish: Any = None, poll: float = 0.05) -> list[Job]:
    """Queue ``specs`` atomically, run a worker (or wait for the running one) until all of them ended."""
    from migctl.jobs.demand import WorkerPolicy
    from migctl.jobs.shared import check_request

    worker = Worker(queue, poll=poll, policy=WorkerPolicy())  # the defaults of `migctl worker`
    for s in specs:  # fail before queueing anything if a job can never fit (on a settled layout; left to the
        check_request(queue.node, s["req"], s.get("sharing") or Sharing(), worker.leases)  # worker during an apply)
    ids = queue.submit_many(specs, batch=uuid.uuid4().hex[:12])
    reported: set[int] = set()
    owns = worker.acquire(block=False)
    try:
        while True:
            if not owns:
                owns = worker.acquire(block=False)
            if owns:
                worker.step()
            jobs = queue.list(ids=ids)
            for j in jobs:
                if j.state in TERMINAL and j.id not in reported and (j.state != "cancelled" or not j.child_pid
                                                                      or j.exit_code is not None):
                    reported.add(j.id)
                    if on_finish:
                        on_finish(j)
            if len(reported) == len(ids):
                return jobs
            time.sleep(poll)
    finally:
        if owns:
            worker.release()


__all__ = ["load", "run_batch"]
