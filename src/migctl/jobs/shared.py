"""``--isolation soft|none``: start a command as an MPS client, or time-sliced, on a shared device.

One admission-and-launch step, :func:`launch`, serves both ``migctl run`` (:func:`run_shared`, which then
waits for its child) and the queue's worker (which records the job and lets it run on its own):

* ``soft`` (MPS): join a device whose migctl MPS daemon still has room for the share; otherwise lease a
  free device that fits (creating a MIG instance in free space if needed, as ``run`` does), start its
  daemon and server, and release the lease: from then on the MPS server, a process on the device, keeps
  it busy for ``apply`` and for other runners until the last client leaves and the daemon quits.
* ``none`` (time-slicing): join a device already time-sliced by migctl that has fewer than ``--share``
  clients; otherwise lease a free fitting device the same way. No limits.

Devices: MIG devices that fit the request (``--profile``/``--mem``/``--gpu``), and whole GPUs without MIG
(they have no MIG devices; ``--mem`` still applies). The child runs behind the same gate as ``run``, is
registered as a client of the device on the simulator (a CUDA process appears in NVML by itself on real
hardware), gets ``CUDA_VISIBLE_DEVICES`` = the device's UUID and, for MPS, the MPS variables. When the
client ends, :func:`release_client` drops it; the last client of a device stops its MPS daemon.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from migctl.jobs.common import JobsError, exit_status, node_key
from migctl.jobs.leases import Lease, LeaseManager, Request, waited
from migctl.jobs.mps import MpsManager, Share, Sharing, shares_from
from migctl.jobs.runner import FORWARDED, check_command, gated_popen, open_gate, wait_hooks

# spawn(env additions) -> (process behind its closed gate, gate); lease_now(request) -> a lease or None
Spawn = Callable[[dict[str, str]], tuple[Any, int]]
LeaseNow = Callable[[Request], "Lease | None"]


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
            usable = g.usable_memory_mib()  # (the driver's reserve is not CUDA's to allocate)
            if req.profile or (req.mem_mib and usable < req.mem_mib):
                continue
            out.append(Device(g.uuid, g.index, None, None, usable, "whole GPU"))
    return out


def find_device(node: Any, uuid: str) -> Device | None:
    """The MIG device or whole GPU with this UUID (None when it is gone)."""
    for g in node.gpus():
        if g.uuid == uuid:
            return Device(g.uuid, g.index, None, None, g.usable_memory_mib(), "whole GPU")
        if g.mig_capable() and g.mig_mode()[0] == 1:
            for d in g.mig_devices():
                if d.uuid == uuid:
                    return Device(d.uuid, g.index, d.gi_id, d.ci_id, d.memory_mib, d.profile_name)
    return None


def device_request(req: Request, sharing: Sharing) -> Request:
    """The device a client needs: an MPS memory limit (``--mps-mem``) asks for a device at least that large."""
    if sharing.mem_limit_mib and not req.profile and (req.mem_mib or 0) < sharing.mem_limit_mib:
        return dataclasses.replace(req, mem_mib=sharing.mem_limit_mib)
    return req


def check_request(node: Any, req: Request, sharing: Sharing, leases: LeaseManager | None = None) -> str | None:
    """At submit time: fail (exit 2, one line) when no device could ever take the request with this isolation;
    returns a note when the check is left to the worker (an apply holds the node lock)."""
    leases = leases or LeaseManager(node)
    if sharing.kind == "mig":
        return leases.check_satisfiable_locked(req)
    req = device_request(req, sharing)
    if _devices(node, req):
        return None
    if req.create and leases.mig_gpus(req):
        return leases.check_satisfiable_locked(req)
    raise JobsError(f"no device fits {req.describe()}; valid: an existing MIG device, free space to create one, "
                    "or a GPU without MIG")


def _register(node: Any, dev: Device, pid: int, name: str, mps: bool = False) -> None:
    """On the simulator, record the client (there is no CUDA to make a context); ``mps``: it connects through the
    device's MPS server, so NVML's MPS process list names it too, as a real driver's does."""
    sim = getattr(node, "sim", None)
    if sim is not None:
        rc = sim.add_client(dev.gpu, pid, dev.gi, dev.ci, name=name[:64], mps=mps)
        if rc:
            raise JobsError(f"could not register PID {pid} as a client of {dev.uuid} (NVML error {rc})")


