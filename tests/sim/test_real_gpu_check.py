"""scripts/real-gpu-check, dry-run on a simulated node (MIGCTL_BACKEND=sim): every read-only migctl verb it
records answers, and it changes nothing on the node it reads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import migctl.sim as sim
from migctl.device import open_node

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "real-gpu-check"


def test_dry_run_reads_every_verb_and_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGCTL_STATE_DIR", str(tmp_path))
    state = tmp_path / "node.json"
    sim.install("1xH200-141GB", state_path=state)
    g = open_node("1xH200-141GB", str(state)).gpu(0)
    g.set_mig_mode(True)
    g.create_gi(9).create_ci()  # a 3g instance: export, checkpoint and gres have something to show
    sim.uninstall()
    before = state.read_bytes()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGCTL_")}
    env.update(MIGCTL_BACKEND="sim", MIGCTL_SIM="1xH200-141GB", MIGCTL_SIM_STATE=str(state), TMPDIR=str(tmp_path),
               PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}")
    out = tmp_path / "out"
    r = subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert state.read_bytes() == before
    rows = {line.split()[0]: line.split()[1] for line in (out / "summary.txt").read_text().splitlines()
            if " rc=" in line}
    migctl_rows = {k: v for k, v in rows.items() if k.startswith("migctl-")}
    assert len(migctl_rows) == 21 and set(migctl_rows.values()) == {"rc=0"}, migctl_rows
    assert "3g.71gb" in (out / "migctl-export.out").read_text()
    assert "NVIDIA H200" in (out / "migctl-smi-query.out").read_text()
    assert (out / "from-node.yaml").stat().st_mode & 0o777 == 0o600
    assert "probe" not in rows  # the probe insists on the real driver; its own tests cover the simulator
