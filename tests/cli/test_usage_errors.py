"""Usage errors (missing argument, unknown command) are one clear message and exit 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("argv", [["validate"], ["gi", "create"], ["nonsense"], ["apply"], ["plan"]])
def test_usage_error_exit_2_without_traceback(argv, tmp_path):
    env = {**os.environ, "MIGCTL_STATE_DIR": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "migctl", *argv], capture_output=True, text=True, env=env)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("migctl: error: ") and "--help" in lines[0], r.stderr


@pytest.mark.parametrize("argv", [[], ["gi"], ["ci"], ["k8s"], ["slurm"]])
def test_bare_group_shows_its_help(argv, tmp_path):
    """`migctl gi` alone (or `migctl`) shows the group's usage and commands, readable, and exits 2 as click
    does; before, the help came as one error line with its newlines escaped."""
    env = {**os.environ, "MIGCTL_STATE_DIR": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "migctl", *argv], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == f"Usage: {' '.join(['migctl', *argv])} [OPTIONS] COMMAND [ARGS]...", r.stderr
    assert "Commands:" in lines and "\\n" not in r.stderr and "migctl: error" not in r.stderr
