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