def _unregister(node: Any, dev: Device, pid: int) -> None:
    sim = getattr(node, "sim", None)
    if sim is not None:
        sim.remove_client(dev.gpu, pid)


@dataclass
class Launched:
    """A client admitted to a shared device, started behind its still closed gate."""

    proc: Any
    gate: int
    device: Device
    kind: str
    extra: dict[str, str]

    def describe(self) -> str:
        d = self.device
        return (f"{'MPS client' if self.kind == 'mps' else 'time-sliced'} on {d.uuid} (GPU {d.gpu}, {d.profile})"
                + (": " + " ".join(f"{k}={v}" for k, v in sorted(self.extra.items())) if self.extra else ""))


def launch(node: Any, req: Request, sharing: Sharing, spawn: Spawn, *, leases: LeaseManager, lease_now: LeaseNow,
           name: str, pgid_of: Callable[[int], int | None] = lambda pid: pid, mps: MpsManager | None = None,
           lock_timeout: float = 120.0, ahead: Callable[[], int] | None = None) -> Launched | None:
    """Choose a device with room for a client with ``sharing`` and admit one started by ``spawn``.

    In order: a device migctl already shares the same way with room left; a free whole GPU without MIG; a
    device leased with ``lease_now`` (the lease manager's free check and dynamic creation; the lease is
    released once the client is admitted: from then on the client, and for MPS the server, keep the device
    busy). The client is admitted (shares checked, the MPS daemon started if it is the first) and registered
    on the simulator before this returns; its gate is still closed: the caller opens it, or closes it and
    calls :func:`release_client`. None when no device has room now (nothing started), or, with ``ahead`` (a
    waiting run's :meth:`migctl.jobs.run_reserve.RunReservation.ahead`), while earlier runs waiting for the
    same thing come first (asked under the lock, before a device is chosen).
    """
    if sharing.kind == "mig":
        raise JobsError("--isolation hard runs on a MIG device of its own: use plain migctl run")
    mps = mps or MpsManager(node)
    req = device_request(req, sharing)
    devs = _devices(node, req)
    if not devs and (not req.create or not leases.mig_gpus(req)):
        raise JobsError(f"no device fits {req.describe()}; valid: an existing MIG device, free space to create "
                        "one, or a GPU without MIG")
    from filelock import FileLock, Timeout

    from migctl.paths import LockBusy

    # choosing a device and admitting to it is one step per node (two starters must not both decide to
    # open a new device); the lock is released as soon as the client is admitted and registered
    mps.ensure_root()
    lock = FileLock(str(mps.root / "select.lock"), timeout=lock_timeout, mode=0o600)
    try:
        lock.acquire()
    except Timeout:
        return None
    try:
        if ahead is not None and ahead():
            return None
        # joining without a lease happens under the node lock that every exclusive lease, reshape and apply
        # takes: a shared device whose last client is just leaving reads free to them (no client, no lease,
        # no NVML process before a CUDA call), so a join outside it could land beside an exclusive lease
        try:
            with leases.node_lock(lock_timeout, what="migctl run/worker (joining a shared device)"):
                for d in devs:  # 1. devices migctl already shares this way, with room
                    clients = mps.clients(d.uuid)
                    if clients and clients[0].get("kind", "mps") == sharing.kind:
                        got = _admit(node, mps, d, sharing, spawn, name, pgid_of, None)
                        if got is not None:
                            return got
                for d in devs:  # 2. a free whole GPU without MIG
                    if d.gi is None and not node.gpu(d.gpu).processes() and not mps.clients(d.uuid):
                        got = _admit(node, mps, d, sharing, spawn, name, pgid_of, None)
                        if got is not None:
                            return got
        except LockBusy:
            return None  # (an apply or a reshape holds the node: try again later)
        if not leases.mig_gpus(req):
            return None  # no MIG-enabled GPU here: nothing to lease
        lease = lease_now(req)  # 3. a free (or new) MIG device, leased while the client is admitted
        if lease is None:
            return None
        dev = Device(lease.uuid, lease.gpu, lease.gi, lease.ci, lease.memory_mib, lease.profile)
        try:
            return _admit(node, mps, dev, sharing, spawn, name, pgid_of, lease)
        finally:
            # the device's holder turns from this lease into the admitted client (admitted first): an exclusive
            # lease decision reads the lease table before the holders and counts a lease its live holder
            # dropped in between as held (LeaseManager._acquire_locked), so none sees neither; busy_view reads
            # leases before shared clients
            leases.release(lease)
    finally:
        if lock.is_locked:
            lock.release(force=True)


