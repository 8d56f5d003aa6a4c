"""The device layer: MIG management through NVML (nvidia-ml-py's ``pynvml``), for real GPUs and the simulator.

Every call here goes through ``pynvml``; whether a real ``libnvidia-ml.so`` or the simulator
(:mod:`migctl.sim`) answers underneath is decided once, by :func:`open_node`. Docstrings name the
``nvidia-smi`` command each call corresponds to.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from dataclasses import dataclass, field
from typing import Any

import pynvml as N

from migctl.catalog import GpuModel, Placement, model_by_pci_id


class DeviceError(RuntimeError):
    """A device-layer failure with a user-facing message (the NVML error, if any, is ``__cause__``)."""


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


def _name(raw: Any) -> str:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return text[4:] if text.startswith("MIG ") else text


def _placements(fn: Any, handle: Any, profile_id: int, ptype: Any) -> tuple[Placement, ...]:
    count = ctypes.c_uint(0)
    arr = (ptype * 16)()
    count.value = 16
    fn(handle, profile_id, arr, ctypes.byref(count))
    return tuple(Placement(arr[i].start, arr[i].size) for i in range(count.value))


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
        """``nvidia-smi mig -i G -gi GI -ci CI -dci``: raises NVMLError_InUse while a process runs on it."""
        N.nvmlComputeInstanceDestroy(self.handle)

    def __repr__(self) -> str:
        return f"ComputeInstance(gpu={self.gi.gpu.index}, gi={self.gi.id}, ci={self.id}, profile={self.profile_id})"


class GpuInstance:
    """A GPU instance on a MIG-enabled GPU."""

    def __init__(self, gpu: Gpu, handle: Any) -> None:
        self.gpu = gpu
        self.handle = handle
        info = N.nvmlGpuInstanceGetInfo(handle)
        self.id: int = info.id
        self.profile_id: int = info.profileId
        self.placement = Placement(info.placement.start, info.placement.size)

    def profile(self) -> GIProfileInfo:
        p = self.gpu.profile(self.profile_id)
        assert p is not None
        return p

    def ci_profiles(self) -> list[CIProfileInfo]:
        """``nvidia-smi mig -lcip -gi ID``: CI profiles this GI offers; ``is_default`` marks the ``*`` one."""
        out: list[CIProfileInfo] = []
        gi_slices = self.profile().slices
        for idx in range(N.NVML_COMPUTE_INSTANCE_PROFILE_COUNT):
            try:
                info = N.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                    self.handle, idx, N.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
                )
            except (N.NVMLError_NotSupported, N.NVMLError_InvalidArgument):
                continue
            try:
                pls = _placements(N.nvmlGpuInstanceGetComputeInstancePossiblePlacements, self.handle, info.id,
                                  N.c_nvmlComputeInstancePlacement_t)
            except N.NVMLError:
                pls = ()
            out.append(
                CIProfileInfo(
                    id=info.id, name=_name(info.name), slices=info.sliceCount, instance_count=info.instanceCount,
                    sms=info.multiprocessorCount, ce=info.sharedCopyEngineCount, dec=info.sharedDecoderCount,
                    enc=info.sharedEncoderCount, jpeg=info.sharedJpegCount, ofa=info.sharedOfaCount,
                    is_default=info.sliceCount == gi_slices, placements=pls,
                )
            )
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
        if placement is None:
            h = N.nvmlGpuInstanceCreateComputeInstance(self.handle, ci_profile_id)
        else:
            pl = N.c_nvmlComputeInstancePlacement_t()
            pl.start, pl.size = placement.start, placement.size
            h = N.nvmlGpuInstanceCreateComputeInstanceWithPlacement(self.handle, ci_profile_id, ctypes.byref(pl))
        return ComputeInstance(self, h)

    def destroy(self) -> None:
        """``nvidia-smi mig -i G -gi ID -dgi``: raises NVMLError_InUse while CIs or processes remain."""
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
        """(used MiB, total MiB)."""
        m = N.nvmlDeviceGetMemoryInfo(self.handle)
        return int(m.used) >> 20, int(m.total) >> 20

    def processes(self) -> list[ProcessInfo]:
        return _procs(self.handle)

    def __repr__(self) -> str:
        return f"MigDevice(gpu={self.gpu.index}, index={self.index}, gi={self.gi_id}, ci={self.ci_id}, {self.uuid})"


def _procs(handle: Any) -> list[ProcessInfo]:
    out = []
    for p in N.nvmlDeviceGetComputeRunningProcesses(handle):
        gi = getattr(p, "gpuInstanceId", 0xFFFFFFFF)
        ci = getattr(p, "computeInstanceId", 0xFFFFFFFF)
        out.append(
            ProcessInfo(
                pid=int(p.pid),
                used_mib=int(p.usedGpuMemory or 0) >> 20,
                gi_id=None if gi == 0xFFFFFFFF else int(gi),
                ci_id=None if ci == 0xFFFFFFFF else int(ci),
            )
        )
    return out


class Gpu:
    """A physical GPU."""

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
        self.model: GpuModel | None = model_by_pci_id(self.pci_device_id, self.name)
        self._profiles: list[GIProfileInfo] | None = None

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

    def set_mig_mode(self, enabled: bool) -> int:
        """``nvidia-smi -i N -mig 1|0``. Returns the activation status (NVML_SUCCESS or a pending reason)."""
        self._profiles = None
        return int(N.nvmlDeviceSetMigMode(self.handle, N.NVML_DEVICE_MIG_ENABLE if enabled else N.NVML_DEVICE_MIG_DISABLE))

    def reset(self) -> None:
        """``nvidia-smi --gpu-reset -i N``: applies a pending MIG mode; refused while the GPU is in use."""
        self._profiles = None
        sim = self.node.sim
        if sim is not None:
            rc = sim.reset_gpu(self.index)
            if rc:
                raise N.NVMLError(rc)
            return
        proc = subprocess.run(["nvidia-smi", "--gpu-reset", "-i", str(self.index)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise DeviceError((proc.stdout + proc.stderr).strip() or f"GPU {self.index} reset failed")

    # ---------------------------------------------------------------- profiles
    def profiles(self) -> list[GIProfileInfo]:
        """``nvidia-smi mig -i N -lgip`` / ``-lgipp``: GI profiles this GPU offers, in nvidia-smi's order."""
        if self._profiles is not None:
            return self._profiles
        out: list[GIProfileInfo] = []
        for idx in range(N.NVML_GPU_INSTANCE_PROFILE_COUNT):
            try:
                info = N.nvmlDeviceGetGpuInstanceProfileInfo(self.handle, idx)
            except (N.NVMLError_NotSupported, N.NVMLError_InvalidArgument):
                continue
            pls = _placements(N.nvmlDeviceGetGpuInstancePossiblePlacements, self.handle, info.id,
                              N.c_nvmlGpuInstancePlacement_t)
            out.append(
                GIProfileInfo(
                    index=idx, id=info.id, name=_name(info.name), slices=info.sliceCount,
                    instance_count=info.instanceCount, memory_mib=int(info.memorySizeMB),
                    sms=info.multiprocessorCount, ce=info.copyEngineCount, dec=info.decoderCount,
                    enc=info.encoderCount, jpeg=info.jpegCount, ofa=info.ofaCount,
                    p2p=bool(info.isP2pSupported), placements=pls,
                )
            )
        # nvidia-smi lists profiles by (compute slices, memory, ID): 19, 20, 15, 14, 9, 5, 0 on 8-slice parts
        out.sort(key=lambda p: (p.slices, p.memory_mib, p.id))
        self._profiles = out
        return out

    def profile(self, ref: int | str) -> GIProfileInfo | None:
        """A profile by ID, short name (``3g.40gb``) or full name (``MIG 3g.40gb``)."""
        text = str(ref).strip()
        if text.isdigit():
            return next((p for p in self.profiles() if p.id == int(text)), None)
        if text.upper().startswith("MIG "):
            text = text[4:].strip()
        return next((p for p in self.profiles() if p.name == text), None)

    def remaining(self, profile_id: int) -> int:
        """Free instances of a profile (the "Free" of ``-lgip``): nvmlDeviceGetGpuInstanceRemainingCapacity."""
        return int(N.nvmlDeviceGetGpuInstanceRemainingCapacity(self.handle, profile_id))

    # ---------------------------------------------------------------- instances
    def gpu_instances(self) -> list[GpuInstance]:
        """``nvidia-smi mig -i N -lgi``: GIs ordered by ID."""
        out: list[GpuInstance] = []
        for p in self.profiles():
            count = ctypes.c_uint(p.instance_count or 8)
            arr = (N.c_nvmlGpuInstance_t * max(8, p.instance_count))()
            count.value = len(arr)
            N.nvmlDeviceGetGpuInstances(self.handle, p.id, arr, ctypes.byref(count))
            out.extend(GpuInstance(self, arr[i]) for i in range(count.value))
        return sorted(out, key=lambda g: g.id)

    def gpu_instance(self, gi_id: int) -> GpuInstance:
        return GpuInstance(self, N.nvmlDeviceGetGpuInstanceById(self.handle, gi_id))

    def create_gi(self, profile_id: int, placement: Placement | None = None) -> GpuInstance:
        """``nvidia-smi mig -i N -cgi PROFILE`` (driver places it) or with an explicit placement."""
        if placement is None:
            h = N.nvmlDeviceCreateGpuInstance(self.handle, profile_id)
        else:
            pl = N.c_nvmlGpuInstancePlacement_t()
            pl.start, pl.size = placement.start, placement.size
            h = N.nvmlDeviceCreateGpuInstanceWithPlacement(self.handle, profile_id, ctypes.byref(pl))
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
        """Compute processes on this GPU (all of its MIG devices included)."""
        return _procs(self.handle)

    def memory(self) -> tuple[int, int]:
        m = N.nvmlDeviceGetMemoryInfo(self.handle)
        return int(m.used) >> 20, int(m.total) >> 20

    def __repr__(self) -> str:
        return f"Gpu({self.index}, {self.name!r}, {self.uuid})"


