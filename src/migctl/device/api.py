"""The device layer: MIG management through NVML (nvidia-ml-py's ``pynvml``), for real GPUs and the simulator.

Every call here goes through ``pynvml``; whether a real ``libnvidia-ml.so`` or the simulator
(:mod:`migctl.sim`) answers underneath is decided once, by :func:`open_node`. Docstrings name the
``nvidia-smi`` command each call corresponds to.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pynvml as N

from migctl.catalog import GpuModel, Placement, model_by_pci_id
from migctl.inputs import is_digits


class DeviceError(RuntimeError):
    """A device-layer failure with a user-facing message (the NVML error, if any, is ``__cause__``)."""


class DriverNotReady(DeviceError):
    """The NVIDIA driver is expected (``MIGCTL_BACKEND=nvml`` or a driver marker) but NVML cannot be used yet:
    its library does not load, or it does not initialise. A daemon may wait for it (a driver container still
    installing); a command reports it."""


def nvml_error_text(e: BaseException) -> str:
    """NVML's error string, as nvidia-smi prints it (e.g. "Insufficient Resources")."""
    return str(e)


@dataclass(frozen=True)
class GIProfileInfo:
    """One GPU-instance profile as NVML reports it (nvmlGpuInstanceProfileInfo_v2 + placements)."""

    index: int
    id: int
    name: str  # without the "MIG " prefix
    slices: int
    instance_count: int
    memory_mib: int
    sms: int
    ce: int
    dec: int
    enc: int
    jpeg: int
    ofa: int
    p2p: bool
    placements: tuple[Placement, ...]

    @property
    def full_name(self) -> str:
        return f"MIG {self.name}"


@dataclass(frozen=True)
class CIProfileInfo:
    """One compute-instance profile of a GPU instance (nvmlComputeInstanceProfileInfo_v2)."""

    id: int
    name: str
    slices: int
    instance_count: int
    sms: int
    ce: int
    dec: int
    enc: int
    jpeg: int
    ofa: int
    is_default: bool
    placements: tuple[Placement, ...] = field(default=())


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    used_mib: int
    gi_id: int | None
    ci_id: int | None
    mps: bool = False  # an MPS client (also in NVML's MPS process list; nvidia-smi's Type "M+C")


def _name(raw: Any) -> str:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return text[4:] if text.startswith("MIG ") else text


def _placements(fn: Any, handle: Any, profile_id: int, ptype: Any) -> tuple[Placement, ...]:
    """Possible placements: ask for the count (placements = NULL), then fill a buffer of that size (nvml.h)."""
    count = ctypes.c_uint(0)
    fn(handle, profile_id, None, ctypes.byref(count))
    if count.value == 0:
        return ()
    arr = (ptype * count.value)()
    fn(handle, profile_id, arr, ctypes.byref(count))
    return tuple(Placement(arr[i].start, arr[i].size) for i in range(count.value))


def _raw_fn(name: str) -> Any:
    """A C entry point pynvml does not wrap (an older version of a function); raises NVMLError_FunctionNotFound."""
    fn = N._nvmlGetFunctionPointer(name)

    def call(*args: Any) -> None:
        N._nvmlCheckReturn(fn(*args))

    return call


# First driver that exports each entry point migctl needs and may lack (go-nvml gen/nvml/nvml.h history; see
# migctl.sim.fakelib.FIRST_DRIVER for the sources). Used to name the minimum driver when a function is missing.
MIN_DRIVER = {
    "nvmlDeviceCreateGpuInstanceWithPlacement": "R460 (460.32.03)",
    "nvmlGpuInstanceCreateComputeInstanceWithPlacement": "R525 (525.60.13)",
    "nvmlGpuInstanceGetComputeInstancePossiblePlacements": "R525 (525.60.13)",
}

# Safety bound on profile enumeration: NVML answers INVALID_ARGUMENT past its last profile index (0x12 GI indices
# in the NVML 13.3 header); stop at 64 whatever a driver answers.
_MAX_PROFILE_INDEX = 64


class ComputeInstance:
    """A compute instance (one MIG device)."""

    def __init__(self, gi: GpuInstance, handle: Any) -> None:
        self.gi = gi
        self.handle = handle
        info = N.nvmlComputeInstanceGetInfo(handle)
        self.id: int = info.id
        self.profile_id: int = info.profileId
        self.placement = Placement(info.placement.start, info.placement.size)

    def profile(self) -> CIProfileInfo | None:
        return next((p for p in self.gi.ci_profiles() if p.id == self.profile_id), None)

    def mig_device(self) -> MigDevice | None:
        return next((d for d in self.gi.gpu.mig_devices() if d.gi_id == self.gi.id and d.ci_id == self.id), None)

    def destroy(self) -> None:
        """``nvidia-smi mig -i G -gi GI -ci CI -dci``: raises NVMLError_InUse while a process runs on it.
        The handle is invalid afterwards (nvml.h)."""
        self.gi.gpu.node.changing()
        N.nvmlComputeInstanceDestroy(self.handle)

    def __repr__(self) -> str:
        return f"ComputeInstance(gpu={self.gi.gpu.index}, gi={self.gi.id}, ci={self.id}, profile={self.profile_id})"


