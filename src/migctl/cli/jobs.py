# ruff: noqa: UP006, UP007, UP035, UP045
"""``migctl run | submit | jobs | cancel | logs | worker | batch | leases``: workloads on MIG devices."""

from __future__ import annotations

import sys
import time
from typing import Any, List, Optional

import typer

from migctl.cli.common import (
    command_words,
    emit_json,
    fail,
    int_range,
    job_ids,
    node,
    positive_seconds,
    seconds,
)
from migctl.inputs import MAX_PRIORITY

CMD_SETTINGS = {"allow_interspersed_args": False, "ignore_unknown_options": True}


def _request(profile: str | None, mem: str | None, gpu: str | None, create: bool = True) -> Any:
    from migctl.inputs import gpu_indices, printable
    from migctl.jobs import Request, parse_mem

    if profile and mem:
        fail("give --profile or --mem, not both")
    if profile is not None and not profile.strip():
        fail("--profile is empty (valid: a MIG profile name such as 1g.10gb)")
    if mem is not None and not mem.strip():
        fail("--mem is empty (valid: a size such as 12GiB, 20gb or 500MiB)")
    gpus = None
    if gpu is not None:
        gpus = gpu_indices(gpu)
        if gpus is None:
            fail(f"--gpu '{printable(gpu)}' is not a list of GPU indices (valid: e.g. 0 or 0,1)")
    mem_mib = parse_mem(mem) if mem else None
    prof = profile[4:].strip() if profile and profile.upper().startswith("MIG ") else profile
    return Request(profile=prof, mem_mib=mem_mib, gpus=gpus, create=create)


def _guard(fn: Any) -> Any:
    """Turn JobsError into a one-line UserError."""
    import functools

    @functools.wraps(fn)
    def wrapper(*a: Any, **kw: Any) -> Any:
        from migctl.errors import UserError
        from migctl.jobs import JobsError

        try:
            return fn(*a, **kw)
        except JobsError as e:
            raise UserError(str(e), e.exit_code) from None

    return wrapper


def _churn(reshape: bool, max_reconfig: int | None, hysteresis: float | None, default_hysteresis: float,
           verb: str) -> Any:
    """The churn policy of ``--reshape`` (None without it); the two limits need --reshape."""
    from migctl.jobs.reshape import DEFAULT_MAX_PER_MIN, Churn

    if not reshape:
        if max_reconfig is not None or hysteresis is not None:
            fail(f"--max-reconfig-per-min and --hysteresis apply to reshaping; give --reshape too ({verb})")
        return None
    return Churn(max_per_min=DEFAULT_MAX_PER_MIN if max_reconfig is None else max_reconfig,
                 hysteresis_s=default_hysteresis if hysteresis is None else hysteresis)


def _reserve_after(text: str) -> float | None:
    import math

    from migctl.cli.common import MAX_SECONDS
    from migctl.inputs import printable

    if text.strip().lower() == "off":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 <= value <= MAX_SECONDS):
        fail(f"--reserve-after '{printable(text)}' is not a number of seconds (valid: 0 to {MAX_SECONDS:.0f}, or off)")
    return value


def _order(text: str) -> str:
    """Typer callback for ``worker --order``."""
    from migctl.inputs import printable
    from migctl.jobs.demand import ORDERS

    if text not in ORDERS:
        raise typer.BadParameter(f"'{printable(text)}' is not a start order (valid: {', '.join(ORDERS)})")
    return text


def _jobs_json(q: Any, jobs: list[Any]) -> list[dict[str, Any]]:
    """Jobs as JSON, with their time limit (seconds or null), reservation (null or gpu/profile/start/size/at)
    and, for a queued job, why it waits (null or reason/detail: migctl.jobs.waiting)."""
    from migctl.jobs import reservations, waiting
    from migctl.jobs.limits import limit_of

    held = {r.job_id: r for r in reservations.load(q.conn, q.key)}
    why = waiting.of_jobs(q.conn, q.key, jobs)
    out = []
    for job in jobs:
        d = dict(job.to_json())
        d["time_limit"] = limit_of(q.conn, job.id)
        d["reservation"] = held[job.id].to_json() if job.id in held else None
        d["wait"] = why.get(job.id)
        out.append(d)
    return out


def _run_reservations(q: Any) -> list[dict[str, Any]]:
    """Reservations of waiting runs (``run --reserve-after``) as JSON: the run's PID and the placement."""
    from migctl.jobs import reservations

    return [{"pid": r.pid, **r.to_json()} for r in reservations.load(q.conn, q.key, live=True) if r.pid is not None]


