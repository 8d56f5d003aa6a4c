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

from migctl.inputs import MAX_PRIORITY, gpu_indices, printable
from migctl.jobs.common import JobsError, parse_mem
from migctl.jobs.leases import Request
from migctl.jobs.mps import Sharing, sharing_options
from migctl.jobs.queue import TERMINAL, Job, JobQueue, Worker

KEYS = {"name", "command", "cmd", "profile", "mem", "gpu", "gpus", "priority", "env", "cwd", "ephemeral",
        "isolation", "share", "threads", "mps_mem"}


class _Bad(Exception):
    """What is wrong with one key of one job (``load`` adds the file and the job)."""


def _text(value: Any, key: str, null_ok: bool = False) -> str:
    """A YAML scalar as text: a string, or a number written without quotes. Not true/false/null (YAML reads
    those as booleans and null: quote them), not a list or mapping, no NUL (no program can receive it)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise _Bad(f"{key!r} contains a NUL character")
        return value
    if type(value) in (int, float):
        return str(value)
    if value is None and null_ok:
        return ""
    what = "true, false or null (quote it)" if value is None or isinstance(value, bool) else "a list or mapping"
    raise _Bad(f"{key!r} must be text, not {what}")


def _gpus(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    # as --gpu takes it: "0,1", an index, or a list of indices (not true/false, floats or mappings)
    if isinstance(value, list) and value and all(type(x) in (int, str) and "," not in str(x) for x in value):
        value_text: str | None = ",".join(map(str, value))
    else:
        value_text = str(value) if type(value) in (int, str) else None
    got = gpu_indices(value_text) if value_text is not None else None
    if got is None:
        raise _Bad(f"'gpu' must be a GPU index or a list of them (e.g. 0, [0, 1] or \"0,1\"), not "
                   f"{printable(value, 40) or 'empty'}")
    return got


def _priority(value: Any) -> int:
    if value is None:
        return 0
    if type(value) is not int or not -MAX_PRIORITY <= value <= MAX_PRIORITY:
        raise _Bad(f"'priority' must be a whole number from {-MAX_PRIORITY} to {MAX_PRIORITY}, not "
                   f"{printable(value, 40)}")
    return value


def _env(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Bad("'env' must be a mapping of NAME: value")
    out = {}
    for k, v in value.items():
        name = _text(k, "env")
        if not name or "=" in name:
            raise _Bad(f"'env' has the name {printable(name, 40)!r}; a name is not empty and has no '='")
        out[name] = _text(v, f"env: {name}")
    return out


def _spec(p: Path, item: dict[str, Any]) -> dict[str, Any]:
    """One job of the file as ``submit_many`` takes it; :class:`_Bad` or :class:`JobsError` when it is wrong."""
    cmd = item.get("command", item.get("cmd"))
    if isinstance(cmd, str):
        cmd = ["sh", "-c", _text(cmd, "command")]
    elif isinstance(cmd, list) and cmd:
        cmd = [_text(x, "command") for x in cmd]
    else:
        raise _Bad("'command' must be a string or a list")
    mem = item.get("mem")
    if item.get("profile") is not None and not isinstance(item.get("profile"), str):
        raise _Bad(f"'profile' must be a profile name such as 1g.10gb, not {printable(item['profile'], 40)}")
    if mem is not None and (isinstance(mem, bool) or not isinstance(mem, str | int | float)):
        raise _Bad(f"'mem' must be a size such as 12GiB or 500MiB, not {printable(mem, 40)}")
    try:
        mem_mib = parse_mem(str(mem)) if mem is not None else None
    except JobsError as e:
        raise _Bad(f"'mem': {e}") from None
    req = Request(profile=item.get("profile"), mem_mib=mem_mib, gpus=_gpus(item.get("gpu", item.get("gpus"))))
    if item.get("ephemeral") is not None and not isinstance(item.get("ephemeral"), bool):
        raise _Bad("'ephemeral' must be true or false")
    # the same validation as submit's --isolation/--share/--threads/--mps-mem
    sharing = sharing_options(item.get("isolation"), item.get("share"), item.get("threads"), item.get("mps_mem"),
                              ephemeral=bool(item.get("ephemeral")), opt="")
    cwd = _text(item.get("cwd"), "cwd", null_ok=True)
    cwd = str((p.parent / cwd).resolve()) if cwd else str(p.parent.resolve())
    return dict(cmd=cmd, req=req, name=_text(item.get("name"), "name", null_ok=True),
                priority=_priority(item.get("priority")), cwd=cwd, env=_env(item.get("env")),
                ephemeral=bool(item.get("ephemeral")), sharing=sharing)


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
        if not isinstance(defaults, dict):
            raise JobsError(f"{p}: 'defaults' must be a mapping of keys every job takes")
        data = data.get("jobs")
    if not isinstance(data, list) or not data:
        raise JobsError(f"{p}: expected a list of jobs (or a mapping with 'jobs:')")
    specs = []
    for i, raw in enumerate(data):
        if not isinstance(raw, dict):
            raise JobsError(f"{p}: job {i + 1} must be a mapping with at least 'command'")
        item = {**defaults, **raw}
        unknown = set(item) - KEYS
        label = printable(item.get("name") or f"job {i + 1}", 60)
        if unknown:
            raise JobsError(f"{p}: {label}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                            f"valid: {', '.join(sorted(KEYS))}")
        if item.get("profile") is not None and item.get("mem") is not None:
            where = " (one of them from defaults:)" if ("profile" in defaults) != ("mem" in defaults) else ""
            raise JobsError(f"{p}: {label}: give 'profile' or 'mem', not both{where}")
        try:
            specs.append(_spec(p, item))
        except (_Bad, JobsError) as e:
            raise JobsError(f"{p}: {label}: {e}") from None
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
