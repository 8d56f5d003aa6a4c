"""Fixtures for apply tests: isolated state dir, in-memory simulated nodes, live clients."""

from __future__ import annotations

import subprocess
import sys
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


@pytest.fixture
def client() -> Iterator:
    """Start a real process to act as a GPU client: ``client(seconds)`` -> Popen."""
    procs: list[subprocess.Popen] = []

    def start(seconds: float = 60) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
