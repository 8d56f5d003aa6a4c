"""Backend choice is explicit (issue 8, item 2): simulate only when asked or when no NVIDIA driver is installed;
a driver that is installed but whose library cannot be loaded is an error, never a silent simulated node."""

from __future__ import annotations

import pytest

import migctl.sim as sim
from migctl.cli.main import main
from migctl.device import DeviceError, api, open_node


@pytest.fixture(autouse=True)
def _clean(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGCTL_STATE_DIR", str(tmp_path / "state"))
    for var in ("MIGCTL_SIM", "MIGCTL_SIM_STATE", "MIGCTL_BACKEND"):
        monkeypatch.delenv(var, raising=False)
    yield
    sim.uninstall()


def no_driver(monkeypatch, tmp_path):
    monkeypatch.setattr(api, "DRIVER_MARKERS", (str(tmp_path / "no-proc-driver-nvidia"), str(tmp_path / "no-ctl")))


def broken_driver(monkeypatch, tmp_path):
    """A driver marker that exists and a library that does not load (a container without driver libraries)."""
    marker = tmp_path / "nvidiactl"
    marker.write_text("")
    monkeypatch.setattr(api, "DRIVER_MARKERS", (str(tmp_path / "no-proc"), str(marker)))
    monkeypatch.setattr(api, "NVML_LIBRARY", "libnvidia-ml-missing-for-test.so.1")


def test_no_driver_at_all_simulates_and_says_why(monkeypatch, tmp_path):
    no_driver(monkeypatch, tmp_path)
    node = open_node()
    assert node.backend == "sim" and "no NVIDIA driver on this machine" in node.sim_reason


def test_present_driver_that_fails_to_load_is_an_error_naming_library_and_cause(monkeypatch, tmp_path):
    broken_driver(monkeypatch, tmp_path)
    with pytest.raises(DeviceError) as e:
        open_node()
    text = str(e.value)
    assert "libnvidia-ml-missing-for-test.so.1 cannot be loaded" in text
    assert "cannot open shared object file" in text  # the loader's own cause
    assert str(tmp_path / "nvidiactl") in text and "--sim" in text


def test_sim_on_request_even_with_a_driver(monkeypatch, tmp_path):
    broken_driver(monkeypatch, tmp_path)
    assert open_node("1xA30").backend == "sim"
    sim.uninstall()
    monkeypatch.setenv("MIGCTL_BACKEND", "sim")
    node = open_node()
    assert node.backend == "sim" and node.sim_reason == "chosen by MIGCTL_BACKEND=sim"


def test_backend_values_are_validated(monkeypatch, tmp_path):
    no_driver(monkeypatch, tmp_path)
    monkeypatch.setenv("MIGCTL_BACKEND", "gpu")
    with pytest.raises(DeviceError, match=r"MIGCTL_BACKEND='gpu' is not valid; valid: auto, nvml, sim"):
        open_node()
    monkeypatch.setenv("MIGCTL_BACKEND", "nvml")
    with pytest.raises(DeviceError, match="MIGCTL_BACKEND=nvml insists"):
        open_node("1xA30")
    monkeypatch.setattr(api, "NVML_LIBRARY", "libnvidia-ml-missing-for-test.so.1")
    with pytest.raises(DeviceError, match="cannot be loaded"):
        open_node()  # nvml insists even without a driver marker


def test_cli_state_changes_say_the_node_is_simulated(monkeypatch, tmp_path, capsys):
    no_driver(monkeypatch, tmp_path)
    assert main(["gpus"]) == 0
    assert "simulated" not in capsys.readouterr().err  # reading says nothing
    assert main(["mode", "enable", "-i", "0"]) == 0
    err = capsys.readouterr().err
    assert err.count("migctl: note: node is simulated (8xH100-80GB@580.65.06; no NVIDIA driver") == 1
    assert main(["--sim", "1xA30", "gi", "create", "1g.6gb", "-i", "0"]) != 0  # MIG off: refused before NVML
    assert main(["--sim", "1xA30", "mode", "enable"]) == 0
    assert "chosen by --sim/MIGCTL_SIM" in capsys.readouterr().err


def test_cli_broken_driver_is_one_error_line(monkeypatch, tmp_path, capsys):
    broken_driver(monkeypatch, tmp_path)
    assert main(["mode", "enable", "-i", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("migctl: error: the NVIDIA driver is installed") and err.count("\n") == 1


def test_failed_state_change_on_sim_keeps_one_error_line_with_the_note(monkeypatch, tmp_path, capsys):
    no_driver(monkeypatch, tmp_path)
    assert main(["--sim", "1xH100-80GB", "mode", "enable"]) == 0
    capsys.readouterr()
    assert main(["--sim", "1xH100-80GB", "gi", "create", "19,19,14,9"]) == 1  # three created, then no room
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("migctl: error: ")
    assert err.rstrip().endswith("(note: node is simulated (1xH100-80GB@580.65.06; chosen by --sim/MIGCTL_SIM): "
                                 "no real GPU is changed)")
