"""The one authority on "busy": may this MIG instance be destroyed?

An instance (GPU instance, or one compute instance of it) is **busy** when any of these holds it:

* a **live lease** in the jobs database (``migctl run``, a queued job, ``migctl bench``): the holder PID is alive with
  its recorded start time, **or** a process of the lease's process group still runs (so killing a wrapper
  with SIGKILL cannot free a device whose command still runs);
* an **NVML process** (a CUDA context on it: on a real GPU that appears only after the first CUDA call,
  which is why leases count too);
* an **MPS server** on it, or an MPS or time-sliced client migctl admitted (:func:`register_mps_provider`: whoever
  starts MPS control daemons or time-sliced clients reports them). A daemon whose admitted clients have all
  ended (their ``migctl run`` killed, so nobody stopped it) is stopped first (:func:`register_mps_reclaimer`):
  its server alone does not keep the device.

Every path that destroys instances (apply and its rollback, ``run --ephemeral``, the queue worker,
reshaping, ``gi destroy``, ``ci destroy``, ``reset``, ``mode`` and their ``smi`` forms) asks :func:`busy_view`/:func:`annotate` **while holding the node lock** (:func:`migctl.paths.node_lock`),
and every lease is taken under that same lock, so no lease can appear between the check and the destroy.

This module imports nothing from :mod:`migctl.jobs` or :mod:`migctl.reconcile` (both import it).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from migctl.paths import jobs_db_path, node_key
from migctl.proc import pid_alive

# The initial PID namespace's inode (PROC_PID_INIT_INO = 0xEFFFFFFC, include/linux/proc_ns.h). NVML reports
# PIDs of this namespace: the driver has no PID namespaces (nvidia-docker #1483).
INITIAL_PIDNS = f"pid:[{0xEFFFFFFC}]"

T = TypeVar("T")


DAMAGED_LEASE = "a damaged lease row"  # a lease row edited by hand: it holds its device, and no PID is known


@dataclass(frozen=True)
class Holder:
    """Something that keeps an instance busy."""

    kind: str  # "lease" | "process" | "mps"
    pid: int  # the lease holder / NVML process / MPS server
    pids: tuple[int, ...] = ()  # every live process behind it (lease: holder and its process group)
    detail: str = ""  # e.g. "lease of job 3", "migctl run"
    pidns: str = ""  # PID namespace the PID belongs to ("" = unknown)

    def text(self) -> str:
        if self.kind == "lease":
            return f"leased to PID {self.pid}" + (f" ({self.detail})" if self.detail else "") + (
                f", processes {', '.join(map(str, self.pids))}" if self.pids and self.pids != (self.pid,) else "")
        if self.kind == "mps":
            return f"{sharing_kind(self.detail)} PID {self.pid}"
        return f"process PID {self.pid}"


@dataclass
class BusyView:
    """Who holds what on one node, at one moment (read under the node lock to be meaningful)."""

    devices: dict[tuple[int, int, int], list[Holder]] = field(default_factory=dict)  # (gpu, gi, ci)
    gis: dict[tuple[int, int], list[Holder]] = field(default_factory=dict)  # (gpu, gi): holders on the GI itself
    gpus: dict[int, list[Holder]] = field(default_factory=dict)  # (gpu): processes not in a MIG instance

    def of_device(self, gpu: int, gi: int, ci: int) -> list[Holder]:
        return list(self.devices.get((gpu, gi, ci), [])) + list(self.gis.get((gpu, gi), []))

    def of_gi(self, gpu: int, gi: int) -> list[Holder]:
        out = list(self.gis.get((gpu, gi), []))
        for (g, i, _), hs in self.devices.items():
            if g == gpu and i == gi:
                out.extend(hs)
        return out

    def of_gpu(self, gpu: int) -> list[Holder]:
        out = list(self.gpus.get(gpu, []))
        for (g, _), hs in self.gis.items():
            if g == gpu:
                out.extend(hs)
        for (g, _, _), hs in self.devices.items():
            if g == gpu:
                out.extend(hs)
        return out


# ------------------------------------------------------------------------------------------------ MPS hook
# Each provider returns (gpu, gi or None, ci or None, server pid, detail) for the MPS servers it runs on
# ``node``; gi None = the whole GPU. The MPS support (issue 12) registers itself here.
MpsProvider = Callable[[Any], Iterable[tuple[int, int | None, int | None, int, str]]]
MPS_PROVIDERS: list[MpsProvider] = []


def register_mps_provider(fn: MpsProvider) -> MpsProvider:
    """Count the MPS servers ``fn(node)`` reports as busy holders (usable as a decorator)."""
    if fn not in MPS_PROVIDERS:
        MPS_PROVIDERS.append(fn)
    return fn


# Each reclaimer stops what nothing holds any more before a decision reads the holders (an MPS daemon whose
# clients all ended while nobody watched: its server would hold the device for good).
MpsReclaimer = Callable[[Any], Iterable[str]]
MPS_RECLAIMERS: list[MpsReclaimer] = []


def register_mps_reclaimer(fn: MpsReclaimer) -> MpsReclaimer:
    """Call ``fn(node)`` at the start of every :func:`busy_view` (under the node lock), before any holder is read;
    it returns the devices it freed."""
    if fn not in MPS_RECLAIMERS:
        MPS_RECLAIMERS.append(fn)
    return fn


def _load_providers() -> None:
    with contextlib.suppress(ImportError):  # registers migctl's own MPS daemons (loaded lazily: no cycle)
        import migctl.jobs.mps  # noqa: F401


def sharing_kind(detail: str) -> str:
    """``MPS server``, ``idle MPS server`` (its clients have all ended: the next decision stops it), ``MPS client``
    or ``time-sliced client``: what a sharing holder's detail names."""
    return next((k for k in ("time-sliced client", "MPS client", "idle MPS server") if detail.startswith(k)),
                "MPS server")


