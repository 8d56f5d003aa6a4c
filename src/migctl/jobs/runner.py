"""``migctl run``: lease a MIG device, run one command on it, release the lease when it exits.

The child starts behind a *gate*: ``sh -c 'read go <&3; exec "$@"'``. The runner starts it, registers its
PID as a client of the MIG device (on the simulator: :meth:`SimNode.add_client`; on a real GPU the CUDA
process shows up in NVML by itself), records it, and only then opens the gate. Because ``exec`` keeps the
PID and the process start time, the registered client *is* the user's command, and no user code runs
before the device counts as busy (that was the race: start, then register, leaves a window in which
``apply`` could destroy the instance under a running program). If the runner dies before opening the gate,
the pipe closes, ``read`` fails and the command never runs (exit 125).

The child gets ``PR_SET_PDEATHSIG=SIGKILL``: a runner killed with SIGKILL takes its command with it. The lease
also names the command's process group: whatever the command started in its group (and that survives the
runner) keeps the device leased; once the runner and the whole group are gone, the lease is stale and is
reclaimed by the next runner.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from migctl.jobs.common import JobsError, exit_status
from migctl.jobs.leases import Lease, LeaseManager, Request

# {fd} is the read end of the gate pipe (its number is kept across exec).
GATE_OPEN = 'IFS= read -r _migctl_go <&{fd} || exit 125; exec {fd}<&-; [ "$_migctl_go" = go ] || exit 125; unset _migctl_go; '
GATE = GATE_OPEN + 'exec "$@"'
# bash accepts multi-digit descriptors in redirections (dash does not); it is Essential on Debian.
_SHELL = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _libc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


def child_preexec(parent: int, new_group: bool, deathsig: bool) -> Callable[[], None]:
    """preexec_fn: optionally its own process group, and die with the runner (Linux PR_SET_PDEATHSIG)."""
    libc = _libc() if deathsig else None

    def fn() -> None:
        if new_group:
            os.setpgid(0, 0)
        if libc is not None:
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the runner died before prctl took effect
                os._exit(125)

    return fn


def gated_popen(cmd: Sequence[str], env: dict[str, str], *, script: str = GATE, new_group: bool = False,
                deathsig: bool = True, **kw: Any) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``cmd`` behind the gate; returns (process, write end of the gate pipe)."""
    r, w = os.pipe()
    os.set_inheritable(r, True)
    try:
        proc = subprocess.Popen(
            [_SHELL, "-c", script.replace("{fd}", str(r)), "migctl-gate", *cmd],
            env=env, pass_fds=(r,), close_fds=True,
            preexec_fn=child_preexec(os.getpid(), new_group, deathsig), **kw,
        )
    except BaseException:
        os.close(w)
        raise
    finally:
        os.close(r)
    return proc, w


def open_gate(w: int, go: bool = True) -> None:
    """Let the gated command run (``go``) or make it exit 125 without running (``go=False``)."""
    try:
        if go:
            os.write(w, b"go\n")
    except BrokenPipeError:
        pass
    finally:
        os.close(w)


def register_client(node: Any, lease: Lease, pid: int, name: str) -> None:
    """On the simulator, record ``pid`` as a client of the leased MIG device (no-op on real NVML)."""
    sim = getattr(node, "sim", None)
    if sim is None:
        return
    rc = sim.add_client(lease.gpu, pid, lease.gi, lease.ci, name=name[:64])
    if rc:  # the leased instance vanished (destroyed outside migctl's node lock): not the request's fault
        raise JobsError(f"could not register PID {pid} as a client of {lease.uuid} (NVML error {rc})", exit_code=75)


def unregister_client(node: Any, lease: Lease, pid: int) -> None:
    sim = getattr(node, "sim", None)
    if sim is not None:
        sim.remove_client(lease.gpu, pid)


