"""The strict simulator (issue 8, item 3): each behaviour a real driver has and the old fake lacked, selectable in
the spec (``;key=value``) or with ``migctl sim set``, pinned here through pynvml and the device layer."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pynvml as N
import pytest

import migctl.sim as sim
from migctl.catalog import Placement, load_model
from migctl.device import DeviceError
from migctl.sim.fakelib import FIRST_DRIVER


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


# ------------------------------------------------------------------------------------------ functions by driver
def test_functions_absent_below_the_driver_that_introduced_them(node_factory):
    node = node_factory("1xA100-40GB@470.57.02")
    h = node.gpu(0).handle
    with pytest.raises(N.NVMLError_FunctionNotFound):
        N.nvmlDeviceGetGpuInstanceProfileInfo(h, 0)  # ...InfoV: first in the NVML 11.6 header (R510)
    with pytest.raises(N.NVMLLibraryMismatchError):
        N.nvmlDeviceGetComputeRunningProcesses(h)  # pynvml calls _v3 unconditionally
    assert N.nvmlDeviceGetComputeRunningProcesses_v2(h) == []
    for name, first in FIRST_DRIVER.items():
        assert node.sim.lib.has_function(name) == ((470, 57, 2) >= first), name


def test_device_layer_falls_back_on_old_drivers_like_go_nvml(node_factory):
    node = node_factory("1xA100-40GB@470.57.02")
    gpu = node.gpu(0)
    gpu.set_mig_mode(True)
    model = load_model("A100-40GB")
    # v1 structs carry no name: names come from the go-nvlib rule and equal the catalog's
    assert {(p.id, p.name) for p in gpu.profiles()} == {(p.id, p.name) for p in model.profiles_on((470, 57, 2))}
    gi = gpu.create_gi(9, Placement(0, 4))
    assert [c.name for c in gi.ci_profiles()] == ["1c.3g.20gb", "2c.3g.20gb", "3g.20gb"]
    assert gpu.processes() == []  # _v2 fallback
    # without ...CreateComputeInstanceWithPlacement (R525) the placement the driver picks is kept...
    ci = gi.create_ci(0, Placement(0, 1))
    assert ci.placement == Placement(0, 1)
    # ...and any other is refused with the minimum driver named, the stray CI removed
    with pytest.raises(DeviceError, match=r"R525 \(525\.60\.13\); this driver \(470\.57\.02\)"):
        gi.create_ci(0, Placement(2, 1))
    assert [c.placement for c in gi.compute_instances()] == [Placement(0, 1)]


def test_gi_placement_needs_r460(node_factory):
    gpu = node_factory("1xA100-40GB@450.80.02").gpu(0)
    gpu.set_mig_mode(True)
    assert gpu.create_gi(19).placement == Placement(6, 1)  # the driver's own choice still works
    with pytest.raises(DeviceError, match=r"first in driver R460"):
        gpu.create_gi(19, Placement(0, 1))


def test_functions_all_option_serves_every_entry_point(node_factory):
    node = node_factory("1xA100-40GB@470.57.02;functions=all")
    node.gpu(0).set_mig_mode(True)
    info = N.nvmlDeviceGetGpuInstanceProfileInfo(node.gpu(0).handle, 0)
    assert info.id == 19


# ------------------------------------------------------------------------------------------ permissions
def test_non_root_caller_gets_no_permission(node_factory):
    node = node_factory("1xH100-80GB")
    gpu = node.gpu(0)
    gpu.set_mig_mode(True)
    gi = gpu.create_gi(14)
    gi.create_ci()
    node.sim.set_behaviour("caller", "user")
    with pytest.raises(N.NVMLError_NoPermission):
        gpu.set_mig_mode(False)
    with pytest.raises(N.NVMLError_NoPermission):
        gpu.create_gi(19)
    with pytest.raises(N.NVMLError_NoPermission):
        gpu.gpu_instances()[0].compute_instances()[0].destroy()
    with pytest.raises(N.NVMLError_NoPermission):
        gpu.gpu_instances()[0].destroy()
    count = ctypes.c_uint(0)
    with pytest.raises(N.NVMLError_NoPermission):
        N.nvmlDeviceGetGpuInstancePossiblePlacements(gpu.handle, 19, None, ctypes.byref(count))
    with pytest.raises(N.NVMLError_NoPermission):
        N.nvmlDeviceGetComputeRunningProcesses(gpu.handle)  # GPU-wide list in MIG mode is privileged
    # the device layer still reads everything a user may read
    gpu.forget()
    assert [p.placements for p in gpu.profiles()] == [p.placements for p in load_model("H100-80GB").gi_profiles]
    assert gpu.processes() == []  # from the per-MIG-device lists
    with pytest.raises(N.NVMLError_NoPermission):
        gpu.reset()
    assert len(gpu.gpu_instances()) == 1


def test_non_root_caller_reads_placements_with_mig_off(node_factory):
    """A real 580.159.04 driver answered user nobody's placements query with MIG off (docs/real-gpu.md)."""
    node = node_factory("1xH200@580.159.04;caller=user")
    count = ctypes.c_uint(0)
    N.nvmlDeviceGetGpuInstancePossiblePlacements(node.gpu(0).handle, 19, None, ctypes.byref(count))
    assert count.value == 7