def sharing_holders(node: Any) -> list[tuple[int, int | None, int | None, int, str]]:
    """The MPS servers and time-sliced clients every registered provider reports on ``node``:
    ``(gpu, gi or None, ci or None, pid, detail)``. Busy holders for :func:`busy_view`, and what the exporter,
    ``top`` and the pictures count as busy besides processes and leases."""
    _load_providers()
    return [h for provider in MPS_PROVIDERS for h in provider(node)]


# ------------------------------------------------------------------------------------------------ processes
def own_pidns() -> str:
    """This process's PID namespace, ``pid:[inode]`` ('' where /proc does not say)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def process_groups() -> dict[int, list[tuple[int, float]]]:
    """Every process of this PID namespace by process group: ``{pgid: [(pid, start time), ...]}``."""
    import psutil

    out: dict[int, list[tuple[int, float]]] = {}
    for p in psutil.process_iter():
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            pgid = os.getpgid(p.pid)
            out.setdefault(pgid, []).append((p.pid, p.create_time()))
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError, PermissionError):
            continue
    return out


def lease_processes(pid: int, pid_start: float, pgid: int | None, pgid_start: float | None,
                    groups: dict[int, list[tuple[int, float]]] | None = None) -> tuple[int, ...]:
    """Live processes behind a lease: its holder, and every member of its process group.

    Linux never reuses a PID while it names a process group with members, so members of ``pgid`` are the
    lease's own while any remains. When the group is empty its leader's PID may be reused: a leader alive
    with another start time means the group is not ours any more.
    """
    alive: list[int] = []
    if pid_alive(pid, pid_start):
        alive.append(pid)
    if pgid:
        if groups is None:
            groups = process_groups()
        members = groups.get(pgid, [])
        leader = next((s for p, s in members if p == pgid), None)
        reused = leader is not None and pgid_start and abs(leader - pgid_start) >= 0.01
        if not reused:
            alive.extend(p for p, _ in members if p not in alive)
    return tuple(alive)


# ------------------------------------------------------------------------------------------------ NVML retry
def transient(e: BaseException) -> bool:
    """NVML errors that concurrent changes cause (an instance destroyed or created under our feet)."""
    import pynvml

    return isinstance(e, (pynvml.NVMLError_InvalidArgument, pynvml.NVMLError_NotFound, pynvml.NVMLError_NotSupported,
                          pynvml.NVMLError_InUse, pynvml.NVMLError_InsufficientResources))


def retry_nvml(fn: Callable[[], T], attempts: int = 6, delay: float = 0.02) -> T:
    """``fn()``, retried on transient NVML errors (see :func:`transient`) with a short growing pause."""
    for k in range(attempts):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - re-raised unless transient
            if k == attempts - 1 or not transient(e):
                raise
            time.sleep(delay * (2 ** k))
    raise AssertionError("unreachable")  # pragma: no cover


# ------------------------------------------------------------------------------------------------ the view
def _lease_rows(key: str) -> list[sqlite3.Row]:
    path = jobs_db_path()
    if not path.exists():
        return []
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=30000")
        try:
            return conn.execute("SELECT * FROM leases WHERE node=?", (key,)).fetchall()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return []
            raise
    finally:
        conn.close()


def live_leases(node: Any, groups: dict[int, list[tuple[int, float]]] | None = None
                ) -> list[tuple[sqlite3.Row, tuple[int, ...]]]:
    """Lease rows of ``node`` whose holder or process group is alive, with those processes."""
    from migctl.jobs.rows import lease_problem

    rows = _lease_rows(node_key(node))
    out = []
    for r in rows:
        keys = r.keys()
        pgid = r["pgid"] if "pgid" in keys else None
        pgid_start = r["pgid_start"] if "pgid_start" in keys else None
        if pgid and groups is None:
            groups = process_groups()
        if lease_problem(r) is not None:  # edited by hand: its holder cannot be checked, so it holds its device
            out.append((r, ()))
            continue
        procs = lease_processes(r["pid"], r["pid_start"], pgid, pgid_start, groups)
        if procs:
            out.append((r, procs))
    return out


def _sim_pidns(node: Any) -> dict[tuple[int, int], str]:
    sim = getattr(node, "sim", None)
    if sim is None:
        return {}
    try:
        st = sim.store.load()
    except Exception:  # noqa: BLE001 - an unreadable state shows up elsewhere
        return {}
    return {(g.index, p.pid): getattr(p, "pidns", "") for g in st.gpus for p in g.processes}


def busy_view(node: Any, exclude_lease: str | None = None, leases: bool = True, gpus: list[Any] | None = None
              ) -> BusyView:
    """Who holds which instance of ``node`` now: live leases, NVML processes, MPS servers.

    ``exclude_lease``: a MIG UUID whose lease the caller itself holds (releasing it); ``leases=False``: the
    caller reads the lease table itself (inside its transaction); ``gpus``: only these (device-layer) GPUs.
    Call under the node lock: it first stops MPS daemons whose clients have all ended
    (:func:`register_mps_reclaimer`), so that their servers do not hold a device nobody uses.
    """
    _load_providers()
    for reclaim in MPS_RECLAIMERS:
        reclaim(node)
    view = BusyView()
    real = getattr(node, "sim", None) is None
    sim_ns = _sim_pidns(node)
    uuids: dict[str, tuple[int, int, int]] = {}
    for g in gpus if gpus is not None else retry_nvml(node.gpus):
        gi_idx = g.index
        for p in retry_nvml(g.processes):
            ns = INITIAL_PIDNS if real else sim_ns.get((gi_idx, p.pid), "")
            h = Holder("process", p.pid, (p.pid,), pidns=ns)
            if p.gi_id is None:
                view.gpus.setdefault(gi_idx, []).append(h)
            elif p.ci_id is None:
                view.gis.setdefault((gi_idx, p.gi_id), []).append(h)
            else:
                view.devices.setdefault((gi_idx, p.gi_id, p.ci_id), []).append(h)
        if not leases:
            continue  # the MIG devices below only place leases (enumerating them is most of this call's cost)
        try:
            mode = retry_nvml(g.mig_mode)[0] if g.mig_capable() else 0
        except Exception:  # noqa: BLE001 - a GPU without MIG has no instances
            mode = 0
        if mode == 1:
            for d in retry_nvml(g.mig_devices):
                uuids[d.uuid] = (gi_idx, d.gi_id, d.ci_id)
    if leases:
        from migctl.jobs.rows import lease_problem

        for r, procs in live_leases(node):
            if r["uuid"] == exclude_lease or r["uuid"] not in uuids:
                continue  # ours, or its device is gone: holds nothing
            where = uuids[r["uuid"]]
            keys = r.keys()
            ns = (r["pidns"] if "pidns" in keys else "") or ""
            bad = lease_problem(r)  # (its PID reads as 0: never signalled, see invisible())
            detail = f"{DAMAGED_LEASE} ({bad}): delete it once its holder has ended" if bad else r["owner"] or ""
            pid = r["pid"] if not bad else 0
            view.devices.setdefault(where, []).append(Holder("lease", int(pid), procs, detail, str(ns)))
    for gpu, gi, ci, pid, detail in sharing_holders(node):
        h = Holder("mps", pid, (pid,), detail)
        if gi is None:
            view.gpus.setdefault(gpu, []).append(h)
        elif ci is None:
            view.gis.setdefault((gpu, gi), []).append(h)
        else:
            view.devices.setdefault((gpu, gi, ci), []).append(h)
    return view


def annotate(node: Any, live: list[Any], view: BusyView | None = None) -> BusyView:
    """Add every holder's PIDs to a live read (:func:`migctl.reconcile.live.read_node`), so the planner's
    "busy" (an instance with PIDs) is this module's. Returns the view used."""
    view = view if view is not None else busy_view(node)
    for g in live:
        extra: set[int] = set()
        for gi in g.gis:
            gi_pids = set(gi.pids)
            for ci in gi.cis:
                hs = view.of_device(g.index, gi.id, ci.id)
                pids = {p for h in hs for p in (h.pids or (h.pid,))}
                ci.pids = sorted(set(ci.pids) | pids)
                gi_pids |= pids
            gi_pids |= {p for h in view.gis.get((g.index, gi.id), []) for p in (h.pids or (h.pid,))}
            gi.pids = sorted(gi_pids)
            extra |= gi_pids
        extra |= {p for h in view.gpus.get(g.index, []) for p in (h.pids or (h.pid,))}
        g.pids = sorted(set(g.pids) | extra)
    return view


