"""Where a simulated node's state lives between invocations, and safe concurrent access to it.

The state file is JSON in the user state dir (``$MIGCTL_SIM_STATE`` or ``--sim-state`` overrides it).
Every mutating NVML call is a read-modify-write under an exclusive file lock, and the file is replaced
atomically, so concurrent invocations never lose an update and a crash never leaves half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

from migctl.paths import atomic_write
from migctl.paths import state_dir as default_state_dir
from migctl.sim.spec import NodeSpec
from migctl.sim.state import SimState
from migctl.sim.validate import StateContentError


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


class StateFileError(RuntimeError):
    """The state file is corrupt, foreign, or belongs to another spec."""


def default_state_path(spec: NodeSpec) -> Path:
    """One state file per spec, so ``--sim 8xH100-80GB`` and ``--sim 4xA30`` are separate nodes."""
    key = str(spec)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)[:60]
    return default_state_dir() / "sim" / f"{safe}-{digest}.json"


class Store:
    """State of one simulated node: in memory (``path=None``) or in a locked JSON file."""

    def __init__(self, spec: NodeSpec, path: Path | None, create_parent: bool = True) -> None:
        self.spec = spec
        self._checked: dict[bytes, None] = {}  # digests of contents this process checked (or wrote), oldest first
        self.path = path
        self._mem: SimState | None = None
        self._cache: tuple[tuple[int, int, int], SimState] | None = None
        self._tlock = threading.RLock()
        self._depth = 0
        self._flock = None
        if path is not None:
            from filelock import FileLock

            if path.exists() and not path.is_file():
                raise StateFileError(f"simulator state file {path} is not a regular file; "
                                     "give a file path (--sim-state/MIGCTL_SIM_STATE)")
            if create_parent:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            elif not path.parent.is_dir():
                raise StateFileError(f"simulator state file {path}: directory {path.parent} does not exist "
                                     "(create it first; migctl creates only its own state dir)")
            self._flock = FileLock(str(path) + ".lock", mode=0o600)

    # ---------------------------------------------------------------- reading
    def _fresh(self) -> SimState:
        return SimState.new(self.spec.models, self.spec.driver, str(self.spec), behaviour=self.spec.behaviour)

    def _read_file(self) -> SimState:
        assert self.path is not None
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._create()
            st = self.path.stat()
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._cache and self._cache[0] == key:
            return self._cache[1]
        try:
            from migctl.inputs import InputError, read_text

            try:
                text = read_text(self.path, "simulator state file")
                data = json.loads(text)
            except InputError as e:
                raise StateFileError(str(e)) from None
            except RecursionError:
                raise StateFileError(f"simulator state file {self.path} is corrupt (nested too deeply)") from None
            digest = _digest(text)
            state = SimState.from_json(data, checked=digest in self._checked)
            self._remember(digest)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StateFileError(
                f"simulator state file {self.path} is corrupt ({e.__class__.__name__}: {e}); "
                "remove it (migctl sim reset-state) to start from a fresh node"
            ) from None
        except StateContentError as e:
            raise StateFileError(
                f"simulator state file {self.path} is damaged ({e}); "
                "remove it (migctl sim reset-state) to start from a fresh node"
            ) from None
        except (ValueError, KeyError, TypeError) as e:
            raise StateFileError(
                f"{self.path} is not a migctl simulator state file ({e}); point MIGCTL_SIM_STATE elsewhere or remove it"
            ) from None
        if state.spec != str(self.spec):
            raise StateFileError(
                f"simulator state file {self.path} holds node {state.spec}, not {self.spec}; "
                "use the matching --sim spec or another state file"
            )
        models = tuple(g.model + ("" if g.mig_supported else "~nomig") for g in state.gpus)
        if state.driver != self.spec.driver or models != self.spec.models:
            raise StateFileError(
                f"simulator state file {self.path} is damaged (its GPUs or driver differ from its node "
                f"{state.spec}); remove it (migctl sim reset-state) to start from a fresh node"
            )
        self._cache = (key, state)
        return state

    def _remember(self, digest: bytes, keep: int = 64) -> None:
        self._checked.pop(digest, None)
        self._checked[digest] = None
        while len(self._checked) > keep:
            del self._checked[next(iter(self._checked))]

    def _create(self) -> None:
        """Write a fresh node on first use, so its UUIDs and serials are the same for every reader."""
        assert self._flock is not None and self.path is not None
        with self._flock.acquire(poll_interval=0.002):
            if not self.path.exists():
                self._write(self._fresh())

    def load(self) -> SimState:
        """The current state (a snapshot; mutate only inside :meth:`transaction`)."""
        with self._tlock:
            if self.path is None:
                if self._mem is None:
                    self._mem = self._fresh()
                return self._mem
            if self._depth:
                assert self._txn_state is not None
                return self._txn_state
            return self._read_file()

    # ---------------------------------------------------------------- writing
    _txn_state: SimState | None = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[SimState]:
        """Exclusive read-modify-write of the state; nested calls join the outer transaction."""
        with self._tlock:
            if self.path is None:
                yield self.load()
                return
            if self._depth:
                self._depth += 1
                try:
                    assert self._txn_state is not None
                    yield self._txn_state
                finally:
                    self._depth -= 1
                return
            assert self._flock is not None
            with self._flock.acquire(poll_interval=0.002):
                self._cache = None
                state = self._read_file()
                self._txn_state = state
                self._depth = 1
                try:
                    yield state
                    self._write(state)
                finally:
                    self._depth = 0
                    self._txn_state = None

    def _write(self, state: SimState) -> None:
        assert self.path is not None
        from migctl.sim import validate
        from migctl.sim.state import BEHAVIOURS

        doc = state.to_json()
        try:  # what the next reader would refuse is never written (the transaction leaves the file as it was)
            validate.check_fields({k: v for k, v in doc.items() if k not in ("format", "version")}, SimState, "state")
            validate.check(state, BEHAVIOURS)
        except StateContentError as e:
            raise StateFileError(f"refusing to write simulator state {self.path}: {e}; nothing was changed") from None
        # one line: json's C encoder (an indent makes it fall back to the pure-Python one, several times slower)
        data = json.dumps(doc, sort_keys=True)
        self._remember(_digest(data))  # the next read of this content need not check it again
        # No fsync: the simulated driver's state need not outlive a crash of the operating system, and on a
        # busy disk an fsync can take seconds, which would stall every mutating simulated NVML call. The
        # rename keeps the write atomic for other processes and for a killed writer.
        atomic_write(self.path, data, ".state-", fsync=False)
        self._cache = None

    def reset(self) -> None:
        """Forget the node (fresh GPUs, new UUIDs)."""
        with self._tlock:
            self._mem = None
            if self.path is not None:
                assert self._flock is not None
                with self._flock:
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
                    self._cache = None
