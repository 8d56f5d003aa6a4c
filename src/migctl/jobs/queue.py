"""The local job queue: ``submit``, ``jobs``, ``cancel``, ``logs`` and the worker that starts queued jobs.

State lives in the ``jobs`` table of the jobs database (SQLite, WAL). Job states::

    queued -> starting -> running -> done | failed | cancelled
       \\-> cancelled

Each job runs in its own session behind the same gate as ``migctl run``, wrapped by a tiny shell that
writes the command's exit status to ``<log dir>/<id>.exit``; its output goes to ``<log dir>/<id>.log``.
The job's process (not the worker) holds the lease, so jobs outlive the worker.

Crash safety (a worker killed with SIGKILL, then restarted):

* claiming is atomic (``UPDATE ... WHERE state='queued'`` in ``BEGIN IMMEDIATE``), and only one worker runs
  per node (a file lock), so no job is started twice;
* a job is marked ``running`` (with its PID) *before* its gate opens; a job found in ``starting`` never ran
  user code (its gate closed with the worker) and goes back to ``queued``;
* a job found ``running`` is adopted: while its PID or any process of its session's process group lives
  it keeps running; when they are all gone its status comes from the exit file. If there is no exit file
  (the job's process was killed outright) it is marked ``failed`` with reason ``lost`` and is **not**
  re-run automatically (resubmit it if that is safe).

The lease belongs to the job's process *and its process group*: killing the wrapper with SIGKILL while the
command runs keeps the device leased (and the job ``running``) until the command ends too.

Shared jobs (``--isolation soft|none``) start through :func:`migctl.jobs.shared.launch`, as ``run`` does:
the job's process is the MPS or time-sliced client (no lease is kept); reaping it releases the client,
and the last client of a device stops its MPS daemon. A restarted worker reaps clients that ended while
it was down, and stops daemons left without a live client (admitted, never started).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migctl.busy import lease_processes, process_groups
from migctl.jobs.common import (
    JobsError,
    connect,
    exit_status,
    immediate,
    key_slug,
    node_key,
    pid_alive,
    proc_start,
    signal_group,
    state_dir,
    transient_failure,
)
from migctl.jobs.leases import Lease, LeaseManager, Request
from migctl.jobs.mps import Sharing
from migctl.jobs.rows import check
from migctl.jobs.runner import (
    GATE_OPEN,
    child_env,
    gated_popen,
    open_gate,
    register_client,
    unregister_client,
)

TERMINAL = ("done", "failed", "cancelled")
# The job wrapper: wait for the gate, run the command, record its status (TERM/INT/HUP are caught so that the
# status is still recorded when the whole process group is signalled; the command itself gets them).
JOB_SCRIPT = GATE_OPEN + (
    "trap 'true' TERM INT HUP; \"$@\"; rc=$?; "
    '(umask 077; printf "%s\\n" "$rc" > "$MIGCTL_EXIT_FILE.tmp") && mv -f "$MIGCTL_EXIT_FILE.tmp" "$MIGCTL_EXIT_FILE"; '
    "exit $rc"
)  # (the status file private whatever the job's umask; the command keeps its own)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError as e:
        raise JobsError(f"cannot read the working directory ({e.strerror})") from None


@dataclass
class Job:
    """One row of the jobs table."""

    id: int
    name: str
    cmd: list[str]
    cwd: str
    profile: str | None
    mem_mib: int | None
    gpus: tuple[int, ...] | None
    priority: int
    state: str
    created: float
    started: float | None
    finished: float | None
    exit_code: int | None
    reason: str
    log_path: str
    child_pid: int | None
    mig_uuid: str | None
    ephemeral: bool
    batch: str | None
    env: dict[str, str]
    child_start: float | None = None
    sharing: Sharing = Sharing()

    @classmethod
    def from_row(cls, r: Any, checked: bool = False, with_env: bool = True) -> Job:
        """The job a row of the jobs table holds; a field that migctl never writes (the database edited by hand
        or damaged) is one line naming the job and the field (:mod:`migctl.jobs.rows`). ``checked``: the caller
        has checked the row already; ``with_env=False``: ``env`` is left empty (listings, which never start
        the job, need not hold every job's environment)."""
        if not checked:
            check(r)  # (migctl.jobs.rows: every column as migctl writes it)
        cmd = json.loads(r["cmd"])
        env = json.loads(r["env"]) if r["env"] and with_env else {}
        gpus = tuple(json.loads(r["gpus"]) if r["gpus"] else ()) or None
        return cls(id=r["id"], name=r["name"], cmd=cmd, cwd=r["cwd"], profile=r["profile"],
                   mem_mib=r["mem_mib"], gpus=gpus, priority=r["priority"], state=r["state"], created=r["created"],
                   started=r["started"], finished=r["finished"], exit_code=r["exit_code"], reason=r["reason"],
                   log_path=r["log_path"], child_pid=r["child_pid"], mig_uuid=r["mig_uuid"],
                   ephemeral=bool(r["ephemeral"]), batch=r["batch"], env=env,
                   child_start=r["child_start"],
                   sharing=Sharing(r["isolation"] or "hard", r["share"], r["threads"], r["mps_mem_mib"]))

    @property
    def request(self) -> Request:
        return Request(profile=self.profile, mem_mib=self.mem_mib, gpus=self.gpus)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "state": self.state, "cmd": self.cmd, "profile": self.profile,
                "mem_mib": self.mem_mib, "gpus": list(self.gpus) if self.gpus else None, "priority": self.priority,
                "created": self.created, "started": self.started, "finished": self.finished,
                "exit_code": self.exit_code, "reason": self.reason, "mig_uuid": self.mig_uuid,
                "log": self.log_path, "pid": self.child_pid, "batch": self.batch, **self.sharing.to_json()}


