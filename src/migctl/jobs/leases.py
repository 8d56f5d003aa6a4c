"""Leases: exclusive use of one MIG device by one process, and dynamic creation of instances.

A lease is a row ``(node, mig uuid)`` (PRIMARY KEY, so never two holders) with the holder's PID and its
start time. It is taken inside ``BEGIN IMMEDIATE`` (one writer at a time for the whole database), after
dropping stale rows: a lease whose holder is dead (or whose PID was reused: start time differs) or whose
device no longer exists is reclaimed on read. So a runner killed with SIGKILL frees its device as soon as
anybody looks.

A device is *free* when it has no live lease and no compute process (on a real GPU CUDA processes appear in
NVML by themselves; on the simulator the runner registers its child as a client). When no fitting device is
free, a GPU instance + its default compute instance is created in free space only (catalog geometry; busy
instances are never touched), under a node-wide file lock so two runners never create or destroy at once.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migctl.jobs.common import (
    JobsError,
    connect,
    immediate,
    node_key,
    pid_alive,
    proc_start,
)
from migctl.paths import node_lock_path


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

    @property
    def cuda_visible_devices(self) -> str:
        return self.uuid if self.uuid.startswith("MIG-") else f"MIG-{self.uuid}"

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> Lease:
        return cls(node=r["node"], uuid=r["uuid"], gpu=r["gpu"], gi=r["gi"], ci=r["ci"], profile=r["profile"],
                   memory_mib=r["memory_mib"], pid=r["pid"], pid_start=r["pid_start"], created=r["created"],
                   created_instance=bool(r["created_instance"]), job_id=r["job_id"], owner=r["owner"])

    def to_json(self) -> dict[str, Any]:
        return {"uuid": self.uuid, "gpu": self.gpu, "gi": self.gi, "ci": self.ci, "profile": self.profile,
                "memory_mib": self.memory_mib, "pid": self.pid, "created": self.created,
                "created_instance": self.created_instance, "job_id": self.job_id, "owner": self.owner}


def _plain(name: str) -> bool:
    """A profile without media-engine/graphics variants (``1g.10gb``, not ``1g.10gb+me`` or ``1g.10gb-me``)."""
    return "+" not in name and not name.endswith("-me")


class LeaseManager:
    """Leases on one node (a :class:`migctl.device.Node`), stored in the jobs database."""

    def __init__(self, node: Any, path: Path | None = None) -> None:
        self.node = node
        self.key = node_key(node)
        self.conn = connect(path)
        self._lock_path = node_lock_path(node)  # the same lock as apply: one writer of the layout at a time
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ locking
    def node_lock(self, timeout: float = 120.0) -> Any:
        """The node-wide lock (shared with ``migctl apply``) under which instances are created or destroyed."""
        from filelock import FileLock

        return FileLock(str(self._lock_path), timeout=timeout)

    # ------------------------------------------------------------------ inventory
    def _gpus(self, req: Request) -> list[Any]:
        gpus = self.node.gpus()
        if req.gpus is not None:
            bad = [g for g in req.gpus if not 0 <= g < len(gpus)]
            if bad:
                raise JobsError(f"GPU {bad[0]} does not exist; valid: 0..{len(gpus) - 1}")
            gpus = [gpus[i] for i in req.gpus]
        return [g for g in gpus if g.mig_capable() and g.mig_mode()[0] == 1]

    def _fits_device(self, req: Request, d: Any) -> bool:
        if req.profile:
            return bool(d.profile_name == req.profile)
        if req.mem_mib:
            return bool(d.memory_mib >= req.mem_mib)
        return True

    def _fitting_profiles(self, req: Request, gpu: Any) -> list[Any]:
        """GI profiles of ``gpu`` (as NVML reports them) that would satisfy ``req``, smallest first."""
        out = []
        for p in gpu.profiles():
            if req.profile:
                if p.name != req.profile:
                    continue
            elif not _plain(p.name) or (req.mem_mib and p.memory_mib < req.mem_mib):
                continue
            out.append(p)
        return sorted(out, key=lambda p: (p.memory_mib, p.slices, p.id))

    def check_satisfiable(self, req: Request) -> None:
        """Raise :class:`JobsError` when no MIG device could ever satisfy ``req`` on this node."""
        gpus = self._gpus(req)
        if not gpus:
            where = f"GPU {','.join(map(str, req.gpus))}" if req.gpus else "this node"
            raise JobsError(f"no MIG-enabled GPU on {where}; enable MIG mode first (migctl apply / nvidia-smi -mig 1)")
        for g in gpus:
            if any(self._fits_device(req, d) for d in g.mig_devices()):
                return
            if req.create and self._fitting_profiles(req, g):
                return
        if req.profile:
            names = sorted({p.name for g in gpus for p in g.profiles()} | {d.profile_name for g in gpus for d in g.mig_devices()})
            raise JobsError(f"no GPU offers MIG profile {req.profile!r}; valid here: {', '.join(names)}")
        largest = max((p.memory_mib for g in gpus for p in g.profiles()), default=0)
        raise JobsError(f"no MIG device can hold {req.mem_mib} MiB (largest profile here: {largest} MiB)")

    # ------------------------------------------------------------------ leases
    def _live(self, conn: sqlite3.Connection, existing: set[str] | None = None,
              scope: set[int] | None = None) -> dict[str, sqlite3.Row]:
        """Current leases of this node; stale ones are deleted: dead or reused holder PID, or (for leases on
        GPUs in ``scope``) a device that is not in ``existing`` any more."""
        rows = conn.execute("SELECT * FROM leases WHERE node=?", (self.key,)).fetchall()
        live: dict[str, sqlite3.Row] = {}
        for r in rows:
            gone = existing is not None and scope is not None and r["gpu"] in scope and r["uuid"] not in existing
            if gone or not pid_alive(r["pid"], r["pid_start"]):
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
            "created_instance, job_id, owner) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (lease.node, lease.uuid, lease.gpu, lease.gi, lease.ci, lease.profile, lease.memory_mib, lease.pid,
             lease.pid_start, lease.created, int(created), job_id, owner),
        )
        return lease

    def try_acquire(self, req: Request, pid: int | None = None, pid_start: float | None = None,
                    job_id: int | None = None, owner: str = "", precheck: bool = True) -> Lease | None:
        """Lease the smallest free fitting device (creating one in free space if allowed); None if none now.

        With ``precheck`` a read-only look comes first (WAL readers never block): only when a device looks
        free, or there is room to create one, is the write lock taken and everything checked again under it.
        That keeps many waiting runners from serialising on the write lock; the queue worker, which is
        alone, skips it.
        """
        pid = pid or os.getpid()
        start = pid_start if pid_start is not None else proc_start(pid)
        if start is None:
            raise JobsError(f"lease holder PID {pid} does not exist")
        if precheck and not self._looks_possible(req):
            return None
        with immediate(self.conn) as c:
            gpus = self._gpus(req)
            devices = [d for g in gpus for d in g.mig_devices()]
            live = self._live(c, {d.uuid for d in devices}, {g.index for g in gpus})
            for d in self._fitting(req, devices):
                if d.uuid in live or d.processes():
                    continue
                return self._insert(c, d, pid, start, False, job_id, owner)
            if not req.create:
                return None
            with self.node_lock():
                d = self._create(req, gpus)
                if d is None:
                    return None
                return self._insert(c, d, pid, start, True, job_id, owner)

    def _fitting(self, req: Request, devices: list[Any]) -> list[Any]:
        return sorted((d for d in devices if self._fits_device(req, d)),
                      key=lambda d: (d.memory_mib, d.sms, d.gpu.index, d.index))

    def _looks_possible(self, req: Request) -> bool:
        """Without the write lock: is a fitting device unleased and idle, or is there room to create one?"""
        gpus = self._gpus(req)
        devices = [d for g in gpus for d in g.mig_devices()]
        rows = self.conn.execute("SELECT uuid, pid, pid_start FROM leases WHERE node=?", (self.key,)).fetchall()
        held = {r["uuid"] for r in rows if pid_alive(r["pid"], r["pid_start"])}
        if any(d.uuid not in held and not d.processes() for d in self._fitting(req, devices)):
            return True
        return req.create and self._plan_create(req, gpus) is not None

    def acquire(self, req: Request, wait: float | None = None, pid: int | None = None, job_id: int | None = None,
                owner: str = "", on_wait: Any = None) -> Lease:
        """Lease a device, waiting up to ``wait`` seconds (None = forever, 0 = not at all) for one to free up."""
        self.check_satisfiable(req)
        deadline = None if wait is None else time.monotonic() + wait
        delay, told = 0.02, False
        while True:
            lease = self.try_acquire(req, pid=pid, job_id=job_id, owner=owner)
            if lease is not None:
                return lease
            if deadline is not None and time.monotonic() >= deadline:
                busy = len(self.leases())
                raise JobsError(
                    f"no free MIG device for {req.describe()} and no room to create one "
                    f"({busy} device(s) leased on this node)"
                    + (f"; waited {wait:g}s" if wait else "; use --wait SECONDS to wait for one"),
                    exit_code=75,
                )
            if not told and on_wait is not None:
                on_wait(req)
                told = True
            sleep = delay * (0.5 + random.random())
            if deadline is not None:
                sleep = max(0.0, min(sleep, deadline - time.monotonic()))
            time.sleep(sleep)
            delay = min(delay * 1.5, 0.5)

    def set_holder(self, lease: Lease, pid: int, pid_start: float) -> Lease:
        """Hand a lease to another process (the queue worker hands it to the job's process)."""
        with immediate(self.conn) as c:
            c.execute("UPDATE leases SET pid=?, pid_start=? WHERE node=? AND uuid=? AND pid=?",
                      (pid, pid_start, self.key, lease.uuid, lease.pid))
        return Lease(**{**lease.__dict__, "pid": pid, "pid_start": pid_start})

    def release(self, lease: Lease, destroy: bool = False) -> str | None:
        """Drop ``lease``; with ``destroy`` (ephemeral) also destroy its CI and, if then empty, its GI.

        Returns a note when the instance was kept although ``destroy`` was asked (busy or gone).
        """
        note = None
        with immediate(self.conn) as c:
            if destroy:
                with self.node_lock():
                    note = self._destroy(lease)
            c.execute("DELETE FROM leases WHERE node=? AND uuid=? AND pid=?", (self.key, lease.uuid, lease.pid))
        return note

    # ------------------------------------------------------------------ dynamic partitioning
    def _plan_create(self, req: Request, gpus: list[Any]) -> tuple[Any, Any, Any] | None:
        """(gpu, GI profile, placement) for the smallest fitting profile that fits in free space, or None.

        Among GPUs with room, the fullest one is preferred (keeps whole GPUs free for large requests).
        """
        from migctl.catalog.geometry import PlacedGI, auto_placement

        best: tuple[tuple[int, int, int, int], Any, Any, Any] | None = None
        for g in gpus:
            model = g.model
            if model is None:
                continue
            by_id = {p.id: p for p in model.gi_profiles}
            existing = []
            for gi in g.gpu_instances():
                cp = by_id.get(gi.profile_id)
                if cp is None:
                    break
                existing.append(PlacedGI(cp, gi.placement))
            else:
                used = sum(x.profile.slices for x in existing)
                for p in self._fitting_profiles(req, g):
                    cp = by_id.get(p.id)
                    if cp is None:
                        continue
                    pl = auto_placement(model, existing, cp)
                    if pl is None:
                        continue
                    rank = (p.memory_mib, p.slices, -used, g.index)
                    if best is None or rank < best[0]:
                        best = (rank, g, p, pl)
                    break
        return None if best is None else best[1:]

    def _create(self, req: Request, gpus: list[Any]) -> Any | None:
        """Create GI + default CI for :meth:`_plan_create`'s choice; the new MIG device or None."""
        plan = self._plan_create(req, gpus)
        if plan is None:
            return None
        g, p, pl = plan
        gi = g.create_gi(p.id, pl)
        try:
            ci = gi.create_ci()
        except Exception:
            gi.destroy()
            raise
        for d in g.mig_devices():
            if d.gi_id == gi.id and d.ci_id == ci.id:
                return d
        raise JobsError(f"created GI {gi.id}/CI {ci.id} on GPU {g.index} but NVML does not list its MIG device")

    def _destroy(self, lease: Lease) -> str | None:
        import pynvml

        try:
            g = self.node.gpu(lease.gpu)
            gi = g.gpu_instance(lease.gi)
            d = next((x for x in g.mig_devices() if x.uuid == lease.uuid), None)
            if d is None:
                return "instance already gone"
            if d.processes():
                return "instance kept: a process still uses it"
            for ci in gi.compute_instances():
                if ci.id == lease.ci:
                    ci.destroy()
            if not gi.compute_instances():
                gi.destroy()
            return None
        except pynvml.NVMLError as e:
            return f"instance kept: {e}"
