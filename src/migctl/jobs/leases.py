"""Leases: exclusive use of one MIG device by one process (group), and dynamic creation of instances.

A lease is a row ``(node, mig uuid)`` (PRIMARY KEY, so never two holders) with the holder's PID and start
time, and the process group of the command it runs. It stays live while the holder **or** any process of
that group runs, so killing a wrapper with SIGKILL cannot free a device whose command still runs. A lease
with neither, or whose device no longer exists, is stale and reclaimed on read.

"Free" and "busy" come from one authority, :mod:`migctl.busy` (live lease, NVML process or MPS server).

Lock order (docs/jobs.md): the node lock (:func:`migctl.paths.node_lock`, shared with ``apply``) first,
then a short SQLite write transaction, never the reverse. Every lease is taken under the node lock, so no
lease can appear while an apply (or a destroying release) runs: instances an apply creates are not
leasable before it commits, and its rollback can always restore the old layout. Waits for the lock are
bounded and name the holder. Instances are created in free space only (a GI and its CI as one journaled
step, :mod:`migctl.instance_journal`).
"""

from __future__ import annotations

import math
import os
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migctl.busy import busy_view, lease_processes, own_pidns, process_groups, retry_nvml, transient
from migctl.jobs.common import (
    JobsError,
    connect,
    immediate,
    node_key,
    proc_start,
)
from migctl.jobs.rows import lease_problem
from migctl.paths import LockBusy, node_lock_path


def _holds(memory_mib: int, profile_name: str, want_mib: int) -> bool:
    """A device holds ``want_mib`` when its memory does, or when its profile's name says it does: ``--mem 20gb``
    means what ``2g.20gb`` means, although that profile has 19968-20096 MiB (names round; see the catalog)."""
    import re

    m = re.search(r"\.(\d+)gb", profile_name or "")
    return memory_mib >= want_mib or (m is not None and int(m.group(1)) * 1024 >= want_mib)


@dataclass(frozen=True)
class Request:
    """What a job needs: a profile name (``1g.10gb``), or at least ``mem_mib`` of memory, optionally on given GPUs."""

    profile: str | None = None
    mem_mib: int | None = None
    gpus: tuple[int, ...] | None = None
    create: bool = True

    def describe(self) -> str:
        what = f"profile {self.profile}" if self.profile else (f">= {self.mem_mib} MiB" if self.mem_mib else "any size")
        where = f" on GPU {','.join(map(str, self.gpus))}" if self.gpus else ""
        return what + where


@dataclass(frozen=True)
class Lifetimes:
    """Inputs of the lifetime-aware placement at ``now``: the requester's end, and per GPU index when its
    last busy device is free at the latest (GPUs with no busy device: ``now``)."""

    now: float
    end: float
    drain: dict[int, float]


@dataclass(frozen=True)
class Lease:
    """A held MIG device."""

    node: str
    uuid: str
    gpu: int
    gi: int
    ci: int
    profile: str
    memory_mib: int
    pid: int
    pid_start: float
    created: float
    created_instance: bool
    job_id: int | None = None
    owner: str = ""
    pgid: int | None = None
    pgid_start: float | None = None
    damaged: str = ""  # a row edited by hand: which column, and why (migctl.jobs.rows.LEASES); the device stays in use

    @property
    def cuda_visible_devices(self) -> str:
        return self.uuid if self.uuid.startswith("MIG-") else f"MIG-{self.uuid}"

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> Lease:
        return cls(node=r["node"], uuid=r["uuid"], gpu=r["gpu"], gi=r["gi"], ci=r["ci"], profile=r["profile"],
                   memory_mib=r["memory_mib"], pid=r["pid"], pid_start=r["pid_start"], created=r["created"],
                   created_instance=bool(r["created_instance"]), job_id=r["job_id"], owner=r["owner"],
                   pgid=r["pgid"], pgid_start=r["pgid_start"], damaged=lease_problem(r) or "")

    def to_json(self) -> dict[str, Any]:
        return {"uuid": self.uuid, "gpu": self.gpu, "gi": self.gi, "ci": self.ci, "profile": self.profile,
                "memory_mib": self.memory_mib, "pid": self.pid, "created": self.created,
                "created_instance": self.created_instance, "job_id": self.job_id, "owner": self.owner,
                "pgid": self.pgid, **({"damaged": self.damaged} if self.damaged else {})}


def _lock_wait(default: float) -> float:
    """``$MIGCTL_LOCK_WAIT`` (seconds, 0..3600) or ``default``."""
    text = os.environ.get("MIGCTL_LOCK_WAIT")
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise JobsError(f"MIGCTL_LOCK_WAIT={text!r} is not a number of seconds in 0..3600")
    return value