class GpuInstance:
    """A GPU instance on a MIG-enabled GPU."""

    def __init__(self, gpu: Gpu, handle: Any) -> None:
        self.gpu = gpu
        self.handle = handle
        self._ci_profiles: list[CIProfileInfo] | None = None
        info = N.nvmlGpuInstanceGetInfo(handle)
        self.id: int = info.id
        self.profile_id: int = info.profileId
        self.placement = Placement(info.placement.start, info.placement.size)

    def profile(self) -> GIProfileInfo:
        p = self.gpu.profile(self.profile_id)
        assert p is not None
        return p

    def ci_profiles(self) -> list[CIProfileInfo]:
        """``nvidia-smi mig -lcip -gi ID``: CI profiles this GI offers; ``is_default`` marks the ``*`` one.

        Enumerated by index until NVML answers INVALID_ARGUMENT (not up to pynvml's compiled-in count); the
        versioned call first, the v1 struct on drivers before R510 (as go-nvml falls back); placements from NVML
        (R525+), else from the catalog."""
        if self._ci_profiles is not None:
            return self._ci_profiles
        out: list[CIProfileInfo] = []
        gp = self.profile()
        version = 2
        for idx in range(_MAX_PROFILE_INDEX):
            try:
                info = N.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                    self.handle, idx, N.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED, version
                )
            except N.NVMLError_FunctionNotFound:
                if version == 1:
                    raise
                version = 1
                info = N.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                    self.handle, idx, N.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED, 1
                )
            except N.NVMLError_NotSupported:
                continue
            except N.NVMLError_InvalidArgument:
                break
            if version == 2:
                name = _name(info.name)
            else:
                from migctl.catalog.model import attribute_suffix, gi_index_name

                name = self.gpu.derived_name(gp.slices, gp.memory_mib, attribute_suffix(gi_index_name(gp.index)),
                                             info.sliceCount)
            try:
                pls = _placements(N.nvmlGpuInstanceGetComputeInstancePossiblePlacements, self.handle, info.id,
                                  N.c_nvmlComputeInstancePlacement_t)
            except (N.NVMLError_FunctionNotFound, N.NVMLError_NoPermission, N.NVMLError_NotSupported):
                pls = self.gpu.catalog_ci_placements(gp, info.id)
            out.append(
                CIProfileInfo(
                    id=info.id, name=name, slices=info.sliceCount, instance_count=info.instanceCount,
                    sms=info.multiprocessorCount, ce=info.sharedCopyEngineCount, dec=info.sharedDecoderCount,
                    enc=info.sharedEncoderCount, jpeg=info.sharedJpegCount, ofa=info.sharedOfaCount,
                    is_default=info.sliceCount == gp.slices, placements=pls,
                )
            )
        self._ci_profiles = out
        return out

    def ci_remaining(self, ci_profile_id: int) -> int:
        return N.nvmlGpuInstanceGetComputeInstanceRemainingCapacity(self.handle, ci_profile_id)

    def compute_instances(self) -> list[ComputeInstance]:
        """``nvidia-smi mig -i G -gi ID -lci``."""
        out: list[ComputeInstance] = []
        for p in self.ci_profiles():
            count = ctypes.c_uint(16)
            arr = (N.c_nvmlComputeInstance_t * 16)()
            N.nvmlGpuInstanceGetComputeInstances(self.handle, p.id, arr, ctypes.byref(count))
            out.extend(ComputeInstance(self, arr[i]) for i in range(count.value))
        return sorted(out, key=lambda c: c.id)

    def create_ci(self, ci_profile_id: int | None = None, placement: Placement | None = None) -> ComputeInstance:
        """``nvidia-smi mig -i G -gi ID -cci [PROFILE]``; the default CI profile when none is given."""
        if ci_profile_id is None:
            ci_profile_id = next(p.id for p in self.ci_profiles() if p.is_default)
        self.gpu.node.changing()
        if placement is None:
            h = N.nvmlGpuInstanceCreateComputeInstance(self.handle, ci_profile_id)
            return ComputeInstance(self, h)
        pl = N.c_nvmlComputeInstancePlacement_t()
        pl.start, pl.size = placement.start, placement.size
        try:
            h = N.nvmlGpuInstanceCreateComputeInstanceWithPlacement(self.handle, ci_profile_id, ctypes.byref(pl))
            return ComputeInstance(self, h)
        except N.NVMLError_FunctionNotFound:
            pass
        # Before R525 there is no way to choose a CI placement: create where the driver puts it and keep it only
        # if that is the placement asked for.
        ci = ComputeInstance(self, N.nvmlGpuInstanceCreateComputeInstance(self.handle, ci_profile_id))
        if ci.placement == placement:
            return ci
        got = ci.placement
        ci.destroy()
        raise DeviceError(
            f"GPU {self.gpu.index} GI {self.id}: a compute instance at placement {placement} needs "
            f"nvmlGpuInstanceCreateComputeInstanceWithPlacement, first in driver "
            f"{MIN_DRIVER['nvmlGpuInstanceCreateComputeInstanceWithPlacement']}; this driver "
            f"({self.gpu.node.driver_version}) put it at {got}. Upgrade the driver, or ask for compute instances "
            "in the order the driver places them"
        )

    def destroy(self) -> None:
        """``nvidia-smi mig -i G -gi ID -dgi``: raises NVMLError_InUse while CIs, processes or other clients that
        hold it open remain. The handle is invalid afterwards (nvml.h)."""
        self.gpu.node.changing()
        N.nvmlGpuInstanceDestroy(self.handle)

    def __repr__(self) -> str:
        return f"GpuInstance(gpu={self.gpu.index}, id={self.id}, profile={self.profile_id}, placement={self.placement})"


