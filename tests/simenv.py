"""One simulated node per test, shared by the jobs, bench and observe conftests (and any test that wants
`migctl` on a simulated node): its own state dir and simulator state file, `migctl` as a subprocess
(the process boundary is what those tests are about), in-process access through the device layer.

`make_sim(tmp_path, monkeypatch, spec)` points this process's environment at the node (MIGCTL_STATE_DIR,
MIGCTL_SIM, MIGCTL_SIM_STATE; undone by monkeypatch after the test), snapshots the environment for the
subprocesses (this tree's src first on PYTHONPATH) and enables MIG mode on every GPU unless ``mig=False``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")


@dataclass
class SimNode:
    """A simulated node for one test: spec, state file, environment for `migctl` subprocesses."""

    spec: str
    state: Path
    env: dict[str, str]
    tmp: Path
    timeout: float = 60  # default bound of one `migctl` call, seconds

    def node(self) -> Any:
        from migctl.device import open_node

        return open_node(self.spec, str(self.state))

    def migctl(self, *args: str, timeout: float | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "migctl.cli.main", *args], env=self.env, text=True,
                              capture_output=True, timeout=self.timeout if timeout is None else timeout, **kw)

    def popen(self, *args: str, **kw: Any) -> subprocess.Popen[str]:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("preexec_fn", default_interrupts)
        return subprocess.Popen([sys.executable, "-m", "migctl.cli.main", *args], env=self.env, text=True, **kw)

    def create(self, gpu: int, profiles: list[str]) -> list[tuple[int, str]]:
        """A GPU instance and its default compute instance for each profile on ``gpu``: [(GI id, MIG UUID)]."""
        g = self.node().gpu(gpu)
        out = []
        for name in profiles:
            p = g.profile(name)
            assert p is not None, name
            gi = g.create_gi(p.id)
            ci = gi.create_ci()
            out.append((gi.id, ci.mig_device().uuid))
        return out

    def live_layout(self, gpu: int = 0) -> dict[str, Any]:
        """The GPU's live layout as the reconciler reads it."""
        from migctl.reconcile.live import read_gpu

        return read_gpu(self.node().gpu(gpu)).layout()

    def uuids(self, gpu: int = 0) -> list[str]:
        return sorted(d.uuid for d in self.node().gpu(gpu).mig_devices())


S = TypeVar("S", bound=SimNode)


def default_interrupts() -> None:
    """In a child before exec: SIGINT and SIGQUIT back to their defaults, as in a user's terminal. A suite
    started as a background job (``scripts/test.sh &``) inherits them ignored, and a Python started with
    SIGINT ignored installs no KeyboardInterrupt handler, so the Ctrl-C tests would wait forever."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def make_sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str, mig: bool = True,
             cls: type[S] = SimNode, **kw: Any) -> S:  # type: ignore[assignment]  # (mypy: TypeVar default)
    state_dir = tmp_path / "state"
    state = tmp_path / "sim.json"
    monkeypatch.setenv("MIGCTL_STATE_DIR", str(state_dir))
    monkeypatch.setenv("MIGCTL_SIM", spec)
    monkeypatch.setenv("MIGCTL_SIM_STATE", str(state))
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    sim = cls(spec=spec, state=state, env=env, tmp=tmp_path, **kw)
    if mig:
        for g in sim.node().gpus():
            g.set_mig_mode(True)
    return sim


def wait_for(pred: Callable[[], Any], timeout: float = 60.0, what: str = "condition", step: float = 0.02,
             retry_errors: bool = False) -> Any:
    """Poll ``pred`` every ``step`` seconds until it returns something true (returned); AssertionError after
    ``timeout``. With ``retry_errors`` an exception from ``pred`` (a server still starting) counts as not yet."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if retry_errors:
            try:
                last = pred()
            except Exception as e:  # noqa: BLE001 - reported in the timeout message
                last = e
        else:
            last = pred()
        if last and not isinstance(last, Exception):
            return last
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def kill_left(procs: list[subprocess.Popen[str]], timeout: float = 20.0) -> None:
    """SIGKILL and reap whichever of ``procs`` still run (a test's cleanup after a failure)."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(timeout)


def stop_daemons_under(root: str) -> None:
    """SIGKILL the stand-in MPS control daemons whose pipe directory is under ``root`` (left by a test that failed
    before its clients ended: a passing test leaves none, and several tests check that)."""
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        try:
            if "migctl.sim.mps_control" in " ".join(p.info["cmdline"] or []) and \
                    p.environ().get("CUDA_MPS_PIPE_DIRECTORY", "").startswith(root + "/"):
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
