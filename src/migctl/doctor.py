"""``migctl doctor``: read-only checks of what migctl and a MIG change need on this node, each with what to do.

Nothing here changes a GPU, takes the node lock or creates the state dir. Each check is ``ok`` (nothing to
do), ``info`` (a fact worth knowing), ``warn`` (something will get in the way of a change or a run: the
detail says what to do) or ``fail`` (migctl cannot work safely until it is fixed). The checks gather what
other verbs report one at a time, in one place, for an operator about to change a node:

* the backend and driver; each GPU's model against the catalog (and the catalog's minimum driver for MIG);
* MIG mode, and a mode change waiting for a GPU reset;
* what keeps GPUs open, which refuses a reset: NVML processes, migctl's leases, and on a real node the
  processes with an NVIDIA device file open (``nvidia-persistenced``, DCGM's ``nv-hostengine``, ...), which
  NVML does not list; on the simulator its modelled holders;
* GPU instances without a compute instance (unusable; a crashed creation leaves one);
* the tools some verbs need: ``nvidia-smi`` (NVML has no reset call) and ``nvidia-cuda-mps-control``;
* the state dir: private to its owner, on a local file system (SQLite's locks are not reliable over NFS),
  an interrupted apply or instance creation left in it, queued jobs with no worker.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATUSES = ("ok", "info", "warn", "fail")

# File systems on which SQLite's and filelock's locking cannot be trusted (network or cluster file systems).
NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "9p", "lustre", "gpfs", "ceph",
                        "fuse.glusterfs", "glusterfs", "beegfs", "afs", "fuse.s3fs", "fuse.rclone"})
# Processes known to keep GPUs open (what a refused reset names; mig-parted's users report each of them)
KNOWN_HOLDERS = {"nvidia-persistenced": "the persistence daemon (systemctl stop nvidia-persistenced)",
                 "nv-hostengine": "DCGM's host engine (systemctl stop nvidia-dcgm)",
                 "dcgm-exporter": "dcgm-exporter", "Xorg": "the X server", "nvidia-smi": "nvidia-smi"}


@dataclass(frozen=True)
class Check:
    """One finding: ``name`` (what was checked), ``status`` (one of STATUSES), ``detail`` (what was found and what
    to do), ``gpu`` (its index, None for the node)."""

    name: str
    status: str
    detail: str
    gpu: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"check": self.name, "gpu": self.gpu, "status": self.status, "detail": self.detail}


def mount_fs_type(path: Path, mounts: str) -> str | None:
    """The file system type of ``path`` from /proc/self/mounts text: the longest mount point that contains it
    (octal escapes such as ``\\040`` for a space decoded); None when no line matches."""
    best, fs = -1, None
    target = str(path)
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[1])  # the kernel's \ooo escapes
        inside = target == point or target.startswith(point.rstrip("/") + "/") or point == "/"
        if inside and len(point) > best:
            best, fs = len(point), parts[2]
    return fs


def _existing(path: Path) -> Path:
    """``path``, or its nearest ancestor that exists (where it would be created)."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _device_holders(node: Any) -> dict[int | None, list[str]]:
    """What keeps GPUs open without being an NVML process, by GPU index: on the simulator its modelled holders
    per GPU; on a real node the processes with an NVIDIA device file open (this one left out), under ``None``
    (a device file does not say which GPU's reset it blocks)."""
    if node.sim is not None:
        from migctl.sim.state import Driver

        st = node.sim.store.load()
        d = Driver(st, node.sim.lib.alive)
        return {g.index: names for g in st.gpus if (names := d.gpu_holders(g))}
    from migctl.device.api import _holders_of_nvidia_devices

    me = f"(PID {os.getpid()})"
    found = [h for h in _holders_of_nvidia_devices() if not h.endswith(me)]
    return {None: found} if found else {}