def _place(n: int | None) -> str:
    if n is None:
        return "not seen lately"
    return {1: "next"}.get(n, f"{n - 1} ahead of it")


def _fmt_time(t: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) if t else "-"


def register(app: typer.Typer) -> None:
    @app.command("run", context_settings=CMD_SETTINGS)
    @_guard
    def run_cmd(
        ctx: typer.Context,
        cmd: Optional[List[str]] = typer.Argument(None, help="Command and arguments (after --)."),
        profile: Optional[str] = typer.Option(None, "--profile", "-p", help="MIG profile, e.g. 1g.10gb."),
        mem: Optional[str] = typer.Option(None, "--mem", "-m", help="Minimum memory, e.g. 12GiB."),
        gpu: Optional[str] = typer.Option(None, "-i", "--gpu", "-g", help="Only these GPU indices (e.g. 0 or 0,1)."),
        wait: Optional[float] = typer.Option(None, "--wait", callback=seconds, help="Wait at most SECONDS for a free device (default: no limit, as a shell waits for a command; --no-wait fails at once)."),
        no_wait: bool = typer.Option(False, "--no-wait", help="Fail at once (exit 75) if no device is free."),
        ephemeral: bool = typer.Option(False, "--ephemeral/--keep", help="Destroy an instance created for this run afterwards (default: keep it)."),
        no_create: bool = typer.Option(False, "--no-create", help="Never create instances; only use existing ones."),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Say which device was leased."),
        isolation: str = typer.Option("hard", "--isolation", help="hard: a MIG device of its own; soft: an MPS client; none: time-sliced."),
        share: Optional[int] = typer.Option(None, "--share", help="Clients per device: MPS gets 1/N of threads and memory; time-slicing at most N."),
        threads: Optional[int] = typer.Option(None, "--threads", help="MPS active thread percentage (1-100), instead of --share."),
        mps_mem: Optional[str] = typer.Option(None, "--mps-mem", help="MPS pinned memory limit, e.g. 4GiB, instead of --share."),
        reshape: bool = typer.Option(False, "--reshape", help="If nothing fits, destroy the fewest idle instances on one GPU to make room (transactional apply; busy and leased ones are never touched), also while waiting."),
        max_reconfig: Optional[int] = typer.Option(None, "--max-reconfig-per-min", callback=int_range(1, 10_000, "--max-reconfig-per-min"), help="With --reshape: at most N instances destroyed for reshaping per 60 s on this node, shared with the worker and other runs (default 20)."),
        hysteresis: Optional[float] = typer.Option(None, "--hysteresis", callback=seconds, help="With --reshape: spare instances idle for less than SECONDS (default 0)."),
        reserve_after: Optional[str] = typer.Option(None, "--reserve-after", help="Once waiting longer than SECONDS (default 300; off: never), take the node's reservation in turn (oldest waiter first, shared with the worker's queued jobs, which go first with --priority above 0; with --no-create, of an existing instance) and start in it when it frees up."),
    ) -> None:
        """Lease a free MIG device that fits and run CMD on it with CUDA_VISIBLE_DEVICES=MIG-<uuid>.

        With --isolation soft or none the device is shared (MPS or time-slicing; docs/dynamic.md). Runs and
        queued jobs that ask for the same thing start in arrival order (docs/jobs.md).
        Exits with CMD's exit status (128+N if killed by signal N); 75 if no device was free in time.
        """
        from migctl.jobs import runner

        cmd = command_words(cmd, "run")
        req = _request(profile, mem, gpu, create=not no_create)
        log = (lambda s: sys.stderr.write(f"migctl: {s}\n")) if verbose else None
        from migctl.jobs.mps import sharing_options

        sharing = sharing_options(isolation, share, threads, mps_mem, ephemeral=ephemeral)
        churn = _churn(reshape, max_reconfig, hysteresis, 0.0, "run")
        from migctl.jobs.demand import DEFAULT_RESERVE_AFTER_S

        reserve = DEFAULT_RESERVE_AFTER_S if reserve_after is None else _reserve_after(reserve_after)
        if churn is not None and not req.create:
            fail("--reshape creates an instance; it cannot be combined with --no-create")
        if sharing.kind != "mig":
            from migctl.jobs.shared import run_shared

            sys.exit(run_shared(node(ctx), cmd or [], req, sharing=sharing, wait=0 if no_wait else wait, log=log,
                                reshape=churn, reserve_after=reserve))
        rc = runner.run(node(ctx), cmd or [], req, wait=0 if no_wait else wait, ephemeral=ephemeral, log=log,
                        reshape=churn, reserve_after=reserve)
        sys.exit(rc)

    @app.command("submit", context_settings=CMD_SETTINGS)
    @_guard
    def submit_cmd(
        ctx: typer.Context,
        cmd: Optional[List[str]] = typer.Argument(None, help="Command and arguments (after --)."),
        profile: Optional[str] = typer.Option(None, "--profile", "-p", help="MIG profile, e.g. 1g.10gb."),
        mem: Optional[str] = typer.Option(None, "--mem", "-m", help="Minimum memory, e.g. 12GiB."),
        gpu: Optional[str] = typer.Option(None, "-i", "--gpu", "-g", help="Only these GPU indices."),
        priority: int = typer.Option(0, "--priority", callback=int_range(-MAX_PRIORITY, MAX_PRIORITY, "--priority"), help="Higher starts first; arrival order within a priority (the worker lets the shortest --time-limit go first among jobs asking for the same thing)."),
        name: str = typer.Option("", "--name", help="A label for the job."),
        ephemeral: bool = typer.Option(False, "--ephemeral/--keep", help="Destroy an instance created for it afterwards."),
        isolation: str = typer.Option("hard", "--isolation", help="hard: a MIG device of its own; soft: an MPS client; none: time-sliced."),
        share: Optional[int] = typer.Option(None, "--share", help="Clients per device: MPS gets 1/N of threads and memory; time-slicing at most N."),
        threads: Optional[int] = typer.Option(None, "--threads", help="MPS active thread percentage (1-100), instead of --share."),
        mps_mem: Optional[str] = typer.Option(None, "--mps-mem", help="MPS pinned memory limit, e.g. 4GiB, instead of --share."),
        time_limit: Optional[str] = typer.Option(None, "--time-limit", help="Stop the job after DURATION (90, 90s, 5m, 1h30m, 2d): SIGTERM, SIGKILL after the worker's --limit-grace; lets it backfill before a reservation."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Queue CMD; a worker (migctl worker) starts it when a device is free (or, with --isolation soft or
        none, when a shared device has room: docs/dynamic.md)."""
        from migctl.jobs.mps import sharing_options
        from migctl.jobs.queue import JobQueue
        from migctl.jobs.shared import check_request

        cmd = command_words(cmd, "submit")
        req = _request(profile, mem, gpu)
        sharing = sharing_options(isolation, share, threads, mps_mem, ephemeral=ephemeral)
        if not cmd:
            fail("no command given; usage: migctl submit [OPTIONS] -- CMD [ARGS...]")
        limit = None
        if time_limit is not None:
            from migctl.jobs.limits import parse_duration

            limit = parse_duration(time_limit)
        n = node(ctx)
        note = check_request(n, req, sharing)
        if note:
            sys.stderr.write(f"migctl: note: {note}\n")
        q = JobQueue(n)
        jid = q.submit(cmd or [], req, priority=priority, name=name, ephemeral=ephemeral, sharing=sharing,
                       time_limit=limit)
        if as_json:
            emit_json(_jobs_json(q, [q.get(jid)])[0])
        else:
            print(jid)

    @app.command("jobs")
    @_guard
    def jobs_cmd(
        ctx: typer.Context,
        all_: bool = typer.Option(False, "--all", "-a", help="Include finished jobs."),
        state: Optional[str] = typer.Option(None, "--state", help="Only this state (queued, running, done, failed, cancelled)."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """List jobs (queued and running; --all for finished ones too). A queued job's DEVICE column says why it
        waits: (resources), (reserved), (churn), (hysteresis), (node-locked), (raced), (runs-first) or (no-worker); --json
        gives the detail."""
        from migctl.inputs import printable
        from migctl.jobs.queue import JobQueue
        from migctl.jobs.rows import STATES as valid
        if state is not None and state not in valid:
            fail(f"unknown job state '{printable(state)}' (valid: {', '.join(valid)})")
        q = JobQueue(node(ctx))
        states = (state,) if state else (None if all_ else ("queued", "starting", "running"))
        jobs, damaged = q.list_sound(states)
        for _, msg in damaged:  # a row edited by hand hides only itself
            sys.stderr.write(f"migctl: warning: {printable(msg, 400)} (not listed)\n")
        if as_json:
            from migctl.jobs.run_reserve import waiting_runs

            emit_json({"jobs": _jobs_json(q, jobs), "run_reservations": _run_reservations(q),
                       "waiting_runs": waiting_runs(q.conn, q.key),
                       "damaged": [{"id": i, "problem": msg} for i, msg in damaged]})
            return
        if not jobs:
            print("no jobs" + ("" if all_ else " queued or running (--all shows finished ones)"))
        else:
            print(f"{'ID':>5} {'STATE':<9} {'PRI':>3} {'EXIT':>4} {'DEVICE':<17} {'SHARE':<14} {'CREATED':<8} "
                  f"{'STARTED':<8} NAME/COMMAND")
        from migctl.jobs import waiting

        why = waiting.of_jobs(q.conn, q.key, jobs)
        for j in jobs:
            dev = (j.mig_uuid or "-")[:17]
            if j.id in why:
                dev = f"({why[j.id]['reason']})"  # as squeue's (REASON) for a pending job
            label = printable(j.name or " ".join(j.cmd), 60)
            code = "-" if j.exit_code is None else str(j.exit_code)
            print(f"{j.id:>5} {j.state:<9} {j.priority:>3} {code:>4} {dev:<17} {j.sharing.describe():<14} "
                  f"{_fmt_time(j.created):<8} {_fmt_time(j.started):<8} {label}")
        from migctl.jobs import reservations

        for r in reservations.load(q.conn, q.key, live=True):
            print(f"{r.holder()} has a reservation: {r.describe()}")
        from migctl.jobs.run_reserve import waiting_runs

        for w in waiting_runs(q.conn, q.key):
            print(f"run (pid {w['pid']}) waits for {w['request']} since {_fmt_time(w['since'])} ({_place(w['place'])})")

    @app.command("cancel")
    @_guard
    def cancel_cmd(ctx: typer.Context, ids: List[int] = typer.Argument(..., callback=job_ids, help="Job IDs."),
                   as_json: bool = typer.Option(False, "--json")) -> None:
        """Cancel queued jobs or stop running ones (SIGTERM to the job's process group, SIGKILL after 10 s)."""
        from migctl.jobs.queue import JobQueue

        q = JobQueue(node(ctx))
        results = []
        for i in ids:
            msg = q.cancel(i)
            results.append({"id": i, "result": msg, "state": q.get(i).state})
            if not as_json:
                print(msg)
        if as_json:
            emit_json({"cancelled": results})

    @app.command("logs")
    @_guard
    def logs_cmd(
        ctx: typer.Context,
        job_id: int = typer.Argument(..., callback=job_ids, help="Job ID."),
        follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until the job ends."),
    ) -> None:
        """Print a job's output (stdout and stderr, one log file per job)."""
        from migctl.jobs.queue import TERMINAL, JobQueue

        q = JobQueue(node(ctx))
        path = q.log_file(job_id)
        pos = 0
        while True:
            try:
                with open(path, "rb") as f:
                    f.seek(pos)
                    while chunk := f.read(1 << 20):  # bounded memory, whatever the log's size
                        pos += len(chunk)
                        sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
            except FileNotFoundError:
                if not follow:
                    state = q.get(job_id).state
                    print(f"(no output yet: job {job_id} is {state})", file=sys.stderr)
                    return
            if not follow or q.get(job_id).state in TERMINAL:
                if follow:  # last read after the end
                    follow = False
                    continue
                return
            time.sleep(0.2)

    @app.command("worker")
    @_guard
    def worker_cmd(
        ctx: typer.Context,
        until_idle: bool = typer.Option(False, "--until-idle", help="Exit once nothing is queued or running."),
        poll: float = typer.Option(0.05, "--poll", callback=positive_seconds, help="Seconds between passes when idle."),
        quiet: bool = typer.Option(False, "--quiet", "-q"),
        as_json: bool = typer.Option(False, "--json", help="At the end, print the jobs this worker saw end."),
        reshape: bool = typer.Option(True, "--reshape/--no-reshape", help="Destroy idle instances (never busy or leased ones) when queued jobs do not fit otherwise (default: on)."),
        max_reconfig: int = typer.Option(20, "--max-reconfig-per-min", callback=int_range(1, 10_000, "--max-reconfig-per-min"), help="At most N instances destroyed for reshaping per 60 s on this node (shared with run --reshape)."),
        hysteresis: float = typer.Option(5.0, "--hysteresis", callback=seconds, help="Spare instances idle for less than SECONDS when reshaping."),
        reserve_after: str = typer.Option("300", "--reserve-after", help="Reserve space for the oldest job queued longer than SECONDS (off: never); later jobs backfill only where they end before it."),
        limit_grace: float = typer.Option(10.0, "--limit-grace", callback=seconds, help="Seconds between SIGTERM and SIGKILL for a job past its --time-limit."),
        order: str = typer.Option("sjf-request", "--order", callback=_order, help="Start order within a priority: sjf-request (arrival order between requests, the shortest --time-limit first among jobs that ask for the same thing; no limit counts as longest) or fifo (arrival)."),
    ) -> None:
        """Start queued jobs as MIG devices free up (priority, then arrival; the shortest time limit first among
        jobs asking for the same thing), reshaping idle instances and
        reserving space for starving jobs (docs/dynamic.md). One worker per node."""
        import signal
        import threading

        from migctl.jobs.demand import WorkerPolicy
        from migctl.jobs.queue import JobQueue, Worker
        from migctl.jobs.reshape import Churn

        policy = WorkerPolicy(reshape=reshape, churn=Churn(max_reconfig, hysteresis),
                              reserve_after=_reserve_after(reserve_after), limit_grace=limit_grace, order=order)
        log = None if quiet else (lambda s: (sys.stderr.write(f"migctl worker: {s}\n"), sys.stderr.flush()))
        w = Worker(JobQueue(node(ctx)), poll=poll, log=log, policy=policy)
        if not w.acquire(block=False):
            fail("another worker is already running for this node", 3)
        stop = threading.Event()
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, lambda *_: stop.set())
        started = time.time()
        try:
            w.run(until_idle=until_idle, stop=stop)
        finally:
            w.release()
        if as_json:
            done, damaged = w.q.list_sound(("done", "failed", "cancelled"))  # (a damaged row: said by the worker)
            ended = [j for j in done if (j.finished or 0) >= started]
            emit_json({"until_idle": until_idle, "jobs": _jobs_json(w.q, ended),
                       "damaged": [{"id": i, "problem": msg} for i, msg in damaged]})

    @app.command("batch")
    @_guard
    def batch_cmd(
        ctx: typer.Context,
        file: str = typer.Argument(..., help="jobs.yaml (see docs/jobs.md)."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Queue every job of FILE and run them (concurrently, one MIG device each) until all have ended.

        Exits 0 when every job succeeded, 1 otherwise.
        """
        from migctl.inputs import printable
        from migctl.jobs import batch
        from migctl.jobs.queue import JobQueue

        specs = batch.load(file)
        q = JobQueue(node(ctx))

        def report(j: Any) -> None:
            if not as_json:
                code = "-" if j.exit_code is None else j.exit_code
                why = f": {printable(j.reason, 120)}" if j.reason and j.state != "done" else ""
                print(f"job {j.id} {printable(j.name or ' '.join(j.cmd), 50)}: {j.state} (exit {code}{why}) on "
                      f"{j.mig_uuid or '-'}; log {j.log_path}", flush=True)

        jobs = batch.run_batch(q, specs, on_finish=report)
        if as_json:
            emit_json({"ok": all(j.state == "done" for j in jobs), "jobs": [j.to_json() for j in jobs]})
        sys.exit(0 if all(j.state == "done" for j in jobs) else 1)

    @app.command("leases")
    @_guard
    def leases_cmd(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
        """Show MIG devices currently leased on this node (stale leases are reclaimed first), and the devices
        shared through MPS or time-slicing with their clients."""
        from migctl.inputs import printable
        from migctl.jobs import LeaseManager
        from migctl.jobs.mps import shared_clients

        n = node(ctx)
        leases = LeaseManager(n).leases()
        damaged: list[str] = []
        shared = shared_clients(n, damaged)
        if as_json:
            emit_json({"leases": [x.to_json() for x in leases], "shared": shared, "damaged": damaged})
            return
        for text in damaged:
            sys.stderr.write(f"migctl: warning: {printable(text, 600)}\n")
        if not leases and not shared:
            print("no leases")
        for x in leases:
            if x.damaged:  # (a row edited by hand)
                print(f"{printable(x.uuid)}: a damaged lease row ({x.damaged}): its device counts as in use until "
                      "the row is deleted with sqlite3, once its holder has ended")
                continue
            print(f"{x.cuda_visible_devices} GPU {x.gpu} GI {x.gi} CI {x.ci} {x.profile:<10} pid {x.pid} "
                  f"{x.owner}{' (created)' if x.created_instance else ''}")
        for c in shared:
            where = f"GPU {c['gpu']}" + ("" if c["gi"] is None else f" GI {c['gi']} CI {c['ci']}")
            what = (f"MPS client pid {c['pid']} ({c['threads']}% of threads"
                    + (f", {c['mem_mib']} MiB" if c["mem_mib"] else "") + ")" if c["kind"] == "mps"
                    else f"time-sliced client pid {c['pid']} (--share {c['share']})")
            print(f"{c['uuid']} {where} shared: {what}")
