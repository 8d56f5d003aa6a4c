"""The real-driver path (``MIGCTL_BACKEND=nvml``: ``open_node`` -> ``_real_node``, a Node with no simulator
attached) driven through NVML, with the simulator's library standing in for libnvidia-ml.so.1. What runs is the
code a real node runs: the node guard's call from ``open_node`` and ``doctor``'s real branch (PATH tools, the
/proc scan of device-file holders). Only the library underneath is simulated."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pynvml
import pytest

import migctl.sim as sim
from migctl.cli.main import main
from migctl.device import api, open_node
from migctl.errors import UserError


@pytest.fixture
def real_path(tmp_path, monkeypatch):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    monkeypatch.setenv("MIGCTL_STATE_DIR", str(state))
    monkeypatch.setenv("MIGCTL_BACKEND", "nvml")
    for var in ("MIGCTL_SIM", "MIGCTL_SIM_STATE"):
        monkeypatch.delenv(var, raising=False)
    node = sim.install("2xA30", state_path=tmp_path / "sim.json")

    def load() -> None:  # what _load_real_nvml does with the real library, with the simulator's instead
        with pynvml.libLoadLock:
            pynvml.nvmlLib = node.lib
            pynvml._nvmlGetFunctionPointer_cache.clear()

    monkeypatch.setattr(api, "_load_real_nvml", load)
    monkeypatch.setattr(api, "_holders_of_nvidia_devices", lambda proc="/proc": [])  # this machine's /proc
    yield state, node
    sim.uninstall()


def test_the_guard_records_the_real_nodes_gpus_and_refuses_another_nodes_state(real_path):
    state, simnode = real_path
    n = open_node()
    assert n.sim is None and n.backend == "nvml"
    record = json.loads((state / "node-nvml.json").read_text())
    assert sorted(record["gpus"]) == sorted(g.uuid for g in n.gpus()) and len(record["gpus"]) == 2
    assert (state / "node-nvml.json").stat().st_mode & 0o777 == 0o600
    record.update(host="gpu01", gpus=["GPU-00000000-0000-0000-0000-000000000000"])
    (state / "node-nvml.json").write_text(json.dumps(record))
    with pytest.raises(UserError) as e:
        open_node()
    assert e.value.exit_code == 2 and "holds another node's leases, queue and apply journal (host gpu01" in str(e.value)


def test_doctor_on_the_real_path(real_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no nvidia-smi, no nvidia-cuda-mps-control
    monkeypatch.setattr(api, "_holders_of_nvidia_devices", lambda proc="/proc": ["nvidia-persistenced (PID 77)"])
    assert main(["doctor", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    by = {(c["check"], c["gpu"]): c for c in data["checks"]}
    assert by[("backend", None)] == {"check": "backend", "gpu": None, "status": "ok",
                                     "detail": "NVIDIA driver 580.65.06 through NVML"}
    assert by[("nvidia-smi", None)]["status"] == "warn" and "NVML has no reset call" in by[("nvidia-smi", None)]["detail"]
    assert by[("mps-control", None)]["status"] == "warn"
    holders = by[("device-holders", None)]["detail"]
    assert "nvidia-persistenced (PID 77)" in holders and "systemctl stop nvidia-persistenced" in holders
    assert by[("mig-mode", 0)]["status"] == "ok"


def test_apply_run_and_queue_on_the_real_path(real_path, tmp_path, capfd):
    """The real node's identities (node key ``nvml``, ``apply-nvml.*`` files) through apply, run and the queue."""
    state, _ = real_path
    cfg = tmp_path / "c.yaml"
    cfg.write_text("version: v1\nmig-configs:\n  halves:\n    - devices: all\n      mig-enabled: true\n"
                   "      mig-devices: {2g.12gb: 2}\n")
    assert main(["apply", "-f", str(cfg), "-c", "halves", "-q"]) == 0
    assert (state / "apply-nvml.last.json").exists() and not (state / "apply-nvml.journal.json").exists()
    assert main(["assert", "-f", str(cfg), "-c", "halves"]) == 0
    capfd.readouterr()
    assert main(["run", "--profile", "2g.12gb", "--", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES"]) == 0
    uuid = capfd.readouterr().out.strip()
    assert uuid.startswith("MIG-") and uuid in {d.uuid for g in open_node().gpus() for d in g.mig_devices()}
    assert main(["submit", "--profile", "2g.12gb", "--", "true"]) == 0
    assert main(["worker", "--until-idle"]) == 0
    capfd.readouterr()
    assert main(["jobs", "--all", "--json"]) == 0
    jobs = json.loads(capfd.readouterr().out)["jobs"]
    assert [j["state"] for j in jobs] == ["done"]


@pytest.fixture
def fake_smi(real_path, tmp_path, monkeypatch):
    """``nvidia-smi`` in PATH: tests/sim/fake_nvidia_smi.py over the simulated node's state file."""

    state, simnode = real_path
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = Path(__file__).with_name("fake_nvidia_smi.py")
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\nexec {sys.executable} {script} \"$@\"\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_SMI_SPEC", str(simnode.spec))
    monkeypatch.setenv("FAKE_SMI_STATE", str(simnode.store.path))
    simnode.set_behaviour("ampere-activation", "reset")  # an A30's mode change waits for a reset
    return simnode


def test_reset_through_nvidia_smi_applies_a_pending_mode(fake_smi, capfd):
    assert main(["mode", "enable", "-i", "0"]) == 0
    assert open_node().gpu(0).mig_mode() == (0, 1)
    assert main(["reset", "-i", "0", "--json"]) == 0
    assert open_node().gpu(0).mig_mode() == (1, 1)  # re-read after the reset: applied


def test_a_reset_nvidia_smi_refuses_is_a_device_failure_naming_the_holders(fake_smi, capfd, monkeypatch):
    monkeypatch.setattr(api, "_holders_of_nvidia_devices", lambda proc="/proc": ["nvidia-persistenced (PID 77)"])
    assert main(["mode", "enable", "-i", "1"]) == 0
    assert fake_smi.add_holder(1, "nvidia-persistenced") == 0  # what NVML does not list
    capfd.readouterr()
    assert main(["reset", "-i", "1"]) == 1  # the device refused (1), not bad input (2)
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("migctl: error: GPU reset refused: GPU 1: ")
    assert "In use by another client" in err and "held by nvidia-persistenced (PID 77)" in err
    assert "stop nvidia-persistenced" in err
    assert open_node().gpu(1).mig_mode() == (0, 1)  # still pending


def test_a_shared_run_uses_the_mps_control_tool_in_path(fake_smi, tmp_path, capfd, monkeypatch):
    """On the real path, ``run --isolation soft`` starts ``nvidia-cuda-mps-control -d`` found in PATH (here the
    simulator's stand-in, which speaks the real control commands, behind that name) and stops it afterwards."""

    tool = tmp_path / "bin" / "nvidia-cuda-mps-control"
    tool.write_text(f"#!/bin/sh\nMIGCTL_SIM=\"$FAKE_SMI_SPEC\" MIGCTL_SIM_STATE=\"$FAKE_SMI_STATE\" "
                    f"MIGCTL_BACKEND=sim exec {sys.executable} -m migctl.sim.mps_control \"$@\"\n")
    tool.chmod(0o755)
    short = tempfile.mkdtemp(prefix="mr")  # (the MPS control socket's path must fit in about 100 bytes)
    monkeypatch.setenv("MIGCTL_STATE_DIR", short)
    assert main(["mode", "enable"]) == 0 and main(["reset"]) == 0
    assert main(["gi", "create", "2g.12gb", "-i", "0", "-C"]) == 0
    capfd.readouterr()
    assert main(["run", "--profile", "2g.12gb", "--isolation", "soft", "--share", "2", "--", "sh", "-c",
                 "echo $CUDA_MPS_ACTIVE_THREAD_PERCENTAGE $CUDA_MPS_PIPE_DIRECTORY; "
                 "test -S $CUDA_MPS_PIPE_DIRECTORY/control && echo serving"]) == 0
    threads, pipe, serving = capfd.readouterr().out.split()
    assert threads == "50" and pipe.startswith(short) and serving == "serving"  # this device's daemon
    assert not (Path(pipe) / "control").exists()  # stopped when its last client left
    shutil.rmtree(short, ignore_errors=True)



@pytest.mark.parametrize("argv", [
    ["gpus", "--map"], ["exporter", "--once"], ["top", "--once"], ["smi"], ["smi", "mig", "-lgip"], ["profiles"],
    ["placements"], ["export"], ["checkpoint"], ["slurm", "gres", "--print", "-n", "node1"], ["k8s", "export"],
    ["leases"], ["jobs"], ["catalog", "--from-node", "-i", "1"], ["doctor"],
])
def test_every_reading_verb_answers_on_the_real_path(real_path, argv, capfd):
    assert main(["mode", "enable", "-i", "0"]) == 0
    assert main(["gi", "create", "2g.12gb", "-i", "0", "-C"]) == 0
    capfd.readouterr()
    assert main(argv) == 0, capfd.readouterr().err
    out, err = capfd.readouterr()
    assert out and "Traceback" not in err and "simulated" not in out + err


def test_apply_resets_through_nvidia_smi_and_rolls_back_when_refused(fake_smi, tmp_path, capfd):
    """A mode change the driver applies only at a reset (A30 here): on the real path apply runs one
    ``nvidia-smi -r -i BUS,...``; refused, the apply rolls back (exit 5) and leaves the GPU as it was."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("version: v1\nmig-configs:\n  halves:\n    - devices: [1]\n      mig-enabled: true\n"
                   "      mig-devices: {2g.12gb: 2}\n")
    assert fake_smi.add_holder(1, "nvidia-persistenced") == 0
    capfd.readouterr()
    assert main(["apply", "-f", str(cfg), "-c", "halves", "-q"]) == 5
    err = capfd.readouterr().err
    assert "In use by another client" in err and "rolled back" in err, err
    assert open_node().gpu(1).mig_mode() == (0, 0) and not (tmp_path / "state" / "apply-nvml.journal.json").exists()
    assert fake_smi.remove_holder(1, "nvidia-persistenced") == 0
    assert main(["apply", "-f", str(cfg), "-c", "halves", "-q"]) == 0
    g = open_node().gpu(1)
    assert g.mig_mode() == (1, 1) and sorted(d.profile_name for d in g.mig_devices()) == ["2g.12gb", "2g.12gb"]


def test_the_mig_parted_drop_in_guards_the_state_dir_too(real_path, capsys):
    """The drop-in opens the real node itself (never a simulated one by accident); it records the node's GPUs and
    refuses another node's state dir as migctl does, in mig-parted's one-line fatal format, exit 1."""
    from migctl.parted import main as parted

    state, _ = real_path
    keep = sim.uninstall
    sim.uninstall = lambda: None  # (the drop-in detaches a simulator first; here its library is the "driver")
    try:
        assert parted(["export"]) == 0
        assert json.loads((state / "node-nvml.json").read_text())["host"]
        record = json.loads((state / "node-nvml.json").read_text())
        record.update(host="gpu01", gpus=["GPU-00000000-0000-0000-0000-000000000000"])
        (state / "node-nvml.json").write_text(json.dumps(record))
        capsys.readouterr()
        assert parted(["export"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "level=fatal" in err and "holds another node's leases" in err
    finally:
        sim.uninstall = keep


def test_gpu_probe_on_the_real_path_compares_with_the_simulator(real_path, tmp_path, monkeypatch, capsys):
    """scripts/gpu-probe with MIGCTL_BACKEND=nvml, as scripts/real-gpu-check runs it: its simulated half must not
    be refused by that setting (the first real run failed so), and a simulated library agrees with the simulator."""
    import importlib.machinery
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "gpu-probe"
    loader = importlib.machinery.SourceFileLoader("gpu_probe_script", str(path))
    spec = importlib.util.spec_from_loader("gpu_probe_script", loader)
    probe = importlib.util.module_from_spec(spec)
    loader.exec_module(probe)
    monkeypatch.setattr(probe, "_unprivileged_real", lambda: ([], "not asked in this test"))
    out = tmp_path / "probe.json"
    monkeypatch.setattr(sys, "argv", ["gpu-probe", "--json", "--out", str(out)])
    rc = probe.main()
    report = json.loads(out.read_text())
    differ = [r for r in report["comparison"] if not r["same"]]
    assert rc == 0 and not differ, differ
    assert report["backend"] == "nvml" and os.environ["MIGCTL_BACKEND"] == "nvml"
    g = report["gpus"][0]
    assert g["memory"]["v1"]["total"] == g["memory"]["v2"]["total"] > 0
    assert len(g["remaining_capacity"]) == 5 and all(row[1] for row in g["remaining_capacity"])  # A30: 5 profiles
    assert g["mig_device_handle_0"] == "ERROR_NOT_FOUND" and g["max_mig_device_count"] == 0  # MIG off
    capsys.readouterr()
