"""Where migctl keeps its state, and the identity of a node for file names and locks.

One state dir (``$MIGCTL_STATE_DIR`` or the platform's user state dir) holds the simulator's nodes, the
apply journals, the jobs database and the node locks. Every operation that creates or destroys MIG
instances (apply, recover, restore, dynamic instances of ``migctl run``) holds the same node lock.

The state dir is private: created 0700 whatever the umask, and refused when it is not owned by the
caller or is writable by group or others (another user could otherwise plant jobs, journals or symlinks
that root then acts on). Files migctl creates in it are 0600. Temporary files left by a writer that was
killed (``.journal-*.tmp``, ``.state-*.tmp``) are removed the first time a process uses the state dir.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from migctl.errors import UserError

STALE_TMP_S = 60.0  # a temp file older than this belongs to a writer that died (writes take milliseconds)
_ready: set[str] = set()


def state_dir_path() -> Path | None:
    """Where :func:`state_dir` is, without creating or checking it (None: ``MIGCTL_STATE_DIR`` is not absolute)."""
    env = os.environ.get("MIGCTL_STATE_DIR")
    if env:
        return Path(env) if Path(env).is_absolute() else None
    import platformdirs

    return Path(platformdirs.user_state_dir("migctl"))


def state_dir() -> Path:
    """``$MIGCTL_STATE_DIR`` or platformdirs' user state dir for migctl; created private and checked."""
    env = os.environ.get("MIGCTL_STATE_DIR")
    if env:
        p = Path(env)
        if not p.is_absolute():  # (a relative one was a different directory in each working directory:
            # a job started with --cwd, or a worker started elsewhere, saw another queue and other leases)
            from migctl.inputs import printable

            raise UserError(f"MIGCTL_STATE_DIR '{printable(env)}' is not an absolute path (valid: an absolute "
                            "directory, e.g. /var/lib/migctl, or unset for the user's state directory)")
    else:
        import platformdirs

        p = Path(platformdirs.user_state_dir("migctl"))
    if str(p) not in _ready:
        ensure_private_dir(p, "state dir")
        _clean_stale_temps(p)
        _ready.add(str(p))
    return p


def ensure_private_dir(path: Path, what: str = "directory") -> Path:
    """Create ``path`` 0700 (parents as needed); refuse one owned by another user or writable by others."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask; 0700 whatever it is
    except FileExistsError:
        pass
    except OSError as e:
        raise UserError(f"cannot create {what} {path}: {e.strerror}") from None
    check_private(path, what, directory=True)
    return path


def check_private(path: Path, what: str, directory: bool = False) -> None:
    """Refuse ``path`` unless it is owned by the caller and not writable by group or others."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise UserError(f"cannot use {what} {path}: {e.strerror}") from None
    if directory and not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{what} {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise UserError(f"{what} {path} is owned by uid {st.st_uid}, not by you (uid {os.geteuid()}); refusing to "
                        "use it (valid: a directory you own, e.g. set MIGCTL_STATE_DIR)")
    if st.st_mode & 0o022:
        raise UserError(f"{what} {path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                        f"refusing to use it (valid: chmod go-w {path})")


def private_file(path: Path, what: str) -> Path:
    """Create ``path`` 0600 if missing (whatever the umask), or check an existing one; returns ``path``."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    except FileExistsError:
        check_private(path, what)
        return path
    except OSError as e:
        raise UserError(f"cannot create {what} {path}: {e.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    return path


def atomic_write(path: Path, text: str, prefix: str, fsync_dir: bool = False, fsync: bool = True) -> None:
    """Replace ``path`` with ``text`` atomically: an unpredictable temp file created exclusively (0600) next to
    it, written and fsynced, then renamed over it (``fsync_dir``: the directory too, so the rename survives a
    crash). The temp file's name starts with ``prefix`` (:func:`_clean_stale_temps` knows the prefixes).
    ``fsync=False``: no fsync at all; the rename still makes the change atomic for other processes and
    survives a killed writer, only not a crash of the operating system."""
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if fsync_dir:
            dfd = os.open(str(path.parent), os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # a failed write or fsync (ENOSPC, EIO) names no
            raise OSError(e.errno, e.strerror, str(path)) from e  # file: name the one replaced
        raise


def _clean_stale_temps(directory: Path) -> None:
    """Remove temp files of atomic writes whose writer was killed (older than :data:`STALE_TMP_S`)."""
    now = time.time()
    for pattern, sub in ((".journal-*.tmp", "."), (".state-*.tmp", "sim"), (".node-*.tmp", ".")):
        for p in (directory / sub).glob(pattern):
            try:
                if now - p.lstat().st_mtime > STALE_TMP_S:
                    p.unlink()
            except OSError:
                continue


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
NODE_LOCK_WAIT_S = 60.0  # how long a verb waits for the node lock by default (`--lock-timeout`, as apply's)


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
    lock = FileLock(str(path), timeout=-1 if timeout is None else timeout, mode=0o600)
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
