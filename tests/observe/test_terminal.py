"""``migctl top`` and the planner's live status under a real terminal (tmux: start, capture-pane, assert)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.observe.conftest import Env, wait_for

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[tuple[str, str]]:
    exe = shutil.which("tmux")
    assert exe, "tmux not found: run scripts/install-prometheus.sh (scripts/test.sh does, as root)"
    sock = str(tmp_path / "tmux.sock")
    yield exe, sock
    subprocess.run([exe, "-S", sock, "kill-server"], capture_output=True)


def _start(tmux: tuple[str, str], env: Env, args: list[str], name: str) -> None:
    exe, sock = tmux
    envs = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.env.items()
                    if k.startswith("MIGCTL_") or k in ("PYTHONPATH", "PATH", "HOME"))
    cmd = f"env -u COLUMNS -u LINES {envs} TERM=xterm-256color {shlex.quote(sys.executable)} -m migctl.cli.main " + " ".join(
        shlex.quote(a) for a in args) + "; echo EXITED=$?; sleep 60"
    subprocess.run([exe, "-S", sock, "new-session", "-d", "-s", name, "-x", "150", "-y", "50", cmd], check=True,
                   cwd=REPO)


def _screen(tmux: tuple[str, str], name: str) -> str:
    exe, sock = tmux
    return subprocess.run([exe, "-S", sock, "capture-pane", "-p", "-t", name], capture_output=True, text=True).stdout


def _showing(tmux: tuple[str, str], name: str, *needles: str) -> str | None:
    s = _screen(tmux, name)
    return s if all(n in s for n in needles) else None


WORKLOAD = "import time, os, sys\nend = time.time() + 60\nwhile time.time() < end and not os.path.exists(sys.argv[1]): pass\n"


def test_top_live_view_in_tmux(h100x2: Env, tmux: tuple[str, str]) -> None:
    try:
        _top_live_view(h100x2, tmux)
    except AssertionError as e:  # what top showed last, to tell a slow machine from a wrong frame
        raise AssertionError(f"{e}\nlast screen:\n{_screen(tmux, 'top')}") from e


def _top_live_view(h100x2: Env, tmux: tuple[str, str]) -> None:
    h100x2.layout(0, ["3g.40gb", "1g.10gb"])
    _start(tmux, h100x2, ["top"], "top")
    first = wait_for(lambda: _showing(tmux, "top", "GPU 1  H100-80GB", "3g.40gb"), 30, "top's first frame")
    assert "migctl top" in first and "leases 0" in first and "largest free: 7g.80gb" in first
    assert "GPU  GI  CI  profile" in first
    stop_file = h100x2.tmp / "stop"
    job = h100x2.popen("run", "--no-create", "-p", "1g.10gb", "--", sys.executable, "-c", WORKLOAD, str(stop_file))
    try:
        # refreshes every second: the lease, the busy compute slice (#), the client's and the lease holder's
        # PIDs and the activity appear (the lease can be on screen a frame before the client is in NVML)
        def job_row() -> str | None:
            busy = _showing(tmux, "top", "leases 1", "#") or ""
            for row in busy.splitlines():
                cols = row.split()  # GPU GI CI profile memory MiB activity processes lease job
                if "1g.10gb" in row and "MiB" in row and cols[-3].isdigit() and cols[-2].isdigit():
                    return row
            return None

        wait_for(job_row, 30, "the job on screen with its client and lease holder PIDs")
        wait_for(lambda: any("1g.10gb" in ln and "MiB" in ln and "%" in ln and " 0%" not in ln
                             for ln in _screen(tmux, "top").splitlines()), 30, "activity > 0% for the job")
    finally:
        stop_file.write_text("")
        job.wait(60)
    wait_for(lambda: "leases 0" in _screen(tmux, "top"), 30, "lease gone from the screen")
    exe, sock = tmux
    subprocess.run([exe, "-S", sock, "send-keys", "-t", "top", "C-c"], check=True)
    wait_for(lambda: "EXITED=130" in _screen(tmux, "top"), 20, "top to exit on Ctrl-C")


def test_plan_shows_live_status_on_a_terminal(h100x2: Env, tmux: tuple[str, str]) -> None:
    _start(tmux, h100x2, ["plan", str(REPO / "examples" / "workloads.yaml"), "--no-map", "--time-limit", "20"], "plan")
    screen = wait_for(lambda: _showing(tmux, "plan", "EXITED="), 120, "plan to finish")
    assert "EXITED=0" in screen
    status = next(line for line in screen.splitlines() if line.startswith("planning ["))
    assert "best 6" in status and "bound 6" in status and "gap 0.0%" in status and "/ 20s limit" in status


def test_plan_status_is_not_printed_when_piped(h100x2: Env) -> None:
    r = h100x2.migctl("plan", str(REPO / "examples" / "workloads.yaml"), "--no-map")
    assert r.returncode == 0, r.stderr
    assert "planning [" not in r.stderr + r.stdout