def _plain(name: str) -> bool:
    """A profile without media-engine/graphics variants (``1g.10gb``, not ``1g.10gb+me`` or ``1g.10gb-me``)."""
    return "+" not in name and not name.endswith("-me")


def waited(wait: float | None) -> str:
    """The clause of a wait that timed out: how long it waited, or how to wait at all (``wait`` 0)."""
    return f"; waited {wait:g}s" if wait else "; use --wait SECONDS to wait for one"


def _remove(g: Any, gi_id: int, ci_id: int, keep_gi: bool = False) -> None:
    """Destroy compute instance ``ci_id`` of GI ``gi_id`` on GPU ``g``, then the GI once it has no compute
    instance left (unless ``keep_gi``: something else holds it). The caller holds the node lock."""
    gi = g.gpu_instance(gi_id)
    for ci in gi.compute_instances():
        if ci.id == ci_id:
            ci.destroy()
    if not gi.compute_instances() and not keep_gi:
        gi.destroy()


def _still_runs(pid: Any, start: Any) -> bool:
    """Whether the holder of a lease row runs (False for a row whose PID or start time is not a number: a row
    edited by hand, which :meth:`LeaseManager._live` judges)."""
    from migctl.proc import pid_alive

    if not isinstance(pid, int) or isinstance(pid, bool) or not isinstance(start, (int, float)) or pid <= 0:
        return False
    return pid_alive(pid, float(start))