# ------------------------------------------------------------------------------------------ pass-through VM
def test_passthrough_vm_mode_change_needs_vm_reboot(node_factory):
    node = node_factory("1xA100-80GB;vm=passthrough")
    gpu = node.gpu(0)
    assert gpu.set_mig_mode(True) == N.NVML_ERROR_RESET_REQUIRED
    assert gpu.mig_mode() == (0, 1)
    with pytest.raises(N.NVMLError_NotSupported) as e:  # "Resetting GPU ... is not supported" (DOC)
        gpu.reset()
    assert "reboot the VM or node to apply a pending MIG mode" in e.value.detail
    node.sim.reboot()
    assert node.gpus()[0].mig_mode() == (1, 1)


# ------------------------------------------------------------------------------------------ holders
def test_persistence_daemon_blocks_ampere_mode_change_and_reset_with_no_process_listed(node_factory):
    node = node_factory("1xA100-40GB;persistenced=on")
    gpu = node.gpu(0)
    assert gpu.set_mig_mode(True) == N.NVML_ERROR_IN_USE  # pending, and nobody in the process list
    assert gpu.mig_mode() == (0, 1) and gpu.processes() == []
    with pytest.raises(N.NVMLError_InUse) as e:
        gpu.reset()
    assert "held by nvidia-persistenced" in e.value.detail
    assert "nvidia-smi -i N -pm 0" in e.value.detail and "systemctl stop nvidia-persistenced" in e.value.detail
    node.sim.set_behaviour("persistenced", "off")
    node.gpu(0).reset()
    assert node.gpu(0).mig_mode() == (1, 1)


def test_hopper_toggles_without_the_reset_even_with_persistenced(node_factory):
    gpu = node_factory("1xH100-80GB;persistenced=on").gpu(0)
    assert gpu.set_mig_mode(True) == N.NVML_SUCCESS
    assert gpu.mig_mode() == (1, 1)
    with pytest.raises(N.NVMLError_InUse):
        gpu.reset()  # the daemon still holds the GPU open


def test_dcgm_like_holder_makes_destroy_in_use_with_no_process(node_factory):
    node = node_factory("1xH100-80GB")
    gpu = node.gpu(0)
    gpu.set_mig_mode(True)
    gi = gpu.create_gi(14)
    ci = gi.create_ci()
    assert node.sim.add_holder(0, "dcgm", gi=gi.id, ci=ci.id) == 0
    assert gpu.processes() == [] and ci.mig_device().processes() == []
    with pytest.raises(N.NVMLError_InUse):
        ci.destroy()
    with pytest.raises(N.NVMLError_InUse):
        gpu.reset()
    assert node.sim.remove_holder(0, "dcgm") == 0
    ci.destroy()
    gi.destroy()


# ------------------------------------------------------------------------------------------ handles, structs
def test_handles_of_destroyed_instances_are_invalid_even_when_ids_are_reused(node_factory):
    gpu = node_factory("1xH100-80GB").gpu(0)
    gpu.set_mig_mode(True)
    old = gpu.create_gi(19, Placement(0, 1))
    old_ci = old.create_ci()
    old_ci.destroy()
    old.destroy()
    new = gpu.create_gi(19, Placement(0, 1))
    assert new.id == old.id
    with pytest.raises(N.NVMLError_InvalidArgument):
        N.nvmlGpuInstanceGetInfo(old.handle)
    with pytest.raises(N.NVMLError_InvalidArgument):
        N.nvmlGpuInstanceDestroy(old.handle)
    assert N.nvmlGpuInstanceGetInfo(new.handle).id == new.id
    new_ci = new.create_ci()
    with pytest.raises(N.NVMLError_InvalidArgument):
        N.nvmlComputeInstanceGetInfo(old_ci.handle)
    assert N.nvmlComputeInstanceGetInfo(new_ci.handle).id == new_ci.id


