"""The apply journal and the node-wide lock.

The journal is a JSON file in the state dir (``$MIGCTL_STATE_DIR`` or the user state dir), one per node,
rewritten atomically and fsynced *before* every operation. It records the old layout of every GPU the
apply may touch (profiles, GI and CI placements), the target, the operation list and the index of the
operation about to run. A journal left behind (failure during rollback, SIGKILL) is found by the next
``migctl apply`` or ``migctl recover``, which rolls the node back to the old layout.

The lock (filelock on ``<state dir>/apply-<node>.lock``) makes applies on one node strictly sequential;
the holder's PID is written next to it so a waiter can say who holds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from migctl.errors import UserError
from migctl.paths import EXIT_LOCKED, LockBusy, atomic_write, state_dir  # noqa: F401  (re-exported)
from migctl.paths import node_lock as _node_lock
from migctl.paths import node_slug as node_key

JOURNAL_FORMAT = "migctl-apply-journal"
JOURNAL_VERSION = 1




def _atomic_write(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data, ".journal-", fsync_dir=True)


class Journal:
    """The journal file of one node."""

    def __init__(self, node: Any, directory: Path | None = None) -> None:
        d = directory or state_dir()
        key = node_key(node)
        self.path = d / f"apply-{key}.journal.json"
        self.last_path = d / f"apply-{key}.last.json"
        self.data: dict[str, Any] = {}
        self.unwritten: str | None = None  # the last write of a best-effort record that failed

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> dict[str, Any] | None:
        """The pending journal, or None. A corrupt journal is an error (never silently ignored)."""
        from migctl.inputs import InputError, load_json, read_text

        if not os.path.lexists(self.path):
            return None
        try:
            data = load_json(read_text(self.path, "apply journal"), str(self.path))
            problem = journal_problem(data)
        except InputError as e:
            problem = str(e)
        if problem is not None:
            raise UserError(f"apply journal {self.path} is unreadable ({problem}); nothing was changed; "
                            "inspect it, then remove it", 2)
        self.data = data
        return data

    def begin(self, label: str, source: str, old: dict[int, dict[str, Any]], target: dict[int, dict[str, Any]],
              ops: list[dict[str, Any]]) -> None:
        self.data = {
            "format": JOURNAL_FORMAT, "version": JOURNAL_VERSION, "pid": os.getpid(), "started": time.time(),
            "label": label, "config": source, "phase": "forward", "next": 0, "error": None,
            "old": {str(k): v for k, v in old.items()}, "target": {str(k): v for k, v in target.items()},
            "ops": ops, "rollback_ops": [],
        }
        try:
            self.write()
        except OSError:  # (e.g. the directory's fsync failed after the rename): no operation ran, no record stays
            with contextlib.suppress(OSError):
                self.path.unlink()
            raise

    def step(self, index: int, phase: str = "forward", ops: list[dict[str, Any]] | None = None) -> None:
        """Record that operation ``index`` of ``phase`` is about to run (fsynced before it runs)."""
        self.data["phase"] = phase
        self.data["next"] = index
        if ops is not None:
            self.data["rollback_ops" if phase == "rollback" else "ops"] = ops
        if phase == "rollback":
            self._best_effort()
        else:
            self.write()  # write-ahead: a forward operation never runs unrecorded

    def fail(self, error: str) -> None:
        self.data["error"] = error
        self.data["phase"] = "rollback"
        self._best_effort()

    def write(self) -> None:
        _atomic_write(self.path, json.dumps(self.data, indent=1, default=str))

    def _best_effort(self) -> None:
        """The rollback's own records. A write that fails (a full disk: often why the apply failed) does not
        stop the rollback, which works from this journal in memory; the record on disk keeps the old layouts,
        written before the first operation ran, and that is all :func:`migctl.reconcile.recover` needs, since
        it plans from the live layout. The error is kept in ``unwritten``."""
        try:
            self.write()
        except OSError as e:
            self.unwritten = str(e)

    def finish(self, outcome: str) -> None:
        """Close the journal: it is kept as ``*.last.json`` for inspection (when the disk takes it)."""
        self.data["phase"] = outcome
        self.data["finished"] = time.time()
        try:
            _atomic_write(self.last_path, json.dumps(self.data, indent=1, default=str))
        except OSError as e:  # the apply or rollback is done: the pending record goes all the same
            self.unwritten = str(e)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._append_history(outcome)

    def _append_history(self, outcome: str, keep: int = 1000) -> None:
        """One line per finished apply in ``*.history.jsonl`` (the exporter counts outcomes from it)."""
        hist = self.path.with_name(self.path.name.replace(".journal.json", ".history.jsonl"))
        line = json.dumps({"finished": self.data.get("finished"), "outcome": outcome, "label": self.data.get("label"),
                           "ops": len(self.data.get("ops") or [])})
        with contextlib.suppress(OSError):
            fd = os.open(str(hist), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as f:
                f.write(line + "\n")
            if hist.stat().st_size > 256 * keep:  # bounded: keep the last ``keep`` lines
                lines = hist.read_text(encoding="utf-8").splitlines()[-keep:]
                _atomic_write(hist, "\n".join(lines) + "\n")

    def old_layouts(self) -> dict[int, dict[str, Any]]:
        return {int(k): v for k, v in self.data.get("old", {}).items()}


def layout_problem(where: str, layout: Any) -> str | None:
    if not isinstance(layout, dict) or not isinstance(layout.get("mig"), bool):
        return f"{where}: expected a layout object with a boolean 'mig'"
    gis = layout.get("gis", [])
    if not isinstance(gis, list):
        return f"{where}.gis: expected a list"
    for n, g in enumerate(gis):
        if not (isinstance(g, dict) and isinstance(g.get("profile"), str) and type(g.get("start")) is int
                and g["start"] >= 0 and isinstance(g.get("cis", []), list)):
            return f"{where}.gis[{n}]: expected {{profile: str, start: int >= 0, cis: list}}"
        for m, c in enumerate(g.get("cis", [])):
            if not (isinstance(c, dict) and isinstance(c.get("profile"), str) and type(c.get("start")) is int
                    and c["start"] >= 0):
                return f"{where}.gis[{n}].cis[{m}]: expected {{profile: str, start: int >= 0}}"
    return None


def journal_problem(data: Any) -> str | None:
    """What is wrong with a journal's content (None when it is a complete, well-formed journal).

    ``recover`` acts on nothing before this passes: a journal that records no GPU, or a layout that is not
    one, would otherwise be "rolled back" to nothing and deleted, leaving the node mid-apply.
    """
    if not isinstance(data, dict) or data.get("format") != JOURNAL_FORMAT:
        return "not a migctl journal"
    if data.get("version") != JOURNAL_VERSION:
        return f"journal version {data.get('version')!r} (this migctl reads version {JOURNAL_VERSION})"
    for key, kind in (("label", str), ("phase", str), ("ops", list)):
        if not isinstance(data.get(key), kind):
            return f"'{key}' missing or not a {kind.__name__}"
    if type(data.get("next")) is not int or data["next"] < 0:
        return "'next' missing or not an integer >= 0"
    for key in ("old", "target"):
        section = data.get(key)
        if not isinstance(section, dict):
            return f"'{key}' missing or not an object of GPU index -> layout"
        for idx, layout in section.items():
            if not (isinstance(idx, str) and idx.isdigit() and len(idx) < 6):
                return f"'{key}' has GPU index {idx!r} (expected a number)"
            problem = layout_problem(f"{key}.{idx}", layout)
            if problem:
                return problem
    if not data["old"]:
        return "'old' records no GPU, so there is nothing to roll back to"
    return None


def node_lock(node: Any, timeout: float | None = None, directory: Path | None = None,
              what: str = "migctl apply/recover") -> contextlib.AbstractContextManager[None]:
    """Hold the node-wide lock (:func:`migctl.paths.node_lock`); wait up to ``timeout`` seconds (None: forever)."""
    return _node_lock(node, timeout, what=what, directory=directory)
