"""Fixtures for CLI tests: run ``migctl`` in-process through its real entry point, state in tmp_path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cli_helpers import H100, Result

Runner = Callable[..., Result]


@pytest.fixture
def cli(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Runner]:
    """``cli(*args, sim=SPEC)`` runs ``migctl --sim SPEC args...`` via ``migctl.cli.main.main``.

    State persists across calls inside one test (MIGCTL_STATE_DIR = tmp_path) and never between tests.
    """
    from migctl import sim as simmod
    from migctl.cli.main import main

    monkeypatch.setenv("MIGCTL_STATE_DIR", str(tmp_path))
    for k in ("MIGCTL_SIM", "MIGCTL_SIM_STATE", "MIGCTL_BACKEND", "MIGCTL_SIM_CRASH_AT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("COLUMNS", "250")  # wide tables: no wrapping in captured output
    simmod.uninstall()  # an installed node would keep pointing at another test's state file

    def run(*args: str, sim: str | None = H100) -> Result:
        capsys.readouterr()
        argv = (["--sim", sim] if sim else []) + [str(a) for a in args]
        code = main(argv)
        cap = capsys.readouterr()
        return Result(code, cap.out, cap.err)

    yield run
    simmod.uninstall()