class Node:
    """This machine's GPUs through NVML; ``sim`` is the simulated node when the simulator answers."""

    def __init__(self, sim: Any = None) -> None:
        self.sim = sim
        N.nvmlInit()
        self.driver_version: str = N.nvmlSystemGetDriverVersion()
        self._gpus: list[Gpu] | None = None

    @property
    def backend(self) -> str:
        return "sim" if self.sim is not None else "nvml"

    def gpus(self) -> list[Gpu]:
        if self._gpus is None:
            self._gpus = [Gpu(self, i) for i in range(N.nvmlDeviceGetCount())]
        return self._gpus

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
            if t.isdigit():
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


def _real_nvml_available() -> bool:
    import pynvml

    if pynvml.nvmlLib is not None and not hasattr(pynvml.nvmlLib, "store"):
        return True
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
        return True
    except OSError:
        return False


def open_node(sim: str | None = None, sim_state: str | None = None) -> Node:
    """Open this node: the simulator when ``sim``/``$MIGCTL_SIM`` is set or no NVIDIA driver is present,
    real NVML otherwise (``MIGCTL_BACKEND=nvml`` insists on real NVML)."""
    from migctl import sim as simmod

    spec = sim or os.environ.get("MIGCTL_SIM")
    forced = os.environ.get("MIGCTL_BACKEND", "").lower()
    if forced == "nvml" and not spec:
        simmod.uninstall()
        return Node()
    if spec or forced == "sim" or not _real_nvml_available():
        node = simmod.active()
        wanted = simmod.parse_spec(spec or simmod.DEFAULT_SPEC)
        state = sim_state or os.environ.get("MIGCTL_SIM_STATE")
        if state:
            same_file = node is not None and node.store.path == _abspath(state)
        else:  # an in-memory node (tests) or the default file of the current state dir
            same_file = node is not None and node.store.path in (None, simmod.default_state_path(wanted))
        if node is None or node.spec != wanted or not same_file:
            node = simmod.install(wanted, state_path=state if state else True)
        return Node(sim=node)
    simmod.uninstall()
    return Node()


def _abspath(p: str) -> Any:
    from pathlib import Path

    return Path(p)
