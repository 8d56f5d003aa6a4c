"""The simulator's driver semantics, one test per rule (issue: Foundation, item 4), through pynvml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pynvml as N
import pytest

import migctl.sim as sim
from migctl.catalog import Placement
from migctl.device import open_node


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


# ------------------------------------------------------------------------------------------ MIG mode
def test_mode_change_on_idle_gpu_takes_effect_at_once(node_factory):
    gpu = node_factory("4xA30@545.23.08").gpu(0)
    assert gpu.mig_mode() == (0, 0)
    assert gpu.set_mig_mode(True) == N.NVML_SUCCESS
    assert gpu.mig_mode() == (1, 1)
    assert gpu.set_mig_mode(False) == N.NVML_SUCCESS
    assert gpu.mig_mode() == (0, 0)


def test_mode_change_while_busy_stays_pending_until_processes_gone_and_reset(node_factory):
    node = node_factory("1xH100-80GB")
    gpu = node.gpu(0)
    proc = sleeper()
    try:
        assert node.sim.add_client(0, proc.pid) == 0
        assert gpu.set_mig_mode(True) == N.NVML_ERROR_IN_USE  # activation status: pending
        assert gpu.mig_mode() == (0, 1)
        with pytest.raises(N.NVMLError_InUse):
            gpu.reset()  # refused while in use
        assert gpu.mig_mode() == (0, 1)
    finally:
        proc.kill()
        proc.wait()
    assert gpu.mig_mode() == (0, 1)  # still pending: the process is gone but no reset yet
    gpu.reset()
    assert gpu.mig_mode() == (1, 1)


def test_non_mig_gpu_answers_not_supported(node_factory):
    gpu = node_factory("1xH100-80GB~nomig").gpu(0)
    with pytest.raises(N.NVMLError_NotSupported):
        gpu.mig_mode()
    with pytest.raises(N.NVMLError_NotSupported):
        gpu.set_mig_mode(True)
    assert gpu.profiles() == []
    assert gpu.mig_devices() == []


def test_gi_creation_needs_mig_enabled(node_factory):
    gpu = node_factory("1xH100-80GB").gpu(0)
    with pytest.raises(N.NVMLError_NotSupported):
        gpu.create_gi(19)


# ------------------------------------------------------------------------------------------ GPU instances
@pytest.fixture
def h100(node_factory):
    node = node_factory("1xH100-80GB")
    node.gpu(0).set_mig_mode(True)
    return node


def test_create_by_id_and_name_with_and_without_placement(h100):
    gpu = h100.gpu(0)
    gi = gpu.create_gi(gpu.profile("3g.40gb").id)
    assert (gi.profile_id, gi.placement) == (9, Placement(4, 4))
    gi2 = gpu.create_gi(gpu.profile("MIG 1g.10gb").id, Placement(2, 1))
    assert gi2.placement == Placement(2, 1)
    assert gpu.profile("19").name == "1g.10gb"


def test_overlap_is_insufficient_resources(h100):
    gpu = h100.gpu(0)
    gpu.create_gi(9, Placement(0, 4))
    with pytest.raises(N.NVMLError_InsufficientResources):
        gpu.create_gi(19, Placement(2, 1))
    with pytest.raises(N.NVMLError_InsufficientResources):
        gpu.create_gi(5)  # 4g only fits at 0:4
    with pytest.raises(N.NVMLError_InvalidArgument):
        gpu.create_gi(19, Placement(7, 1))  # not a placement of 1g


def test_profile_missing_on_this_model_is_invalid_argument(h100):
    with pytest.raises(N.NVMLError_InvalidArgument):
        h100.gpu(0).create_gi(21)  # 21 is the A30's 1g.6gb+me, not an H100 profile


def test_plus_me_profiles_are_single_instance(h100):
    gpu = h100.gpu(0)
    assert gpu.remaining(20) == 1
    gpu.create_gi(20)
    assert gpu.remaining(20) == 0
    with pytest.raises(N.NVMLError_InsufficientResources):
        gpu.create_gi(20)


def test_remaining_capacity_free_total_as_nvidia_smi(h100):
    gpu = h100.gpu(0)
    total = {p.name: (gpu.remaining(p.id), p.instance_count) for p in gpu.profiles()}
    assert total == {
        "1g.10gb": (7, 7), "1g.10gb+me": (1, 1), "1g.20gb": (4, 4), "2g.20gb": (3, 3),
        "3g.40gb": (2, 2), "4g.40gb": (1, 1), "7g.80gb": (1, 1),
    }
    gpu.create_gi(9)  # 3g at 4:4 (driver's choice)
    free = {p.name: gpu.remaining(p.id) for p in gpu.profiles()}
    assert free == {"1g.10gb": 4, "1g.10gb+me": 1, "1g.20gb": 2, "2g.20gb": 2, "3g.40gb": 1,
                    "4g.40gb": 1, "7g.80gb": 0}
    # Free counts match what creation then allows
    for _ in range(free["2g.20gb"]):
        gpu.create_gi(14)
    with pytest.raises(N.NVMLError_InsufficientResources):
        gpu.create_gi(14)


def test_auto_placement_nvidia_documented_order(h100):
    """`-cgi 19,19,14,9` fails on the 9; `-cgi 9,19,14,19` succeeds (MIG User Guide)."""
    gpu = h100.gpu(0)
    for pid in (19, 19, 14):
        gpu.create_gi(pid)
    with pytest.raises(N.NVMLError_InsufficientResources):
        gpu.create_gi(9)
    for gi in gpu.gpu_instances():
        gi.destroy()
    placed = [gpu.create_gi(pid).placement for pid in (9, 19, 14, 19)]
    assert placed == [Placement(4, 4), Placement(0, 1), Placement(2, 2), Placement(1, 1)]


def test_seven_1g_fill_upper_half_first_and_gi_ids(h100):
    gpu = h100.gpu(0)
    gis = [gpu.create_gi(19) for _ in range(7)]
    assert [g.placement.start for g in gis] == [6, 4, 5, 0, 1, 2, 3]
    assert [g.id for g in gis] == [13, 11, 12, 7, 8, 9, 10]


def test_a30_gi_and_ci_ids_as_in_seed(node_factory):
    gpu = node_factory("4xA30@545.23.08").gpu(0)
    gpu.set_mig_mode(True)
    gis = [gpu.create_gi(5), gpu.create_gi(5)]
    assert [(g.id, g.placement) for g in gis] == [(1, Placement(0, 2)), (2, Placement(2, 2))]
    cis = [gis[0].create_ci(0), gis[0].create_ci(0)]
    assert [(c.id, c.placement) for c in cis] == [(0, Placement(0, 1)), (1, Placement(1, 1))]
    devs = gpu.mig_devices()
    assert [(d.index, d.gi_id, d.ci_id, d.profile_name) for d in devs] == [(0, 1, 0, "1c.2g.12gb"), (1, 1, 1, "1c.2g.12gb")]


# ------------------------------------------------------------------------------------------ CIs and UUIDs
def test_ci_profiles_split_and_default(h100):
    gpu = h100.gpu(0)
    gi = gpu.create_gi(9)
    profiles = {(p.id, p.name, p.is_default) for p in gi.ci_profiles()}
    assert profiles == {(0, "1c.3g.40gb", False), (1, "2c.3g.40gb", False), (2, "3g.40gb", True)}
    gi20 = gpu.create_gi(15)
    (default,) = [p for p in gi20.ci_profiles() if p.is_default]
    assert default.id == 7  # Hopper 1g.20gb: default CI profile ID 7
    assert gi20.create_ci().profile_id == 7


def test_ci_capacity_and_placements(h100):
    gi = h100.gpu(0).create_gi(9)
    cis = [gi.create_ci(0) for _ in range(3)]
    assert [c.placement for c in cis] == [Placement(0, 1), Placement(1, 1), Placement(2, 1)]
    with pytest.raises(N.NVMLError_InsufficientResources):
        gi.create_ci(0)
    with pytest.raises(N.NVMLError_InsufficientResources):
        gi.create_ci(2)


def test_destroy_gi_with_cis_is_in_use(h100):
    gi = h100.gpu(0).create_gi(14)
    gi.create_ci()
    with pytest.raises(N.NVMLError_InUse):
        gi.destroy()


def test_live_process_blocks_ci_and_gi_destroy_until_it_exits(h100):
    gpu = h100.gpu(0)
    gi = gpu.create_gi(14)
    ci = gi.create_ci()
    proc = sleeper()
    try:
        assert h100.sim.add_client(0, proc.pid, gi.id, ci.id) == 0
        (dev,) = gpu.mig_devices()
        assert [p.pid for p in dev.processes()] == [proc.pid]
        with pytest.raises(N.NVMLError_InUse):
            ci.destroy()
    finally:
        proc.kill()
        proc.wait()
    assert dev.processes() == []
    ci.destroy()
    gi.destroy()
    assert gpu.gpu_instances() == []


def test_uuids_r470_form_unique_and_stable(h100):
    gpu = h100.gpu(0)
    for _ in range(3):
        gpu.create_gi(19).create_ci()
    uuids = [d.uuid for d in gpu.mig_devices()]
    assert len(set(uuids)) == 3
    for u in uuids:
        assert u.startswith("MIG-") and len(u) == 40 and u[18] == "5"
    gpu.create_gi(14).create_ci()  # other changes do not renumber existing UUIDs
    assert set(uuids) <= {d.uuid for d in gpu.mig_devices()}


def test_mig_device_index_order_is_gi_then_ci(h100):
    gpu = h100.gpu(0)
    gi_a = gpu.create_gi(19)  # GI 13
    gi_b = gpu.create_gi(9, Placement(0, 4))  # GI 1
    gi_a.create_ci()
    gi_b.create_ci(0)
    gi_b.create_ci(0)
    assert [(d.gi_id, d.ci_id) for d in gpu.mig_devices()] == [(1, 0), (1, 1), (13, 0)]


# ------------------------------------------------------------------------------------------ drivers
def test_driver_version_changes_profiles_and_memory(node_factory):
    node = node_factory("1xH100-80GB@545.23.08")
    assert node.driver_version == "545.23.08"
    spec = sim.parse_spec("2xA30")
    assert spec.driver == sim.DEFAULT_DRIVER


def test_bad_spec_is_a_clear_error():
    with pytest.raises(sim.SpecError, match="valid"):
        sim.parse_spec("2xB9000")
    with pytest.raises(sim.SpecError, match="one driver per node"):
        sim.parse_spec("1xA30@545.23.08,1xH100-80GB@580.65.06")
    # other scripts' digits are not a count (was 1 GPU), a driver part has at most 6 digits (was refused
    # only when the state file was written)
    for bad in ("\u0661xA30", "1xA30@1234567.1"):
        with pytest.raises(sim.SpecError, match="cannot parse simulator spec group"):
            sim.parse_spec(bad)


# ------------------------------------------------------------------------------------------ persistence
def test_state_persists_across_processes(node_factory, tmp_path):
    node = node_factory("2xA30", persistent=True)
    node.gpu(1).set_mig_mode(True)
    node.gpu(1).create_gi(0).create_ci()
    uuid = node.gpu(1).mig_devices()[0].uuid
    code = (
        "from migctl.device import open_node; n = open_node('2xA30'); "
        "print(n.gpu(1).mig_mode(), [d.uuid for d in n.gpu(1).mig_devices()])"
    )
    env = {**os.environ, "MIGCTL_STATE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"(1, 1) ['{uuid}']"


def test_concurrent_invocations_lose_no_update(tmp_path):
    """Seven processes each create one 1g GI at the same time: all seven GIs exist afterwards."""
    env = {**os.environ, "MIGCTL_STATE_DIR": str(tmp_path)}
    init = "from migctl.device import open_node; open_node('1xH100-80GB').gpu(0).set_mig_mode(True)"
    subprocess.run([sys.executable, "-c", init], env=env, check=True)
    code = "from migctl.device import open_node; open_node('1xH100-80GB').gpu(0).create_gi(19)"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(7)]
    assert [p.wait() for p in procs] == [0] * 7
    check = "from migctl.device import open_node; print(len(open_node('1xH100-80GB').gpu(0).gpu_instances()))"
    out = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "7"


def _state_file(tmp_path: Path) -> Path:
    (f,) = [p for p in (tmp_path / "sim").glob("*.json")]
    return f


def test_corrupt_state_file_is_a_clear_error(node_factory, tmp_path):
    node = node_factory("1xA30", persistent=True)
    node.gpu(0).set_mig_mode(True)
    path = _state_file(tmp_path)
    path.write_text("{not json")
    with pytest.raises(sim.StateFileError, match="corrupt"):
        sim.install("1xA30")
        open_node("1xA30")


def test_foreign_state_file_is_a_clear_error(node_factory, tmp_path):
    node = node_factory("1xA30", persistent=True)
    node.gpu(0).set_mig_mode(True)
    path = _state_file(tmp_path)
    path.write_text(json.dumps({"hello": "world"}))
    with pytest.raises(sim.StateFileError, match="not a migctl simulator state file"):
        sim.install("1xA30")
        open_node("1xA30")


def test_state_file_of_another_spec_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "node.json"
    sim.install("1xA30", state_path=path)
    open_node("1xA30", str(path)).gpu(0).set_mig_mode(True)
    sim.install("2xA30", state_path=path)
    with pytest.raises(sim.StateFileError, match="holds node 1xA30"):
        open_node("2xA30", str(path))
    sim.uninstall()


def test_pid_reuse_is_not_mistaken_for_the_original_client(h100):
    gpu = h100.gpu(0)
    gi = gpu.create_gi(19)
    ci = gi.create_ci()
    h100.sim.add_client(0, os.getpid(), gi.id, ci.id)
    with h100.sim.store.transaction() as st:  # pretend our PID was recorded with another start time
        st.gpus[0].processes[0].start_time = time.time() - 10_000
    ci.destroy()  # the recorded client is not this process: not busy


def test_state_file_holds_what_asdict_would(node_factory):
    """The state is written with ``plain`` (no deep copies) on one line: the same data as ``asdict``, read back
    whole by a new store."""
    import dataclasses

    from migctl.sim.state import SimState, plain

    node = node_factory("2xA100-40GB", persistent=True)
    g = node.gpu(0)
    g.set_mig_mode(True)
    gi = g.create_gi(g.profile("3g.20gb").id)
    gi.create_ci()
    assert node.sim.add_client(0, os.getpid(), gi.id, 0) == 0
    assert node.sim.add_holder(1, "dcgm") == 0
    state = node.sim.store.load()
    assert plain(state) == dataclasses.asdict(state)
    path = node.sim.store.path
    text = path.read_text()
    assert text.count("\n") == 0 and json.loads(text) == state.to_json()
    assert SimState.from_json(json.loads(text)) == state