def _admit(node: Any, mps: MpsManager, d: Device, sharing: Sharing, spawn: Spawn, name: str,
           pgid_of: Callable[[int], int | None], lease: Lease | None) -> Launched | None:
    sh: Share | None = None
    if sharing.kind == "mps":
        sh = shares_from(sharing.threads, sharing.mem_limit_mib, sharing.share, d.memory_mib)
    if not mps.room(d.uuid, sh, sharing.cap, d.memory_mib):
        return None  # (no process started for a device that would turn the client away)
    extra = mps.client_env(d.uuid, sh) if sh is not None else {}
    env = {**extra, "CUDA_VISIBLE_DEVICES": d.uuid, "MIGCTL_MIG_UUID": d.uuid, "MIGCTL_MIG_PROFILE": d.profile}
    try:
        proc, gate = spawn(env)
    except (OSError, ValueError) as e:  # (ValueError: a NUL or an '=' in a name, which exec refuses)
        from migctl.jobs.common import transient_failure

        if isinstance(e, OSError) and transient_failure(e):
            raise  # (a full disk, a fork refused for a moment: the caller tries again, a queued job is not failed)
        raise JobsError(f"cannot start {name!r}: {e}") from None
    import psutil

    try:
        start = psutil.Process(proc.pid).create_time()
        if sh is not None:
            mps.admit(d.uuid, sh, d.memory_mib, proc.pid, start, pgid=pgid_of(proc.pid))
        else:
            mps.admit_timeslice(d.uuid, sharing.cap, proc.pid, start, pgid=pgid_of(proc.pid))
    except (JobsError, psutil.NoSuchProcess) as e:
        open_gate(gate, go=False)
        proc.wait()
        if isinstance(e, JobsError) and e.exit_code != 75:
            raise
        return None
    try:
        _register(node, d, proc.pid, name, mps=sh is not None)
    except BaseException:
        open_gate(gate, go=False)
        proc.wait()
        release_client(node, d.uuid, proc.pid, mps, device=d)
        raise
    return Launched(proc, gate, d, sharing.kind, extra)


def release_client(node: Any, uuid: str, pid: int, mps: MpsManager | None = None,
                   device: Device | None = None) -> bool:
    """The client ``pid`` of ``uuid`` left (ended, killed, or never started): drop it from the simulator and
    from the device's clients; stop the MPS daemon if it was the last. True when the device is free again."""
    mps = mps or MpsManager(node)
    d = device or find_device(node, uuid)
    if d is not None:
        _unregister(node, d, pid)
    emptied = mps.leave(uuid, pid)
    if emptied and d is not None and d.gi is not None:
        _idle_from_now(node, uuid)
    return emptied


def _idle_from_now(node: Any, uuid: str) -> None:
    """A MIG device's last shared client left: idle from now, for reshaping's hysteresis, as when a lease is
    released (the lease that took the device was dropped when its first client came). Bookkeeping: a database
    that cannot be written leaves the older record."""
    import sqlite3

    from migctl.errors import UserError
    from migctl.jobs.common import connect
    from migctl.jobs.reshape import record_idle

    try:
        conn = connect()
        try:
            record_idle(conn, node_key(node), uuid)
        finally:
            conn.close()
    except (sqlite3.Error, OSError, JobsError, UserError):
        pass


def sweep(node: Any, mps: MpsManager | None = None) -> list[str]:
    """Stop MPS daemons whose clients all died unseen (:func:`migctl.jobs.mps.sweep_node`)."""
    from migctl.jobs.mps import sweep_node

    return sweep_node(node, mps)


