"""`migctl plan FILE --live --apply`: incremental planning from the node's live layout; busy instances stay."""

from __future__ import annotations

import json
import subprocess
import sys

import migctl.sim as sim
from migctl.cli.main import main


def test_live_plan_keeps_busy_instance_and_applies(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MIGCTL_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("MIGCTL_SIM", "2xH100-80GB")
    monkeypatch.delenv("MIGCTL_SIM_STATE", raising=False)
    sim.uninstall()
    try:
        assert main(["mode", "enable"]) == 0
        assert main(["gi", "create", "3g.40gb", "-i", "0", "-C"]) == 0
        capsys.readouterr()
        assert main(["gpus", "--json"]) == 0
        before = json.loads(capsys.readouterr().out)
        busy_uuid = before["gpus"][0]["mig_devices"][0]["uuid"]
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            assert main(["sim", "add-client", str(proc.pid), "-i", "0", "--gi", "2", "--ci", "0"]) == 0
            req = tmp_path / "demand.yaml"
            req.write_text("workloads:\n  - {name: big, profile: 4g.40gb, count: 2}\n")
            assert main(["plan", str(req), "--live", "--apply", "--json"]) == 0
            out = capsys.readouterr().out
            assert "applied plan" in out
            assert main(["gpus", "--json"]) == 0
            after = json.loads(capsys.readouterr().out)
        finally:
            proc.kill()
            proc.wait()
        uuids = [d["uuid"] for g in after["gpus"] for d in g["mig_devices"]]
        assert busy_uuid in uuids  # the busy 3g.40gb was neither destroyed nor moved
        profiles = sorted(d["profile"] for g in after["gpus"] for d in g["mig_devices"])
        assert profiles == ["3g.40gb", "4g.40gb", "4g.40gb"]
    finally:
        sim.uninstall()
