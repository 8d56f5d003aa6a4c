"""scripts/gpu-probe (issue 8, item 6), tested against the simulator: it is read-only, it records the driver's
answers, and its comparison flags every question where the probed "driver" and the simulator disagree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import migctl.sim as sim
from migctl.device import open_node
from migctl.device.probe import probe_node, probe_unprivileged

PROBE = Path(__file__).resolve().parents[2] / "scripts" / "gpu-probe"


def run_probe(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MIGCTL_STATE_DIR": str(tmp_path)}
    env.pop("MIGCTL_SIM", None)
    return subprocess.run([sys.executable, str(PROBE), *args], capture_output=True, text=True, timeout=300, env=env)


def test_probe_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGCTL_STATE_DIR", str(tmp_path))
    node_sim = sim.install("2xA100-40GB@535.104.05", state_path=tmp_path / "node.json")
    node = open_node("2xA100-40GB@535.104.05", str(tmp_path / "node.json"))
    g = node.gpu(0)
    g.set_mig_mode(True)
    g.create_gi(9).create_ci()
    before = (tmp_path / "node.json").read_bytes()
    ops = node_sim.op_count()
    report = probe_node(node)
    probe_unprivileged(node)
    assert (tmp_path / "node.json").read_bytes() == before and node_sim.op_count() == ops
    sim.uninstall()
    g0, g1 = report["gpus"]
    assert g0["mig_mode"] == {"current": 1, "pending": 1} and g0["profile_info_mig_on"] == "SUCCESS"
    assert g1["profile_info_mig_off"] == "ERROR_NOT_SUPPORTED"  # R535 with MIG off (mig-parted discovery.go)
    assert g0["bad_struct_version"] == "ERROR_INVALID_ARGUMENT"
    assert (g0["small_placement_buffer"], g0["small_placement_buffer_count"], g0["small_placement_buffer_written"]) == (
        "SUCCESS", 7, 7)  # the count is output only; driver 580.159.04 wrote all 7 (docs/real-gpu.md)
    assert g0["profile_enumeration_ends_at"] == 10  # NVML_GPU_INSTANCE_PROFILE_COUNT of the R525..R560 headers
    assert report["functions"]["nvmlDeviceGetGpuInstanceProfileInfoByIdV"] is False  # R580+
    assert report["nvml_version"] == "12.535.104.05"


def test_probe_script_agrees_with_the_simulator_on_the_simulator(tmp_path):
    r = run_probe("--sim", "1xA30@470.57.02,1xH100-80GB", "--out", str(tmp_path / "r.json"), tmp_path=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1].endswith("answers agree")
    report = json.loads((tmp_path / "r.json").read_text())
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o600
    assert report["functions"]["nvmlDeviceGetGpuInstanceProfileInfoV"] is False  # R470 < R510
    assert {row["question"] for row in report["comparison"]} >= {
        "GPU 0 bad_struct_version", "GPU 0 small_placement_buffer", "GPU 1 non-root placements",
        "function nvmlGpuInstanceCreateComputeInstanceWithPlacement"}
    again = run_probe("--sim", "1xA30", "--out", str(tmp_path / "r.json"), tmp_path=tmp_path)
    assert again.returncode == 2 and "never overwritten" in again.stderr


def test_probe_names_each_answer_that_differs(tmp_path):
    # a "driver" that answers profile info with MIG off although R535 in the simulator does not
    r = run_probe("--sim", "1xA100-80GB@535.104.05;profile-info-mig-off=supported", tmp_path=tmp_path)
    assert r.returncode == 1
    differing = [line for line in r.stdout.splitlines() if line.endswith("NO")]
    # the forced answer covers remaining capacity too (both are what `nvidia-smi mig -lgip` asks with MIG off)
    assert [line.split()[2] for line in differing] == ["profile_info_mig_off", "profiles", "remaining_capacity"]
    assert "SUCCESS" in differing[0] and "ERROR_NOT_SUPPORTED" in differing[0]
    bad = run_probe("--sim", "1xNOPE", tmp_path=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("gpu-probe: error: unknown GPU model 'NOPE'")
