"""Suite-wide isolation: every test session gets its own migctl state dir and no inherited sim settings;
fixtures shared by several test directories."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_state_dir():
    saved = {k: os.environ.get(k) for k in ("MIGCTL_STATE_DIR", "MIGCTL_SIM", "MIGCTL_SIM_STATE", "MIGCTL_BACKEND")}
    with tempfile.TemporaryDirectory(prefix="migctl-test-") as d:
        os.environ["MIGCTL_STATE_DIR"] = d
        for k in ("MIGCTL_SIM", "MIGCTL_SIM_STATE", "MIGCTL_BACKEND"):
            os.environ.pop(k, None)
        yield d
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def client() -> Iterator[Callable[[float], subprocess.Popen]]:
    """A real process to register as a GPU client: ``client(seconds)`` -> Popen (killed after the test)."""
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