def child_env(lease: Lease, base: dict[str, str] | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: exactly one ``CUDA_VISIBLE_DEVICES=MIG-<uuid>``."""
    env = dict(os.environ if base is None else base)
    env.update(extra or {})
    env["CUDA_VISIBLE_DEVICES"] = lease.cuda_visible_devices
    env["MIGCTL_MIG_UUID"] = lease.cuda_visible_devices
    env["MIGCTL_MIG_PROFILE"] = lease.profile
    return env


def check_command(name: str) -> None:
    """Fail before leasing (exit 127/126, as a shell would) when ``name`` cannot be executed, so the user gets
    migctl's one-line error instead of the internal gate's shell message."""
    import shutil

    from migctl.inputs import printable

    if "/" in name:
        if not os.path.exists(name):
            raise JobsError(f"command '{printable(name)}' not found", 127)
        if os.path.isdir(name) or not os.access(name, os.X_OK):
            raise JobsError(f"command '{printable(name)}' is not executable", 126)
    elif shutil.which(name) is None:
        raise JobsError(f"command '{printable(name)}' not found in PATH", 127)


def wait_hooks(node: Any, req: Request, *, wait: float | None, reshape: Any, reserve_after: float | None,
               log: Callable[[str], None], fifo: bool = False) -> tuple[Callable[[Request], bool] | None, Any]:
    """What a waiting run does after each attempt that found nothing: take its reservation in turn
    (``reserve_after`` seconds, when it may wait; with ``--no-create``, of an existing instance) and reshape
    idle instances (``reshape``, a :class:`migctl.jobs.reshape.Churn`). Returns the retry hook (True: the
    node changed, try again at once; None when there is nothing to do) and the
    :class:`migctl.jobs.run_reserve.RunReservation` to close (with ``fifo``, always: the run's place among
    runs waiting for the same thing, for :meth:`LeaseManager.acquire`'s ``turn``)."""
    hooks: list[Callable[[Request], bool]] = []
    reserver = None
    if fifo or (reserve_after is not None and wait != 0):
        from migctl.jobs.run_reserve import RunReservation

        reserver = RunReservation(node, reserve_after if wait != 0 else None, log=log)
        hooks.append(reserver.attempt)
    if reshape is not None:
        from migctl.jobs.reshape import Reshaper

        hooks.append(Reshaper(node, reshape, log=log).attempt)
    if not hooks:
        return None, reserver

    def retry(r: Request) -> bool:
        return any(h(r) for h in hooks)

    return retry, reserver


def run(node: Any, cmd: Sequence[str], req: Request, *, wait: float | None = None, ephemeral: bool = False,
        log: Callable[[str], None] | None = None, manager: LeaseManager | None = None, reshape: Any = None,
        reserve_after: float | None = None) -> int:
    """Lease, run ``cmd`` (inheriting stdio), forward signals, release; returns the command's exit status.

    ``reshape`` (a :class:`migctl.jobs.reshape.Churn`): while no device fits, reshape idle instances under
    that churn policy (before the first wait and again while waiting). ``reserve_after``: once it has waited
    that many seconds, the run gets the node's reservation in its turn (:mod:`migctl.jobs.run_reserve`);
    None: never."""
    if not cmd:
        raise JobsError("no command given; usage: migctl run [OPTIONS] -- CMD [ARGS...]")
    check_command(cmd[0])
    say = log or (lambda s: None)
    mgr = manager or LeaseManager(node)

    def waiting(r: Request) -> None:
        sys.stderr.write(f"migctl: waiting for a free MIG device ({r.describe()})...\n")
        sys.stderr.flush()

    retry, reserver = wait_hooks(node, req, wait=wait, reshape=reshape, reserve_after=reserve_after, log=say,
                                 fifo=True)
    try:
        lease = mgr.acquire(req, wait=wait, owner="run", on_wait=waiting, on_retry=retry, reshaping=reshape is not None,
                            turn=reserver)
    finally:
        if reserver is not None:
            reserver.close()
    proc: subprocess.Popen[bytes] | None = None
    previous: dict[int, Any] = {}
    try:
        say(f"leased {lease.cuda_visible_devices} (GPU {lease.gpu}, GI {lease.gi}, CI {lease.ci}, {lease.profile}"
            f"{', created' if lease.created_instance else ''})")
        interactive = sys.stdin is not None and sys.stdin.isatty()
        # With a terminal, the child shares our process group so it reads the tty and gets Ctrl-C itself;
        # otherwise it gets its own group and we forward SIGINT too.
        forwarded = (signal.SIGTERM, signal.SIGHUP) if interactive else FORWARDED
        env = child_env(lease)
        try:
            proc, gate = gated_popen(cmd, env, new_group=not interactive)
        except OSError as e:
            raise JobsError(f"cannot start {cmd[0]!r}: {e}") from None
        try:
            lease = mgr.set_group(lease, proc.pid if not interactive else os.getpgid(0))
            register_client(node, lease, proc.pid, os.path.basename(cmd[0]))
        except BaseException:
            open_gate(gate, go=False)
            proc.wait()
            raise

        def forward(signum: int, _frame: Any) -> None:
            # The child leads its own process group when there is no terminal: signal the whole group, as
            # a terminal's Ctrl-C would, so a shell's foreground command gets it too (not only the shell).
            if proc is not None and proc.poll() is None:
                try:
                    if interactive:
                        os.kill(proc.pid, signum)
                    else:
                        os.killpg(proc.pid, signum)
                except ProcessLookupError:
                    pass

        for s in forwarded:
            previous[s] = signal.signal(s, forward)
        if interactive:
            previous[signal.SIGINT] = signal.signal(signal.SIGINT, lambda *_: None)
        open_gate(gate)
        while True:
            try:
                rc = proc.wait()
                break
            except KeyboardInterrupt:  # pragma: no cover - handlers replace the default
                continue
        status = exit_status(rc)
        if status == 125:
            say("the command did not start (gate closed)")
        return status
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        note = None
        try:
            if proc is not None:
                unregister_client(node, lease, proc.pid)
            note = mgr.release(lease, destroy=ephemeral and lease.created_instance)
        except (JobsError, OSError, sqlite3.Error) as e:  # (a full disk, a database locked past its timeout)
            # the command's own exit status stands; a lease left behind is reclaimed as stale once the command's
            # processes have ended (migctl.busy), so nothing stays held
            where = "the jobs database: " if isinstance(e, sqlite3.Error) else ""
            sys.stderr.write(f"migctl: warning: releasing {lease.uuid}: {where}{e}; its lease goes once the "
                             "command's processes have ended\n")
        if note:
            say(note)
