"""``migctl`` (run()) builds only the named command's click tree: it must answer exactly as the whole tree does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from migctl.cli import main as M


def _verbs() -> list[list[str]]:
    from typer.main import get_command_name

    out: list[list[str]] = []
    for c in M.app.registered_commands:
        assert c.callback is not None
        out.append([c.name or get_command_name(c.callback.__name__)])
    for g in M.app.registered_groups:
        assert g.name and g.typer_instance is not None
        out.append([g.name])
        group = typer.main.get_command(g.typer_instance)
        out.extend([g.name, sub] for sub in getattr(group, "commands", {}))
    return out


VERBS = _verbs()


def _answer(capsys: pytest.CaptureFixture[str], argv: list[str], one: bool) -> tuple[int, str, str]:
    rc = M.main(argv, one_command=one)
    out, err = capsys.readouterr()
    return rc, out, err


def test_every_verb_is_found() -> None:
    assert len(VERBS) > 40 and ["gpus"] in VERBS and ["gi", "create"] in VERBS
    for words in VERBS:
        if len(words) == 1:
            assert M._verb_command(words[0]) is not None, words
    for unknown in ("nope", "gpu"):
        assert M._verb_command(unknown) is None
    # the verb is the first word after the root's options and their values, whatever their order and form
    for args in (["--sim", "1xA30", "gpus"], ["--sim=1xA30", "gpus"], ["--sim=1xA30", "--sim-state", "jobs", "gpus"],
                 ["--sim-state", "jobs", "--sim=1xA30", "gpus"], ["gpus", "--sim", "1xA30"]):
        assert M.split_global_options(args)[1][0] == "gpus", args


@pytest.mark.parametrize("tail", [["--help"], ["--no-such-option"], []], ids=["help", "bad-option", "bare"])
def test_one_command_answers_as_the_whole_tree(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, tail: list[str]) -> None:
    monkeypatch.setenv("MIGCTL_STATE_DIR", str(tmp_path))
    checked = 0
    for words in VERBS:
        if not tail and (len(words) == 2 or words[0] not in {g.name for g in M.app.registered_groups}):
            continue  # bare: only the groups (a bare command would run)
        argv = [*words, *tail]
        assert _answer(capsys, argv, True) == _answer(capsys, argv, False), argv
        checked += 1
    assert checked >= 5


def test_the_entry_point_uses_it(tmp_path: Path) -> None:
    """`python -m migctl.cli.main gpus` (run()) lists GPUs, and builds only the gpus command."""
    env = {**os.environ, "MIGCTL_STATE_DIR": str(tmp_path), "MIGCTL_SIM": "1xA30"}
    code = ("import sys\nfrom migctl.cli import main as M\nbuilt = []\norig = M.typer.main.get_command\n"
            "M.typer.main.get_command = lambda a: built.append(len(a.registered_commands)) or orig(a)\n"
            "try:\n    M.run()\nexcept SystemExit as e:\n    print('rc', e.code, 'built', built)\n")
    r = subprocess.run([sys.executable, "-c", code, "gpus"], env=env, capture_output=True, text=True, timeout=60)
    assert "NVIDIA A30" in r.stdout and r.stdout.rstrip().endswith("rc 0 built [1]"), (r.stdout, r.stderr)
