"""Shared CLI plumbing: the node the command runs against, JSON/console output, error reporting."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

import typer

# Notes that a state-changing command ran on a simulated node, printed by main() when the command ends.
SIM_NOTES: list[str] = []


@dataclass
class CliState:
    """Global options (``--sim``, ``--sim-state``) and the lazily opened node."""

    sim: str | None = None
    sim_state: str | None = None
    _node: Any = field(default=None, repr=False)

    def node(self) -> Any:
        if self._node is None:
            from migctl.device import open_node

            self._node = open_node(self.sim, self.sim_state)
            # state-changing commands on a simulated node say so on stderr (issue 8, item 2); main() prints it
            # when the command ends (appended to the error line when it fails, so errors stay one line)
            self._node.on_simulated_change = SIM_NOTES.append
        return self._node


def state(ctx: typer.Context) -> CliState:
    obj = ctx.find_root().obj
    if not isinstance(obj, CliState):
        obj = CliState()
        ctx.find_root().obj = obj
    return obj


def node(ctx: typer.Context) -> Any:
    """The device-layer :class:`~migctl.device.Node` for this invocation."""
    return state(ctx).node()


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> None:
    """Raise a user error: one line on stderr, exit ``code``."""
    from migctl.errors import UserError

    raise UserError(message, code)


# ------------------------------------------------------------------------------------------ option checks
MAX_SECONDS = 10_000_000.0  # about 115 days: any wait or timeout beyond this is a typo
MAX_ID = (1 << 63) - 1  # SQLite INTEGER


def seconds(value: float | None) -> float | None:
    """Typer callback: a finite number of seconds from 0 to :data:`MAX_SECONDS` (nan, inf, negatives refused)."""
    import math

    if value is not None and not (math.isfinite(value) and 0 <= value <= MAX_SECONDS):
        raise typer.BadParameter(f"{value} is not a number of seconds (valid: 0 to {MAX_SECONDS:.0f})")
    return value


def positive_seconds(value: float | None) -> float | None:
    """Typer callback: like :func:`seconds` but > 0 (a poll interval)."""
    seconds(value)
    if value is not None and value <= 0:
        raise typer.BadParameter(f"{value} is not a positive number of seconds (valid: > 0 to {MAX_SECONDS:.0f})")
    return value


def job_ids(value: Any) -> Any:
    """Typer callback: job IDs (one or a list) from 1 to 2^63-1."""
    for v in value if isinstance(value, (list, tuple)) else [value]:
        if v is not None and not 1 <= v <= MAX_ID:
            raise typer.BadParameter(f"{v} is not a job ID (valid: 1 to {MAX_ID})")
    return value


def int_range(lo: int, hi: int, what: str) -> Any:
    """A Typer callback accepting integers from ``lo`` to ``hi``."""

    def check(value: int | None) -> int | None:
        if value is not None and not lo <= value <= hi:
            raise typer.BadParameter(f"{value} is out of range for {what} (valid: {lo} to {hi})")
        return value

    return check


def command_words(cmd: list[str] | None, verb: str) -> list[str]:
    """The CMD of ``run``, ``submit`` and ``bench`` (parsed with unknown options kept as arguments, so that
    CMD's own options pass through): a first word that is an option is one of ours mistyped, not a program
    (``submit --tme-limit 5m -- job`` queued the command ``--tme-limit 5m -- job``), and an empty word is no
    program either."""
    words = list(cmd or [])
    if words and words[0].startswith("-") and words[0] != "-":
        from migctl.inputs import printable

        fail(f"no such option: {printable(words[0])} (see 'migctl {verb} --help'; the command goes after --)")
    if words and not words[0].strip():
        fail(f"the command is empty; usage: migctl {verb} [OPTIONS] -- CMD [ARGS...]")
    return words
