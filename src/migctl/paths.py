"""Where migctl keeps its state, and the identity of a node for file names and locks.

One state dir (``$MIGCTL_STATE_DIR`` or the platform's user state dir) holds the simulator's nodes, the
apply journals, the jobs database and the node locks. Every operation that creates or destroys MIG
instances (apply, recover, restore, dynamic instances of ``migctl run``) holds the same node lock.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any


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


def node_lock_path(node: Any, directory: Path | None = None) -> Path:
    """The node-wide lock file held while MIG instances are created or destroyed."""
    return (directory or state_dir()) / f"apply-{node_slug(node)}.lock"
