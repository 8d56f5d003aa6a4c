"""Fixtures for the jobs tests: an isolated state dir and a simulated node with MIG enabled."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass
class SimEnv:
    """A simulated node for one test: spec, state file, environment for `migctl` subprocesses."""

    spec: str
    state: Path
    env: dict[str, str]
    tmp: Path

    def node(self) -> Any:
        from migctl.device import open_node

        return open_node(self.spec, str(self.state))

    def migctl(self, *args: str, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "migctl.cli.main", *args], env=self.env, text=True,
                              capture_output=True, timeout=timeout, **kw)

    def popen(self, *args: str, **kw: Any) -> subprocess.Popen[str]:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen([sys.executable, "-m", "migctl.cli.main", *args], env=self.env, text=True, **kw)

    def layout(self, gpu: int, profiles: list[str]) -> list[str]:
        """Create GI + default CI for each profile on ``gpu``; returns the new MIG UUIDs."""
        n = self.node()
        g = n.gpu(gpu)
        out = []
        for name in profiles:
            p = g.profile(name)
            assert p is not None, name
            gi = g.create_gi(p.id)
            ci = gi.create_ci()
            out.append(ci.mig_device().uuid)
        return out


def make_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str) -> SimEnv:
    state_dir = tmp_path / "state"
    state = tmp_path / "sim.json"
    monkeypatch.setenv("MIGCTL_STATE_DIR", str(state_dir))
    monkeypatch.setenv("MIGCTL_SIM", spec)
    monkeypatch.setenv("MIGCTL_SIM_STATE", str(state))
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    se = SimEnv(spec=spec, state=state, env=env, tmp=tmp_path)
    n = se.node()
    for g in n.gpus():
        g.set_mig_mode(True)
    return se


@pytest.fixture
def a30(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimEnv]:
    """One A30 (4 memory slices), MIG enabled, no instances."""
    yield make_env(tmp_path, monkeypatch, "1xA30")


@pytest.fixture
def h100x8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimEnv]:
    """Eight H100-80GB, MIG enabled, no instances."""
    yield make_env(tmp_path, monkeypatch, "8xH100-80GB")


def wait_for(pred: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
