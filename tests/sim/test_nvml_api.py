"""pynvml-level behaviour of the fake library: the calls other NVML clients (go-nvlib, mig-parted,
nvitop) make work unchanged on the simulator, with NVML's documented return codes."""

from __future__ import annotations

import ctypes

import pynvml as N
import pytest

import migctl.sim as sim


@pytest.fixture
def h():
    sim.install("1xH100-80GB", state_path=None)
    N.nvmlInit()
    handle = N.nvmlDeviceGetHandleByIndex(0)
    N.nvmlDeviceSetMigMode(handle, N.NVML_DEVICE_MIG_ENABLE)
    yield handle
    N.nvmlShutdown()
    sim.uninstall()


def test_visit_mig_profiles_like_go_nvlib(h):
    """go-nvlib loops GI x CI profile indices and skips NOT_SUPPORTED / INVALID_ARGUMENT."""
    found = []
    for i in range(N.NVML_GPU_INSTANCE_PROFILE_COUNT):
        try:
            gi = N.nvmlDeviceGetGpuInstanceProfileInfo(h, i)
        except (N.NVMLError_NotSupported, N.NVMLError_InvalidArgument):
            continue
        found.append((i, gi.id, gi.name.decode() if isinstance(gi.name, bytes) else gi.name))
    assert found == [
        (N.NVML_GPU_INSTANCE_PROFILE_1_SLICE, 19, "MIG 1g.10gb"),
        (N.NVML_GPU_INSTANCE_PROFILE_2_SLICE, 14, "MIG 2g.20gb"),
        (N.NVML_GPU_INSTANCE_PROFILE_3_SLICE, 9, "MIG 3g.40gb"),
        (N.NVML_GPU_INSTANCE_PROFILE_4_SLICE, 5, "MIG 4g.40gb"),
        (N.NVML_GPU_INSTANCE_PROFILE_7_SLICE, 0, "MIG 7g.80gb"),
        (N.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1, 20, "MIG 1g.10gb+me"),
        (N.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2, 15, "MIG 1g.20gb"),
    ]
    with pytest.raises(N.NVMLError_InvalidArgument):
        N.nvmlDeviceGetGpuInstanceProfileInfo(h, N.NVML_GPU_INSTANCE_PROFILE_COUNT)


def test_profile_info_fields(h):
    info = N.nvmlDeviceGetGpuInstanceProfileInfo(h, N.NVML_GPU_INSTANCE_PROFILE_7_SLICE)
    assert (info.id, info.sliceCount, info.instanceCount, info.multiprocessorCount) == (0, 7, 1, 132)
    assert (info.copyEngineCount, info.decoderCount, info.jpegCount, info.ofaCount) == (8, 7, 7, 1)
    assert info.memorySizeMB == 81152
    by_id = N.nvmlDeviceGetGpuInstanceProfileInfoById(h, 15)
    assert by_id.sliceCount == 1 and by_id.memorySizeMB == 20096


def test_possible_placements_count_then_fill(h):
    count = ctypes.c_uint(0)
    N.nvmlDeviceGetGpuInstancePossiblePlacements(h, 15, None, ctypes.byref(count))
    assert count.value == 4
    # *count is output only: a "count" of 1 over a larger buffer still gets all four (driver 580.159.04 did the
    # same with a one-entry buffer, writing past it: docs/real-gpu.md)
    roomy = (N.c_nvmlGpuInstancePlacement_t * 8)()
    small = ctypes.c_uint(1)
    N.nvmlDeviceGetGpuInstancePossiblePlacements(h, 15, roomy, ctypes.byref(small))
    assert small.value == 4 and [(roomy[i].start, roomy[i].size) for i in range(5)][-1] == (0, 0)
    arr = (N.c_nvmlGpuInstancePlacement_t * 4)()
    count = ctypes.c_uint(4)
    N.nvmlDeviceGetGpuInstancePossiblePlacements(h, 15, arr, ctypes.byref(count))
    assert [(arr[i].start, arr[i].size) for i in range(4)] == [(0, 2), (2, 2), (4, 2), (6, 2)]


def test_placements_listed_even_when_occupied(h):
    N.nvmlDeviceCreateGpuInstance(h, 0)
    count = ctypes.c_uint(0)
    N.nvmlDeviceGetGpuInstancePossiblePlacements(h, 19, None, ctypes.byref(count))
    assert count.value == 7
    assert N.nvmlDeviceGetGpuInstanceRemainingCapacity(h, 19) == 0


