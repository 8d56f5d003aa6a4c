"""One state dir, one node: refuse a state dir that holds another node's state.

Leases, the queue, reservations and apply journals live in the state dir, keyed by node, and a real node's
key is ``nvml`` (:func:`migctl.paths.node_key`). A state dir that two hosts share (the default one, in the
home directory, on a cluster whose homes are on NFS) would mix their state: one host's leases read as
stale on the other (their PIDs do not live there) and are deleted, one host's worker starts the other's
queued jobs, one host's interrupted apply journal is "recovered" on the other's GPUs.

So the state dir records which GPUs its node has (``node-<slug>.json``: their UUIDs, and the host name for
the message), and opening a real node whose GPUs include none of the recorded ones is one line naming both
and what to do (exit 2). Some GPUs in common (one replaced, or hidden from a container) updates the record.
Only where the state dir exists already (a verb that keeps no state creates nothing), and only for real
NVML: a simulated node's key names its state file, and resetting a simulator gives it new GPU UUIDs. A
record that cannot be read (damaged, not a plain file of ours) is replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

from migctl.errors import UserError

MAX_RECORD = 1 << 16  # bytes: a record of ours is a few hundred


def check(node: Any) -> None:
    """Refuse a real node whose state dir belongs to another node (see the module doc); record it otherwise."""
    if getattr(node, "sim", None) is not None:
        return
    from migctl.paths import node_slug, state_dir, state_dir_path

    where = state_dir_path()
    if where is None or not where.is_dir():
        return
    try:
        uuids = sorted(str(g.uuid) for g in node.gpus())
        directory = state_dir()
    except Exception:  # noqa: BLE001 - NVML or the state dir in trouble: the verb itself says so, if it matters
        return
    verify(directory, node_slug(node), uuids, socket.gethostname())


def verify(directory: Path, slug: str, uuids: list[str], host: str) -> None:
    """Compare this node's GPU ``uuids`` with the record of ``slug`` in ``directory``; raise :class:`UserError`
    when they have none in common, (re)write the record when it is missing, unreadable or different."""
    if not uuids:
        return  # (no GPU to tell this node by)
    path = directory / f"node-{slug}.json"
    old = _read(path)
    if old is not None and not set(old["gpus"]) & set(uuids):
        mine = ", ".join(uuids[:2]) + (f" and {len(uuids) - 2} more" if len(uuids) > 2 else "")
        theirs = ", ".join(old["gpus"][:2]) + (f" and {len(old['gpus']) - 2} more" if len(old["gpus"]) > 2 else "")
        raise UserError(
            f"the state dir {directory} holds another node's leases, queue and apply journal (host "
            f"{old['host'] or 'unknown'}, GPUs {theirs}); this node ({host}) has none of those GPUs ({mine}). "
            "Use a state dir on this node's own disk (MIGCTL_STATE_DIR, e.g. /var/lib/migctl), or remove "
            f"{path} if that node's state is no longer wanted")
    if old is None or old["gpus"] != uuids or old["host"] != host:
        _write(path, {"gpus": uuids, "host": host})


def _read(path: Path) -> dict[str, Any] | None:
    """The record, or None when there is none or it is not one migctl wrote (then it is replaced)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_size > MAX_RECORD:
            return None
        data = json.loads(os.read(fd, MAX_RECORD + 1).decode("utf-8"))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    if not isinstance(data, dict):
        return None
    gpus, host = data.get("gpus"), data.get("host", "")
    if not isinstance(gpus, list) or not gpus or not all(isinstance(g, str) for g in gpus) or not isinstance(host, str):
        return None
    return {"gpus": sorted(gpus), "host": host}


def _write(path: Path, record: dict[str, Any]) -> None:
    """Write the record atomically (:func:`migctl.paths.atomic_write`: a private temp file renamed over it, so a
    symlink there is replaced, never followed). A failure is ignored: the record is a guard, and the verb's own
    writes report a full disk."""
    from migctl.paths import atomic_write

    with contextlib.suppress(OSError):
        atomic_write(path, json.dumps(record), prefix=".node-", fsync=False)
