"""Fixtures for the observe tests: a simulated node in its own state dir, migctl subprocesses, servers."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")


@dataclass
class Env:
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

    def layout(self, gpu: int, profiles: list[str]) -> list[tuple[int, str]]:
        """GI + default CI for each profile on ``gpu``; returns [(gi id, MIG UUID)]."""
        g = self.node().gpu(gpu)
        out = []
        for name in profiles:
            p = g.profile(name)
            assert p is not None, name
            gi = g.create_gi(p.id)
            ci = gi.create_ci()
            out.append((gi.id, ci.mig_device().uuid))
        return out


def make_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str, mig: bool = True) -> Env:
    state_dir = tmp_path / "state"
    state = tmp_path / "sim.json"
    monkeypatch.setenv("MIGCTL_STATE_DIR", str(state_dir))
    monkeypatch.setenv("MIGCTL_SIM", spec)
    monkeypatch.setenv("MIGCTL_SIM_STATE", str(state))
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    e = Env(spec=spec, state=state, env=env, tmp=tmp_path)
    if mig:
        for g in e.node().gpus():
            g.set_mig_mode(True)
    return e


@pytest.fixture
def h100x2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    yield make_env(tmp_path, monkeypatch, "2xH100-80GB")


def wait_for(pred: Callable[[], Any], timeout: float = 20.0, what: str = "condition", step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except Exception as e:  # a server still starting
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_exporter(env: Env, *extra: str) -> tuple[subprocess.Popen[str], int]:
    """``migctl exporter --listen 127.0.0.1:0``; returns the process and the port it printed."""
    p = env.popen("exporter", "--listen", "127.0.0.1:0", *extra)
    assert p.stderr is not None
    line = p.stderr.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line)
    if not m:
        p.kill()
        raise AssertionError(f"exporter did not start: {line!r} {p.stderr.read()}")
    return p, int(m.group(1))


def stop(p: subprocess.Popen[str]) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
