"""Creating a GPU instance and its compute instance as one journaled step.

``create_gi_ci`` writes an intent record (``<state dir>/create-<node>.json``, fsynced) before the GPU
instance is created, notes the GI ID once it exists, and removes the record after the compute instance
exists. A process killed in between leaves the record behind; :func:`recover_creates` (called by
``migctl recover``, every ``migctl apply`` and every lease attempt of ``migctl run``/the worker, always
under the node lock) finds it and destroys the GPU instance if it still has no compute instance and
nothing holds it. A GI that got its CI is a complete, idle instance and is kept.

The caller holds the node lock (:func:`migctl.paths.node_lock`), so there is at most one record per node.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from migctl.paths import atomic_write, node_slug, state_dir


def intent_path(node: Any) -> Path:
    return state_dir() / f"create-{node_slug(node)}.json"


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(data), ".create-")


def create_gi_ci(node: Any, gpu: Any, profile: Any, placement: Any, what: str = "") -> tuple[Any, Any]:
    """Create a GI of ``profile`` at ``placement`` on ``gpu`` and its default CI, journaled; (gi, ci).

    On an error in between, the GI is destroyed again before the error propagates.
    """
    path = intent_path(node)
    rec: dict[str, Any] = {"pid": os.getpid(), "time": time.time(), "what": what, "gpu": gpu.index,
                           "profile": getattr(profile, "name", ""), "profile_id": profile.id,
                           "start": placement.start, "size": placement.size, "gi": None}
    _write(path, rec)
    gi = gpu.create_gi(profile.id, placement)
    try:
        ci = gi.create_ci()
    except BaseException:
        with contextlib.suppress(Exception):
            gi.destroy()
        raise
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return gi, ci


def pending(node: Any) -> dict[str, Any] | None:
    """The record left by an interrupted :func:`create_gi_ci`, None when there is none, or ``{"corrupt": why}``
    when it cannot be acted on (not JSON, not the shape :func:`create_gi_ci` writes, or a GPU this node lacks)."""
    from migctl.inputs import InputError, read_text

    path = intent_path(node)
    if not os.path.lexists(path):
        return None  # the common case: no interrupted creation
    try:
        rec = json.loads(read_text(path, "instance-creation record", 64 * 1024))
    except InputError as e:
        if not os.path.lexists(path):
            return None
        return {"corrupt": str(e).rpartition(": ")[2]}
    except (ValueError, RecursionError) as e:
        return {"corrupt": f"unreadable: {e.__class__.__name__}"}
    problem = _problem(rec, len(node.gpus()))
    return {"corrupt": problem} if problem else rec


def _problem(rec: Any, gpus: int) -> str | None:
    if not isinstance(rec, dict):
        return "not an object"
    for key in ("gpu", "start", "profile_id"):
        if type(rec.get(key)) is not int or rec[key] < 0:
            return f"'{key}' missing or not an integer >= 0"
    if rec.get("gi") is not None and (type(rec["gi"]) is not int or rec["gi"] < 0):
        return "'gi' not an integer >= 0"
    if rec["gpu"] >= gpus:
        return f"it names GPU {rec['gpu']}, which this node does not have"
    return None


def recover_creates(node: Any) -> str | None:
    """Finish an interrupted :func:`create_gi_ci` (caller holds the node lock); a summary, or None."""
    from migctl.busy import busy_view, retry_nvml

    rec = pending(node)
    if rec is None:
        return None
    path = intent_path(node)
    if rec.get("corrupt"):
        path.unlink(missing_ok=True)
        return (f"removed an unreadable instance-creation record {path} ({rec['corrupt']}); a GPU instance it "
                "may have left without a compute instance is listed by `migctl gpus` (orphan_gis in --json)")
    gpu = node.gpu(int(rec["gpu"]))
    gis = [g for g in retry_nvml(gpu.gpu_instances)
           if g.placement.start == rec["start"] and g.profile_id == rec["profile_id"]
           and (rec.get("gi") is None or g.id == rec["gi"])]
    msg = None
    for gi in gis:
        if retry_nvml(gi.compute_instances):
            continue  # it got its CI: a complete instance
        if busy_view(node).of_gi(gpu.index, gi.id):
            msg = (f"GPU {gpu.index}: GPU instance {gi.id} ({rec.get('profile')}) has no compute instance but is "
                   "in use; kept")
            return msg
        gi.destroy()
        msg = (f"GPU {gpu.index}: destroyed GPU instance {gi.id} ({rec.get('profile')} at slice {rec['start']}) "
               f"left without a compute instance by PID {rec.get('pid')} ({rec.get('what') or 'migctl'})")
    path.unlink(missing_ok=True)
    return msg


def orphan_gis(gpu: Any) -> list[Any]:
    """GPU instances of ``gpu`` that have no compute instance (no MIG device: nothing can use them)."""
    from migctl.busy import retry_nvml

    try:
        cur = gpu.mig_mode()[0] if gpu.mig_capable() else 0
    except Exception:  # noqa: BLE001
        return []
    if cur != 1:
        return []
    return [gi for gi in retry_nvml(gpu.gpu_instances) if not retry_nvml(gi.compute_instances)]