class JobQueue:
    """The queue of one node."""

    def __init__(self, node: Any, path: Path | None = None) -> None:
        self.node = node
        self.key = node_key(node)
        self.path = path
        self.conn = connect(path)
        self.log_dir = state_dir() / "jobs" / key_slug(self.key)
        for d in (self.log_dir.parent, self.log_dir):
            d.mkdir(mode=0o700, exist_ok=True)

    # ------------------------------------------------------------------ client side
    def submit(self, cmd: list[str], req: Request, *, priority: int = 0, name: str = "", cwd: str | None = None,
               env: dict[str, str] | None = None, ephemeral: bool = False, batch: str | None = None,
               sharing: Sharing | None = None, time_limit: float | None = None) -> int:
        """Queue ``cmd``; returns the job id. ``time_limit``: seconds (the worker stops it then)."""
        if not cmd:
            raise JobsError("no command given; usage: migctl submit [OPTIONS] -- CMD [ARGS...]")
        return self.submit_many([dict(cmd=cmd, req=req, priority=priority, name=name, cwd=cwd, env=env,
                                      ephemeral=ephemeral, sharing=sharing, time_limit=time_limit)], batch=batch)[0]

    def submit_many(self, specs: list[dict[str, Any]], batch: str | None = None) -> list[int]:
        """Queue several jobs in one transaction (all or none)."""
        ids = []
        for s in specs:
            s["cwd"] = s.get("cwd") or _cwd()
            s["env"] = {**os.environ, **(s.get("env") or {})}  # a job runs with its submitter's environment
            for key in ("name", "cwd"):
                if isinstance(s.get(key), str) and not _utf8(s[key]):
                    raise JobsError(f"job {key} is not valid UTF-8 text"
                                    + (" (run from a directory whose path is UTF-8)" if key == "cwd" else ""))
        with immediate(self.conn) as c:
            for s in specs:
                req: Request = s["req"]
                sh: Sharing = s.get("sharing") or Sharing()
                cur = c.execute(
                    "INSERT INTO jobs (node, name, cmd, cwd, env, profile, mem_mib, gpus, priority, state, created, "
                    "ephemeral, batch, isolation, share, threads, mps_mem_mib) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (self.key, s.get("name") or "", json.dumps(list(s["cmd"])), s["cwd"],
                     json.dumps(s.get("env") or {}), req.profile, req.mem_mib,
                     json.dumps(list(req.gpus)) if req.gpus is not None else None, int(s.get("priority") or 0),
                     "queued", time.time(), int(bool(s.get("ephemeral"))), batch, sh.isolation, sh.share, sh.threads,
                     sh.mem_limit_mib),
                )
                jid = int(cur.lastrowid or 0)
                c.execute("UPDATE jobs SET log_path=? WHERE id=?", (str(self.log_dir / f"{jid}.log"), jid))
                if s.get("time_limit") is not None:
                    c.execute("UPDATE jobs SET time_limit=? WHERE id=?", (float(s["time_limit"]), jid))
                ids.append(jid)
        return ids

    def get(self, job_id: int) -> Job:
        r = self.conn.execute("SELECT * FROM jobs WHERE id=? AND node=?", (job_id, self.key)).fetchone()
        if r is None:
            raise JobsError(f"no job {job_id} on this node (migctl jobs --all lists them)")
        return Job.from_row(r)

    def _rows(self, states: tuple[str, ...] | None, ids: list[int] | None = None) -> list[Any]:
        q, args = "SELECT * FROM jobs WHERE node=?", [self.key]
        if states:
            q += f" AND state IN ({','.join('?' * len(states))})"
            args += list(states)
        if ids:
            q += f" AND id IN ({','.join('?' * len(ids))})"
            args += [int(i) for i in ids]
        return self.conn.execute(q + " ORDER BY id", args).fetchall()

    def list(self, states: tuple[str, ...] | None = None, ids: list[int] | None = None) -> list[Job]:
        return [Job.from_row(r) for r in self._rows(states, ids)]

    def list_sound(self, states: tuple[str, ...] | None = None) -> tuple[list[Job], list[tuple[int, str]]]:
        """As :meth:`list`, for listings: the jobs of the sound rows, and (job ID, one line) for each damaged
        row (edited by hand), so that one damaged row hides only itself. The jobs' ``env`` is not loaded."""
        from migctl.jobs.rows import problem

        jobs: list[Job] = []
        damaged: list[tuple[int, str]] = []
        for r in self._rows(states):
            err = problem(r)
            if err is None:
                jobs.append(Job.from_row(r, checked=True, with_env=False))
            else:
                damaged.append((int(r["id"]), str(err)))
        return jobs, damaged

    def cancel(self, job_id: int) -> str:
        """Cancel a queued job, or stop a running one (SIGTERM to its process group, SIGKILL after 10 s)."""
        with immediate(self.conn) as c:
            r = c.execute("SELECT * FROM jobs WHERE id=? AND node=?", (job_id, self.key)).fetchone()
            if r is None:
                raise JobsError(f"no job {job_id} on this node")
            check(r)  # a damaged row (edited by hand): one line, nothing changed (it was cancelled, then a traceback)
            state = r["state"]
            if state in TERMINAL:
                return f"job {job_id} already {state}"
            c.execute("UPDATE jobs SET state='cancelled', reason='cancelled by user', finished=COALESCE(finished, ?) "
                      "WHERE id=?", (time.time(), job_id))
        if state in ("queued", "starting"):
            return f"job {job_id} cancelled"
        pid, start = r["child_pid"], r["child_start"]
        if pid_alive(pid, start):
            signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while pid_alive(pid, start) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid_alive(pid, start):
                signal_group(pid, signal.SIGKILL)
        return f"job {job_id} cancelled (was running as PID {pid})"

    def log_file(self, job_id: int) -> Path:
        return Path(self.get(job_id).log_path)