def node_checks(node: Any, by_gpu: dict[int | None, list[str]]) -> list[Check]:
    from migctl.catalog import parse_driver

    out: list[Check] = []
    if node.sim is not None:
        out.append(Check("backend", "info", f"simulated node {node.sim.spec} ({node.sim_reason or 'simulator'}); "
                                            "no real GPU is read or changed"))
    else:
        out.append(Check("backend", "ok", f"NVIDIA driver {node.driver_version} through NVML"))
    root = node.sim.store.load().b("caller") == "root" if node.sim is not None else os.geteuid() == 0
    if not root:
        out.append(Check("privileges", "info", "not root: MIG mode changes, creating or destroying instances and "
                                               "GPU resets need root (NVML answers No Permission); listings, runs "
                                               "on existing instances and the queue work"))
    driver = parse_driver(node.driver_version)
    for g in node.gpus():
        m = g.catalog_model
        if m is not None and m.min_driver is not None and driver < m.min_driver:
            need = ".".join(f"{x:02d}" if k else str(x) for k, x in enumerate(m.min_driver))  # as NVIDIA writes it
            out.append(Check("driver", "fail", f"driver {node.driver_version} is older than the first with MIG on "
                                               f"{m.key} ({need}): upgrade the driver", g.index))
    if node.sim is None:
        tool = shutil.which("nvidia-smi")
        out.append(Check("nvidia-smi", "ok", tool) if tool else Check(
            "nvidia-smi", "warn", "not in PATH: GPU reset (`migctl reset`, a pending mode change) needs it, since "
                                  "NVML has no reset call; install the driver utilities or add them to PATH"))
        mps = shutil.which("nvidia-cuda-mps-control")
        out.append(Check("mps-control", "ok", mps) if mps else Check(
            "mps-control", "warn", "nvidia-cuda-mps-control is not in PATH: shared runs (--isolation soft) cannot "
                                   "start an MPS daemon; it comes with the driver"))
    names = sorted({n for v in by_gpu.values() for n in v})
    if names:
        known = sorted({why for h in names for name, why in KNOWN_HOLDERS.items() if h.split(" (")[0] == name})
        hint = f" ({'; '.join(known)})" if known else ""
        where = "" if None in by_gpu else f" on GPU {', '.join(str(i) for i in sorted(by_gpu))}"
        out.append(Check("device-holders", "info", f"holding GPUs open without an NVML process{where}: "
                                                   f"{', '.join(names[:10])}{hint}; a GPU reset is refused while "
                                                   "they run"))
    return out


def gpu_checks(node: Any, leased: dict[int, int], holders: dict[int | None, list[str]]) -> list[Check]:
    """Per GPU: model and catalog, MIG mode and a pending change, processes and leases, orphan instances."""
    from migctl.instance_journal import orphan_gis

    out: list[Check] = []
    for g in node.gpus():
        i = g.index
        cur, pending = g.mig_state()
        if g.catalog_model is None:
            if cur is not None:
                out.append(Check("model", "warn", f"{g.name}: not in migctl's catalog; everything works from NVML's "
                                                  f"answers; `migctl catalog --from-node -i {i} -o FILE` writes its "
                                                  "entry to check and contribute", i))
            else:
                out.append(Check("model", "info", f"{g.name}: no MIG; whole-GPU runs and sharing only", i))
        else:
            diffs = g.catalog_differences() if cur is not None else []
            out.append(Check("model", "warn" if diffs else "ok",
                             f"{g.name} ({g.catalog_model.key})" + (": NVML differs from the catalog: "
                                                                    + "; ".join(diffs[:3]) if diffs else ""), i))
        if cur is None:
            continue
        procs = g.processes()
        busy = [f"PID {p.pid}" for p in procs][:5]
        users = (f"{len(procs)} process(es) ({', '.join(busy)})" if procs else "no processes") + \
                (f", {leased.get(i, 0)} leased MIG device(s)" if leased.get(i) else "") + \
                (f", held open by {', '.join(holders[i])}" if holders.get(i) else "") + \
                (", and whatever holds NVIDIA device files (device-holders)" if holders.get(None) else "")
        mode = f"MIG {'enabled' if cur else 'disabled'}"
        if pending != cur:
            out.append(Check("mig-mode", "warn", f"{mode}, {'enabled' if pending else 'disabled'} pending: a GPU "
                                                 f"reset applies it (`migctl reset -i {i}`, refused while anything "
                                                 f"holds the GPU: {users})", i))
        else:
            out.append(Check("mig-mode", "ok", f"{mode}; {users}", i))
        orphans = orphan_gis(g) if cur == 1 else []
        if orphans:
            ids = ", ".join(str(gi.id) for gi in orphans)
            out.append(Check("orphan-instances", "warn", f"GPU instance(s) {ids} have no compute instance and serve "
                                                         "nothing: `migctl recover` removes one a crashed migctl "
                                                         f"left, `migctl gi destroy -i {i} -gi ID` any", i))
    return out


