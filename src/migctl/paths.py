"""Where migctl keeps its state, and the identity of a node for file names and locks.

One state dir (``$MIGCTL_STATE_DIR`` or the platform's user state dir) holds the simulator's nodes, the
apply journals, the jobs database and the node locks. Every operation that creates or destroys MIG
instances (apply, recover, restore, dynamic instances of ``migctl run``) holds the same node lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from migctl.errors import UserError


def state_dir() -> Path:
    """``$MIGCTL_STATE_DIR`` or platformdirs' user state dir for migctl."""
    env = os.environ.get("MIGCTL_STATE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_state_dir("migctl"))


def node_slug(node: Any) -> str:
    """A file-name-safe identity of the node: ``nvml`` for real GPUs; spec and state file for a simulated one."""
    sim = getattr(node, "sim", None)
    if sim is None:
        return "nvml"
    ident = f"{sim.spec}|{sim.store.path}"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(sim.spec))[:40]
    return f"sim-{safe}-{hashlib.sha1(ident.encode()).hexdigest()[:8]}"


def node_key(node: Any) -> str:
    """Identity of a node in the jobs database: ``nvml`` for real GPUs, ``sim:<spec>@<state file>`` for the simulator."""
    sim = getattr(node, "sim", None)
    if sim is None:
        return "nvml"
    path = getattr(sim.store, "path", None)
    return f"sim:{sim.spec}@{path if path is not None else 'memory'}"


def jobs_db_path() -> Path:
    """The SQLite database holding leases and jobs for every node of this state dir."""
    return state_dir() / "jobs.sqlite"


def node_lock_path(node: Any, directory: Path | None = None) -> Path:
    """The node-wide lock file held while MIG instances are created or destroyed."""
    return (directory or state_dir()) / f"apply-{node_slug(node)}.lock"


# ------------------------------------------------------------------------------------------------ node lock
EXIT_LOCKED = 4


class LockBusy(UserError):
    """The node lock stayed held by someone else for the whole bounded wait. One line says who and since when."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_LOCKED)


def _holder_text(owner: Path) -> str:
    """``PID 123 (migctl apply 'all-1g', held 4.2s)`` from the owner file next to the lock, or ''."""
    import json
    import time

    try:
        data = json.loads(owner.read_text(encoding="utf-8"))
        held = time.time() - float(data.get("since", time.time()))
        return f"PID {int(data['pid'])} ({data.get('what') or 'migctl'}, held {held:.1f}s)"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


@contextlib.contextmanager
def node_lock(node: Any, timeout: float | None = None, what: str = "", directory: Path | None = None) -> Iterator[None]:
    """Hold the node-wide lock under which MIG instances are created or destroyed and leases are taken.

    Lock order (docs/jobs.md): this lock first, then any SQLite write transaction; never the reverse.
    ``timeout``: seconds to wait (None: forever, 0: fail at once). On timeout :class:`LockBusy` names the
    holder (PID, what it does, for how long) in one line.
    """
    import json
    import tempfile
    import time

    from filelock import FileLock, Timeout

    d = directory or state_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = node_lock_path(node, d)
    owner = path.with_name(path.name + ".owner")
    lock = FileLock(str(path), timeout=-1 if timeout is None else timeout)
    try:
        lock.acquire(poll_interval=0.02)
    except Timeout:
        holder = _holder_text(owner)
        raise LockBusy(
            f"another migctl process holds the node lock {path}" + (f": {holder}" if holder else "")
            + f"; waited {timeout:g}s"
        ) from None
    try:
        with contextlib.suppress(OSError):
            fd, tmp = tempfile.mkstemp(dir=str(d), prefix=".lock-owner-")  # 0600, unpredictable, exclusive
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps({"pid": os.getpid(), "what": what, "since": time.time()}))
            os.replace(tmp, owner)
        yield
    finally:
        with contextlib.suppress(OSError):
            owner.unlink()
        lock.release()
