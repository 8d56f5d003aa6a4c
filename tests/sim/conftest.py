"""Fixtures for the simulator tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import migctl.sim as sim
from migctl.device import open_node


@pytest.fixture
def node_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    """``node_factory(spec, persistent=False)``: install the simulator for ``spec`` in this process (state in
    memory, or in the state dir with ``persistent``) and open its node; uninstalled after the test."""
    monkeypatch.setenv("MIGCTL_STATE_DIR", str(tmp_path))
    for var in ("MIGCTL_SIM", "MIGCTL_SIM_STATE", "MIGCTL_BACKEND"):
        monkeypatch.delenv(var, raising=False)

    def make(spec: str, persistent: bool = False) -> Any:
        sim.install(spec, state_path=True if persistent else None)
        return open_node(spec)

    yield make
    sim.uninstall()