class MigDevice:
    """A MIG device (one CI, addressable by ``MIG-<uuid>``), as ``nvidia-smi -L`` lists it."""

    def __init__(self, gpu: Gpu, index: int, handle: Any) -> None:
        self.gpu = gpu
        self.index = index
        self.handle = handle
        self.uuid: str = N.nvmlDeviceGetUUID(handle)
        self.gi_id: int = N.nvmlDeviceGetGpuInstanceId(handle)
        self.ci_id: int = N.nvmlDeviceGetComputeInstanceId(handle)
        self.device_name: str = N.nvmlDeviceGetName(handle)
        attrs = N.nvmlDeviceGetAttributes(handle)
        self.sms: int = attrs.multiprocessorCount
        self.memory_mib: int = int(attrs.memorySizeMB)
        self.gi_slices: int = attrs.gpuInstanceSliceCount
        self.ci_slices: int = attrs.computeInstanceSliceCount
        self.ce, self.dec, self.enc = attrs.sharedCopyEngineCount, attrs.sharedDecoderCount, attrs.sharedEncoderCount
        self.jpeg, self.ofa = attrs.sharedJpegCount, attrs.sharedOfaCount

    @property
    def profile_name(self) -> str:
        """e.g. ``1c.2g.12gb`` (from the device name ``<GPU> MIG <profile>``)."""
        return self.device_name.rsplit(" MIG ", 1)[-1]

    def memory(self) -> tuple[int, int]:
        """(used MiB, total MiB), used as nvidia-smi shows it (:func:`memory_mib`)."""
        total, _, used, _ = memory_mib(self.handle)
        return used, total

    def processes(self) -> list[ProcessInfo]:
        return _procs(self.handle)

    def __repr__(self) -> str:
        return f"MigDevice(gpu={self.gpu.index}, index={self.index}, gi={self.gi_id}, ci={self.ci_id}, {self.uuid})"


def memory_mib(handle: Any) -> tuple[int, int, int, int]:
    """(total, reserved, used, free) MiB as nvidia-smi shows them: NVML's v2 memory info (R515+), whose ``used``
    leaves out what the driver reserves, else v1 (``used`` includes it; reserved 0). Rounded up: on a real H200
    (driver 580.159.04) NVML gave 0 / 644939776 / 150109880320 bytes used / reserved / free and nvidia-smi
    printed 0, 616 and 143156 MiB (docs/real-gpu.md)."""
    try:
        m = N.nvmlDeviceGetMemoryInfo(handle, version=N.nvmlMemory_v2)
        raw = (int(m.total), int(m.reserved), int(m.used), int(m.free))
    except (N.NVMLError_FunctionNotFound, N.NVMLError_ArgumentVersionMismatch, N.NVMLError_NotSupported):
        m = N.nvmlDeviceGetMemoryInfo(handle)
        raw = (int(m.total), 0, int(m.used), int(m.free))
    total, reserved, used, free = raw
    mib = 1 << 20
    return total // mib, -(-reserved // mib), -(-used // mib), -(-free // mib)


def _procs(handle: Any) -> list[ProcessInfo]:
    """Compute processes: the _v3 call (R510+), else _v2 (R455+), as go-nvml falls back to older symbols."""
    out = []
    try:
        raw = N.nvmlDeviceGetComputeRunningProcesses_v3(handle)
    except N.NVMLError_FunctionNotFound:
        raw = N.nvmlDeviceGetComputeRunningProcesses_v2(handle)
    mps: set[int] = set()
    if raw:
        try:  # the MPS clients among them (R510+; an older driver or a refusal: none marked)
            mps = {int(p.pid) for p in N.nvmlDeviceGetMPSComputeRunningProcesses_v3(handle)}
        except N.NVMLError:
            pass
    for p in raw:
        gi = getattr(p, "gpuInstanceId", 0xFFFFFFFF)
        ci = getattr(p, "computeInstanceId", 0xFFFFFFFF)
        out.append(
            ProcessInfo(
                pid=int(p.pid),
                used_mib=int(p.usedGpuMemory or 0) >> 20,
                gi_id=None if gi == 0xFFFFFFFF else int(gi),
                ci_id=None if ci == 0xFFFFFFFF else int(ci),
                mps=int(p.pid) in mps,
            )
        )
    return out


