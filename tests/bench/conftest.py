"""Fixtures for the bench tests: an isolated state dir and a simulated node; `migctl` as a subprocess."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simenv import ROOT, SimNode
from simenv import make_sim as _make

WORKLOAD = ROOT / "examples" / "bench_workload.py"


class Sim(SimNode):
    """A simulated node for one test (tests/simenv.py); `migctl` calls bounded by 120 s (bench runs)."""

    def layout(self, gpu: int = 0) -> dict[str, Any]:
        return self.live_layout(gpu)


def make_sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str, mig: bool = True) -> Sim:
    return _make(tmp_path, monkeypatch, spec, mig, cls=Sim, timeout=120)


@pytest.fixture
def h100(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sim]:
    """One H100-80GB, MIG enabled, no instances."""
    yield make_sim(tmp_path, monkeypatch, "1xH100-80GB")


@pytest.fixture
def a100x4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sim]:
    """Four A100-80GB, MIG enabled, no instances."""
    yield make_sim(tmp_path, monkeypatch, "4xA100-80GB")