class WorkerBusy(JobsError):
    """Another worker already serves this node."""


class Worker:
    """Starts queued jobs as devices free up (priority, then FIFO) and records how they end."""

    def __init__(self, queue: JobQueue, poll: float = 0.05, log: Any = None, policy: Any = None) -> None:
        self.q = queue
        self.node = queue.node
        self.leases = LeaseManager(queue.node, queue.path)
        self.poll = poll
        self.log = log or (lambda s: None)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self._damaged: set[int] = set()  # running jobs whose row is damaged (said once, not tracked)
        self._next_sweep = 0.0  # when to look for damaged coordination rows again (monotonic)
        self._checked: dict[Request, str | None] = {}
        self.lock_busy = ""
        self.gpu_of: dict[int, int] = {}  # job id -> GPU index, for jobs this worker started
        self.lock: Any = None
        self.pid = os.getpid()
        self.pid_start = proc_start(self.pid) or 0.0
        # reshaping, reservations, time-limit grace (migctl.jobs.demand.WorkerPolicy); None: plain backfill
        self.policy = policy
        from migctl.jobs.waiting import Reasons

        self.reasons = Reasons(queue.conn, queue.key)  # why each queued job waits (migctl jobs shows it)
        self.demand: Any = None
        if policy is not None:
            from migctl.jobs.demand import Demand

            self.demand = Demand(self, policy)
        self._waiters: dict[str, list[tuple[float, int, float]]] = {}  # waiting runs by request (this pass)
        self._reserved: set[int] = set()
        self._beaten = 0.0  # when this worker last refreshed its row's ``seen`` (monotonic)
        self._seen_version: int | None = None  # the jobs database's data_version at the last full pass
        self._next_full = 0.0  # when the next full pass is due whatever the database says (monotonic)

    # ------------------------------------------------------------------ lifecycle
    def acquire(self, block: bool = False) -> bool:
        """Become the node's worker (file lock); False if another worker holds it and ``block`` is False."""
        from filelock import FileLock, Timeout

        path = state_dir() / "locks" / f"worker-{key_slug(self.q.key)}.lock"
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = FileLock(str(path), mode=0o600)
        try:
            lock.acquire(timeout=-1 if block else 0)
        except Timeout:
            return False
        self.lock = lock
        self.recover()
        from migctl.jobs.reservations import worker_serves  # (waiting runs defer to the job it reserves for)

        worker_serves(self.q.conn, self.q.key, self.pid, self.pid_start, self.policy and self.policy.reserve_after)
        return True

    def release(self) -> None:
        if self.lock is not None:
            from migctl.jobs.reservations import worker_leaves

            worker_leaves(self.q.conn, self.q.key, self.pid)
            self.lock.release()
            self.lock = None

    def recover(self) -> None:
        """After a crash: 'starting' jobs never ran -> queued again; 'running' ones are adopted (see module doc)."""
        with immediate(self.q.conn) as c:
            n = c.execute("UPDATE jobs SET state='queued', worker_pid=NULL, child_pid=NULL, mig_uuid=NULL "
                          "WHERE node=? AND state='starting'", (self.q.key,)).rowcount
        if n:
            self.log(f"requeued {n} job(s) that a previous worker had claimed but not started")
        self.reap()
        from migctl.jobs.shared import sweep

        for uuid in sweep(self.node):  # e.g. a worker killed between admitting a shared job and starting it
            self.log(f"stopped the MPS daemon of {uuid}: its clients had all ended")

    # ------------------------------------------------------------------ one pass
    FULL_PASS_S = 1.0  # with nothing new in the jobs database, a full pass still this often (see step)

    def step(self) -> int:
        """Reap finished jobs, enforce time limits, start what fits, then (with a policy) reserve and reshape
        for what did not fit (:mod:`migctl.jobs.demand`). Returns the number of jobs started.

        The start pass reads and checks every queued job (0.3 s for 10,000 of them), so it runs only when
        something may have changed: another process wrote to the jobs database (SQLite's ``data_version``: a
        submit, a cancel, a lease released by ``run``), a job of this worker ended, or :attr:`FULL_PASS_S`
        has gone by (devices also free up outside the database: a CUDA process migctl did not start ends;
        reservations, the churn window and hysteresis run on the clock). Before, it ran every ``poll``
        (50 ms): a worker in front of 10,000 blocked jobs used 85% of a core."""
        from migctl.jobs.limits import DEFAULT_GRACE_S, enforce

        if time.monotonic() >= self._next_sweep:  # rows edited by hand while the worker runs (jobs.rows)
            from migctl.jobs.rows import drop_damaged

            self._next_sweep = time.monotonic() + 5.0
            drop_damaged(self.q.conn, self.log)
        if time.monotonic() - self._beaten >= 1.0:  # (runs wait behind its queued jobs only while it is seen)
            from migctl.jobs.reservations import worker_beat

            self._beaten = time.monotonic()
            worker_beat(self.q.conn, self.q.key, self.pid, self.pid_start, self.policy and self.policy.reserve_after)
        ended = self.reap()
        enforce(self.q.conn, self.q.key, self.policy.limit_grace if self.policy else DEFAULT_GRACE_S, self.log)
        version = self.q.conn.execute("PRAGMA data_version").fetchone()[0]
        if not ended and version == self._seen_version and time.monotonic() < self._next_full:
            return 0
        self._seen_version = version  # (read before the pass: what this pass writes through the lease
        self._next_full = time.monotonic() + self.FULL_PASS_S  # manager's own connection shows as a change)
        started = self.start_ready()
        if self.demand is not None:
            started += self.demand.after_pass(changed=bool(ended or started))
        self.reasons.flush()
        return started

    def reap(self) -> int:
        """Record jobs whose process ended; returns how many."""
        done = 0
        rows = self.q.conn.execute(
            "SELECT * FROM jobs WHERE node=? AND child_pid IS NOT NULL AND (state='running' OR "
            "(state='cancelled' AND exit_code IS NULL))", (self.q.key,)).fetchall()
        groups: dict[int, list[tuple[int, float]]] | None = None
        for job in self._tracked(rows):
            proc = self.procs.get(job.id)
            status: int | None
            if proc is not None:
                rc = proc.poll()
                if rc is None:
                    continue
            else:
                if job.state == "cancelled" and job.finished and job.exit_code is not None:
                    continue
                if pid_alive(job.child_pid, job.child_start):
                    continue
            # The wrapper is gone; the job ends when its whole process group has (the command may outlive a
            # wrapper killed with SIGKILL, and keeps its device meanwhile).
            if groups is None:
                groups = process_groups()
            if job.child_pid and lease_processes(job.child_pid, job.child_start or 0.0, job.child_pid,
                                                 job.child_start, groups):
                continue
            if proc is not None:
                status = exit_status(int(proc.returncode))
                self.procs.pop(job.id, None)
            else:
                status = _read_exit(Path(job.log_path).with_suffix(".exit"))
            self._finish(job, status)
            done += 1
        return done

    def _tracked(self, rows: list[Any]) -> list[Job]:
        """The jobs of running rows; a damaged row (edited by hand) is left alone, said once: its process keeps
        its lease, so its device stays in use until it ends, but the worker cannot record its end."""
        jobs = []
        for r in rows:
            try:
                jobs.append(Job.from_row(r))
            except JobsError as e:
                if int(r["id"]) not in self._damaged:
                    self._damaged.add(int(r["id"]))
                    self.log(f"job {r['id']}: not tracked: {e}")
        return jobs

    def _finish(self, job: Job, status: int | None) -> None:
        self._record_end(job, status)
        if job.sharing.kind != "mig":  # a shared job: drop the client; the last one stops the MPS daemon
            self.gpu_of.pop(job.id, None)
            if job.mig_uuid and job.child_pid:
                from migctl.jobs.shared import release_client

                try:
                    if release_client(self.node, job.mig_uuid, job.child_pid):
                        self.log(f"job {job.id} was the last client of {job.mig_uuid}: "
                                 + ("MPS daemon stopped" if job.sharing.kind == "mps" else "device free"))
                except (JobsError, OSError) as e:  # (the job's status is recorded; a client that has ended
                    # no longer counts, and the next busy decision stops a daemon left without clients)
                    self.log(f"job {job.id}: releasing {job.mig_uuid}: {e}")
            return
        if job.mig_uuid and job.child_pid:
            lease = self._lease_of(job)
            gpu = self.gpu_of.pop(job.id, None)
            if gpu is None and lease is not None:
                gpu = lease.gpu
            if gpu is None and getattr(self.node, "sim", None) is not None:
                d = self.node.find_mig_device(job.mig_uuid)
                gpu = d.gpu.index if d is not None else None
            if gpu is not None and getattr(self.node, "sim", None) is not None:
                self.node.sim.remove_client(gpu, job.child_pid)  # the simulator keeps dead clients otherwise
            if lease is not None:  # (it may already have been reclaimed as stale: its holder is dead)
                self.leases.release(lease, destroy=job.ephemeral and lease.created_instance)

    def _record_end(self, job: Job, status: int | None) -> None:
        with immediate(self.q.conn) as c:
            r = c.execute("SELECT state, exit_code, limit_term FROM jobs WHERE id=?", (job.id,)).fetchone()
            if r["state"] == "running":
                if r["limit_term"] is not None:  # stopped at its time limit (migctl.jobs.limits)
                    c.execute("UPDATE jobs SET state='failed', reason='time limit', exit_code=?, finished=? WHERE id=?",
                              (status, time.time(), job.id))
                elif status is None:
                    c.execute("UPDATE jobs SET state='failed', reason='lost: the job process died without an exit "
                              "status (not re-run)', finished=? WHERE id=?", (time.time(), job.id))
                else:
                    c.execute("UPDATE jobs SET state=?, exit_code=?, finished=? WHERE id=?",
                              ("done" if status == 0 else "failed", status, time.time(), job.id))
            elif r["state"] == "cancelled" and r["exit_code"] is None:
                c.execute("UPDATE jobs SET exit_code=? WHERE id=?", (status if status is not None else -1, job.id))

    def _lease_of(self, job: Job) -> Lease | None:
        r = self.q.conn.execute("SELECT * FROM leases WHERE node=? AND uuid=? AND pid=?",
                                (self.q.key, job.mig_uuid, job.child_pid)).fetchone()
        return Lease.from_row(r) if r is not None else None

    def start_ready(self) -> int:
        """Start queued jobs in (priority desc, id) order (or the policy's ``order``) while devices fit; a job
        that does not fit now does not block smaller ones behind it (backfill), but later jobs asking for
        the same thing are not tried in this pass (:class:`migctl.jobs.demand.Closed`)."""
        started = 0
        from migctl.jobs.demand import Closed, has_reservations, queued_rows

        blocked = Closed(has_reservations(self.q.conn, self.q.key))  # request -> (reason, why) it did not start
        self._checked: dict[Request, str | None] = {}
        self.lock_busy = ""
        self.reasons.begin_pass()
        self._order_runs()
        rows = queued_rows(self.q.conn, self.q.key, self.policy.order if self.policy is not None else "fifo", self.log)
        for n, r in enumerate(rows):
            req = Request(profile=r["profile"], mem_mib=r["mem_mib"],
                          gpus=tuple(json.loads(r["gpus"])) if r["gpus"] else None)
            key = (req, r["isolation"], r["share"], r["threads"], r["mps_mem_mib"])
            got = blocked.get(key, r["time_limit"])
            if got is not None:
                self.reasons.not_started(int(r["id"]), *got)
                continue
            pid = self.run_first(r)
            if pid is not None:  # (later jobs with the same request come after it, so after the run too)
                why = f"migctl run PID {pid} waits for the same request since before this job was queued: it goes first"
                blocked.close(key, math.inf, ("runs-first", why))
                self.reasons.not_started(int(r["id"]), "runs-first", why)
                continue
            if started and started % 16 == 0:
                self.reap()  # record finished jobs (and drop their simulator clients) as we go
            row = self.q.conn.execute("SELECT * FROM jobs WHERE id=? AND state='queued'", (r["id"],)).fetchone()
            job = self.queued_job(row)
            if job is None:
                continue
            if self._start(job):
                started += 1
                if started == 1:  # a reserved job comes first: its reservation ends now, not at the next pass
                    self.q.conn.execute("DELETE FROM reservations WHERE job_id=?", (r["id"],))
            elif self.lock_busy:
                for rest in rows[n:]:
                    self.reasons.not_started(int(rest["id"]), "node-locked", self.lock_busy)
                break  # an apply holds the node lock: nothing can be leased until it ends
            else:
                what = req.describe() if (r["isolation"] or "hard") == "hard" else f"a shared {req.describe()}"
                why = f"nothing free fits {what} and there is no room to create it"
                blocked.close(key, r["time_limit"], ("resources", why))
                self.reasons.not_started(int(r["id"]), "resources", why)
        return started

    def _order_runs(self) -> None:
        """Read, for this pass, the waiting runs that queued jobs with the same request wait behind."""
        from migctl.jobs.demand import reserved_jobs
        from migctl.jobs.reservations import fresh_waiters
        from migctl.jobs.run_reserve import RunReservation

        self._waiters = fresh_waiters(self.q.conn, self.q.key, time.time() - RunReservation.STALE)
        self._reserved = reserved_jobs(self.q.conn, self.q.key) if self._waiters else set()

    def run_first(self, row: Any) -> int | None:
        """The PID of a waiting ``migctl run`` with the same request that comes before this queued job (see
        :func:`migctl.jobs.reservations.jobs_ahead`: one arrival order per request for runs and jobs, a run
        counting as priority 0), as read at the start of this pass; None when the job's turn has come. A job
        holding the node's reservation goes first (its reserved space is its own)."""
        if not self._waiters or int(row["id"]) in self._reserved:
            return None
        from migctl.jobs.reservations import run_before
        from migctl.jobs.run_reserve import job_signature

        waiters = self._waiters.get(job_signature(row))
        return run_before(waiters, float(row["created"]), int(row["priority"])) if waiters else None

    def queued_job(self, row: Any) -> Job | None:
        """The job of a queued row (None: gone, or damaged: then it fails with one line saying why)."""
        if row is None:
            return None
        try:
            return Job.from_row(row)
        except JobsError as e:
            from migctl.jobs.rows import fail_queued

            fail_queued(self.q.conn, int(row["id"]), str(e), self.log)
            return None

    def _start(self, job: Job) -> bool:
        c = self.q.conn
        with immediate(c):
            claimed = c.execute("UPDATE jobs SET state='starting', worker_pid=?, worker_start=? "
                                "WHERE id=? AND state='queued'", (self.pid, self.pid_start, job.id)).rowcount
        if not claimed:
            return False
        try:
            if job.sharing.kind != "mig":
                return self._start_shared(job)
            try:
                verify = job.request not in self._checked
                from migctl.jobs.limits import limit_of

                lease = self.leases.try_acquire(job.request, pid=self.pid, pid_start=self.pid_start, job_id=job.id,
                                                owner=f"job {job.id}", precheck=False, check=verify,
                                                limit=limit_of(c, job.id))
                if not self.leases.last_lock_busy:
                    self._checked[job.request] = None  # checked under the node lock: satisfiable
            except JobsError as e:
                if e.exit_code == 75:  # "try again" (the database write-locked): requeued, never failed for it
                    raise
                self._fail_claimed(job, str(e))
                return False
            if lease is None:
                self._requeue(job)
                if self.leases.last_lock_busy:
                    self.lock_busy = self.leases.last_lock_busy
                return False
            return self._launch(job, lease)
        except BaseException:
            self._requeue(job)
            raise

    def _requeue(self, job: Job) -> None:
        """A claimed job that could not start now goes back to the queue."""
        with immediate(self.q.conn) as c:
            c.execute("UPDATE jobs SET state='queued', worker_pid=NULL WHERE id=? AND state='starting'", (job.id,))

    def _fail_claimed(self, job: Job, reason: str) -> None:
        """A claimed job that can never start fails with ``reason`` (logged)."""
        with immediate(self.q.conn) as c:
            c.execute("UPDATE jobs SET state='failed', reason=?, finished=? WHERE id=? AND state='starting'",
                      (reason, time.time(), job.id))
        self.log(f"job {job.id}: {reason}")

    def _spawn(self, job: Job, extra: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
        """Start the job's wrapper behind its closed gate: the submitter's environment plus ``extra``, output
        to the job's log, in a session of its own (it outlives the worker)."""
        log_path = Path(job.log_path)
        exit_file = log_path.with_suffix(".exit")
        for p in (exit_file, exit_file.with_suffix(".exit.tmp")):
            p.unlink(missing_ok=True)
        env = {**job.env, "MIGCTL_JOB_ID": str(job.id), "MIGCTL_EXIT_FILE": str(exit_file), **extra}
        cwd = job.cwd if os.path.isdir(job.cwd) else None
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "ab") as out:
            return gated_popen(job.cmd, env, script=JOB_SCRIPT, new_group=False, deathsig=False,
                               stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                               start_new_session=True)

    def _start_shared(self, job: Job) -> bool:
        """Start a claimed job as an MPS or time-sliced client: jobs/shared.py's :func:`launch`, as ``run`` does.
        The job's wrapper is the client; :meth:`_finish` releases it (the last one stops the MPS daemon)."""
        from migctl.jobs.shared import launch, release_client

        c = self.q.conn

        def lease_now(r: Request) -> Lease | None:
            lease = self.leases.try_acquire(r, pid=self.pid, pid_start=self.pid_start, job_id=job.id,
                                            owner=f"job {job.id}")  # (the lock-free look first: cheap)
            self.lock_busy = self.leases.last_lock_busy or self.lock_busy
            return lease

        try:
            got = launch(self.node, job.request, job.sharing, lambda extra: self._spawn(job, extra),
                         leases=self.leases, lease_now=lease_now, name=os.path.basename(job.cmd[0]), lock_timeout=1.0)
        except JobsError as e:
            if e.exit_code == 75:  # "try again": requeued (by _start), never failed for it
                raise
            self._fail_claimed(job, str(e))
            return False
        if got is None:  # no shared device has room now: stays queued
            self._requeue(job)
            return False
        start = proc_start(got.proc.pid) or 0.0
        go = False
        try:
            with immediate(c):
                go = c.execute(
                    "UPDATE jobs SET state='running', child_pid=?, child_start=?, started=?, mig_uuid=? WHERE id=? "
                    "AND state='starting'", (got.proc.pid, start, time.time(), got.device.uuid, job.id)).rowcount == 1
        finally:
            open_gate(got.gate, go=go)
            if not go:
                got.proc.wait()
                release_client(self.node, got.device.uuid, got.proc.pid, device=got.device)
        if go:
            self.procs[job.id] = got.proc
            self.gpu_of[job.id] = got.device.gpu
            self.log(f"job {job.id} started as {got.describe()}: {shlex.join(job.cmd)}")
        return go

    def _launch(self, job: Job, lease: Lease) -> bool:
        c = self.q.conn
        try:
            proc, gate = self._spawn(job, child_env(lease, base={}))
        except (OSError, ValueError) as e:  # (ValueError: a NUL or an '=' in a name, which exec refuses)
            self.leases.release(lease)
            if isinstance(e, OSError) and transient_failure(e):  # a full disk for its log, a fork refused for
                raise  # a moment: the job goes back to the queue (run() says so and tries again), never failed
            self._fail_claimed(job, f"cannot start: {e}")
            return False
        start = proc_start(proc.pid) or 0.0
        go = False
        try:
            lease = self.leases.set_holder(lease, proc.pid, start, pgid=proc.pid)  # its own session and group
            register_client(self.node, lease, proc.pid, os.path.basename(job.cmd[0]))
            with immediate(c):
                go = c.execute(
                    "UPDATE jobs SET state='running', child_pid=?, child_start=?, started=?, mig_uuid=? "
                    "WHERE id=? AND state='starting'", (proc.pid, start, time.time(), lease.uuid, job.id)).rowcount == 1
        finally:
            open_gate(gate, go=go)
            if not go:
                proc.wait()
                unregister_client(self.node, lease, proc.pid)
                self.leases.release(lease)
        if go:
            self.procs[job.id] = proc
            self.gpu_of[job.id] = lease.gpu
            self.log(f"job {job.id} started on {lease.cuda_visible_devices} ({lease.profile}): "
                     f"{shlex.join(job.cmd)}")
        return go

    # ------------------------------------------------------------------ loops
    def active(self, ids: list[int] | None = None) -> int:
        """Jobs (of ``ids`` if given) not yet finished."""
        from migctl.jobs.rows import problem

        def rows(what: str, where: str, skip: set[int]) -> list[Any]:
            q, args = f"SELECT {what} FROM jobs WHERE node=? AND {where}", [self.q.key]
            for op, values in (("IN", ids or []), ("NOT IN", skip)):
                if values:
                    q += f" AND id {op} ({','.join('?' * len(values))})"
                    args += sorted(int(i) for i in values)
            return self.q.conn.execute(q, args).fetchall()

        # (a damaged running job is not tracked, so never seen to end: waiting for it would never end)
        pending = int(rows("COUNT(*)", "state IN ('queued', 'starting', 'running')", self._damaged)[0][0])
        if pending:
            return pending
        return sum(1 for r in rows("id, child_pid, child_start", "state='cancelled'", set())
                   if problem(r) is None and r["child_pid"] and pid_alive(r["child_pid"], r["child_start"]))

    RETRY_MIN_S = 1.0  # the first wait, doubled each try while storage fails ...
    RETRY_MAX_S = 30.0  # ... up to this

    def run(self, until_idle: bool = False, ids: list[int] | None = None, stop: Any = None) -> None:
        """Serve the queue; with ``until_idle`` return once no job (of ``ids``) is queued or running.

        A failure that may pass (:func:`migctl.jobs.common.transient_failure`: a full disk, an I/O error, the
        database locked too long, a fork refused for a moment) does not end the worker: it says so, keeps the jobs it started (their
        exit statuses stay with it, which a full disk keeps out of their exit files), and tries again every 1, 2,
        4 ... up to 30 s; each try first puts back what the failed pass had claimed (:meth:`recover`)."""
        delay = 0.0
        while stop is None or not stop.is_set():
            try:
                if delay:
                    self.recover()
                started = self.step()
                done = until_idle and self.active(ids) == 0
            except (OSError, sqlite3.OperationalError, JobsError) as e:
                why = transient_failure(e)
                if why is None:
                    raise
                delay = min(self.RETRY_MAX_S, max(self.RETRY_MIN_S, delay * 2))
                self.log(f"{why}; the jobs it started go on; trying again in {delay:g} s")
                if stop is not None:
                    stop.wait(delay)
                else:
                    time.sleep(delay)
                continue
            if delay:
                self.log("the last try went through; serving the queue again")
                delay = 0.0
            if done:
                return
            if not started:
                time.sleep(self.poll)


def _read_exit(path: Path) -> int | None:
    try:
        with open(path, "rb") as f:
            return int(f.read(64).strip())  # (a status is a few digits: a job that wrote more there is not believed)
    except (OSError, ValueError):
        return None