def state_checks(node: Any, directory: Path | None, mounts: str | None) -> tuple[list[Check], dict[int, int]]:
    """The state dir and what is left in it; also the leased MIG devices per GPU (for :func:`gpu_checks`)."""
    from migctl.errors import UserError
    from migctl.paths import check_private

    if directory is None:
        return [Check("state-dir", "fail", "MIGCTL_STATE_DIR is not an absolute path: set it to one (e.g. "
                                           "/var/lib/migctl) or unset it")], {}
    out: list[Check] = []
    fs = mount_fs_type(_existing(directory).resolve(), mounts) if mounts is not None else None
    if fs in NETWORK_FS:
        out.append(Check("state-dir-fs", "fail", f"{directory} is on {fs}: the jobs database's and the node lock's "
                                                 "locking is not reliable there, and a home directory shared "
                                                 "between nodes mixes their state; use a local disk "
                                                 "(MIGCTL_STATE_DIR=/var/lib/migctl)"))
    if not directory.exists():
        out.append(Check("state-dir", "info", f"{directory} does not exist yet (the first run, queue or apply "
                                              "creates it, private to its owner)"))
        return out, {}
    try:
        check_private(directory, "state dir", directory=True)
    except UserError as e:
        out.append(Check("state-dir", "fail", str(e)))
        return out, {}
    out.append(Check("state-dir", "ok", f"{directory}" + (f" ({fs})" if fs else "")))
    from migctl.instance_journal import pending
    from migctl.observe.state import StateReader

    reader = StateReader(node, directory)
    try:
        applied = reader.apply_state()
        if applied.journal_pending:
            out.append(Check("apply-journal", "fail", "an apply was interrupted: `migctl recover` rolls every GPU back "
                                                      "to its layout before it (applies refuse to start until then)"))
        rec = pending(node)
        if rec is not None:
            what = f" (its record is unusable: {rec['corrupt']})" if "corrupt" in rec else ""
            out.append(Check("instance-journal", "warn", f"an instance creation was interrupted{what}: the next "
                                                         "run, worker or `migctl recover` finishes or undoes it"))
        leases = reader.leases()
        q = reader.queue()
        if reader.db_error:
            out.append(Check("jobs-db", "fail", f"the jobs database cannot be read: {reader.db_error}"))
        waiting = q.depth["queued"] + q.depth["starting"]
        running = q.depth["running"]
        no_worker = q.waiting_reasons.get("no-worker", 0)
        text = f"{len(leases)} lease(s), {waiting} job(s) waiting, {running} running"
        if no_worker and waiting:
            out.append(Check("queue", "warn", f"{text}; no live worker: start one (`migctl worker`) or the queue "
                                              "never moves"))
        else:
            out.append(Check("queue", "ok", text))
    finally:
        reader.close()
    per_gpu: dict[int, int] = {}
    for lease in leases:
        per_gpu[lease.gpu] = per_gpu.get(lease.gpu, 0) + 1
    return out, per_gpu


def run(node: Any, directory: Path | None, mounts: str | None) -> list[Check]:
    """Every check, node first, then the state dir, then per GPU."""
    state, leased = state_checks(node, directory, mounts)
    holders = _device_holders(node)  # (on a real node a scan of /proc: once)
    return node_checks(node, holders) + state + gpu_checks(node, leased, holders)


def read_mounts() -> str | None:
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            return f.read(1 << 20)
    except OSError:
        return None
