"""``migctl sim set|reboot|add-holder|remove-holder`` and the stderr note of state-changing commands on a sim."""

from __future__ import annotations

import json

import pytest

from migctl import sim as simmod
from migctl.cli.main import main


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MIGCTL_STATE_DIR", str(tmp_path))
    for k in ("MIGCTL_SIM", "MIGCTL_SIM_STATE", "MIGCTL_BACKEND"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("COLUMNS", "250")
    simmod.uninstall()

    def run(*args: str, sim: str = "1xA100-40GB,1xH100-80GB"):
        capsys.readouterr()
        code = main(["--sim", sim, *map(str, args)])
        cap = capsys.readouterr()
        return code, cap.out, cap.err

    yield run
    simmod.uninstall()


def test_sim_set_changes_behaviour_and_status_shows_it(cli):
    code, out, err = cli("sim", "set", "caller=user", "vm=passthrough")
    assert code == 0 and "caller=user, vm=passthrough" in out
    status = json.loads(cli("sim", "status", "--json")[1])
    assert status["behaviour"]["caller"] == "user" and status["behaviour"]["vm"] == "passthrough"
    code, out, err = cli("mode", "enable", "-i", "0")
    assert code != 0 and "Insufficient Permissions" in err
    code, _, err = cli("sim", "set", "caller=admin")
    assert code == 2 and err == "migctl: error: simulator behaviour caller='admin' is not valid; valid: caller=root|user\n"
    code, _, err = cli("sim", "set", "color=blue")
    assert code == 2 and "unknown simulator behaviour 'color=blue'; valid: caller=root|user" in err


def test_sim_reboot_keeps_ampere_mode_not_hopper(cli):
    assert cli("mode", "enable")[0] == 0
    code, out, _ = cli("sim", "reboot")
    assert code == 0 and "GPU 0 MIG enabled, GPU 1 MIG disabled" in out


def test_holder_blocks_reset_and_is_named(cli):
    cli("mode", "enable", "-i", "1")
    code, out, _ = cli("sim", "add-holder", "dcgm", "-i", "1")
    assert code == 0 and "dcgm now holds GPU 1 open" in out
    code, out, err = cli("reset", "-i", "1")
    assert code == 1 and "GPU reset refused: GPU 1: In use by another client; held by dcgm" in err
    assert cli("sim", "remove-holder", "dcgm", "-i", "1")[0] == 0
    code, _, err = cli("sim", "remove-holder", "dcgm", "-i", "1")
    assert code == 2 and "'dcgm' holds nothing on GPU 1; holders there: none" in err
    assert cli("reset", "-i", "1")[0] == 0


def test_catalog_from_node_cli_writes_a_private_file_once(cli, tmp_path):
    target = tmp_path / "b300-from-node.yaml"
    assert cli("mode", "enable", sim="1xB300")[0] == 0
    code, out, err = cli("catalog", "--from-node", "-i", "0", "-o", target, sim="1xB300")
    assert code == 0, err
    assert "Wrote" in out and (target.stat().st_mode & 0o777) == 0o600
    from migctl.catalog import load_model
    from migctl.catalog.loader import load_model_file

    assert [p.name for p in load_model_file(str(target)).gi_profiles] == [p.name for p in load_model("B300").gi_profiles]
    code, _, err = cli("catalog", "--from-node", "-i", "0", "-o", target, sim="1xB300")
    assert code == 2 and "exists; migctl does not overwrite it" in err
    code, _, err = cli("catalog", "H100-80GB", "--from-node", sim="1xB300")
    assert code == 2 and "--from-node reads the node's GPUs" in err


def test_gpus_warns_about_a_gpu_the_catalog_does_not_know(cli, tmp_path):
    from importlib import resources

    import yaml

    raw = yaml.safe_load((resources.files("migctl.catalog") / "data" / "a30.yaml").read_text())
    raw.update(key="Z30", name="NVIDIA Z30", pci_device_ids=[0x7778], aliases=[])
    f = tmp_path / "z30.yaml"
    f.write_text(yaml.safe_dump(raw))
    code, out, err = cli("gpus", sim=f"1xfile:{f}")
    assert code == 0 and "migctl: warning: GPU 0 (NVIDIA Z30, PCI id 0x777810de) is not in migctl's catalog" in err
    assert cli("gpus", sim="1xA30")[2] == ""  # a known GPU on which NVML and the catalog agree: no warning


def test_new_sim_verbs_and_catalog_from_node_take_json(cli, tmp_path):
    def one(*args, sim="1xA100-40GB"):
        code, out, err = cli(*args, "--json", sim=sim)
        assert code == 0, err
        return json.loads(out)

    assert one("sim", "set", "vm=passthrough")["behaviour"]["vm"] == "passthrough"
    assert one("sim", "add-holder", "dcgm") == {"gpu": 0, "name": "dcgm", "gi_id": None, "ci_id": None}
    assert one("sim", "remove-holder", "dcgm")["released"] is True
    assert one("sim", "reboot")["gpus"] == [{"index": 0, "mig_current": False}]
    got = one("catalog", "--from-node")
    assert got["written"] is None and list(got["models"]) == ["A100-40GB"]
