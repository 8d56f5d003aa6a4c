"""Sharing one device between cooperating processes: MPS clients on a MIG device or a whole GPU, or plain
time-slicing. One request, three mechanisms:

============  ============================================================  =========================
isolation     mechanism                                                     limits
============  ============================================================  =========================
``hard``      a MIG device of its own (the exclusive lease of ``run``)      the instance's slices
``soft``      an MPS client (on a MIG device, or a GPU without MIG)         thread % and pinned memory
``none``      time-slicing: several processes on one device, no limits      none
============  ============================================================  =========================

For MPS, migctl runs one control daemon per device (``nvidia-cuda-mps-control -d`` with
``CUDA_VISIBLE_DEVICES`` = the device's UUID and its own ``CUDA_MPS_PIPE_DIRECTORY`` and
``CUDA_MPS_LOG_DIRECTORY`` under the state dir, 0700), starts its server (``start_server -uid``), and
gives each client ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` and ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``
(``0=<N>M``: the client sees one device, index 0). Clients are admitted while their shares fit (thread
percentages add up to at most 100, memory limits to at most the device's memory); the daemon is stopped
(``quit``) when the last client leaves. The MPS server is a process on the device, so NVML lists it and
``apply`` treats the device as busy while it runs. On the simulator the same commands reach
:mod:`migctl.sim.mps_control`, a stand-in speaking the real control commands.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migctl.busy import register_mps_provider, register_mps_reclaimer
from migctl.jobs.common import JobsError, node_key
from migctl.paths import ensure_private_dir, state_dir
from migctl.proc import pid_alive

ISOLATION = ("hard", "soft", "none")


def mechanism(isolation: str) -> str:
    """``mig``, ``mps`` or ``timeslice`` for an isolation level."""
    if isolation not in ISOLATION:
        raise JobsError(f"unknown isolation {isolation!r}; valid: {', '.join(ISOLATION)}")
    return {"hard": "mig", "soft": "mps", "none": "timeslice"}[isolation]


@dataclass(frozen=True)
class Sharing:
    """What a job asks for besides memory: an isolation level and, when shared, its share of the device.

    ``share``: clients per device (MPS: 1/N of threads and memory; time-slicing: at most N clients);
    ``threads``/``mem_limit_mib``: an explicit MPS thread percentage and pinned memory limit instead.
    Built by :func:`sharing_options`, the one validation of ``run``, ``submit`` and batch files.
    """

    isolation: str = "hard"
    share: int | None = None
    threads: int | None = None
    mem_limit_mib: int | None = None

    @property
    def kind(self) -> str:
        """``mig``, ``mps`` or ``timeslice``."""
        return mechanism(self.isolation)

    @property
    def cap(self) -> int:
        """Time-slicing: the most clients per device (``--share``, default 2). MPS: the client count of a share."""
        return self.share or (2 if self.kind == "timeslice" else 1)

    def describe(self) -> str:
        """Short form for job listings: ``-`` (hard), ``mps 1/2``, ``mps 50%/4096M``, ``ts <=2``."""
        if self.kind == "mig":
            return "-"
        if self.kind == "timeslice":
            return f"ts <={self.cap}"
        if self.share is not None:
            return f"mps 1/{self.share}"
        return f"mps {self.threads if self.threads is not None else 100}%" + (
            f"/{self.mem_limit_mib}M" if self.mem_limit_mib is not None else "")

    def to_json(self) -> dict[str, Any]:
        return {"isolation": self.isolation, "share": self.share, "threads": self.threads,
                "mps_mem_mib": self.mem_limit_mib}


def sharing_options(isolation: str | None, share: int | None = None, threads: int | None = None,
                    mps_mem: str | int | float | None = None, *, ephemeral: bool = False, opt: str = "--") -> Sharing:
    """Validate an isolation level and its share options (``run``, ``submit``, batch files); one-line
    :class:`JobsError` (exit 2) naming what is wrong and what is valid. ``opt`` prefixes option names in
    messages (``--`` for the CLI, ``''`` for batch-file keys); ``mps_mem`` is a size as ``--mem`` takes it
    (``4GiB``, ``500MiB``; a bare number is GiB)."""
    from migctl.inputs import printable
    from migctl.jobs.common import parse_mem

    iso = "hard" if isolation is None else isolation
    o = (lambda n: f"{opt}{n}") if opt else (lambda n: f"'{n.replace('-', '_')}'")
    if iso not in ISOLATION:
        raise JobsError(f"{o('isolation')} must be hard, soft or none, not '{printable(str(iso), 40)}'")
    given = [n for n, v in (("share", share), ("threads", threads), ("mps-mem", mps_mem)) if v is not None]
    if iso == "hard" and given:
        raise JobsError(f"{', '.join(o(n) for n in given)} need{'s' if len(given) == 1 else ''} "
                        f"{o('isolation')} soft (MPS) or none (time-slicing)")
    if iso == "none" and (threads is not None or mps_mem is not None):
        raise JobsError(f"{o('threads')} and {o('mps-mem')} are MPS limits: they need {o('isolation')} soft "
                        f"(time-slicing has no limits; {o('share')} N caps its clients)")
    if share is not None and (threads is not None or mps_mem is not None):
        raise JobsError(f"give {o('share')} N, or {o('threads')}/{o('mps-mem')}, not both")
    if ephemeral and iso != "hard":
        raise JobsError(f"{o('ephemeral')} needs {o('isolation')} hard (a shared device outlives each client)")
    for n, v in (("share", share), ("threads", threads)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 100):
            what = "clients per device" if n == "share" else "percent of the device's threads"
            bad = "is out of range" if isinstance(v, int) and not isinstance(v, bool) else "is not a whole number"
            raise JobsError(f"{o(n)} '{printable(str(v), 40)}' {bad}; valid: 1..100 ({what})")
    mem: int | None = None
    if mps_mem is not None:
        if isinstance(mps_mem, bool):
            raise JobsError(f"{o('mps-mem')} must be a size such as 4GiB or 500MiB")
        try:
            mem = parse_mem(str(mps_mem))
        except JobsError as e:
            raise JobsError(f"{o('mps-mem')}: {e}") from None
        if mem < 1:
            raise JobsError(f"{o('mps-mem')} must be at least 1 MiB (e.g. 4GiB or 500MiB)")
    return Sharing(iso, share, threads, mem)


@dataclass(frozen=True)
class Share:
    """What one client gets: a thread percentage (1..100) and a pinned memory limit in MiB (None: no limit)."""

    threads: int
    mem_mib: int | None

    @classmethod
    def of(cls, n: int, device_mem_mib: int) -> Share:
        """An ``n``-way share (``--share N``): 100/N percent of the threads, 1/N of the memory (rounded down)."""
        if n < 1 or n > 100:
            raise JobsError(f"--share {n} is out of range; valid: 1..100 (clients per device)")
        return cls(threads=max(1, 100 // n), mem_mib=device_mem_mib // n)


def control_command(node: Any) -> list[str]:
    """How to run ``nvidia-cuda-mps-control``: the stand-in on the simulator, the real tool otherwise."""
    if getattr(node, "sim", None) is not None:
        return [sys.executable, "-m", "migctl.sim.mps_control"]
    exe = shutil.which("nvidia-cuda-mps-control")
    if exe is None:
        raise JobsError("nvidia-cuda-mps-control is not installed (it comes with the NVIDIA driver); "
                        "use --isolation hard (a MIG device) or none (time-slicing)", exit_code=1)
    return [exe]


class MpsManager:
    """MPS control daemons and their clients on one node."""

    def __init__(self, node: Any, root: Path | None = None) -> None:
        self.node = node
        # short names: the control endpoint is a Unix socket, whose path is limited to about 100 bytes
        self._base = None if root is not None else state_dir() / "mps"
        self.root = root or state_dir() / "mps" / hashlib.sha1(node_key(node).encode()).hexdigest()[:10]

    def ensure_root(self) -> Path:
        """The node's MPS directory, 0700 (in the state dir, its ``mps`` parent too: ``mkdir -p`` would give
        the parents the umask's mode)."""
        if self._base is not None:
            ensure_private_dir(self._base, "MPS directory")
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        return self.root

    # ------------------------------------------------------------------------------------ files

    def device_dir(self, uuid: str) -> Path:
        return self.root / hashlib.sha1(uuid.encode()).hexdigest()[:12]

    def _mkdirs(self, uuid: str) -> Path:
        d = self.device_dir(uuid)
        if len(str(d / "pipe" / "control").encode()) > 100:
            raise JobsError(f"the MPS pipe directory {d / 'pipe'} is too long for a Unix socket (at most about "
                            "100 bytes); set MIGCTL_STATE_DIR to a shorter path", exit_code=1)
        self.ensure_root()
        for p in (self.root, d, d / "pipe", d / "log"):
            p.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = p.lstat()
            if p.is_symlink() or st.st_uid != os.getuid():
                raise JobsError(f"{p} is not a directory owned by this user; refusing to use it", exit_code=1)
            os.chmod(p, 0o700)
        return d

    @contextmanager
    def _locked(self, uuid: str, timeout: float = 60) -> Iterator[Path]:
        from filelock import FileLock

        d = self._mkdirs(uuid)
        with FileLock(str(d / "clients.lock"), timeout=timeout, mode=0o600):
            yield d

    def env(self, uuid: str) -> dict[str, str]:
        d = self.device_dir(uuid)
        env = dict(os.environ)
        env.update({"CUDA_VISIBLE_DEVICES": uuid, "CUDA_MPS_PIPE_DIRECTORY": str(d / "pipe"),
                    "CUDA_MPS_LOG_DIRECTORY": str(d / "log")})
        sim = getattr(self.node, "sim", None)
        if sim is not None:
            env["MIGCTL_SIM"] = str(sim.spec)
            if sim.store.path is not None:
                env["MIGCTL_SIM_STATE"] = str(sim.store.path)
        return env

    def control(self, uuid: str, *commands: str, timeout: float = 30.0) -> str:
        """Send control commands to the daemon of ``uuid``; its replies (stdout)."""
        p = subprocess.run(control_command(self.node), input="\n".join(commands) + "\n", env=self.env(uuid),
                           capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            raise JobsError(f"nvidia-cuda-mps-control: {p.stderr.strip() or f'exit {p.returncode}'}", exit_code=1)
        return p.stdout

    def _read(self, d: Path) -> list[dict[str, Any]]:
        f = d / "clients.json"
        if not f.exists():
            return []
        try:
            clients = json.loads(f.read_text())
            if not isinstance(clients, list) or not all(isinstance(c, dict) and isinstance(c.get("pid"), int)
                                                        for c in clients):
                raise ValueError("not a list of clients with a pid")
        except ValueError as e:  # (a damaged list: who shares the device is unknown, so nothing may use it)
            from migctl.errors import UserError

            raise UserError(f"the MPS client list {f} is damaged ({e}); make sure no client of that device runs "
                            "(nvidia-smi, migctl gpus), then remove the file") from None
        groups: dict[int, list[tuple[int, float]]] | None = None
        out = []
        for c in clients:
            if pid_alive(c["pid"], c.get("pid_start")):
                out.append(c)
            elif c.get("pgid"):
                # the client's process group: a command whose wrapper was killed still holds its share
                from migctl.busy import lease_processes, process_groups

                groups = process_groups() if groups is None else groups
                if lease_processes(c["pid"], c.get("pid_start") or 0.0, c["pgid"], c.get("pid_start"), groups):
                    out.append(c)
        return out

    def _write(self, d: Path, clients: list[dict[str, Any]]) -> None:
        tmp = d / f".clients.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(clients, f)
        os.replace(tmp, d / "clients.json")

    # ------------------------------------------------------------------------------------ daemons

    def running(self, uuid: str) -> bool:
        return (self.device_dir(uuid) / "pipe" / "control").exists() and not self._known_dead(uuid) \
            and self._responds(uuid)

    # A daemon found dead (killed, crashed) leaves its control endpoint until the next start replaces it. It is
    # remembered with that endpoint (inode and mtime in ``dead-endpoint``) so that decisions do not ask it
    # again; _start forgets it. Only a refused call marks it (a reply that times out may be a slow daemon).
    def _endpoint_id(self, uuid: str) -> str | None:
        try:
            st = (self.device_dir(uuid) / "pipe" / "control").lstat()
        except OSError:
            return None
        return f"{st.st_ino} {st.st_mtime_ns}"

    def _known_dead(self, uuid: str) -> bool:
        ident = self._endpoint_id(uuid)
        if ident is None:
            return False
        try:
            return (self.device_dir(uuid) / "dead-endpoint").read_text() == ident
        except (OSError, UnicodeDecodeError):
            return False

    def _mark_dead(self, uuid: str) -> None:
        ident = self._endpoint_id(uuid)
        if ident is None:
            return
        with contextlib.suppress(OSError):
            fd = os.open(self.device_dir(uuid) / "dead-endpoint", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                         0o600)
            with os.fdopen(fd, "w") as f:
                f.write(ident)

    def _responds(self, uuid: str) -> bool:
        try:
            self.control(uuid, "get_server_list", timeout=10)
            return True
        except (JobsError, subprocess.TimeoutExpired):
            return False

    def servers(self, uuid: str) -> list[int]:
        """PIDs of the MPS servers of the device's daemon (``get_server_list``)."""
        if not (self.device_dir(uuid) / "pipe" / "control").exists() or self._known_dead(uuid):
            return []
        try:
            out = self.control(uuid, "get_server_list", timeout=10)
        except (JobsError, subprocess.TimeoutExpired):
            return []
        return [int(x) for x in out.split() if x.isdigit()]

    def _start(self, uuid: str) -> None:
        # umask 077: the daemon's (and its servers') pipes and logs are private to this user, whatever ours is
        # (output to a file, not pipes: a daemon that kept the stdio it was started with would hold a pipe
        # open for its whole life, and this call would wait for it; whether the real one closes them is not
        # documented)
        from migctl.proc import run_to_file

        (self.device_dir(uuid) / "dead-endpoint").unlink(missing_ok=True)
        rc, last = run_to_file(control_command(self.node) + ["-d"], 30, env=self.env(uuid), umask=0o077)
        if rc != 0:
            why = "did not return within 30 s" if rc is None else f"exit {rc}: {last}"
            raise JobsError(f"cannot start the MPS control daemon for {uuid}: {why}", exit_code=1)
        self.control(uuid, "set_default_active_thread_percentage 100", f"start_server -uid {os.getuid()}")

    def _stop(self, uuid: str) -> None:
        if not (self.device_dir(uuid) / "pipe" / "control").exists() or self._known_dead(uuid):
            return
        try:
            self.control(uuid, "quit")
        except (JobsError, subprocess.TimeoutExpired):
            try:
                self.control(uuid, "get_server_list", timeout=10)
            except JobsError:  # refused: the daemon is gone already (killed, crashed), nothing is left to stop;
                self._mark_dead(uuid)  # its endpoint stays until the next start replaces it
                return
            except subprocess.TimeoutExpired:
                return  # (no answer either: taken as stopped, as before, but not remembered as dead)
            raise

    # ------------------------------------------------------------------------------------ clients

    def admit(self, uuid: str, share: Share, device_mem_mib: int, pid: int, pid_start: float | None,
              pgid: int | None = None) -> dict[str, str]:
        """Admit a client if its share fits next to the others; its environment additions. ``pgid``: the
        client's own process group (it leads it): the client counts while any member lives.

        Raises :class:`JobsError` (exit code 75) when the device's remaining threads or memory are too few.
        """
        with self._locked(uuid) as d:
            clients = self._read(d)
            _check_mps(uuid, clients, share, device_mem_mib)
            if not self.running(uuid):  # (also when its daemon died under earlier clients: they have no server
                self._start(uuid)       # left either, and this client gets its limits from a new one)
            clients.append({"pid": pid, "pid_start": pid_start, "pgid": pgid, "threads": share.threads,
                            "mem_mib": share.mem_mib, "kind": "mps"})
            self._write(d, clients)
        return self.client_env(uuid, share)

    def client_env(self, uuid: str, share: Share) -> dict[str, str]:
        """The MPS variables of a client of ``uuid`` with ``share`` (known before it is admitted)."""
        d = self.device_dir(uuid)
        extra = {"CUDA_MPS_PIPE_DIRECTORY": str(d / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(d / "log"),
                 "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(share.threads)}
        if share.mem_mib:
            extra["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = f"0={share.mem_mib}M"
        return extra

    def admit_timeslice(self, uuid: str, cap: int, pid: int, pid_start: float | None,
                        pgid: int | None = None) -> dict[str, str]:
        """Admit a time-sliced client (no limits) while the device has fewer clients than ``cap`` and than
        the ``cap`` of every client already there (each client's ``--share N`` is its own promise)."""
        with self._locked(uuid) as d:
            clients = self._read(d)
            _check_timeslice(uuid, clients, cap)
            clients.append({"pid": pid, "pid_start": pid_start, "pgid": pgid, "threads": 0, "mem_mib": None,
                            "kind": "timeslice", "cap": cap})
            self._write(d, clients)
        return {}

    def room(self, uuid: str, share: Share | None, cap: int, device_mem_mib: int) -> bool:
        """Whether a client with ``share`` (MPS) or a time-sliced one (``share`` None, at most ``cap``) would be
        admitted now: a look before starting a process that :meth:`admit` might turn away."""
        with self._locked(uuid) as d:
            clients = self._read(d)
        try:
            if share is not None:
                _check_mps(uuid, clients, share, device_mem_mib)
            else:
                _check_timeslice(uuid, clients, cap)
        except JobsError:
            return False
        return True

    def leave(self, uuid: str, pid: int) -> bool:
        """Remove a client; stop the daemon when it was the last. True when this emptied the device (its MPS
        daemon stopped), False when clients remain or an earlier leave already emptied it."""
        with self._locked(uuid) as d:
            f = d / "clients.json"
            listed = bool(json.loads(f.read_text())) if f.exists() else False
            clients = [c for c in self._read(d) if c["pid"] != pid]
            self._write(d, clients)
            if clients:
                return False
            self._stop(uuid)
            return listed

    def unattended(self, uuid: str) -> bool:
        """Whether the device's daemon serves nobody now: its client list is free (no client is being admitted
        or leaving) and no client in it is alive. Such a daemon is an orphan (its last client was killed before
        it could stop it); the next decision stops it (:func:`sweep_node`). A look, never a wait: a list that
        someone holds, or a damaged one, counts as attended."""
        from filelock import Timeout

        from migctl.errors import UserError

        try:
            with self._locked(uuid, timeout=0) as d:
                return not self._read(d)
        except (Timeout, UserError, JobsError):
            return False

    def clients(self, uuid: str) -> list[dict[str, Any]]:
        with self._locked(uuid) as d:
            return self._read(d)

    def sweep(self, uuids: list[str], wait: float = 60) -> list[str]:
        """Stop the daemons of these devices that have no live client any more (their last client died while
        nobody was there to see it leave, e.g. a worker killed between admitting a job and starting it).
        ``wait``: how long to wait for a device's client list that someone holds (0: skip that device, its
        clients are changing). Returns the devices whose daemon was stopped."""
        from filelock import Timeout

        from migctl.errors import UserError

        stopped = []
        for uuid in uuids:
            if not (self.device_dir(uuid) / "pipe" / "control").exists() or self._known_dead(uuid):
                continue  # (no daemon, or one already found dead: nothing to stop, no control call)
            try:
                with self._locked(uuid, timeout=wait) as d:
                    clients = self._read(d)
                    if not clients and (d / "pipe" / "control").exists():
                        try:
                            self._stop(uuid)
                        except (JobsError, subprocess.TimeoutExpired):
                            continue  # a daemon that answers but will not quit: it stays, and so does its device
                        stopped.append(uuid)
            except (Timeout, UserError, JobsError):
                continue  # (its list held for a minute, damaged, or its directory not ours: the device stays
                # held, as busy reports it)
        return stopped


def _check_mps(uuid: str, clients: list[dict[str, Any]], share: Share, device_mem_mib: int) -> None:
    if any(c.get("kind", "mps") != "mps" for c in clients):
        raise JobsError(f"{uuid} is time-sliced by other clients", exit_code=75)
    threads = sum(c["threads"] for c in clients)
    mem = sum(c["mem_mib"] or 0 for c in clients)
    if threads + share.threads > 100 or (share.mem_mib or 0) + mem > device_mem_mib:
        raise JobsError(f"{uuid} has {100 - threads}% of its threads and {device_mem_mib - mem} MiB free; "
                        f"the client asks {share.threads}% and {share.mem_mib or 0} MiB", exit_code=75)


def _check_timeslice(uuid: str, clients: list[dict[str, Any]], cap: int) -> None:
    if any(c.get("kind", "mps") != "timeslice" for c in clients):
        raise JobsError(f"{uuid} is shared through MPS by other clients", exit_code=75)
    if len(clients) >= cap:
        raise JobsError(f"{uuid} already has {len(clients)} time-sliced clients (--share {cap})", exit_code=75)
    tightest = min((int(c["cap"]) for c in clients if c.get("cap")), default=None)
    if tightest is not None and len(clients) >= tightest:
        raise JobsError(f"{uuid} has {len(clients)} time-sliced client(s), one of which allows at most {tightest} "
                        f"(--share {tightest})", exit_code=75)


def free_share(clients: list[dict[str, Any]], device_mem_mib: int) -> tuple[int, int]:
    """(threads %, MiB) still free on a device with these clients."""
    return (100 - sum(c["threads"] for c in clients),
            device_mem_mib - sum(c["mem_mib"] or 0 for c in clients))


def shares_from(threads: int | None, mem_mib: int | None, share: int | None, device_mem_mib: int) -> Share:
    """The client's share from ``--share N`` or an explicit thread percentage and memory limit."""
    if share is not None:
        return Share.of(share, device_mem_mib)
    t = 100 if threads is None else threads
    if not 1 <= t <= 100:
        raise JobsError(f"thread percentage {t} is out of range; valid: 1..100")
    if mem_mib is not None and not 0 < mem_mib <= device_mem_mib:
        raise JobsError(f"memory limit {mem_mib} MiB is out of range; valid: 1..{device_mem_mib} MiB")
    return Share(threads=t, mem_mib=mem_mib if mem_mib is not None else None if t == 100 else
                 math.floor(device_mem_mib * t / 100))


def _devices(node: Any) -> Iterator[tuple[int, int | None, int | None, str]]:
    """Every device a client may share: ``(gpu, gi, ci, uuid)`` of each MIG device, or of a GPU without MIG.

    NVML errors that concurrent changes cause are retried (:func:`migctl.busy.retry_nvml`) and otherwise
    raised: taking a MIG GPU for one without MIG would skip its MIG devices' clients, and the busy authority
    would call their devices free."""
    from migctl.busy import retry_nvml

    for g in retry_nvml(node.gpus):
        targets: list[tuple[str, int | None, int | None]] = [(g.uuid, None, None)]
        if retry_nvml(g.mig_capable) and retry_nvml(g.mig_mode)[0] == 1:
            targets = [(d.uuid, d.gi_id, d.ci_id) for d in retry_nvml(g.mig_devices)]
        for uuid, gi, ci in targets:
            yield g.index, gi, ci, uuid


def shared_clients(node: Any, damaged: list[str] | None = None) -> list[dict[str, Any]]:
    """migctl's live MPS and time-sliced clients on ``node``, device by device (``migctl leases``):
    ``{"uuid", "gpu", "gi", "ci", "kind": "mps"|"timeslice", "pid", "threads", "mem_mib", "share"}``
    (``threads``/``mem_mib``: an MPS client's limits; ``share``: a time-sliced client's ``--share N``).
    ``damaged``: where a damaged client list's message goes (else it raises), the other devices listed."""
    from migctl.errors import UserError

    mgr = MpsManager(node)
    if not mgr.root.is_dir():
        return []
    out: list[dict[str, Any]] = []
    for gpu, gi, ci, uuid in _devices(node):
        d = mgr.device_dir(uuid)
        if not (d / "clients.json").exists():
            continue
        try:
            clients = mgr._read(d)
        except UserError as e:
            if damaged is None:
                raise
            damaged.append(f"{uuid}: {e}")
            continue
        for c in clients:
            kind = "timeslice" if c.get("kind") == "timeslice" else "mps"
            out.append({"uuid": uuid, "gpu": gpu, "gi": gi, "ci": ci, "kind": kind, "pid": int(c["pid"]),
                        "threads": c.get("threads") if kind == "mps" else None,
                        "mem_mib": c.get("mem_mib") if kind == "mps" else None,
                        "share": c.get("cap") if kind == "timeslice" else None})
    return out


def mps_holders(node: Any) -> list[tuple[int, int | None, int | None, int, str]]:
    """The MPS servers migctl's daemons run on ``node``, and migctl's live MPS and time-sliced clients, for
    :mod:`migctl.busy` (they make their device busy even before a client has a CUDA context on it, and
    whatever the daemon answers): ``(gpu, gi, ci, pid, detail)``."""
    mgr = MpsManager(node)
    if not mgr.root.is_dir():
        return []
    out: list[tuple[int, int | None, int | None, int, str]] = []
    for gpu, gi, ci, uuid in _devices(node):
        d = mgr.device_dir(uuid)
        clients = mgr._read(d) if (d / "clients.json").exists() else []
        for c in clients:  # admitted clients hold their device before their first CUDA call
            kind = "time-sliced client" if c.get("kind") == "timeslice" else "MPS client"
            out.append((gpu, gi, ci, int(c["pid"]), f"{kind} of {uuid}"))
        if not (d / "pipe" / "control").exists():
            continue  # no daemon was started for this device: skip the control round trip
        servers = mgr.servers(uuid)
        idle = "idle " if servers and not clients and mgr.unattended(uuid) else ""
        for pid in servers:
            out.append((gpu, gi, ci, pid, f"{idle}MPS server of {uuid}"))
    return out


def sweep_node(node: Any, mgr: MpsManager | None = None, wait: float = 60) -> list[str]:
    """Stop the MPS daemons of ``node`` whose admitted clients have all ended (a ``migctl run`` killed before it
    could stop its device's daemon; a worker killed between admitting a job and starting it); the devices freed.
    Only the devices with a daemon's endpoint are looked at, so a node without one costs a directory listing.
    ``wait``: see :meth:`MpsManager.sweep`."""
    mgr = mgr or MpsManager(node)
    if not mgr.root.is_dir() or not any((d / "pipe" / "control").exists() for d in mgr.root.iterdir()):
        return []
    return mgr.sweep([uuid for _, _, _, uuid in _devices(node)], wait=wait)


def reclaim_orphans(node: Any) -> list[str]:
    """:func:`sweep_node` before every busy decision: a device whose client list someone holds (a client being
    admitted or leaving) is skipped, never waited for."""
    return sweep_node(node, wait=0)


register_mps_provider(mps_holders)
register_mps_reclaimer(reclaim_orphans)
