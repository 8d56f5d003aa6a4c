"""Fixtures for apply tests: isolated state dir, in-memory simulated nodes, live clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("MIGCTL_STATE_DIR", str(tmp_path / "state"))
    for var in ("MIGCTL_SIM", "MIGCTL_SIM_STATE", "MIGCTL_SIM_CRASH_AT", "MIGCTL_BACKEND"):
        monkeypatch.delenv(var, raising=False)
    yield
    import migctl.sim as sim

    sim.uninstall()


@pytest.fixture
def mknode():
    """``mknode("4xH100-80GB")`` -> (node, simnode), in memory."""
    import migctl.sim as sim
    from migctl.device import open_node

    def make(spec: str, state_path: Path | None = None):
        s = sim.install(spec, state_path=state_path)
        return open_node(spec, str(state_path) if state_path else None), s

    return make


