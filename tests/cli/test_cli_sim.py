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


# Damage a field of a real state file (a GPU instance with a CI, a client and a holder present) and check
# that every reader says which field is wrong in one line and writes nothing. Before validate.py, each of
# these reached the fake NVML and ended in a traceback (AttributeError, ValueError or TypeError).
DAMAGED_FIELDS = [
    (["driver"], None, "driver is None, expected a string"),
    (["driver"], "x", "driver is 'x', expected a version"),
    (["gpus", 0, "bus_id"], 7, "gpus[0].bus_id is 7, expected a string"),
    (["gpus", 0, "bus_id"], "x", "gpus[0].bus_id is 'x', expected DDDDDDDD:BB:DD.F"),
    (["gpus", 0, "mig_current"], None, "gpus[0].mig_current is None, expected an integer"),
    (["gpus", 0, "mig_current"], 5, "gpus[0].mig_current is 5, expected 0 or 1"),
    (["gpus", 0, "model"], "no-such-gpu", "gpus[0].model 'no-such-gpu' is not a known model"),
    (["gpus", 0, "gis", 0, "profile_id"], 999, "gpus[0].gis[0].profile_id is 999, not a GI profile"),
    (["gpus", 0, "gis", 0, "start"], 7, "gpus[0].gis[0]: placement 7:1 is not valid for 1g.10gb"),
    (["gpus", 0, "gis", 0, "cis", 0, "size"], 9, "gpus[0].gis[0].cis[0]: placement"),
    (["gpus", 0, "processes", 0, "pid"], -1, "gpus[0].processes[0].pid is -1, expected a process ID"),
    (["gpus", 0, "processes", 0, "gi"], 60, "gpus[0].processes[0] names GPU instance 60"),
    (["gpus", 0, "holders", 0], {"name": "x", "gj": 1}, "gpus[0].holders[0] has an unknown field 'gj'"),
    (["behaviour", "caller"], "admin", "behaviour.caller is 'admin', expected one of root, user"),
    (["client_delay"], 1e308 * 10, "client_delay is inf, expected a number"),
    (["serial"], True, "serial is True, expected an integer"),
    (["gpus", 1, "model"], "A30", "its GPUs or driver differ from its node"),
]


def test_a_damaged_field_of_the_state_file_is_one_line_naming_it(cli):
    cli("mode", "enable", "-i", "0")
    created = cli("gi", "create", "-i", "0", "1g.10gb", "-C", "--json")
    assert created.code == 0, created.err
    gi = created.json()["created"][0]["gi_id"]
    assert cli("sim", "add-client", str(os.getpid()), "-i", "0", "--gi", str(gi), "--ci", "0").code == 0
    assert cli("sim", "add-holder", "dcgm", "-i", "0").code == 0
    path = Path(cli("sim", "status", "--json").json()["state_file"])
    good = json.loads(path.read_text())
    for where, value, expected in DAMAGED_FIELDS:
        data = json.loads(json.dumps(good))
        target = data
        for key in where[:-1]:
            target = target[key]
        target[where[-1]] = value
        path.write_text(json.dumps(data))
        damaged = path.read_bytes()
        for argv in (["gpus"], ["gi", "list", "--json"], ["gi", "create", "1g.10gb"], ["smi"]):
            r = cli(*argv)
            assert r.code == 2, (where, argv, r.err)
            line = one_error_line(r)
            assert "is damaged" in line and expected in line and "migctl sim reset-state" in line, (where, line)
        assert path.read_bytes() == damaged  # nothing was written over it
    path.write_text(json.dumps(good))
    assert cli("gi", "list", "--json").code == 0


def test_nothing_writes_a_state_file_that_readers_would_refuse(cli):
    """`sim add-client --used-mib -5` (or a 5,000-character name) was accepted and wrote a state that every
    later command refused as damaged; the CLI now bounds both, and the store refuses to write such a state
    whoever asks (the transaction leaves the file as it was)."""
    from migctl import sim as simmod
    from migctl.device import open_node
    from migctl.sim.state import SimProcess

    cli("mode", "enable", "-i", "0")
    for args, expected in ((("--used-mib", "-5"), "--used-mib -5 is out of range; valid: 0..81559"),
                           (("--name", "x" * 5000), "--name is 5000 characters long; at most 256")):
        r = cli("sim", "add-client", str(os.getpid()), *args)
        assert r.code == 2 and expected in one_error_line(r), r.err
    path = Path(cli("sim", "status", "--json").json()["state_file"])
    before = path.read_bytes()
    node = open_node("2xH100-80GB", str(path))
    with pytest.raises(simmod.StateFileError, match=r"refusing to write simulator state .*: gpus\[0\]\.processes\[0\]"
                       r"\.used_mib is -5, expected 0 or more; nothing was changed"):
        with node.sim.store.transaction() as st:
            st.gpus[0].processes.append(SimProcess(pid=os.getpid(), gi=None, ci=None, used_mib=-5))
    assert path.read_bytes() == before
    assert cli("gpus").code == 0


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


def test_names_with_control_characters_are_shown_escaped(cli):
    """A client's or holder's name is shown with control characters made visible: `sim clients`, `sim status`
    and add-holder's line printed an escape sequence as it was (a terminal would obey it)."""
    evil = "ev\x1b[31mil\x1b]0;title\x07"
    assert cli("sim", "add-client", str(os.getpid()), "-i", "0", "--name", evil).code == 0
    r = cli("sim", "add-holder", "h\x1b[2J", "-i", "0")
    assert r.code == 0 and "\x1b" not in r.out and "h\\x1b[2J now holds GPU 0" in r.out, r.out
    for argv in (["sim", "clients"], ["sim", "status"]):
        r = cli(*argv)
        assert r.code == 0 and "\x1b" not in r.out and "\x07" not in r.out, (argv, r.out)
    assert "ev\\x1b[31mil\\x1b]0;title\\x07" in cli("sim", "clients").out
    assert "h\\x1b[2J" in cli("sim", "status").out
    assert cli("sim", "clients", "--json").json()["clients"][0]["name"] == evil  # JSON keeps the name as it is
    r = cli("sim", "remove-holder", "h\x1b[2J", "-i", "0")
    assert r.code == 0 and "\x1b" not in r.out