def test_bad_struct_version_is_invalid_argument(node_factory):
    gpu = node_factory("1xH100-80GB").gpu(0)
    gpu.set_mig_mode(True)
    info = N.c_nvmlGpuInstanceProfileInfo_v2_t()
    fn = N._nvmlGetFunctionPointer("nvmlDeviceGetGpuInstanceProfileInfoV")
    assert fn(gpu.handle, 0, ctypes.byref(info)) == N.NVML_SUCCESS
    info.version = 0x01000098
    assert fn(gpu.handle, 0, ctypes.byref(info)) == N.NVML_ERROR_INVALID_ARGUMENT
    ci_info = N.c_nvmlComputeInstanceProfileInfo_v2_t()
    ci_info.version = 0x7
    gi = gpu.create_gi(9)
    fn = N._nvmlGetFunctionPointer("nvmlGpuInstanceGetComputeInstanceProfileInfoV")
    assert fn(gi.handle, 0, 0, ctypes.byref(ci_info)) == N.NVML_ERROR_INVALID_ARGUMENT


# ------------------------------------------------------------------------------------------ profile info, MIG off
def test_profile_info_not_supported_with_mig_off_on_older_drivers(node_factory):
    node = node_factory("1xA100-80GB@535.104.05")
    gpu = node.gpu(0)
    with pytest.raises(N.NVMLError_NotSupported):
        N.nvmlDeviceGetGpuInstanceProfileInfo(gpu.handle, 0)
    assert gpu.profiles() == []
    assert gpu.model is not None and gpu.model is gpu.catalog_model  # the catalog stands in until MIG is on
    gpu.set_mig_mode(True)
    assert len(gpu.profiles()) == 7 and gpu.model.key == "A100-80GB"


def test_profile_info_with_mig_off_on_newer_drivers_and_by_option(node_factory):
    assert len(node_factory("1xA100-80GB@580.65.06").gpu(0).profiles()) == 7
    sim.uninstall()
    gpu = node_factory("1xA100-80GB@580.65.06;profile-info-mig-off=not-supported").gpu(0)
    assert gpu.profiles() == []


def test_profiles_enumerated_until_invalid_argument_not_pynvml_count(node_factory, monkeypatch):
    monkeypatch.setattr(N, "NVML_GPU_INSTANCE_PROFILE_COUNT", 0xA)  # nvidia-ml-py 12.535's value
    monkeypatch.setattr(N, "NVML_COMPUTE_INSTANCE_PROFILE_COUNT", 0x8)
    gpu = node_factory("1xRTX-PRO-6000").gpu(0)
    gpu.set_mig_mode(True)
    assert len(gpu.profiles()) == len(load_model("RTX-PRO-6000").gi_profiles) == 11


# ------------------------------------------------------------------------------------------ reboot, reset
def test_reboot_ampere_keeps_mode_hopper_does_not(node_factory):
    node = node_factory("1xA100-40GB,1xH100-80GB")
    for g in node.gpus():
        g.set_mig_mode(True)
        g.create_gi(19)
    node.sim.reboot()
    node.forget()
    a100, h100 = node.gpus()
    assert a100.mig_mode() == (1, 1) and a100.gpu_instances() == []
    assert h100.mig_mode() == (0, 0)


def test_reset_needs_this_process_nvml_session_closed(node_factory):
    node = node_factory("2xH100-80GB")
    g0, g1 = node.gpus()
    proc = sleeper()
    try:
        node.sim.add_client(0, proc.pid)
        g0.set_mig_mode(True)
        g1.set_mig_mode(True)
        assert g0.mig_mode() == (0, 1)
        # the raw simulated reset refuses while this process holds an NVML session, and says so
        got = node.sim.reset_gpus([g1.bus_id])
        assert got[g1.bus_id][0] == N.NVML_ERROR_IN_USE and "this process's own NVML session" in got[g1.bus_id][1]
    finally:
        proc.kill()
        proc.wait()
    # the device layer shuts NVML down, resets both by bus id in one call, re-initialises, drops handles
    node.reset_gpus([g0, g1])
    assert node._gpus is None
    assert [g.mig_mode() for g in node.gpus()] == [(1, 1), (1, 1)]
    assert N.nvmlDeviceGetCount() == 2  # NVML is initialised again


def test_real_reset_without_nvidia_smi_is_a_clear_error(monkeypatch, node_factory):
    node = node_factory("1xH100-80GB")
    monkeypatch.setattr(node, "sim", None)  # the real path up to the tool check; nothing runs
    monkeypatch.setenv("PATH", os.devnull)
    with pytest.raises(DeviceError, match="needs nvidia-smi .* not in PATH"):
        node.reset_gpus(node.gpus())


# ------------------------------------------------------------------------------------------ spec and verbs
def test_spec_options_are_validated():
    with pytest.raises(sim.SpecError, match="valid: caller=root|user"):
        sim.parse_spec("1xA30;caler=user")
    with pytest.raises(sim.SpecError, match=r"vm='cloud' is not valid; valid: vm=none\|passthrough"):
        sim.parse_spec("1xA30;vm=cloud")
    spec = sim.parse_spec("1xA30@535.104.05;vm=passthrough;caller=user")
    assert str(spec) == "1xA30@535.104.05;caller=user;vm=passthrough"
