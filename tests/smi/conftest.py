"""Fixtures for the nvidia-smi compatibility tests: a CLI runner on a fresh simulated node."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import migctl.sim as sim  # noqa: E402
from migctl.cli.main import main  # noqa: E402

SmiRunner = Callable[..., tuple[int, str]]


@pytest.fixture
def smi_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[SmiRunner]:
    """``run(spec, *words)`` runs ``migctl --sim SPEC smi WORDS`` through the real entry point; (exit, output).

    The output is stdout, where nvidia-smi (and so ``migctl smi``) writes everything; migctl's own lines on
    stderr (a simulated-node note, ``migctl: error: ...``) are not part of it. When stdout is empty, stderr is
    returned instead, so that a migctl error is visible in a failing test.
    """
    monkeypatch.delenv("MIGCTL_SIM", raising=False)
    monkeypatch.delenv("MIGCTL_SIM_STATE", raising=False)
    monkeypatch.delenv("MIGCTL_BACKEND", raising=False)
    monkeypatch.setenv("MIGCTL_STATE_DIR", str(tmp_path))

    def run(spec: str, *words: str) -> tuple[int, str]:
        state = tmp_path / (spec.replace("@", "_").replace(",", "_") + ".json")
        capsys.readouterr()
        code = main(["--sim", spec, "--sim-state", str(state), "smi", *words])
        captured = capsys.readouterr()
        return code, captured.out or captured.err

    yield run
    sim.uninstall()
