"""Fixtures for the jobs tests: an isolated state dir and a simulated node with MIG enabled."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from simenv import SimNode, make_sim, stop_daemons_under, wait_for

__all__ = ["SimEnv", "make_env", "stop_daemons_under", "wait_for"]


class SimEnv(SimNode):
    """A simulated node for one test (tests/simenv.py); ``layout`` returns the new MIG UUIDs."""

    def layout(self, gpu: int, profiles: list[str]) -> list[str]:
        """Create GI + default CI for each profile on ``gpu``; returns the new MIG UUIDs."""
        return [uuid for _, uuid in self.create(gpu, profiles)]


def make_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str) -> SimEnv:
    return make_sim(tmp_path, monkeypatch, spec, cls=SimEnv)


@pytest.fixture
def a30(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimEnv]:
    """One A30 (4 memory slices), MIG enabled, no instances."""
    yield make_env(tmp_path, monkeypatch, "1xA30")


@pytest.fixture
def h100x8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimEnv]:
    """Eight H100-80GB, MIG enabled, no instances."""
    yield make_env(tmp_path, monkeypatch, "8xH100-80GB")


@pytest.fixture
def shared(a30: SimEnv, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimEnv]:
    """The A30 node with a short state dir, for the CLI and this process (the MPS control socket's path must
    stay short)."""
    short = tempfile.mkdtemp(prefix="mig")
    a30.env["MIGCTL_STATE_DIR"] = short
    monkeypatch.setenv("MIGCTL_STATE_DIR", short)
    yield a30
    stop_daemons_under(short)
    shutil.rmtree(short, ignore_errors=True)

