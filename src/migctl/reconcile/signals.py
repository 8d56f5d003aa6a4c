"""Signals around an apply: a stop request mid-apply rolls back, and the rollback is not cut in two.

* While the forward operations run, SIGTERM raises :class:`KeyboardInterrupt` as Ctrl-C (SIGINT) does, so
  ``systemctl stop``, ``kill`` or a terminal closing lead to the same rollback as Ctrl-C. Only where nobody
  else handles SIGTERM (its handler is the default): a process that handles it itself (the Kubernetes
  agent sets a stop flag and lets the apply finish) keeps its own way.
* While the rollback runs, SIGINT and SIGTERM are held: a second Ctrl-C must not stop the rollback
  half way. They are noted: a process's own handler (the Kubernetes agent's stop flag) gets them once the
  rollback is done, and otherwise the caller reports the interruption.

Signal handlers can only be set in the main thread; elsewhere both are no-ops.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def term_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt inside the block (when its handler is the default)."""
    if not _main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def held() -> Iterator[list[int]]:
    """SIGINT and SIGTERM are noted, not acted on, inside the block; yields the list of those that came. After
    it, a noted signal is delivered again to a handler of the process's own (not Python's default ones) and
    taken off the list: what stays on it is for the caller to act on."""
    came: list[int] = []
    if not _main_thread():
        yield came
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, lambda signum, frame: came.append(signum))
    try:
        yield came
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for s in list(dict.fromkeys(came)):
            h = old[s]
            if callable(h) and h is not signal.default_int_handler and h is not _raise_interrupt:
                came[:] = [x for x in came if x != s]
                signal.raise_signal(s)
