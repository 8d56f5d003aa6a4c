"""``migctl run --isolation soft|none``: run a command as an MPS client, or time-sliced, on a shared device.

* ``soft`` (MPS): join a device whose migctl MPS daemon still has room for the share; otherwise lease a
  free device that fits (creating a MIG instance in free space if needed, as ``run`` does), start its
  daemon and server, and release the lease: from then on the MPS server, a process on the device, keeps
  it busy for ``apply`` and for other runners until the last client leaves and the daemon quits.
* ``none`` (time-slicing): join a device already time-sliced by migctl that has fewer than ``--share``
  clients; otherwise lease a free fitting device the same way. No limits.

Devices: MIG devices that fit the request (``--profile``/``--mem``/``--gpu``), and whole GPUs without MIG
(they have no MIG devices; ``--mem`` still applies). The child runs behind the same gate as ``run``, is
registered as a client of the device on the simulator (a CUDA process appears in NVML by itself on real
hardware), gets ``CUDA_VISIBLE_DEVICES`` = the device's UUID and, for MPS, the MPS variables.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from migctl.jobs.common import JobsError, exit_status
from migctl.jobs.leases import LeaseManager, Request
from migctl.jobs.mps import MpsManager, Share, mechanism, shares_from
from migctl.jobs.runner import FORWARDED, gated_popen, open_gate


@dataclass(frozen=True)
class Device:
    uuid: str
    gpu: int
    gi: int | None
    ci: int | None
    memory_mib: int
    profile: str


def _devices(node: Any, req: Request) -> list[Device]:
    out = []
    for g in node.gpus():
        if req.gpus is not None and g.index not in req.gpus:
            continue
        if g.mig_capable() and g.mig_mode()[0] == 1:
            for d in g.mig_devices():
                if req.profile and d.profile_name != req.profile:
                    continue
                if req.mem_mib and d.memory_mib < req.mem_mib:
                    continue
                out.append(Device(d.uuid, g.index, d.gi_id, d.ci_id, d.memory_mib, d.profile_name))
        elif not g.mig_capable() or g.mig_mode()[0] == 0:
            total = g.memory()[1]
            if req.profile or (req.mem_mib and total < req.mem_mib):
                continue
            out.append(Device(g.uuid, g.index, None, None, total, "whole GPU"))
    return out


def _register(node: Any, dev: Device, pid: int, name: str) -> None:
    sim = getattr(node, "sim", None)
    if sim is not None:
        rc = sim.add_client(dev.gpu, pid, dev.gi, dev.ci, name=name[:64])
        if rc:
            raise JobsError(f"could not register PID {pid} as a client of {dev.uuid} (NVML error {rc})")


def _unregister(node: Any, dev: Device, pid: int) -> None:
    sim = getattr(node, "sim", None)
    if sim is not None:
        sim.remove_client(dev.gpu, pid)


def run_shared(node: Any, cmd: Sequence[str], req: Request, *, isolation: str, share: int | None = None,
               threads: int | None = None, mem_limit_mib: int | None = None, wait: float | None = None,
               log: Callable[[str], None] | None = None, manager: MpsManager | None = None) -> int:
    """Run ``cmd`` on a shared device; returns its exit status (75 when no device had room in time)."""
    if not cmd:
        raise JobsError("no command given; usage: migctl run --isolation soft|none [OPTIONS] -- CMD [ARGS...]")
    mech = mechanism(isolation)
    if mech == "mig":
        raise JobsError("--isolation hard runs on a MIG device of its own: use plain migctl run")
    say = log or (lambda s: None)
    mps = manager or MpsManager(node)
    kind = "mps" if mech == "mps" else "timeslice"
    cap = share or (2 if kind == "timeslice" else 1)
    deadline = None if wait is None else time.monotonic() + wait
    told = False
    while True:
        devs = _devices(node, req)
        if not devs and not req.create:
            raise JobsError(f"no device fits {req.describe()}; valid: an existing MIG device or a GPU without MIG")
        from filelock import FileLock

        # choosing a device and admitting to it is one step per node (two runners must not both decide to
        # open a new device); the lock is released as soon as the child is admitted and registered
        mps.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = FileLock(str(mps.root / "select.lock"), timeout=120, mode=0o600)
        lock.acquire()
        try:
            got = _try(node, mps, devs, req, kind, cap, share, threads, mem_limit_mib, cmd, say, lock)
        finally:
            if lock.is_locked:
                lock.release(force=True)
        if got is not None:
            return got
        if deadline is not None and time.monotonic() >= deadline:
            sys.stderr.write(f"migctl: no shared device had room for {req.describe()} in time\n")
            return 75
        if not told:
            sys.stderr.write(f"migctl: waiting for room on a shared device ({req.describe()})...\n")
            told = True
        time.sleep(0.2)


def _try(node: Any, mps: MpsManager, devs: list[Device], req: Request, kind: str, cap: int, share: int | None,
         threads: int | None, mem_limit_mib: int | None, cmd: Sequence[str], say: Callable[[str], None],
         lock: Any) -> int | None:
    # 1. devices migctl already shares this way, with room
    for d in devs:
        clients = mps.clients(d.uuid)
        if not clients or clients[0].get("kind", "mps") != kind:
            continue
        r = _start_on(node, mps, d, kind, cap, share, threads, mem_limit_mib, cmd, say, None, lock)
        if r is not None:
            return r
    # 2. a free device: an exclusive lease first (the lease manager's free check and dynamic creation)
    mgr = LeaseManager(node)
    for d in devs:
        if d.gi is None and not node.gpu(d.gpu).processes() and not mps.clients(d.uuid):
            r = _start_on(node, mps, d, kind, cap, share, threads, mem_limit_mib, cmd, say, None, lock)
            if r is not None:
                return r
    try:
        lease = mgr.acquire(req, wait=0, owner="run")
    except JobsError as e:
        if e.exit_code == 75:
            return None
        raise
    dev = Device(lease.uuid, lease.gpu, lease.gi, lease.ci, lease.memory_mib, lease.profile)
    return _start_on(node, mps, dev, kind, cap, share, threads, mem_limit_mib, cmd, say, (mgr, lease), lock)


def _start_on(node: Any, mps: MpsManager, d: Device, kind: str, cap: int, share: int | None, threads: int | None,
              mem_limit_mib: int | None, cmd: Sequence[str], say: Callable[[str], None], lease: Any,
              lock: Any) -> int | None:
    sh: Share | None = shares_from(threads, mem_limit_mib, share, d.memory_mib) if kind == "mps" else None
    extra = mps.client_env(d.uuid, sh) if sh is not None else {}
    env = dict(os.environ)
    env.update(extra)
    env["CUDA_VISIBLE_DEVICES"] = d.uuid
    env["MIGCTL_MIG_UUID"] = d.uuid
    env["MIGCTL_MIG_PROFILE"] = d.profile
    interactive = sys.stdin is not None and sys.stdin.isatty()
    try:
        proc, gate = gated_popen(cmd, env, new_group=not interactive)
    except OSError as e:
        if lease is not None:
            lease[0].release(lease[1])
        raise JobsError(f"cannot start {cmd[0]!r}: {e}") from None
    import psutil

    start = psutil.Process(proc.pid).create_time()
    try:
        if sh is not None:
            mps.admit(d.uuid, sh, d.memory_mib, proc.pid, start)
        else:
            mps.admit_timeslice(d.uuid, cap, proc.pid, start)
    except JobsError as e:
        open_gate(gate, go=False)
        proc.wait()
        if lease is not None:
            lease[0].release(lease[1])
        if e.exit_code == 75:
            return None
        raise
    previous: dict[int, Any] = {}
    try:
        try:
            _register(node, d, proc.pid, os.path.basename(cmd[0]))
        finally:
            if lease is not None:
                # the MPS server and the registered client now keep the device busy; the lease is not needed
                lease[0].release(lease[1])
            lock.release(force=True)
        say(f"{'MPS client' if kind == 'mps' else 'time-sliced'} on {d.uuid} (GPU {d.gpu}, {d.profile}): "
            + " ".join(f"{k}={v}" for k, v in sorted(extra.items())))

        def forward(signum: int, _frame: Any) -> None:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signum) if not interactive else os.kill(proc.pid, signum)
                except ProcessLookupError:
                    pass

        for s in (FORWARDED if not interactive else (signal.SIGTERM, signal.SIGHUP)):
            previous[s] = signal.signal(s, forward)
        open_gate(gate)
        return exit_status(proc.wait())
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _unregister(node, d, proc.pid)
        if mps.leave(d.uuid, proc.pid):
            say(f"last client left {d.uuid}: {'MPS daemon stopped' if kind == 'mps' else 'device free'}")
