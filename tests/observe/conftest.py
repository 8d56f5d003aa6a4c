"""Fixtures for the observe tests: a simulated node in its own state dir, migctl subprocesses, servers."""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from simenv import SimNode, make_sim
from simenv import wait_for as _wait_for


class Env(SimNode):
    """A simulated node for one test (tests/simenv.py); ``layout`` returns [(GI id, MIG UUID)]."""

    def layout(self, gpu: int, profiles: list[str]) -> list[tuple[int, str]]:
        """GI + default CI for each profile on ``gpu``; returns [(gi id, MIG UUID)]."""
        return self.create(gpu, profiles)


def make_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str, mig: bool = True) -> Env:
    return make_sim(tmp_path, monkeypatch, spec, mig, cls=Env)


@pytest.fixture
def h100x2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    yield make_env(tmp_path, monkeypatch, "2xH100-80GB")


def wait_for(pred: Callable[[], Any], timeout: float = 60.0, what: str = "condition", step: float = 0.1) -> Any:
    return _wait_for(pred, timeout=timeout, what=what, step=step, retry_errors=True)  # a server still starting


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