def test_with_placement_and_instances_query(h):
    pl = N.c_nvmlGpuInstancePlacement_t()
    pl.start, pl.size = 2, 2
    gi = N.nvmlDeviceCreateGpuInstanceWithPlacement(h, 14, ctypes.byref(pl))
    info = N.nvmlGpuInstanceGetInfo(gi)
    assert (info.id, info.profileId, info.placement.start, info.placement.size) == (4, 14, 2, 2)
    arr = (N.c_nvmlGpuInstance_t * 3)()
    count = ctypes.c_uint(3)
    N.nvmlDeviceGetGpuInstances(h, 14, arr, ctypes.byref(count))
    assert count.value == 1
    assert N.nvmlGpuInstanceGetInfo(arr[0]).id == 4
    assert N.nvmlGpuInstanceGetInfo(N.nvmlDeviceGetGpuInstanceById(h, 4)).profileId == 14
    with pytest.raises(N.NVMLError_NotFound):
        N.nvmlDeviceGetGpuInstanceById(h, 5)


def test_mig_device_handles(h):
    gi = N.nvmlDeviceCreateGpuInstance(h, 9)
    ci = N.nvmlGpuInstanceCreateComputeInstance(gi, N.NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE)
    assert N.nvmlComputeInstanceGetInfo(ci).placement.size == 1
    assert N.nvmlDeviceGetMaxMigDeviceCount(h) == 7
    mig = N.nvmlDeviceGetMigDeviceHandleByIndex(h, 0)
    assert N.nvmlDeviceIsMigDeviceHandle(mig)
    assert not N.nvmlDeviceIsMigDeviceHandle(h).value
    with pytest.raises(N.NVMLError_NotFound):
        N.nvmlDeviceGetMigDeviceHandleByIndex(h, 1)
    uuid = N.nvmlDeviceGetUUID(mig)
    assert N.nvmlDeviceIsMigDeviceHandle(N.nvmlDeviceGetHandleByUUID(uuid))
    parent = N.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig)
    assert N.nvmlDeviceGetUUID(parent) == N.nvmlDeviceGetUUID(h)
    attrs = N.nvmlDeviceGetAttributes(mig)
    assert (attrs.gpuInstanceSliceCount, attrs.computeInstanceSliceCount, attrs.memorySizeMB) == (3, 1, 40448)
    assert N.nvmlDeviceGetName(mig) == "NVIDIA H100 80GB HBM3 MIG 1c.3g.40gb"
    with pytest.raises(N.NVMLError_NotSupported):
        N.nvmlDeviceGetAttributes(h)


def test_error_strings_as_nvidia_smi_prints_them(h):
    N.nvmlDeviceCreateGpuInstance(h, 0)
    with pytest.raises(N.NVMLError) as e:
        N.nvmlDeviceCreateGpuInstance(h, 19)
    assert str(e.value) == "Insufficient Resources"
    assert N.nvmlErrorString(N.NVML_ERROR_IN_USE) == "In use by another client"


def test_unimplemented_entry_point_is_function_not_found(h):
    with pytest.raises(N.NVMLError_FunctionNotFound):
        N.nvmlDeviceGetBoardId(h)


def test_fault_injection_fails_the_kth_mutation():
    node = sim.install("1xH100-80GB", state_path=None)
    N.nvmlInit()
    h = N.nvmlDeviceGetHandleByIndex(0)
    N.nvmlDeviceSetMigMode(h, 1)
    node.inject_fault(2)
    N.nvmlDeviceCreateGpuInstance(h, 19)
    with pytest.raises(N.NVMLError_Unknown):
        N.nvmlDeviceCreateGpuInstance(h, 19)
    N.nvmlDeviceCreateGpuInstance(h, 19)
    assert N.nvmlDeviceGetGpuInstanceRemainingCapacity(h, 19) == 5
    sim.uninstall()


def test_entry_points_a_real_580_library_exports(h):
    """scripts/gpu-probe on a real H200 (driver 580.159.04) found three exported functions the simulator lacked:
    the architecture, the pre-R470 placements call and the whole-GPU GPM sample (docs/real-gpu.md)."""
    assert N.nvmlDeviceGetArchitecture(h) == N.NVML_DEVICE_ARCH_HOPPER
    v1 = N._nvmlGetFunctionPointer("nvmlDeviceGetGpuInstancePossiblePlacements")
    count = ctypes.c_uint(0)
    assert v1(h, 15, None, ctypes.byref(count)) == N.NVML_SUCCESS and count.value == 4
    arr = (N.c_nvmlGpuInstancePlacement_t * 4)()
    assert v1(h, 15, arr, ctypes.byref(count)) == N.NVML_SUCCESS
    assert [(arr[i].start, arr[i].size) for i in range(4)] == [(0, 2), (2, 2), (4, 2), (6, 2)]
    sample = N.nvmlGpmSampleAlloc()
    try:
        with pytest.raises(N.NVMLError_NotSupported):  # MIG on: per-GI samples only (UNCONFIRMED)
            N.nvmlGpmSampleGet(h, sample)
        N.nvmlDeviceSetMigMode(h, N.NVML_DEVICE_MIG_DISABLE)
        N.nvmlGpmSampleGet(h, sample)
    finally:
        N.nvmlGpmSampleFree(sample)