def run_shared(node: Any, cmd: Sequence[str], req: Request, *, sharing: Sharing, wait: float | None = None,
               log: Callable[[str], None] | None = None, manager: MpsManager | None = None, reshape: Any = None,
               reserve_after: float | None = None) -> int:
    """Run ``cmd`` on a shared device; returns its exit status (:class:`JobsError`, exit 75, when no device had
    room in time).

    While nothing has room it does what a waiting ``migctl run`` does (:func:`migctl.jobs.runner.wait_hooks`)
    for a new device of its own request (:func:`device_request`): ``reserve_after``, take the node's
    reservation in turn; ``reshape``, destroy idle instances in the way. The device it then gets is shared
    like any other (later clients may join it)."""
    if not cmd:
        raise JobsError("no command given; usage: migctl run --isolation soft|none [OPTIONS] -- CMD [ARGS...]")
    check_command(cmd[0])
    say = log or (lambda s: None)
    mps = manager or MpsManager(node)
    leases = LeaseManager(node)
    interactive = sys.stdin is not None and sys.stdin.isatty()

    def spawn(extra: dict[str, str]) -> tuple[Any, int]:
        return gated_popen(cmd, {**os.environ, **extra}, new_group=not interactive)

    def lease_now(r: Request) -> Lease | None:
        try:
            return leases.acquire(r, wait=0, owner="run")
        except JobsError as e:
            if e.exit_code == 75:
                return None
            raise

    deadline = None if wait is None else time.monotonic() + wait
    told = False
    dreq = device_request(req, sharing)
    mig = bool(leases.mig_gpus(dreq))  # (GPUs without MIG: no instance to reserve or make room for)
    retry, reserver = wait_hooks(node, dreq, wait=wait, reshape=reshape if mig else None,
                                 reserve_after=reserve_after if mig else None, log=say, fifo=True)
    try:
        reserver.enter(dreq, waits=wait is None or wait > 0, sharing=sharing)  # (its place among the same runs)
        tried = False
        while True:
            # behind an earlier run with the same request (a look; the check under the lock decides): no
            # attempt, no reshaping or reservation for itself (the first attempt always runs: it checks the request)
            behind = tried and reserver.ahead(first=True)
            got = None if behind else launch(
                node, req, sharing, spawn, leases=leases, lease_now=lease_now, name=os.path.basename(cmd[0]),
                pgid_of=(lambda pid: None) if interactive else (lambda pid: pid), mps=mps, ahead=reserver.first)
            tried = True
            if got is not None:
                break
            reserver.beat()
            if not behind and retry is not None:
                changed = retry(dreq)
                reserver.beat()  # (refreshed again if the reshape took a while: it may outlast STALE)
                if changed:
                    continue
            if deadline is not None and time.monotonic() >= deadline:
                raise JobsError(f"no shared device had room for {req.describe()} in time" + waited(wait)
                                + reserver.ahead_note()
                                + (leases.what_would_help(dreq, reshaping=reshape is not None)
                                   if mig else ""), exit_code=75)
            if not told:
                sys.stderr.write(f"migctl: waiting for room on a shared device ({req.describe()})...\n")
                told = True
            time.sleep(reserver.POLL if reserver.enlisted else 0.2)
    finally:
        if reserver is not None:
            reserver.close()
    proc = got.proc
    previous: dict[int, Any] = {}
    try:
        say(got.describe())

        def forward(signum: int, _frame: Any) -> None:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signum) if not interactive else os.kill(proc.pid, signum)
                except ProcessLookupError:
                    pass

        for s in (FORWARDED if not interactive else (signal.SIGTERM, signal.SIGHUP)):
            previous[s] = signal.signal(s, forward)
        open_gate(got.gate)
        return exit_status(proc.wait())
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        try:
            if release_client(node, got.device.uuid, proc.pid, mps, device=got.device):
                say(f"last client left {got.device.uuid}: "
                    f"{'MPS daemon stopped' if got.kind == 'mps' else 'device free'}")
        except (JobsError, OSError) as e:  # (the command's own exit status stands; a client that has ended no
            # longer counts, and the next busy decision stops a daemon left without clients)
            sys.stderr.write(f"migctl: warning: releasing {got.device.uuid}: {e}\n")
