"""Fixtures for the bench tests: an isolated state dir and a simulated node; `migctl` as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKLOAD = ROOT / "examples" / "bench_workload.py"


@dataclass
class Sim:
    spec: str
    state: Path
    env: dict[str, str]
    tmp: Path

    def node(self) -> Any:
        from migctl.device import open_node

        return open_node(self.spec, str(self.state))

    def migctl(self, *args: str, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "migctl.cli.main", *args], env=self.env, text=True,
                              capture_output=True, timeout=timeout, **kw)

    def popen(self, *args: str, **kw: Any) -> subprocess.Popen[str]:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen([sys.executable, "-m", "migctl.cli.main", *args], env=self.env, text=True, **kw)

    def layout(self, gpu: int = 0) -> dict[str, Any]:
        from migctl.reconcile.live import read_gpu

        n = self.node()
        return read_gpu(n.gpu(gpu)).layout()

    def uuids(self, gpu: int = 0) -> list[str]:
        return sorted(d.uuid for d in self.node().gpu(gpu).mig_devices())


def make_sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str, mig: bool = True) -> Sim:
    state_dir = tmp_path / "state"
    state = tmp_path / "sim.json"
    monkeypatch.setenv("MIGCTL_STATE_DIR", str(state_dir))
    monkeypatch.setenv("MIGCTL_SIM", spec)
    monkeypatch.setenv("MIGCTL_SIM_STATE", str(state))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    sim = Sim(spec=spec, state=state, env=env, tmp=tmp_path)
    if mig:
        for g in sim.node().gpus():
            g.set_mig_mode(True)
    return sim


@pytest.fixture
def h100(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sim]:
    """One H100-80GB, MIG enabled, no instances."""
    yield make_sim(tmp_path, monkeypatch, "1xH100-80GB")


@pytest.fixture
def a100x4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sim]:
    """Four A100-80GB, MIG enabled, no instances."""
    yield make_sim(tmp_path, monkeypatch, "4xA100-80GB")