class Gpu:
    """A physical GPU. Its MIG facts (profiles, placements, names, memory, engines) come from NVML; the catalog
    annotates and validates them (:attr:`catalog_model`, :meth:`catalog_differences`)."""

    def __init__(self, node: Node, index: int) -> None:
        self.node = node
        self.index = index
        self.handle = N.nvmlDeviceGetHandleByIndex(index)
        self.name: str = N.nvmlDeviceGetName(self.handle)
        self.uuid: str = N.nvmlDeviceGetUUID(self.handle)
        pci = N.nvmlDeviceGetPciInfo(self.handle)
        bus = pci.busId.decode() if isinstance(pci.busId, bytes) else str(pci.busId)
        self.bus_id: str = bus
        self.pci_device_id: int = int(pci.pciDeviceId)
        self.pci_subsystem_id: int = int(pci.pciSubSystemId)
        self.catalog_model: GpuModel | None = model_by_pci_id(self.pci_device_id, self.name)
        self._profiles: list[GIProfileInfo] | None = None
        self._model: GpuModel | None | bool = False  # False = not built yet
        self._total_mib: int | None = None

    # ---------------------------------------------------------------- mode
    def mig_capable(self) -> bool:
        try:
            N.nvmlDeviceGetMigMode(self.handle)
            return True
        except N.NVMLError_NotSupported:
            return False

    def mig_mode(self) -> tuple[int, int]:
        """(current, pending): ``nvidia-smi --query-gpu=mig.mode.current,mig.mode.pending``."""
        cur, pending = N.nvmlDeviceGetMigMode(self.handle)
        return int(cur), int(pending)

    def mig_state(self) -> tuple[int | None, int | None]:
        """:meth:`mig_mode`, or (None, None) on a GPU without MIG (NVML answers Not Supported)."""
        try:
            return self.mig_mode()
        except N.NVMLError_NotSupported:
            return None, None

    def set_mig_mode(self, enabled: bool) -> int:
        """``nvidia-smi -i N -mig 1|0``. Returns the activation status (NVML_SUCCESS, or why the change is pending:
        IN_USE when the GPU is busy or held, RESET_REQUIRED in a pass-through VM)."""
        self.forget()
        self.node.changing()
        return int(N.nvmlDeviceSetMigMode(self.handle, N.NVML_DEVICE_MIG_ENABLE if enabled else N.NVML_DEVICE_MIG_DISABLE))

    def reset(self, timeout_s: float = 120.0) -> None:
        """``nvidia-smi -r -i BUS``: applies a pending MIG mode; refused while the GPU is in use or held open.
        See :meth:`Node.reset_gpus`; this Gpu object (and every other of the node) must be re-read afterwards."""
        self.node.reset_gpus([self], timeout_s)

    def forget(self) -> None:
        """Drop what was read from NVML (profiles, model): it is re-read on next use."""
        self._profiles = None
        self._model = False

    # ---------------------------------------------------------------- profiles
    def total_memory_mib(self) -> int:
        if self._total_mib is None:
            self._total_mib = int(N.nvmlDeviceGetMemoryInfo(self.handle).total) >> 20
        return self._total_mib

    def derived_name(self, gi_slices: int, memory_mib: int, suffix: str = "", ci_slices: int | None = None) -> str:
        """A profile name by the go-nvlib rule, for drivers whose v1 structs carry no name (before R510)."""
        from migctl.catalog import profile_name

        return profile_name(gi_slices, memory_mib, self.total_memory_mib(), suffix, ci_slices=ci_slices)

    def profiles(self) -> list[GIProfileInfo]:
        """``nvidia-smi mig -i N -lgip`` / ``-lgipp``: GI profiles this GPU offers, in nvidia-smi's order.

        Enumerated by profile index until NVML answers INVALID_ARGUMENT (NVML's end of the list; pynvml's
        compiled-in NVML_GPU_INSTANCE_PROFILE_COUNT is only as new as the installed nvidia-ml-py). The versioned
        call first, the v1 struct (no name) before R510; placements with the count-then-fill protocol, the v1 call
        before R470. Empty when the driver cannot answer (no MIG, or MIG disabled on older drivers)."""
        if self._profiles is not None:
            return self._profiles
        from migctl.catalog.model import attribute_suffix, gi_index_name

        out: list[GIProfileInfo] = []
        if not self.mig_capable():
            self._profiles = out
            return out
        version = 2
        for idx in range(_MAX_PROFILE_INDEX):
            try:
                info = N.nvmlDeviceGetGpuInstanceProfileInfo(self.handle, idx, version)
            except N.NVMLError_FunctionNotFound:
                if version == 1:
                    raise
                version = 1
                try:
                    info = N.nvmlDeviceGetGpuInstanceProfileInfo(self.handle, idx, 1)
                except N.NVMLError_NotSupported:
                    continue
                except N.NVMLError_InvalidArgument:
                    break
            except N.NVMLError_NotSupported:
                continue
            except N.NVMLError_InvalidArgument:
                break
            memory = int(info.memorySizeMB)
            if version == 2:
                name = _name(info.name)
            else:
                name = self.derived_name(info.sliceCount, memory, attribute_suffix(gi_index_name(idx)))
            try:
                pls = _placements(N.nvmlDeviceGetGpuInstancePossiblePlacements, self.handle, info.id,
                                  N.c_nvmlGpuInstancePlacement_t)
            except N.NVMLError_FunctionNotFound:
                pls = _placements(_raw_fn("nvmlDeviceGetGpuInstancePossiblePlacements"), self.handle, info.id,
                                  N.c_nvmlGpuInstancePlacement_t)
            except N.NVMLError_NoPermission:
                cat = self.catalog_model.profile(info.id) if self.catalog_model else None
                pls = cat.placements if cat is not None else ()
            out.append(
                GIProfileInfo(
                    index=idx, id=info.id, name=name, slices=info.sliceCount,
                    instance_count=info.instanceCount, memory_mib=memory,
                    sms=info.multiprocessorCount, ce=info.copyEngineCount, dec=info.decoderCount,
                    enc=info.encoderCount, jpeg=info.jpegCount, ofa=info.ofaCount,
                    p2p=bool(info.isP2pSupported), placements=pls,
                )
            )
        # nvidia-smi lists profiles by (compute slices, memory, ID): 19, 20, 15, 14, 9, 5, 0 on 8-slice parts
        out.sort(key=lambda p: (p.slices, p.memory_mib, p.id))
        self._profiles = out
        return out

    @property
    def model(self) -> GpuModel | None:
        """This GPU's MIG model as NVML reports it (profiles, placements, memory, engines), keyed by the catalog
        key when the catalog knows the part; the catalog entry itself when NVML cannot list profiles now (MIG
        disabled on an older driver); None for a GPU without MIG that the catalog does not know."""
        if self._model is False:
            from migctl.device.model import model_from_nvml

            self._model = model_from_nvml(self) if self.profiles() else self.catalog_model
        return self._model  # type: ignore[return-value]

    def catalog_differences(self) -> list[str]:
        """What NVML reports that the catalog does not say (empty when they agree; one line when unknown)."""
        from migctl.device.model import differences

        return differences(self)

    def catalog_ci_placements(self, gp: GIProfileInfo, ci_profile_id: int) -> tuple[Placement, ...]:
        cat = self.catalog_model.profile(gp.id) if self.catalog_model else None
        cp = cat.ci_profile(ci_profile_id) if cat is not None else None
        return cp.placements if cp is not None else ()

    def profile(self, ref: int | str) -> GIProfileInfo | None:
        """A profile by ID, short name (``3g.40gb``) or full name (``MIG 3g.40gb``)."""
        text = str(ref).strip()
        if is_digits(text):
            return next((p for p in self.profiles() if p.id == int(text)), None)
        if text.upper().startswith("MIG "):
            text = text[4:].strip()
        return next((p for p in self.profiles() if p.name == text), None)

    def remaining(self, profile_id: int) -> int:
        """Free instances of a profile (the "Free" of ``-lgip``): nvmlDeviceGetGpuInstanceRemainingCapacity."""
        return int(N.nvmlDeviceGetGpuInstanceRemainingCapacity(self.handle, profile_id))

    # ---------------------------------------------------------------- instances
    def gpu_instances(self) -> list[GpuInstance]:
        """``nvidia-smi mig -lgi``: GIs ordered by ID."""
        out: list[GpuInstance] = []
        for p in self.profiles():
            count = ctypes.c_uint(0)
            arr = (N.c_nvmlGpuInstance_t * max(8, p.instance_count))()
            count.value = len(arr)
            N.nvmlDeviceGetGpuInstances(self.handle, p.id, arr, ctypes.byref(count))
            out.extend(GpuInstance(self, arr[i]) for i in range(count.value))
        return sorted(out, key=lambda g: g.id)

    def gpu_instance(self, gi_id: int) -> GpuInstance:
        return GpuInstance(self, N.nvmlDeviceGetGpuInstanceById(self.handle, gi_id))

    def create_gi(self, profile_id: int, placement: Placement | None = None) -> GpuInstance:
        """``nvidia-smi mig -i N -cgi PROFILE`` (driver places it) or with an explicit placement."""
        self.node.changing()
        if placement is None:
            h = N.nvmlDeviceCreateGpuInstance(self.handle, profile_id)
        else:
            pl = N.c_nvmlGpuInstancePlacement_t()
            pl.start, pl.size = placement.start, placement.size
            try:
                h = N.nvmlDeviceCreateGpuInstanceWithPlacement(self.handle, profile_id, ctypes.byref(pl))
            except N.NVMLError_FunctionNotFound:
                raise DeviceError(
                    f"GPU {self.index}: creating a GPU instance at a chosen placement needs "
                    f"nvmlDeviceCreateGpuInstanceWithPlacement, first in driver "
                    f"{MIN_DRIVER['nvmlDeviceCreateGpuInstanceWithPlacement']}; this driver is "
                    f"{self.node.driver_version}"
                ) from None
        return GpuInstance(self, h)

    def mig_devices(self) -> list[MigDevice]:
        """MIG devices under this GPU as ``nvidia-smi -L`` lists them (index order = (GI, CI))."""
        try:
            count = N.nvmlDeviceGetMaxMigDeviceCount(self.handle)
        except N.NVMLError_NotSupported:
            return []
        out = []
        for i in range(count):
            try:
                h = N.nvmlDeviceGetMigDeviceHandleByIndex(self.handle, i)
            except (N.NVMLError_NotFound, N.NVMLError_InvalidArgument):
                continue
            out.append(MigDevice(self, i, h))
        return out

    def processes(self) -> list[ProcessInfo]:
        """Compute processes on this GPU (all of its MIG devices included). In MIG mode the GPU-wide list is
        privileged (nvml.h): a non-root caller gets the union of the per-MIG-device lists instead."""
        try:
            return _procs(self.handle)
        except N.NVMLError_NoPermission:
            return [p for d in self.mig_devices() for p in d.processes()]

    def memory_mib(self) -> tuple[int, int, int, int]:
        """(total, reserved, used, free) MiB (:func:`memory_mib`)."""
        return memory_mib(self.handle)

    def usable_memory_mib(self) -> int:
        """What CUDA can allocate on the whole GPU: the total less the driver's reserve. On a real H200 (driver
        580.159.04) PyTorch's ``total_memory`` was 150109880320 B, NVML's total less its 644939776 B reserve
        (docs/real-gpu.md); MPS memory shares of a whole GPU are cut from this, not from the total."""
        total, reserved, _, _ = memory_mib(self.handle)
        return total - reserved

    def persistence_mode(self) -> bool | None:
        try:
            return bool(N.nvmlDeviceGetPersistenceMode(self.handle))
        except N.NVMLError:
            return None

    def __repr__(self) -> str:
        return f"Gpu({self.index}, {self.name!r}, {self.uuid})"


