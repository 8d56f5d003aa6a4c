"""Fixtures for the Kubernetes tests: an isolated simulated node and the drop-in nvidia-mig-parted."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPAT = ROOT / "tests" / "fixtures" / "compat" / "mig-parted"


@dataclass
class Run:
    rc: int
    out: str
    err: str


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("MIGCTL_STATE_DIR", str(tmp_path / "state"))
    for var in [v for v in os.environ if v.startswith("MIG_PARTED_")] + [
            "MIGCTL_SIM", "MIGCTL_SIM_STATE", "MIGCTL_SIM_CRASH_AT", "MIGCTL_BACKEND", "KUBECONFIG"]:
        monkeypatch.delenv(var, raising=False)
    saved = dict(os.environ)
    yield
    import migctl.sim as sim

    sim.uninstall()
    if dict(os.environ) != saved:  # nothing a test runs may leave the environment changed
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def simnode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Path]:
    """``simnode("2xH100-80GB")``: make that the node of this test (a state file); returns the file."""

    def make(spec: str) -> Path:
        state = tmp_path / f"sim-{spec}.json"
        monkeypatch.setenv("MIGCTL_SIM", spec)
        monkeypatch.setenv("MIGCTL_SIM_STATE", str(state))
        return state

    return make


@pytest.fixture
def parted() -> Callable[..., Run]:
    """Run the drop-in in this process: ``parted("-d", "apply", "-f", F, "-c", L)`` -> Run."""
    from migctl.parted import main

    def call(*argv: str) -> Run:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(list(argv))
        return Run(rc, out.getvalue(), err.getvalue())

    return call


def parted_proc(*argv: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the drop-in as its own process (``python -m migctl.parted``, what the console script runs)."""
    full = {**os.environ, **(env or {})}
    full["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + full.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "migctl.parted", *argv], env=full, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Any]:
    """A started stand-in API server holding the operator's default ConfigMap."""
    from tests.k8s.apiserver import ApiServer
    from tests.k8s.cluster import CM, NS, operator_config

    s = ApiServer().start()
    s.put("configmaps", {"metadata": {"name": CM, "namespace": NS}, "data": {"config.yaml": operator_config()}})
    yield s
    s.stop()


