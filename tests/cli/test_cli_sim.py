"""``migctl sim ...``, global error handling (bad spec, corrupt state file) and the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import one_error_line


def test_sim_status_shows_spec_driver_state_file(cli, tmp_path):
    r = cli("sim", "status", "--json", sim="1xH100-80GB,1xA30@545.23.08")
    assert r.code == 0, r.err
    data = r.json()
    assert data["spec"] == "1xH100-80GB,1xA30@545.23.08" and data["driver_version"] == "545.23.08"
    assert data["state_file"].startswith(str(tmp_path))
    assert [g["model"] for g in data["gpus"]] == ["H100-80GB", "A30"]
    text = cli("sim", "status", sim="1xA30").out
    assert "Simulated node 1xA30@580.65.06" in text and "State file: " + str(tmp_path) in text


def test_sim_clients_add_remove(cli):
    pid = os.getpid()
    assert cli("sim", "clients").out.startswith("No clients.")
    cli("mode", "enable", "-i", "0")
    cli("gi", "create", "1g.10gb", "-C", "-i", "0")
    uuid = cli("gpus", "--json").json()["gpus"][0]["mig_devices"][0]["uuid"]
    r = cli("sim", "add-client", pid, "--device", uuid, "--used-mib", "512", "--name", "train.py")
    assert r.code == 0, r.err
    assert f"PID {pid} is now a client of GPU 0 GI 13 CI 0" in r.out
    clients = cli("sim", "clients", "--json").json()["clients"]
    assert clients == [{"gpu": 0, "pid": pid, "gi_id": 13, "ci_id": 0, "used_mib": 512, "name": "train.py"}]
    assert "train.py" in cli("sim", "clients").out
    assert cli("sim", "remove-client", pid).code == 0
    assert cli("sim", "clients", "--json").json() == {"clients": []}


@pytest.mark.parametrize("argv, expect", [
    (["sim", "add-client", "999999999", "-i", "0"], "no running process with PID 999999999"),
    (["sim", "add-client", str(os.getpid()), "-i", "0", "--gi", "4"], "its MIG devices: none"),
    (["sim", "add-client", str(os.getpid()), "--device", "MIG-nope"], "no MIG device 'MIG-nope'"),
    (["sim", "add-client", str(os.getpid()), "-i", "0,1"], "-i must name one GPU"),
    (["sim", "remove-client", "12345"], "not a client"),
])
def test_sim_bad_input(cli, argv, expect):
    r = cli(*argv)
    assert r.code == 2
    assert expect in one_error_line(r)


def test_dead_client_stops_counting(cli):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert cli("sim", "add-client", proc.pid, "-i", "0").code == 0
        assert cli("reset", "-i", "0").code == 3
    finally:
        proc.kill()
        proc.wait()
    assert cli("reset", "-i", "0").code == 0
    assert cli("sim", "clients", "--json").json() == {"clients": []}


def test_not_a_simulated_node(cli, monkeypatch):
    from migctl.cli import sim_cmds

    class RealNode:
        sim = None

    monkeypatch.setattr(sim_cmds, "node", lambda ctx: RealNode())
    for argv in (["sim", "status"], ["sim", "clients"], ["sim", "reset-state"], ["sim", "add-client", "1"]):
        r = cli(*argv)
        assert r.code == 2
        assert "not a simulated node" in one_error_line(r)


def test_bad_spec_is_one_line(cli):
    r = cli("gpus", sim="3xNOPE")
    assert r.code == 2
    line = one_error_line(r)
    assert "'NOPE'" in line and "H100-80GB" in line and "A30" in line
    r = cli("gi", "list", sim="0xH100-80GB")
    assert r.code == 2 and "out of range" in one_error_line(r)


def test_corrupt_state_file_is_one_line_and_reset_state_recovers(cli):
    cli("mode", "enable", "-i", "0")
    path = Path(cli("sim", "status", "--json").json()["state_file"])
    assert path.exists()
    good = path.read_bytes()
    path.write_text("{not json")
    for argv in (["gi", "list", "--json"], ["gi", "create", "1g.10gb"], ["gpus"], ["sim", "status"]):
        r = cli(*argv)
        assert r.code == 2, argv
        line = one_error_line(r)
        assert "corrupt" in line and "migctl sim reset-state" in line
    assert path.read_text() == "{not json"  # nothing was written over it
    path.write_text(json.dumps({"format": "something-else"}))
    assert "not a migctl simulator state file" in one_error_line(cli("gi", "list"))
    path.write_bytes(good)
    assert cli("gi", "list", "--json").code == 0
    path.write_text("garbage")
    r = cli("sim", "reset-state")
    assert r.code == 0, r.err
    assert "Forgot simulated node 2xH100-80GB@580.65.06" in r.out and not path.exists()
    assert cli("mode", "--json").json()["gpus"][0]["mig_current"] is False


def test_sim_state_option_selects_the_file(cli, tmp_path):
    state = tmp_path / "custom.json"
    assert cli("--sim-state", str(state), "mode", "enable", "-i", "0").code == 0
    assert state.exists()
    assert cli("--sim-state", str(state), "sim", "status", "--json").json()["state_file"] == str(state)


def test_console_script_readme_flow(tmp_path):
    exe = shutil.which("migctl") or str(Path(sys.executable).with_name("migctl"))
    assert Path(exe).exists(), "the migctl console script is not installed"
    env = {**os.environ, "MIGCTL_STATE_DIR": str(tmp_path)}
    for k in ("MIGCTL_SIM", "MIGCTL_SIM_STATE", "MIGCTL_BACKEND"):
        env.pop(k, None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([exe, "--sim", "2xH100-80GB", *args], capture_output=True, text=True, env=env, timeout=60)

    assert run("mode", "enable").returncode == 0
    r = run("gi", "create", "3g.40gb,2g.20gb,1g.10gb", "-C")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Created GPU instance") == 6
    g = run("gpus")
    assert g.returncode == 0
    assert g.stdout.count("Device ") == 6 and g.stdout.count("MIG Enabled") == 2
    bad = run("gi", "create", "nope")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("migctl: error: unknown GPU instance profile 'nope'") and bad.stderr.count("\n") == 1