class Node:
    """This machine's GPUs through NVML; ``sim`` is the simulated node when the simulator answers."""

    def __init__(self, sim: Any = None) -> None:
        self.sim = sim
        self.sim_reason = ""
        # called once, before the first state-changing call on a simulated node (the CLI prints it on stderr)
        self.on_simulated_change: Callable[[str], None] | None = None
        self._announced = False
        N.nvmlInit()
        self.driver_version: str = N.nvmlSystemGetDriverVersion()
        self._gpus: list[Gpu] | None = None

    @property
    def backend(self) -> str:
        return "sim" if self.sim is not None else "nvml"

    def changing(self) -> None:
        """Called before every state-changing call. On a simulated node, says so once."""
        if self.sim is None or self._announced:
            return
        self._announced = True
        if self.on_simulated_change is not None:
            self.on_simulated_change(
                f"node is simulated ({self.sim.spec}; {self.sim_reason or 'simulator installed'}): "
                "no real GPU is changed"
            )

    def gpus(self) -> list[Gpu]:
        if self._gpus is None:
            self._gpus = [Gpu(self, i) for i in range(N.nvmlDeviceGetCount())]
        return self._gpus

    def forget(self) -> None:
        """Drop every cached handle and attribute: after a reset NVML says they must be re-read."""
        self._gpus = None
    def gpu(self, index: int) -> Gpu:
        gpus = self.gpus()
        if not 0 <= index < len(gpus):
            raise DeviceError(f"GPU {index} does not exist; valid: 0..{len(gpus) - 1}")
        return gpus[index]

    def select(self, spec: str | None) -> list[Gpu]:
        """GPUs named by ``-i``: comma-separated indices, GPU UUIDs or PCI bus ids (all when None)."""
        gpus = self.gpus()
        if spec is None or str(spec).strip() == "":
            return gpus
        out: list[Gpu] = []
        for tok in str(spec).split(","):
            t = tok.strip()
            match: Gpu | None = None
            if is_digits(t):
                match = gpus[int(t)] if int(t) < len(gpus) else None
            else:
                for g in gpus:
                    if t.lower() in (g.uuid.lower(), g.bus_id.lower(), g.bus_id[4:].lower()):
                        match = g
            if match is None:
                valid = f"0..{len(gpus) - 1}" if gpus else "none (no GPUs)"
                raise DeviceError(f"no GPU matches {t!r} in -i; valid indices: {valid}, or a GPU UUID or PCI bus id")
            if match not in out:
                out.append(match)
        return out

    def find_mig_device(self, uuid: str) -> MigDevice | None:
        for g in self.gpus():
            for d in g.mig_devices():
                if d.uuid == uuid:
                    return d
        return None

    def close(self) -> None:
        try:
            N.nvmlShutdown()
        except N.NVMLError:
            pass

    # ---------------------------------------------------------------- reset
    def reset_gpus(self, gpus: list[Gpu], timeout_s: float = 120.0) -> None:
        """Reset GPUs the way mig-parted does (cmd/nvidia-mig-parted/util/device.go ``nvmlResetAllGPUs``): NVML has
        no reset call, so ``nvidia-smi -r -i BUS,BUS`` resets them all in one call, by PCI bus id, with this
        process's NVML session shut down first (an open session holds the GPU) and a bounded time. When refused,
        the error names what holds each GPU. Afterwards NVML is initialised again and every cached handle is
        dropped (nvml.h: attributes must be re-read after a reset)."""
        if not gpus:
            return
        persistence = [g.index for g in gpus if self.sim is None and g.persistence_mode()]
        bus_ids = [g.bus_id for g in gpus]
        by_bus = {g.bus_id: g.index for g in gpus}
        tool = None
        if self.sim is None:
            import shutil

            tool = shutil.which("nvidia-smi")
            if tool is None:
                raise DeviceError("GPU reset needs nvidia-smi (NVML has no reset call), and it is not in PATH; "
                                  "install the NVIDIA driver utilities or add their directory to PATH")
        self.changing()
        sessions = N._nvmlLib_refcount
        for _ in range(sessions):
            try:
                N.nvmlShutdown()
            except N.NVMLError:
                break
        try:
            if self.sim is not None:
                failures = {b: r for b, r in self.sim.reset_gpus(bus_ids).items() if r[0] != 0}
                if failures:
                    first = next(iter(failures.values()))[0]
                    raise reset_refused(first, _reset_failure_text(
                        {by_bus[b]: (str(N.NVMLError(rc)), who) for b, (rc, who) in failures.items()}, []))
                return
            assert tool is not None
            cmd = [tool, "-r", "-i", ",".join(bus_ids)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                raise DeviceError(f"`{' '.join(cmd)}` did not finish within {timeout_s:.0f} s; the GPUs may still be "
                                  "resetting: check `nvidia-smi` before retrying") from None
            if proc.returncode != 0:
                detail = (proc.stdout + proc.stderr).strip().splitlines()
                who = _holders_of_nvidia_devices()
                raise DeviceError(_reset_failure_text({g.index: (" / ".join(detail[-3:]) or f"exit {proc.returncode}",
                                                                 who) for g in gpus}, persistence))
        finally:
            for _ in range(sessions):
                N.nvmlInit()
            self.forget()


def reset_refused(rc: int, detail: str) -> Exception:
    """The NVML error a refused reset raises (``NVMLError_InUse`` etc., so callers can test the code), with
    ``detail``: the full message naming what holds each GPU."""
    base = N.NVMLError._valClassMapping.get(rc, N.NVMLError)
    cls = type("GpuResetRefused", (base,), {})
    e = cls(rc)
    e.detail = detail  # type: ignore[attr-defined]
    return e


def _reset_failure_text(failures: dict[int, tuple[str, list[str]]], persistence: list[int]) -> str:
    parts = []
    for index, (why, who) in sorted(failures.items()):
        held = f"; held by {', '.join(who)}" if who else ""
        parts.append(f"GPU {index}: {why}{held}")
    text = "GPU reset refused: " + "; ".join(parts)
    names = " ".join(w for _, who in failures.values() for w in who)
    if any(why == "Not Supported" for why, _ in failures.values()):
        text += ("; GPU reset is not possible here (e.g. a pass-through VM, MIG User Guide): reboot the VM or node "
                 "to apply a pending MIG mode")
    if persistence or "nvidia-persistenced" in names:
        text += ("; persistence mode keeps the GPU open: stop nvidia-persistenced (systemctl stop "
                 "nvidia-persistenced) or turn persistence mode off (nvidia-smi -i N -pm 0), then retry")
    if "NVML session" in names:
        text += "; close other NVML clients (DCGM, nvidia-smi, monitoring agents) and retry"
    return text


def _holders_of_nvidia_devices(proc: str = "/proc") -> list[str]:
    """Processes with an NVIDIA device file open (/proc/PID/fd -> /dev/nvidia*), as names with PIDs (at most 20;
    processes whose fds this user may not read are not seen)."""
    out = []
    try:
        pids = sorted((p for p in os.listdir(proc) if p.isdigit()), key=int)
    except OSError:
        return []
    for pid in pids:
        try:
            fds = os.listdir(f"{proc}/{pid}/fd")
            if not any(os.readlink(f"{proc}/{pid}/fd/{fd}").startswith("/dev/nvidia") for fd in fds):
                continue
            with open(f"{proc}/{pid}/comm", encoding="utf-8") as f:
                out.append(f"{f.read().strip()} (PID {pid})")
        except OSError:
            continue
    return out[:20]


# Where an installed NVIDIA kernel driver shows itself (the driver creates both when its module loads).
DRIVER_MARKERS: tuple[str, ...] = ("/proc/driver/nvidia", "/dev/nvidiactl")
# The library pynvml loads on Linux (pynvml._LoadNvmlLibrary: CDLL("libnvidia-ml.so.1")).
NVML_LIBRARY = "libnvidia-ml.so.1"
BACKENDS = ("auto", "nvml", "sim")


def driver_present() -> str | None:
    """The first marker of an installed NVIDIA driver that exists on this machine, or None."""
    return next((m for m in DRIVER_MARKERS if os.path.exists(m)), None)


def _backend_choice() -> str:
    value = os.environ.get("MIGCTL_BACKEND", "").strip().lower() or "auto"
    if value not in BACKENDS:
        raise DeviceError(
            f"MIGCTL_BACKEND={os.environ.get('MIGCTL_BACKEND')!r} is not valid; valid: {', '.join(BACKENDS)} "
            "(auto: the NVIDIA driver when one is installed, else a simulated node)"
        )
    return value


def _load_real_nvml() -> None:
    """Load libnvidia-ml through pynvml; a failure is an error naming the library and the cause."""
    import pynvml

    from migctl import sim as simmod

    simmod.uninstall()
    if pynvml.nvmlLib is not None and not hasattr(pynvml.nvmlLib, "store"):
        return  # already loaded (an earlier Node in this process)
    try:
        lib = ctypes.CDLL(NVML_LIBRARY)
    except OSError as e:
        raise DriverNotReady(
            f"the NVIDIA driver is installed ({driver_present() or 'MIGCTL_BACKEND=nvml'}) but {NVML_LIBRARY} "
            f"cannot be loaded: {e}; install the driver's user-space libraries (or, in a container, run it with the "
            "NVIDIA container toolkit), or pass --sim SPEC to use a simulated node on purpose"
        ) from None
    with pynvml.libLoadLock:
        pynvml.nvmlLib = lib
        pynvml._nvmlGetFunctionPointer_cache.clear()


def sim_reason(sim: str | None) -> str:
    """Why this invocation runs on a simulated node (for the stderr note of state-changing commands)."""
    if sim:
        return "chosen by --sim/MIGCTL_SIM"
    if os.environ.get("MIGCTL_BACKEND", "").strip().lower() == "sim":
        return "chosen by MIGCTL_BACKEND=sim"
    return f"no NVIDIA driver on this machine (none of {', '.join(DRIVER_MARKERS)} exists)"


def open_node(sim: str | None = None, sim_state: str | None = None) -> Node:
    """Open this node. The backend is chosen explicitly (issue 8, item 2):

    * the simulator when ``sim``/``$MIGCTL_SIM`` names a spec, when ``MIGCTL_BACKEND=sim``, or when no NVIDIA
      driver is installed at all (neither /proc/driver/nvidia nor /dev/nvidiactl exists);
    * real NVML otherwise. A driver that is installed but whose library fails to load is an error naming the
      library and the cause; there is no silent fallback to a simulated node.
    """
    from migctl import sim as simmod

    spec = sim or os.environ.get("MIGCTL_SIM")
    backend = _backend_choice()
    if backend == "nvml":
        if spec:
            raise DeviceError("--sim/MIGCTL_SIM asks for a simulated node but MIGCTL_BACKEND=nvml insists on the "
                              "NVIDIA driver; drop one of them")
        return _real_node()
    if spec or backend == "sim" or driver_present() is None:
        node = simmod.active()
        wanted = simmod.parse_spec(spec or simmod.DEFAULT_SPEC)
        state = sim_state or os.environ.get("MIGCTL_SIM_STATE")
        if state:
            same_file = node is not None and node.store.path == _abspath(state)
        else:  # an in-memory node (tests) or the default file of the current state dir
            same_file = node is not None and node.store.path in (None, simmod.default_state_path(wanted))
        if node is None or node.spec != wanted or not same_file:
            node = simmod.install(wanted, state_path=state if state else True)
        n = Node(sim=node)
        n.sim_reason = sim_reason(spec)
        return n
    return _real_node()


def _real_node() -> Node:
    _load_real_nvml()
    try:
        node = Node()
    except N.NVMLError as e:
        raise DriverNotReady(f"{NVML_LIBRARY} loaded but NVML did not initialise: {e} (a driver/library version "
                          "mismatch or an unloaded kernel module; `nvidia-smi` shows the same)") from None
    from migctl.node_guard import check  # (a state dir that another node's state is in: one line, exit 2)

    check(node)
    return node


def _abspath(p: str) -> Any:
    from pathlib import Path

    return Path(p)
