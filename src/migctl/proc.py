"""Process liveness, shared by the simulator (client processes) and the job leases; running a command whose
output only matters for its error line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def pid_alive(pid: int | None, start_time: float | None = None) -> bool:
    """True while process ``pid`` that started at ``start_time`` runs (reused PIDs and zombies are dead)."""
    if not pid:
        return False
    import psutil

    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        return not start_time or abs(p.create_time() - start_time) < 0.01
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def run_to_file(cmd: str | list[str], timeout: float | None, **popen: Any) -> tuple[int | None, str]:
    """Run ``cmd`` (``popen``: Popen's keywords, e.g. ``shell``, ``env``, ``cwd``, ``umask``) with stdin from
    /dev/null and its output in a private unnamed temporary file; (exit status, the last line it printed).
    The exit status is None when it ran past ``timeout`` and was killed. Popen's ``OSError`` and ``ValueError``
    are raised as they are.

    Not pipes: a process the command leaves in the background (``cmd &``, a daemon that keeps its stdio)
    holds a pipe open, and the caller waited for it to exit; and what a command prints is not kept in
    memory, only read back from the end."""
    import subprocess
    import tempfile

    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, **popen)
        try:
            rc: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = None
        except BaseException:  # Ctrl-C or a signal's exception: the command does not outlive us (as with run())
            proc.kill()
            proc.wait()
            raise
        return rc, _last_line(out)


def run_or_raise(cmd: str | list[str], timeout: float | None, what: str, error: Callable[[str], Exception],
                 **popen: Any) -> None:
    """:func:`run_to_file`; a command that cannot start, runs past ``timeout`` or exits non-zero raises
    ``error(message)``, the message naming ``what`` and ending with the last line it printed."""
    try:
        rc, last = run_to_file(cmd, timeout, **popen)
    except (OSError, ValueError) as e:
        raise error(f"{what} could not run: {e}") from None
    if rc is None:  # (only with a timeout)
        raise error(f"{what} did not finish within {timeout or 0:g} s; killed")
    if rc != 0:
        raise error(f"{what} exited {rc}: {last}")


def _last_line(f: Any, tail: int = 4096) -> str:
    """The last non-empty line among the last ``tail`` bytes of ``f``, printable."""
    import os

    from migctl.inputs import printable

    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - tail))
    lines = [x.strip() for x in f.read().decode("utf-8", "replace").splitlines() if x.strip()]
    return printable(lines[-1]) if lines else ""