class LeaseManager:
    """Leases on one node (a :class:`migctl.device.Node`), stored in the jobs database."""

    # Longest single wait for the node lock (an apply with slow hooks can hold it for long): callers loop
    # until their own deadline, and a lease attempt that could not get the lock is "not now".
    LOCK_SLICE = 1.0
    NO_WAIT_LOCK = 10.0  # with little or no --wait, how long an apply holding the lock is awaited ($MIGCTL_LOCK_WAIT)
    last_lock_busy = ""
    last_ahead = 0

    def __init__(self, node: Any, path: Path | None = None) -> None:
        self.node = node
        self.key = node_key(node)
        self.conn = connect(path)
        self._lock_path = node_lock_path(node)  # the same lock as apply: one writer of the layout at a time
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ locking
    def node_lock(self, timeout: float | None = 120.0, what: str = "migctl run/worker") -> Any:
        """The node-wide lock (shared with ``migctl apply``); taken before any SQLite write transaction."""
        from migctl.paths import node_lock

        return node_lock(self.node, timeout, what=what)

    # ------------------------------------------------------------------ inventory
    def allowed_gpus(self, req: Request) -> list[Any]:
        """The GPUs ``req`` may use (its ``gpus``, else all); a GPU index that does not exist is a
        :class:`JobsError` naming the valid range."""
        gpus = retry_nvml(self.node.gpus)
        if req.gpus is not None:
            bad = [g for g in req.gpus if not 0 <= g < len(gpus)]
            if bad:
                raise JobsError(f"GPU {bad[0]} does not exist; valid: 0..{len(gpus) - 1}")
            gpus = [gpus[i] for i in req.gpus]
        return gpus

    def mig_gpus(self, req: Request) -> list[Any]:
        """Of :meth:`allowed_gpus`, those in MIG mode."""
        return [g for g in self.allowed_gpus(req) if retry_nvml(g.mig_capable) and retry_nvml(g.mig_mode)[0] == 1]

    def _devices(self, gpus: list[Any]) -> list[Any]:
        return [d for g in gpus for d in retry_nvml(g.mig_devices)]

    def _fits_device(self, req: Request, d: Any) -> bool:
        if req.profile:
            return bool(d.profile_name == req.profile)
        if req.mem_mib:
            return _holds(d.memory_mib, d.profile_name, req.mem_mib)
        return True

    def _fitting_profiles(self, req: Request, gpu: Any) -> list[Any]:
        """GI profiles of ``gpu`` (as NVML reports them) that would satisfy ``req``, smallest first."""
        out = []
        for p in retry_nvml(gpu.profiles):
            if req.profile:
                if p.name != req.profile:
                    continue
            elif not _plain(p.name) or (req.mem_mib and not _holds(p.memory_mib, p.name, req.mem_mib)):
                continue
            out.append(p)
        return sorted(out, key=lambda p: (p.memory_mib, p.slices, p.id))

    def check_satisfiable(self, req: Request) -> None:
        """Raise :class:`JobsError` (exit 2) when no MIG device could ever satisfy ``req`` on this node.

        Meaningful only on a settled layout: callers hold the node lock (no apply half-way), and NVML errors
        that concurrent changes cause are retried (they never mean "never").
        """
        gpus = self.mig_gpus(req)
        if not gpus:
            where = f"GPU {','.join(map(str, req.gpus))}" if req.gpus else "this node"
            chosen = self.allowed_gpus(req)
            if chosen and not any(retry_nvml(g.mig_capable) for g in chosen):
                names = sorted({str(g.name) for g in chosen})
                raise JobsError(f"no MIG on {where} ({', '.join(names)} cannot be partitioned); share the whole "
                                "GPU with --isolation soft (MPS) or --isolation none (time-slicing)")
            raise JobsError(f"no MIG-enabled GPU on {where}; enable MIG mode first (migctl apply / nvidia-smi -mig 1)")
        for g in gpus:
            if any(self._fits_device(req, d) for d in retry_nvml(g.mig_devices)):
                return
            if req.create and self._fitting_profiles(req, g):
                return
        if not req.create and any(self._fitting_profiles(req, g) for g in gpus):
            have = sorted(d.profile_name for g in gpus for d in retry_nvml(g.mig_devices))
            make = req.profile or "PROFILE"
            what = f"of {req.describe()}" if req.profile else f"with {req.describe()}"
            raise JobsError(f"no MIG device {what} exists and --no-create forbids creating one "
                            f"(devices here: {', '.join(have) or 'none'}); valid: without --no-create, or create "
                            f"one first (migctl gi create {make} -C)")
        if req.profile:
            names = sorted({p.name for g in gpus for p in retry_nvml(g.profiles)}
                           | {d.profile_name for g in gpus for d in retry_nvml(g.mig_devices)})
            raise JobsError(f"no GPU offers MIG profile {req.profile!r}; valid here: {', '.join(names)}")
        largest = max((p.memory_mib for g in gpus for p in retry_nvml(g.profiles)), default=0)
        raise JobsError(f"no MIG device can hold {req.mem_mib} MiB (largest profile here: {largest} MiB)")

    def check_satisfiable_locked(self, req: Request, timeout: float = 1.0) -> str | None:
        """:meth:`check_satisfiable` on a settled layout (under the node lock). When the lock stays held
        (an apply runs) the check is left to the worker: returns that note instead of failing."""
        try:
            with self.node_lock(timeout, what="migctl submit (checking the request)"):
                self._settled_check(req)
        except LockBusy as e:
            return f"{e}; the request is checked when the worker starts the job"
        return None

    def _settled_check(self, req: Request) -> None:
        for k in range(5):
            try:
                self.check_satisfiable(req)
                return
            except Exception as e:  # noqa: BLE001 - NVML errors that outlive the retries are not "never"
                if isinstance(e, JobsError):
                    raise
                if not transient(e) or k == 4:
                    raise JobsError(f"NVML kept failing while checking the request: {e}", exit_code=75) from None
                time.sleep(0.05 * (k + 1))

    # ------------------------------------------------------------------ leases
    def _live(self, conn: sqlite3.Connection, existing: set[str] | None = None,
              scope: set[int] | None = None) -> dict[str, sqlite3.Row]:
        """Current leases of this node; stale ones are deleted: neither the holder (same PID and start time)
        nor any process of its group runs, or (for leases on GPUs in ``scope``) the device is not in
        ``existing`` any more."""
        rows = conn.execute("SELECT * FROM leases WHERE node=?", (self.key,)).fetchall()
        live: dict[str, sqlite3.Row] = {}
        groups: dict[int, list[tuple[int, float]]] | None = None
        for r in rows:
            bad = lease_problem(r)  # (a row edited by hand: its holder cannot be checked, so it stays in use)
            if bad is not None:
                if bad.startswith("uuid "):  # names no device: protects nothing
                    conn.execute("DELETE FROM leases WHERE node=? AND uuid IS ?", (self.key, r["uuid"]))
                else:
                    live[r["uuid"]] = r
                continue
            gone = existing is not None and scope is not None and r["gpu"] in scope and r["uuid"] not in existing
            alive = False
            if not gone:
                from migctl.proc import pid_alive

                alive = pid_alive(r["pid"], r["pid_start"])
                if not alive and r["pgid"]:
                    if groups is None:
                        groups = process_groups()
                    alive = bool(lease_processes(r["pid"], r["pid_start"], r["pgid"], r["pgid_start"], groups))
            if not alive:
                conn.execute("DELETE FROM leases WHERE node=? AND uuid=? AND pid=?", (self.key, r["uuid"], r["pid"]))
                continue
            live[r["uuid"]] = r
        return live

    def leases(self) -> list[Lease]:
        """Live leases (stale ones are reclaimed as a side effect)."""
        with immediate(self.conn) as c:
            return [Lease.from_row(r) for r in self._live(c).values()]

    def reclaim(self) -> int:
        """Drop stale leases now; returns how many were dropped."""
        with immediate(self.conn) as c:
            before = c.execute("SELECT COUNT(*) FROM leases WHERE node=?", (self.key,)).fetchone()[0]
            live = self._live(c)
            return int(before - len(live))

    def _insert(self, c: sqlite3.Connection, d: Any, pid: int, start: float, created: bool, job_id: int | None,
                owner: str) -> Lease:
        lease = Lease(node=self.key, uuid=d.uuid, gpu=d.gpu.index, gi=d.gi_id, ci=d.ci_id, profile=d.profile_name,
                      memory_mib=d.memory_mib, pid=pid, pid_start=start, created=time.time(),
                      created_instance=created, job_id=job_id, owner=owner)
        c.execute(
            "INSERT INTO leases (node, uuid, gpu, gi, ci, profile, memory_mib, pid, pid_start, created, "
            "created_instance, job_id, owner, pidns) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (lease.node, lease.uuid, lease.gpu, lease.gi, lease.ci, lease.profile, lease.memory_mib, lease.pid,
             lease.pid_start, lease.created, int(created), job_id, owner, own_pidns()),
        )
        return lease

    def try_acquire(self, req: Request, pid: int | None = None, pid_start: float | None = None,
                    job_id: int | None = None, owner: str = "", precheck: bool = True, check: bool = False,
                    lock_timeout: float | None = None, limit: float | None = None,
                    ahead: Callable[[], int] | None = None) -> Lease | None:
        """Lease the smallest free fitting device (creating one in free space if allowed); None if none now.

        Takes the node lock (waiting at most ``lock_timeout``, default :attr:`LOCK_SLICE`; None when it stays
        held), then decides with :func:`migctl.busy.busy_view` and inserts in one short write transaction.
        With ``precheck`` a lock-free look comes first: only when a device looks free, or there is room to
        create one, is the lock taken. ``check``: run :meth:`check_satisfiable` under the lock first.
        Reservations (:mod:`migctl.jobs.reservations`) of other jobs and runs are kept clear of unless the
        requester's time limit ``limit`` (seconds; None = unbounded, as for ``migctl run``) ends before the
        reservation; a run's own reservation (held for process ``pid``) is its to use. ``ahead``: called under
        the lock, above 0 while earlier runs or queued jobs wait for the same thing; nothing is leased then
        (:meth:`migctl.jobs.run_reserve.RunReservation.first`; the answer is kept in :attr:`last_ahead`).
        """
        self.last_lock_busy = ""
        self.last_ahead = 0
        pid = pid or os.getpid()
        start = pid_start if pid_start is not None else proc_start(pid)
        if start is None:
            raise JobsError(f"lease holder PID {pid} does not exist")
        if precheck and not check and not self._looks_possible(req):
            return None
        try:
            lock = self.node_lock(self.LOCK_SLICE if lock_timeout is None else lock_timeout, what=f"migctl {owner or 'run'}")
            lock.__enter__()
        except LockBusy as e:
            self.last_lock_busy = str(e)
            return None
        try:
            if check:
                self._settled_check(req)
            if ahead is not None:
                self.last_ahead = ahead()
                if self.last_ahead:
                    return None
            return self._acquire_locked(req, pid, start, job_id, owner, limit)
        finally:
            lock.__exit__(None, None, None)

    def _acquire_locked(self, req: Request, pid: int, start: float, job_id: int | None, owner: str,
                        limit: float | None = None) -> Lease | None:
        from migctl.instance_journal import recover_creates

        try:
            recover_creates(self.node)
            frozen = self._recover_apply()
            gpus = [g for g in self.mig_gpus(req) if g.index not in frozen]
            devices = self._devices(gpus)
            # the lease table before the holders: a lease released between this read and the decision's own
            # (below) may have passed its device to a client the holders read missed (launch in jobs.shared
            # admits a shared client, then drops the lease that took its device)
            before = self.conn.execute("SELECT uuid, pid, pid_start FROM leases WHERE node=?", (self.key,)).fetchall()
            view = busy_view(self.node, leases=False, gpus=gpus)
        except Exception as e:  # noqa: BLE001
            if transient(e):
                return None  # NVML in flux (a change outside migctl's lock): try again later
            raise
        from migctl.jobs.reservations import blocking

        avoid = blocking(self.conn, self.key, job_id, limit, pid=pid)  # (a waiting run's own reservation: not)
        with immediate(self.conn) as c:
            live = self._live(c, {d.uuid for d in devices}, {g.index for g in gpus})
            # released since that read by a holder that still runs: held by what it passed the device to, or
            # about to be free; either way not this attempt's (a stale lease, whose holder is gone, is free)
            passed = {r["uuid"] for r in before if r["uuid"] not in live and _still_runs(r["pid"], r["pid_start"])}
            for d in self._fitting(req, devices):
                if d.uuid in live or d.uuid in passed or view.of_device(d.gpu.index, d.gi_id, d.ci_id):
                    continue
                if d.gpu.index in avoid and self._in_reserved(d, avoid[d.gpu.index]):
                    continue
                return self._insert(c, d, pid, start, False, job_id, owner)
            life = self._lifetimes(devices, live, view, limit) if req.create and limit is not None else None
        if not req.create:
            return None
        try:
            d = self._create(req, gpus, owner, avoid, life)
        except Exception as e:  # noqa: BLE001
            if transient(e):
                return None
            raise
        if d is None:
            return None
        try:
            with immediate(self.conn) as c:
                return self._insert(c, d, pid, start, True, job_id, owner)
        except BaseException:  # the lease could not be recorded (a damaged or long-locked database): undo
            self._undo_create(d)
            raise

    def _undo_create(self, d: Any) -> None:
        """Destroy the instance this attempt just created for a lease that could not be recorded (under the
        node lock, so nothing was leased or started on it; kept if a process appeared on it anyway). Best
        effort: what is left is an idle instance, as ``run --keep`` leaves."""
        try:
            g = self.node.gpu(d.gpu.index)
            if any(p.gi_id == d.gi_id for p in retry_nvml(g.processes)):
                return
            _remove(g, d.gi_id, d.ci_id)
        except Exception:  # noqa: BLE001 - the error being raised is the one to report
            pass

    def _lifetimes(self, devices: list[Any], live: dict[str, sqlite3.Row], view: Any, limit: float) -> Lifetimes:
        """What the lifetime-aware placement needs (:meth:`Placer.choose <migctl.planner.online.Placer.choose>`):
        per GPU, when its last busy device is free at the latest, and when the requester's own limit ends.

        A device leased by a queued job with a time limit is free at the job's start + limit; a device held
        any other way (a ``migctl run``, which has no limit, a process outside migctl, an MPS server) at an
        unknown time, counted as never. Idle devices do not count. A heuristic for where to place, never
        for what may be destroyed (that is :mod:`migctl.busy`'s).
        """
        from migctl.jobs.reservations import job_ends

        now = time.time()
        ends = job_ends(self.conn, self.key)
        drain: dict[int, float] = {}
        for d in devices:
            row = live.get(d.uuid)
            if row is not None:
                end = ends.get(int(row["job_id"]), math.inf) if row["job_id"] is not None else math.inf
            elif view.of_device(d.gpu.index, d.gi_id, d.ci_id):
                end = math.inf
            else:
                continue
            drain[d.gpu.index] = max(drain.get(d.gpu.index, now), end)
        return Lifetimes(now, now + limit, drain)

    def _recover_apply(self) -> set[int]:
        """An apply that died mid-way left its journal: roll it back now (we hold the node lock), before any
        instance it created can be leased. If that fails, the GPUs of that apply are not leased from at all
        (so a later ``recover`` can still restore them); returns their indices."""
        from migctl.paths import node_slug, state_dir

        if not (state_dir() / f"apply-{node_slug(self.node)}.journal.json").exists():
            return set()
        from migctl.errors import UserError
        from migctl.reconcile.engine import recover
        from migctl.reconcile.journal import Journal

        journal = Journal(self.node)
        try:
            msg = recover(self.node, journal=journal)
            if msg:
                import sys

                sys.stderr.write(f"migctl: note: {msg}\n")
            return set()
        except UserError:
            return {int(k) for k in (journal.data.get("old") or {})}

    def _fitting(self, req: Request, devices: list[Any]) -> list[Any]:
        return sorted((d for d in devices if self._fits_device(req, d)),
                      key=lambda d: (d.memory_mib, d.sms, d.gpu.index, d.index))

    def _held_uuids(self) -> set[str]:
        """Devices with a lease row whose holder or process group may still run (a cheap look, no lock)."""
        from migctl.proc import pid_alive

        rows = self.conn.execute("SELECT uuid, pid, pid_start, pgid FROM leases WHERE node=?", (self.key,)).fetchall()
        return {r["uuid"] for r in rows if lease_problem(r) or r["pgid"] or pid_alive(r["pid"], r["pid_start"])}

    def _looks_possible(self, req: Request) -> bool:
        """Without any lock: is a fitting device unleased and idle, or is there room to create one?
        (NVML errors while something changes the layout mean "maybe": the locked attempt decides.)"""
        try:
            gpus = self.mig_gpus(req)
            devices = self._devices(gpus)
            held = self._held_uuids()
            if any(d.uuid not in held and not d.processes() for d in self._fitting(req, devices)):
                return True
            return req.create and self._plan_create(req, gpus) is not None
        except JobsError:
            raise
        except Exception as e:  # noqa: BLE001
            if transient(e):
                return True
            raise

    def acquire(self, req: Request, wait: float | None = None, pid: int | None = None, job_id: int | None = None,
                owner: str = "", on_wait: Any = None, on_retry: Any = None, reshaping: bool = False,
                turn: Any = None) -> Lease:
        """Lease a device, waiting up to ``wait`` seconds (None = forever, 0 = not at all) for one to free up.

        The first attempt checks under the node lock that the request can ever be satisfied (exit 2 if not).
        A node lock held by an apply counts as "not free now"; with ``wait=0`` it is awaited for up to
        :attr:`NO_WAIT_LOCK` seconds. When the wait ends, the error says who held the lock.
        ``on_retry(req)``: called after each attempt that found nothing (having got the lock); True means it
        changed the node (``run --reshape`` reshaped it) and the next attempt follows at once. ``reshaping``:
        the caller reshapes (the timeout's message then does not suggest it). ``turn``: the run's place among
        runs waiting for the same thing (a :class:`migctl.jobs.run_reserve.RunReservation`): entered before the
        first attempt, refreshed on every pass, and asked under the lock whether earlier runs come first.
        """
        if turn is not None:
            turn.enter(req, waits=wait is None or wait > 0)
        start = time.monotonic()
        deadline = None if wait is None else start + max(wait, 0.0)
        lock_deadline = start + _lock_wait(self.NO_WAIT_LOCK)
        delay, told, checked = 0.02, False, False
        while True:
            now = time.monotonic()
            limit = None if deadline is None else max(deadline, lock_deadline)
            slice_ = self.LOCK_SLICE if limit is None else max(0.05, min(self.LOCK_SLICE, limit - now))
            self.last_lock_busy = ""
            # behind an earlier run with the same request (a look without the lock; the locked check decides):
            # no attempt, no reshaping or reservation for itself, a short pause to notice its turn
            behind = turn.ahead(first=True) if turn is not None and checked else 0
            self.last_ahead = behind
            if not behind:
                lease = self.try_acquire(req, pid=pid, job_id=job_id, owner=owner, check=not checked,
                                         lock_timeout=slice_, ahead=None if turn is None else turn.first)
                if lease is not None:
                    return lease
            if turn is not None:
                turn.beat()
            got_lock = not self.last_lock_busy
            checked = checked or got_lock
            if got_lock and not self.last_ahead and on_retry is not None:
                changed = on_retry(req)
                if turn is not None:
                    turn.beat()  # (refreshed again if the reshape took a while: it may outlast STALE)
                if changed:
                    continue
            now = time.monotonic()
            if deadline is not None and now >= deadline and (got_lock or now >= lock_deadline):
                if not got_lock:
                    raise JobsError(f"no MIG device could be leased for {req.describe()}: {self.last_lock_busy}",
                                    exit_code=75)
                busy = len(self.leases())
                first = turn.ahead_note() if turn is not None and self.last_ahead else ""
                raise JobsError(
                    f"no free MIG device for {req.describe()} and no room to create one "
                    f"({busy} device(s) leased on this node{first})"
                    + waited(wait) + self.what_would_help(req, reshaping),
                    exit_code=75,
                )
            if not told and on_wait is not None:
                on_wait(req)
                told = True
            if got_lock:
                # (in an arrival order, at most turn.POLL: the next run notices the device, or its turn, at once)
                cap = 0.5 if turn is None or not turn.enlisted else turn.POLL
                sleep = min(delay, cap) * (0.5 + random.random())
                if deadline is not None:
                    sleep = max(0.0, min(sleep, deadline - time.monotonic()))
                time.sleep(sleep)
                delay = min(delay * 1.5, cap)

    def what_would_help(self, req: Request, reshaping: bool) -> str:
        """For a timeout's message ("; ..." clauses, or ""): idle devices that reshaping could destroy (when
        the caller does not reshape), and the GPUs the request may use that are not in MIG mode. Best effort:
        a hint that cannot be worked out (NVML or the database failing now) is left out, never an error."""
        hints = []
        try:
            capable = [g for g in self.allowed_gpus(req) if retry_nvml(g.mig_capable)]
            on = [g for g in capable if retry_nvml(g.mig_mode)[0] == 1]
            held_by = self._held_without_lease(req, on)
            if held_by:
                hints.append(f"{len(held_by)} fitting device(s) held without a lease: " + "; ".join(held_by[:3])
                             + ("; ..." if len(held_by) > 3 else ""))
            if not reshaping and req.create:
                held = self._held_uuids()
                idle = [d for d in self._devices(on)
                        if d.uuid not in held and not d.processes() and not self._fits_device(req, d)]
                if idle:
                    hints.append(f"{len(idle)} idle MIG device(s) that do not fit it: `--reshape` destroys idle "
                                 "ones to make room")
            off = [g.index for g in capable if g not in on]
            if off:
                hints.append(f"GPU {','.join(map(str, off))} not in MIG mode (`migctl mode enable -i "
                             f"{','.join(map(str, off))}`)")
        except Exception:  # noqa: BLE001 - a hint only: the timeout is the error
            pass
        return "".join(f"; {h}" for h in hints)

    def _held_without_lease(self, req: Request, gpus: list[Any]) -> list[str]:
        """The devices that fit ``req`` and that something other than a lease holds (NVML processes, MPS servers,
        shared clients: :func:`migctl.busy.busy_view`), each with what holds it: what the timeout's "N device(s)
        leased" does not explain."""
        leased = self._held_uuids()
        view = busy_view(self.node, leases=False, gpus=gpus)
        out = []
        for d in self._fitting(req, self._devices(gpus)):
            if d.uuid in leased:
                continue
            what: dict[int, str] = {}
            for h in view.of_device(d.gpu.index, d.gi_id, d.ci_id):  # (processes first: an MPS server is an
                what[h.pid] = h.text()                               # NVML process too, named once, as a server)
            if what:
                out.append(f"{d.uuid} (GPU {d.gpu.index}, {d.profile_name}) by "
                           + ", ".join(text for _, text in sorted(what.items())))
        return out

    def set_holder(self, lease: Lease, pid: int, pid_start: float, pgid: int | None = None) -> Lease:
        """Hand a lease to another process (the queue worker hands it to the job's process and its group)."""
        pgid_start = proc_start(pgid) if pgid else None
        with immediate(self.conn) as c:
            c.execute("UPDATE leases SET pid=?, pid_start=?, pgid=?, pgid_start=? WHERE node=? AND uuid=? AND pid=?",
                      (pid, pid_start, pgid, pgid_start, self.key, lease.uuid, lease.pid))
        return Lease(**{**lease.__dict__, "pid": pid, "pid_start": pid_start, "pgid": pgid, "pgid_start": pgid_start})

    def set_group(self, lease: Lease, pgid: int) -> Lease:
        """Tie ``lease`` to process group ``pgid`` as well (the group of the command it runs)."""
        return self.set_holder(lease, lease.pid, lease.pid_start, pgid)

    def release(self, lease: Lease, destroy: bool = False, lock_timeout: float = 60.0) -> str | None:
        """Drop ``lease``; with ``destroy`` (ephemeral) also destroy its CI and, if then empty, its GI.

        Destroying happens under the node lock, after :func:`migctl.busy.busy_view` says nothing else holds
        the instance (our own lease excluded). Returns a note when the instance was kept.
        """
        note = None
        if destroy:
            try:
                with self.node_lock(lock_timeout, what="migctl run --ephemeral (release)"):
                    note = self._destroy(lease)
                    with immediate(self.conn) as c:
                        c.execute("DELETE FROM leases WHERE node=? AND uuid=? AND pid=?",
                                  (self.key, lease.uuid, lease.pid))
                    return note
            except LockBusy as e:
                note = f"instance kept: {e}"
        with immediate(self.conn) as c:
            c.execute("DELETE FROM leases WHERE node=? AND uuid=? AND pid=?", (self.key, lease.uuid, lease.pid))
            # the instance is idle from now (reshaping's hysteresis, migctl.jobs.reshape)
            c.execute("INSERT OR REPLACE INTO idle_since (node, uuid, since) VALUES (?,?,?)",
                      (self.key, lease.uuid, time.time()))
        return note

    # ------------------------------------------------------------------ dynamic partitioning
    @staticmethod
    def _in_reserved(d: Any, reserved: list[Any]) -> bool:
        pl = retry_nvml(lambda: d.gpu.gpu_instance(d.gi_id)).placement
        return any(r.overlaps(pl.start, pl.size) for r in reserved)

    def _plan_create(self, req: Request, gpus: list[Any], avoid: dict[int, list[Any]] | None = None,
                     life: Lifetimes | None = None) -> tuple[Any, Any, Any] | None:
        """(gpu, GI profile, placement) for the smallest fitting profile that fits in free space, or None.

        The GPU and placement come from migctl's online placement rule (:meth:`Placer.choose
        <migctl.planner.online.Placer.choose>`, docs/dynamic.md): no stranded slices, a GPU already in use
        before an empty one (keeps whole GPUs free for large requests), the fullest, the least room lost for
        the profiles this node holds and asks. The placement is explicit, never the driver's default.
        ``avoid``: GPU index -> reservations whose placements stay free (phantom instances). ``life`` (a queued
        job with a time limit, :meth:`_lifetimes`): the rule is lifetime-aware, it then prefers the GPU whose
        drain time the job pushes back least.
        """
        from migctl.catalog.geometry import PlacedGI, conflict
        from migctl.catalog.model import Placement
        from migctl.planner.online import Placer
        from migctl.planner.online import Request as PRequest

        kept: list[Any] = []  # GPUs whose every instance the catalog knows
        layouts: list[list[tuple[Any, Any]]] = []
        fitting: dict[str, list[Any]] = {}
        for g in gpus:
            model = g.model
            if model is None:
                continue
            by_id = {p.id: p for p in model.gi_profiles}
            existing: list[tuple[Any, Any]] = []
            for gi in g.gpu_instances():
                cp = by_id.get(gi.profile_id)
                if cp is None or conflict(model, [PlacedGI(x, pl) for x, pl in existing], cp, gi.placement):
                    break  # an instance the catalog does not know, or a layout it calls invalid: hands off
                existing.append((cp, gi.placement))
            else:
                if model.key not in fitting:
                    fitting[model.key] = [p for p in self._fitting_profiles(req, g) if p.id in by_id]
                kept.append(g)
                layouts.append(existing)
        if not kept or not any(fitting.values()):
            return None
        placer = Placer([g.model for g in kept], "migctl")
        extra: dict[int, list[PlacedGI]] = {}
        for i, (g, existing) in enumerate(zip(kept, layouts, strict=True)):
            for cp, pl in existing:
                placer.add(i, cp.id, pl.start)
                placer.observe(PRequest(((g.model.key, (cp.id,)),)))
            for r in (avoid or {}).get(g.index, []):
                rp = g.model.profile(r.profile)
                if rp is not None:
                    extra.setdefault(i, []).append(PlacedGI(rp, Placement(r.start, r.size)))
        request = PRequest(tuple((key, tuple(p.id for p in ps)) for key, ps in fitting.items()))
        placer.observe(request)
        if life is None:
            c = placer.choose(request, extra=extra or None)
        else:
            c = placer.choose(request, extra=extra or None, drain=[life.drain.get(g.index, life.now) for g in kept],
                              end=life.end)
        if c is None:
            return None
        g = kept[c.gpu]
        p = next(p for p in fitting[g.model.key] if p.id == c.profile.id)
        return g, p, c.placement

    def _create(self, req: Request, gpus: list[Any], owner: str = "", avoid: dict[int, list[Any]] | None = None,
                life: Lifetimes | None = None) -> Any | None:
        """Create GI + default CI (one journaled step) for :meth:`_plan_create`'s choice; the new MIG device
        or None. The caller holds the node lock."""
        from migctl.instance_journal import create_gi_ci

        plan = self._plan_create(req, gpus, avoid, life)
        if plan is None:
            return None
        g, p, pl = plan
        gi, ci = create_gi_ci(self.node, g, p, pl, what=f"migctl {owner or 'run'}")
        for d in retry_nvml(g.mig_devices):
            if d.gi_id == gi.id and d.ci_id == ci.id:
                return d
        raise JobsError(f"created GI {gi.id}/CI {ci.id} on GPU {g.index} but NVML does not list its MIG device")

    def _destroy(self, lease: Lease) -> str | None:
        """Destroy the leased CI (and its GI once empty) unless the busy authority says someone else holds it.
        The caller holds the node lock."""
        import pynvml

        try:
            g = self.node.gpu(lease.gpu)
            d = next((x for x in retry_nvml(g.mig_devices) if x.uuid == lease.uuid), None)
            if d is None:
                return "instance already gone"
            view = busy_view(self.node, exclude_lease=lease.uuid)
            holders = view.of_device(lease.gpu, lease.gi, lease.ci)
            if holders:
                return "instance kept: " + "; ".join(h.text() for h in holders)
            _remove(g, lease.gi, lease.ci, keep_gi=bool(view.of_gi(lease.gpu, lease.gi)))
            return None
        except pynvml.NVMLError as e:
            return f"instance kept: {e}"