def holders_of(view: BusyView, pids: Iterable[int]) -> list[Holder]:
    wanted = set(pids)
    seen: list[Holder] = []
    for hs in [*view.devices.values(), *view.gis.values(), *view.gpus.values()]:
        for h in hs:
            if h not in seen and (h.pid in wanted or wanted & set(h.pids)):
                seen.append(h)
    return seen


def invisible(view: BusyView, pids: Iterable[int]) -> dict[int, str]:
    """PIDs among ``pids`` that this process cannot safely signal, with why (``apply --force`` refuses them).

    NVML reports PIDs of the initial PID namespace; in a container they may not exist here or may name an
    unrelated local process. A lease's holder is checked against the namespace it was taken in.
    """
    import psutil

    own = own_pidns()
    out: dict[int, str] = {}
    by_pid: dict[int, list[Holder]] = {}
    for hs in [*view.devices.values(), *view.gis.values(), *view.gpus.values()]:
        for h in hs:
            for p in set(h.pids) | {h.pid}:
                by_pid.setdefault(p, []).append(h)
    for pid in sorted(set(pids)):
        for h in by_pid.get(pid, []):
            if h.kind == "lease" and h.detail.startswith(DAMAGED_LEASE):
                out[pid] = f"{h.detail} (no process to signal: its holder cannot be known)"
                break
            if h.pidns and own and h.pidns != own:
                out[pid] = f"PID {pid} ({h.kind}) belongs to PID namespace {h.pidns}, this process runs in {own}"
                break
            if not h.pidns and h.kind == "process" and not own:
                out[pid] = f"PID {pid}: cannot tell which PID namespace NVML's PIDs belong to (no /proc)"
                break
        else:
            if pid not in out and not psutil.pid_exists(pid):
                out[pid] = f"PID {pid} does not exist in this PID namespace"
    return out
