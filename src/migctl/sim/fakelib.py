"""A stand-in for ``libnvidia-ml.so``: the C entry points pynvml calls, implemented over the simulator.

pynvml (nvidia-ml-py) looks every C function up with ``getattr(nvmlLib, name)`` and calls it with ctypes
arguments. Installing an instance of :class:`FakeNvmlLib` as ``pynvml.nvmlLib`` therefore runs *all* of
pynvml's own Python code (argument packing, structs, ``NVMLError_*`` raising) unchanged, with only the
driver underneath simulated. migctl's device layer cannot tell the difference, which is the point.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

from migctl.catalog import Placement
from migctl.sim import state as S
from migctl.sim.gpm import GpmMixin
from migctl.sim.store import Store
from migctl.sim.usage import used_mib

_KIND_GPU, _KIND_GI, _KIND_CI, _KIND_MIG = 1, 2, 3, 4

ERROR_STRINGS = {
    0: "Success",
    1: "Uninitialized",
    2: "Invalid Argument",
    3: "Not Supported",
    4: "Insufficient Permissions",
    5: "Already Initialized",
    6: "Not Found",
    7: "Insufficient Size",
    9: "Driver Not Loaded",
    12: "NVML Shared Library Not Found",
    13: "Function Not Found",
    16: "GPU requires restart",  # pynvml's own table (nvml.h's nvmlErrorString text for 16: UNCONFIRMED)
    19: "In use by another client",
    23: "Insufficient Resources",
    999: "Unknown Error",
}


def _val(x: Any) -> Any:
    """The Python value of a ctypes scalar, a byref() to one, or a plain value."""
    x = getattr(x, "_obj", x)
    return x.value if hasattr(x, "value") else x


# An idle GPU with MIG off: (NVML v2 ``reserved``, v2 ``used``) bytes, by catalog model. H200: a real H200 SXM on
# driver 580.159.04 (scripts/gpu-probe, 2026-12-04; nvidia-smi showed 0 MiB used, memory.reserved 616 MiB).
# Others: 4 MiB used and nothing reserved, as nvidia-smi 545.23.08 showed an idle A30 (seed 003; UNCONFIRMED for
# other models and drivers).
IDLE_MEMORY = {"H200": (644939776, 0)}
IDLE_MEMORY_DEFAULT = (0, 4 << 20)


def _obj(ref: Any) -> Any:
    """The ctypes object behind byref()/pointer(), or the object itself."""
    if ref is None:
        return None
    if hasattr(ref, "_obj"):
        return ref._obj
    if isinstance(ref, ctypes._Pointer) and hasattr(ref, "contents"):  # a POINTER(struct) argument
        try:
            return ref.contents
        except ValueError:
            return None
    return ref


def _addr(handle: Any) -> int:
    handle = getattr(handle, "_obj", handle)
    return ctypes.cast(handle, ctypes.c_void_p).value or 0


def _encode(kind: int, gpu: int, gi: int = 0, ci: int = 0, serial: int = 0) -> int:
    """A handle: kind, GPU index, GI ID, CI ID and the instance's serial. The serial makes the handle of a
    destroyed instance invalid even when a new instance reuses its IDs ("handle becomes invalid on destroy or
    reset", nvml.h on nvmlDeviceCreateGpuInstance; mig-hardware.md §2.3)."""
    return (kind << 60) | ((gpu + 1) << 52) | ((gi + 1) << 44) | ((ci + 1) << 36) | (serial & 0xFFFFFFFFF)


def _decode(addr: int) -> tuple[int, int, int, int, int]:
    return (addr >> 60, ((addr >> 52) & 0xFF) - 1, ((addr >> 44) & 0xFF) - 1, ((addr >> 36) & 0xFF) - 1,
            addr & 0xFFFFFFFFF)


# First driver whose nvml.h declares each entry point pynvml (or migctl) may call, from the history of
# NVIDIA/go-nvml gen/nvml/nvml.h (commits "Update nvml.h to NVML 11.x" ... "sync nvml.h with CUDA 13.3"); the
# version is the driver of the CUDA toolkit that shipped that header (CUDA release notes, toolkit/driver table).
# A driver branch may have gained a function in an earlier minor release than the one listed: the minor is
# UNCONFIRMED, the branch is what the header history shows. Functions not listed exist from R450 (NVML 11.0,
# the first MIG driver) on.
FIRST_DRIVER: dict[str, tuple[int, ...]] = {
    "nvmlDeviceGetArchitecture": (460, 27, 4),  # NVML 11.2.0 header
    "nvmlDeviceCreateGpuInstanceWithPlacement": (460, 32, 3),  # NVML 11.2.2 header
    "nvmlDeviceGetGpuInstancePossiblePlacements_v2": (470, 42, 1),  # NVML 11.4 header
    "nvmlDeviceGetGpuInstanceProfileInfoV": (510, 39, 1),  # NVML 11.6 (versioned structs)
    "nvmlGpuInstanceGetComputeInstanceProfileInfoV": (510, 39, 1),  # NVML 11.6
    "nvmlDeviceGetComputeRunningProcesses_v3": (510, 39, 1),  # NVML 11.6
    "nvmlDeviceGetGraphicsRunningProcesses_v3": (510, 39, 1),  # NVML 11.6
    "nvmlDeviceGetMPSComputeRunningProcesses_v3": (510, 39, 1),  # NVML 11.6 (with the other _v3 process lists)
    "nvmlDeviceGetMemoryInfo_v2": (515, 43, 4),  # NVML 11.7
    "nvmlGpuInstanceCreateComputeInstanceWithPlacement": (525, 60, 13),  # NVML 12.0
    "nvmlGpuInstanceGetComputeInstancePossiblePlacements": (525, 60, 13),  # NVML 12.0
    "nvmlDeviceGetGpuInstanceProfileInfoByIdV": (580, 65, 6),  # NVML 13.0
    # GPU performance monitoring (sim/gpm.py): NVML 11.8 header; the MIG sample call NVML 12.0
    "nvmlGpmQueryDeviceSupport": (520, 61, 5),
    "nvmlGpmSampleAlloc": (520, 61, 5),
    "nvmlGpmSampleFree": (520, 61, 5),
    "nvmlGpmSampleGet": (520, 61, 5),
    "nvmlGpmMetricsGet": (520, 61, 5),
    "nvmlGpmMigSampleGet": (525, 60, 13),
}

# Struct versions the V entry points accept (nvml.h NVML_STRUCT_VERSION(...)); anything else is INVALID_ARGUMENT
# ("If device, profile, info, or info->version are invalid", nvml.h on nvmlDeviceGetGpuInstanceProfileInfoV).
GI_PROFILE_INFO_VERSIONS = (0x02000098, 0x03000098)
CI_PROFILE_INFO_VERSIONS = (0x02000088, 0x0300008C)


def _set_handle(ref: Any, addr: int) -> None:
    target = _obj(ref)
    ctypes.cast(ctypes.pointer(target), ctypes.POINTER(ctypes.c_void_p))[0] = addr


def _handle_of(ptr_type: Any, addr: int) -> Any:
    return ctypes.cast(ctypes.c_void_p(addr), ptr_type)


def _set_str(buf: Any, size: Any, text: str) -> int:
    data = text.encode()
    if len(data) + 1 > int(_val(size)):
        return S.ERROR_INSUFFICIENT_SIZE
    ctypes.memmove(buf, data + b"\0", len(data) + 1)
    return S.SUCCESS


class _Fn:
    """A callable with settable attributes, as ctypes function pointers have (pynvml sets ``restype``)."""

    def __init__(self, f: Callable[..., Any]) -> None:
        self._f = f
        self.restype: Any = None
        self.argtypes: Any = None

    def __call__(self, *args: Any) -> Any:
        return self._f(*args)


class FakeNvmlLib(GpmMixin):
    """The simulated NVML library. See module docstring."""

    def __init__(self, store: Store, alive: Callable[[int, float], bool] = S.pid_alive) -> None:
        self.store = store
        self.alive = alive
        self.initialized = 0

    def __getattr__(self, name: str) -> _Fn:
        impl = getattr(type(self), "_" + name, None)
        if impl is None or not self.has_function(name):
            raise AttributeError(name)  # pynvml turns this into NVMLError_FunctionNotFound
        fn = _Fn(impl.__get__(self))
        self.__dict__[name] = fn
        return fn

    # ---------------------------------------------------------------- plumbing
    def has_function(self, name: str) -> bool:
        """Whether the simulated driver exports ``name`` (see :data:`FIRST_DRIVER`)."""
        first = FIRST_DRIVER.get(name)
        if first is None:
            return True
        st = self.store.load()
        return st.b("functions") == "all" or S.parse_driver(st.driver) >= first

    def _driver(self, st: S.SimState) -> S.Driver:
        return S.Driver(st, self.alive)

    def _resolve(self, st: S.SimState, handle: Any, want: int) -> tuple[S.SimGPU | None, Any, Any, int]:
        """(gpu, gi, ci, rc) for a handle of kind ``want``; MIG device handles resolve to their (gi, ci).
        A handle to an instance that was destroyed (or wiped by a reset) is invalid, even if its IDs are reused."""
        kind, g, gi_id, ci_id, serial = _decode(_addr(handle))
        if kind != want or not (0 <= g < len(st.gpus)):
            return None, None, None, S.ERROR_INVALID_ARGUMENT
        gpu = st.gpus[g]
        if kind == _KIND_GPU:
            return gpu, None, None, S.SUCCESS
        gi = next((x for x in gpu.gis if x.id == gi_id), None)
        if gi is None or (kind == _KIND_GI and gi.serial != serial):
            return None, None, None, S.ERROR_INVALID_ARGUMENT
        if kind == _KIND_GI:
            return gpu, gi, None, S.SUCCESS
        ci = next((x for x in gi.cis if x.id == ci_id), None)
        if ci is None or ci.serial != serial:
            return None, None, None, S.ERROR_INVALID_ARGUMENT
        return gpu, gi, ci, S.SUCCESS

    @staticmethod
    def _gi_handle(gpu: S.SimGPU, gi: S.SimGI) -> int:
        return _encode(_KIND_GI, gpu.index, gi.id, 0, gi.serial)

    @staticmethod
    def _ci_handle(gpu: S.SimGPU, gi: S.SimGI, ci: S.SimCI, kind: int = _KIND_CI) -> int:
        return _encode(kind, gpu.index, gi.id, ci.id, ci.serial)

    def _any_device(self, st: S.SimState, handle: Any) -> tuple[S.SimGPU | None, Any, Any, int]:
        kind = _decode(_addr(handle))[0]
        return self._resolve(st, handle, _KIND_MIG if kind == _KIND_MIG else _KIND_GPU)

    # ---------------------------------------------------------------- init / system
    def _nvmlInitWithFlags(self, flags: Any) -> int:
        self.store.load()  # surfaces a corrupt or foreign state file at init, like a driver error
        self.initialized += 1
        return S.SUCCESS

    def _nvmlInit_v2(self) -> int:
        return self._nvmlInitWithFlags(0)

    def _nvmlShutdown(self) -> int:
        self.initialized = max(0, self.initialized - 1)
        return S.SUCCESS

    def _nvmlErrorString(self, code: Any) -> bytes:
        return ERROR_STRINGS.get(int(_val(code)), "Unknown Error").encode()

    def _nvmlSystemGetDriverVersion(self, buf: Any, size: Any) -> int:
        return _set_str(buf, size, self.store.load().driver)

    def _nvmlSystemGetNVMLVersion(self, buf: Any, size: Any) -> int:
        # "<CUDA major>.<driver>", e.g. 12.535.104.05 (mig-parted util/nvml.go parses the leading major)
        cuda = ctypes.c_int(0)
        self._nvmlSystemGetCudaDriverVersion(ctypes.byref(cuda))
        return _set_str(buf, size, f"{cuda.value // 1000}.{self.store.load().driver}")

    def _nvmlSystemGetCudaDriverVersion(self, ref: Any) -> int:
        major = int(self.store.load().driver.split(".")[0])
        # CUDA version bundled with each driver branch (545 -> 12.3 per seed 003; later per NVIDIA tables)
        table = [(580, 13000), (575, 12090), (570, 12080), (560, 12060), (555, 12050), (550, 12040),
                 (545, 12030), (535, 12020), (530, 12010), (525, 12000), (520, 11080), (515, 11070),
                 (510, 11060), (470, 11040), (0, 11000)]
        _obj(ref).value = next(v for m, v in table if major >= m)
        return S.SUCCESS

    _nvmlSystemGetCudaDriverVersion_v2 = _nvmlSystemGetCudaDriverVersion

    # ---------------------------------------------------------------- devices
    def _nvmlDeviceGetCount_v2(self, ref: Any) -> int:
        _obj(ref).value = len(self.store.load().gpus)
        return S.SUCCESS

    def _nvmlDeviceGetHandleByIndex_v2(self, index: Any, ref: Any) -> int:
        i = int(_val(index))
        if not 0 <= i < len(self.store.load().gpus):
            return S.ERROR_INVALID_ARGUMENT
        _set_handle(ref, _encode(_KIND_GPU, i))
        return S.SUCCESS

    def _nvmlDeviceGetHandleByUUID(self, uuid: Any, ref: Any) -> int:
        text = _val(uuid)
        text = text.decode() if isinstance(text, bytes) else str(text)
        st = self.store.load()
        d = self._driver(st)
        for gpu in st.gpus:
            if gpu.uuid == text:
                _set_handle(ref, _encode(_KIND_GPU, gpu.index))
                return S.SUCCESS
            for gi, ci in d.mig_devices(gpu):
                if ci.uuid == text:
                    _set_handle(ref, self._ci_handle(gpu, gi, ci, _KIND_MIG))
                    return S.SUCCESS
        return S.ERROR_NOT_FOUND

    def _nvmlDeviceGetHandleByPciBusId_v2(self, bus: Any, ref: Any) -> int:
        text = _val(bus)
        text = (text.decode() if isinstance(text, bytes) else str(text)).upper()
        for gpu in self.store.load().gpus:
            if gpu.bus_id.upper() in (text, "0000" + text) or gpu.bus_id[4:].upper() == text:
                _set_handle(ref, _encode(_KIND_GPU, gpu.index))
                return S.SUCCESS
        return S.ERROR_NOT_FOUND

    def _nvmlDeviceGetIndex(self, handle: Any, ref: Any) -> int:
        gpu, _, _, rc = self._resolve(self.store.load(), handle, _KIND_GPU)
        if rc:
            return rc
        _obj(ref).value = gpu.index
        return S.SUCCESS

    def _nvmlDeviceGetName(self, handle: Any, buf: Any, size: Any) -> int:
        st = self.store.load()
        gpu, gi, ci, rc = self._any_device(st, handle)
        if rc:
            return rc
        name = gpu.catalog.name
        if ci is not None:
            gp = gpu.catalog.profile(gi.profile_id)
            cp = gp.ci_profile(ci.profile_id)
            name = f"{name} MIG {cp.name}"
        return _set_str(buf, size, name)

    def _nvmlDeviceGetUUID(self, handle: Any, buf: Any, size: Any) -> int:
        gpu, _, ci, rc = self._any_device(self.store.load(), handle)
        if rc:
            return rc
        return _set_str(buf, size, ci.uuid if ci is not None else gpu.uuid)

    def _nvmlDeviceGetSerial(self, handle: Any, buf: Any, size: Any) -> int:
        gpu, _, _, rc = self._resolve(self.store.load(), handle, _KIND_GPU)
        if rc:
            return rc
        return _set_str(buf, size, gpu.serial)

    def _nvmlDeviceGetPciInfo_v3(self, handle: Any, ref: Any) -> int:
        gpu, _, _, rc = self._resolve(self.store.load(), handle, _KIND_GPU)
        if rc:
            return rc
        info = _obj(ref)
        info.busId = gpu.bus_id.encode()
        info.busIdLegacy = gpu.bus_id[4:].encode()
        dom, bus, devfn = gpu.bus_id.split(":")
        info.domain = int(dom, 16)
        info.bus = int(bus, 16)
        info.device = int(devfn.split(".")[0], 16)
        info.pciDeviceId = gpu.catalog.pci_device_id_full
        info.pciSubSystemId = 0
        return S.SUCCESS

    _nvmlDeviceGetPciInfo_v2 = _nvmlDeviceGetPciInfo_v3

    def _nvmlDeviceGetMemoryInfo(self, handle: Any, ref: Any) -> int:
        return self._memory_info(handle, ref, v2=False)

    def _nvmlDeviceGetMemoryInfo_v2(self, handle: Any, ref: Any) -> int:
        return self._memory_info(handle, ref, v2=True)

    def _memory_info(self, handle: Any, ref: Any, v2: bool) -> int:
        """v1 counts the driver's reserve as used; v2 reports it as ``reserved`` and leaves it out of ``used``
        (a real H200, driver 580.159.04, MIG off, idle: v1 used 644939776 B, v2 used 0 and reserved 644939776 B,
        free the same in both; docs/real-gpu.md). Idle figures by model: :data:`IDLE_MEMORY`. With MIG on, and for
        MIG devices, v2 answers as v1 with reserved 0 (UNCONFIRMED)."""
        st = self.store.load()
        gpu, gi, ci, rc = self._any_device(st, handle)
        if rc:
            return rc
        reserved = 0
        if gi is not None:
            gp = gpu.catalog.profile(gi.profile_id)
            total = gp.memory_on(self._driver(st).driver_version) << 20
            used = (25 + sum(used_mib(p) for p in self._driver(st).busy(gpu, gi.id))) << 20  # real RSS (sim/usage.py)
        else:
            total = gpu.catalog.memory_mib << 20
            used = sum(used_mib(p) for p in self._driver(st).live_processes(gpu)) << 20
            if gpu.mig_current:
                used += sum(25 for g in gpu.gis if g.cis) << 20
            else:
                reserved, idle = IDLE_MEMORY.get(gpu.catalog.key, IDLE_MEMORY_DEFAULT)
                used += idle
        used = min(used, total - reserved)
        m = _obj(ref)
        m.total = total
        if v2:
            m.reserved, m.used = reserved, used
        else:
            m.used = reserved + used
        m.free = total - reserved - used
        return S.SUCCESS

    def _nvmlDeviceGetBAR1MemoryInfo(self, handle: Any, ref: Any) -> int:
        st = self.store.load()
        gpu, gi, _, rc = self._any_device(st, handle)
        if rc:
            return rc
        if gi is None:
            total = gpu.catalog.bar1_mib
        else:  # a MIG device gets the GI's share of BAR1 by memory slices, less 1 MiB (real captures,
            # e.g. A30 1-slice 8191 / 2-slice 16383 of 32768; H100 NVL 16383 / 32767 / 65535 of 131072)
            total = max(1, gpu.catalog.bar1_mib * gi.size // gpu.catalog.memory_slices - 1)
        m = _obj(ref)
        m.bar1Total = total << 20
        m.bar1Used = 0
        m.bar1Free = total << 20
        return S.SUCCESS

    def _nvmlDeviceGetTemperature(self, handle: Any, sensor: Any, ref: Any) -> int:
        gpu, _, _, rc = self._resolve(self.store.load(), handle, _KIND_GPU)
        if rc:
            return rc
        _obj(ref).value = gpu.temperature_c
        return S.SUCCESS

    def _nvmlDeviceGetPowerUsage(self, handle: Any, ref: Any) -> int:
        gpu, _, _, rc = self._resolve(self.store.load(), handle, _KIND_GPU)
        if rc:
            return rc
        _obj(ref).value = gpu.power_w * 1000
        return S.SUCCESS

    def _nvmlDeviceGetEnforcedPowerLimit(self, handle: Any, ref: Any) -> int:
        gpu, _, _, rc = self._resolve(self.store.load(), handle, _KIND_GPU)
        if rc:
            return rc
        if not gpu.catalog.power_cap_w:
            return S.ERROR_NOT_SUPPORTED
        _obj(ref).value = gpu.catalog.power_cap_w * 1000
        return S.SUCCESS

    _nvmlDeviceGetPowerManagementLimit = _nvmlDeviceGetEnforcedPowerLimit

    def _nvmlDeviceGetPersistenceMode(self, handle: Any, ref: Any) -> int:
        gpu, _, _, rc = self._resolve(self.store.load(), handle, _KIND_GPU)
        if rc:
            return rc
        _obj(ref).value = gpu.persistence_mode
        return S.SUCCESS

    def _nvmlDeviceSetPersistenceMode(self, handle: Any, mode: Any) -> int:
        with self.store.transaction() as st:
            gpu, _, _, rc = self._resolve(st, handle, _KIND_GPU)
            if rc:
                return rc
            value = int(_val(mode))
            if value not in (0, 1):
                return S.ERROR_INVALID_ARGUMENT
            gpu.persistence_mode = value
            return S.SUCCESS

    def _nvmlDeviceGetComputeMode(self, handle: Any, ref: Any) -> int:
        _obj(ref).value = 0
        return S.SUCCESS

    def _nvmlDeviceGetPerformanceState(self, handle: Any, ref: Any) -> int:
        _obj(ref).value = 0
        return S.SUCCESS

    def _nvmlDeviceGetFanSpeed(self, handle: Any, ref: Any) -> int:
        return S.ERROR_NOT_SUPPORTED  # passively cooled data-centre parts: nvidia-smi prints N/A

    def _nvmlDeviceGetDisplayActive(self, handle: Any, ref: Any) -> int:
        _obj(ref).value = 0
        return S.SUCCESS

    def _nvmlDeviceGetUtilizationRates(self, handle: Any, ref: Any) -> int:
        gpu, _, _, rc = self._resolve(self.store.load(), handle, _KIND_GPU)
        if rc:
            return rc
        if gpu.mig_current:
            return S.ERROR_NOT_SUPPORTED  # no utilization in MIG mode: nvidia-smi shows N/A
        u = _obj(ref)
        u.gpu = 0
        u.memory = 0
        return S.SUCCESS

    def _nvmlDeviceGetTotalEccErrors(self, handle: Any, etype: Any, ctype: Any, ref: Any) -> int:
        _obj(ref).value = 0
        return S.SUCCESS

    # ---------------------------------------------------------------- MIG mode
    def _nvmlDeviceGetMigMode(self, handle: Any, cur: Any, pending: Any) -> int:
        st = self.store.load()
        gpu, _, _, rc = self._resolve(st, handle, _KIND_GPU)
        if rc:
            return rc
        rc, c, p = self._driver(st).get_mig_mode(gpu)
        if rc:
            return rc
        _obj(cur).value = c
        _obj(pending).value = p
        return S.SUCCESS

    def _nvmlDeviceSetMigMode(self, handle: Any, mode: Any, status: Any) -> int:
        with self.store.transaction() as st:
            gpu, _, _, rc = self._resolve(st, handle, _KIND_GPU)
            if rc:
                return rc
            if not S.Driver.mig_supported(gpu):
                return S.ERROR_NOT_SUPPORTED
            rc, activation = self._driver(st).set_mig_mode(gpu, int(_val(mode)))
            _obj(status).value = activation
            return rc

    # ---------------------------------------------------------------- GI profiles
    def _fill_gi_profile(self, st: S.SimState, gpu: S.SimGPU, p: Any, info: Any) -> None:
        d = self._driver(st)
        info.id = p.id
        info.isP2pSupported = int(p.p2p)
        info.sliceCount = p.slices
        info.instanceCount = p.max_instances
        info.multiprocessorCount = p.sms
        info.copyEngineCount = p.ce
        info.decoderCount = p.dec
        info.encoderCount = p.enc
        info.jpegCount = p.jpeg
        info.ofaCount = p.ofa
        info.memorySizeMB = p.memory_on(d.driver_version)
        if "name" in dict(type(info)._fields_):
            info.name = f"MIG {p.name}".encode()

    def _gi_profile_info(self, handle: Any, index: Any, ref: Any, versioned: bool) -> int:
        st = self.store.load()
        gpu, _, _, rc = self._resolve(st, handle, _KIND_GPU)
        if rc:
            return rc
        info = _obj(ref)
        if versioned and int(getattr(info, "version", 0)) not in GI_PROFILE_INFO_VERSIONS:
            return S.ERROR_INVALID_ARGUMENT
        idx = int(_val(index))
        if not S.Driver.mig_supported(gpu):
            return S.ERROR_NOT_SUPPORTED
        d = self._driver(st)
        if not 0 <= idx < gi_profile_count(d, gpu):
            return S.ERROR_INVALID_ARGUMENT  # the end of the enumeration (nvml.h; go-nvlib stops here)
        if gpu.mig_current != 1 and not d.profile_info_with_mig_off():
            return S.ERROR_NOT_SUPPORTED  # "If device doesn't have MIG mode enabled" (nvml.h, InfoV)
        p = d.profile_by_index(gpu, idx)
        if p is None:
            return S.ERROR_NOT_SUPPORTED
        self._fill_gi_profile(st, gpu, p, info)
        return S.SUCCESS

    def _nvmlDeviceGetGpuInstanceProfileInfoV(self, handle: Any, index: Any, ref: Any) -> int:
        return self._gi_profile_info(handle, index, ref, True)

    def _nvmlDeviceGetGpuInstanceProfileInfo(self, handle: Any, index: Any, ref: Any) -> int:
        return self._gi_profile_info(handle, index, ref, False)  # v1 struct: no version, no name

    def _nvmlDeviceGetGpuInstanceProfileInfoByIdV(self, handle: Any, pid: Any, ref: Any) -> int:
        st = self.store.load()
        gpu, _, _, rc = self._resolve(st, handle, _KIND_GPU)
        if rc:
            return rc
        info = _obj(ref)
        if int(getattr(info, "version", 0)) not in GI_PROFILE_INFO_VERSIONS:
            return S.ERROR_INVALID_ARGUMENT
        d = self._driver(st)
        if gpu.mig_current != 1 and not d.profile_info_with_mig_off():
            return S.ERROR_NOT_SUPPORTED
        p = d.profile_by_id(gpu, int(_val(pid)))
        if p is None:
            return S.ERROR_INVALID_ARGUMENT
        self._fill_gi_profile(st, gpu, p, info)
        return S.SUCCESS

    def _nvmlDeviceGetGpuInstanceRemainingCapacity(self, handle: Any, pid: Any, ref: Any) -> int:
        st = self.store.load()
        gpu, _, _, rc = self._resolve(st, handle, _KIND_GPU)
        if rc:
            return rc
        rc, n = self._driver(st).gi_remaining(gpu, int(_val(pid)))
        if rc:
            return rc
        _obj(ref).value = n
        return S.SUCCESS

    @staticmethod
    def _write_placements(pls: list[Placement], arr: Any, count: Any) -> int:
        cobj = _obj(count)
        if arr is None:
            cobj.value = len(pls)
            return S.SUCCESS
        # *count is output only (nvml.h: the buffer "must be large enough to accommodate the placements supported
        # by the profile"): the driver does not read it and writes every placement. Driver 580.159.04 answered
        # SUCCESS and 7 for a 1-entry buffer and its caller later crashed (docs/real-gpu.md); so does this one.
        target = _obj(arr)
        for i, pl in enumerate(pls):
            target[i].start = pl.start
            target[i].size = pl.size
        cobj.value = len(pls)
        return S.SUCCESS

    def _nvmlDeviceGetGpuInstancePossiblePlacements(self, handle: Any, pid: Any, arr: Any, count: Any) -> int:
        """The pre-R470 form, still exported by 580.159.04 (scripts/gpu-probe); answered as ``_v2`` (UNCONFIRMED)."""
        return self._nvmlDeviceGetGpuInstancePossiblePlacements_v2(handle, pid, arr, count)

    def _nvmlDeviceGetArchitecture(self, handle: Any, ref: Any) -> int:
        """NVML_DEVICE_ARCH_* of the catalog's architecture (pynvml's constants)."""
        st = self.store.load()
        gpu, _, _, rc = self._resolve(st, handle, _KIND_GPU)
        if rc:
            return rc
        arch = {"Ampere": 7, "Ada": 8, "Hopper": 9, "Blackwell": 10}.get(gpu.catalog.architecture, 0xFFFFFFFF)
        _obj(ref).value = arch
        return S.SUCCESS

    def _nvmlDeviceGetGpuInstancePossiblePlacements_v2(self, handle: Any, pid: Any, arr: Any, count: Any) -> int:
        st = self.store.load()
        gpu, _, _, rc = self._resolve(st, handle, _KIND_GPU)
        if rc:
            return rc
        d = self._driver(st)
        # nvml.h lists NO_PERMISSION. A non-root caller (user nobody) got SUCCESS from 580.159.04 with MIG off
        # (scripts/gpu-probe on an H200, docs/real-gpu.md); with MIG on who gets it is UNCONFIRMED: refused (strict)
        if not d.root and gpu.mig_current == 1:
            return S.ERROR_NO_PERMISSION
        p = d.profile_by_id(gpu, int(_val(pid)))
        if p is None:
            return S.ERROR_INVALID_ARGUMENT
        return self._write_placements(list(p.placements), arr, count)

    # ---------------------------------------------------------------- GI create / destroy / query
    def _create_gi(self, handle: Any, pid: Any, placement: Placement | None, ref: Any) -> int:
        with self.store.transaction() as st:
            gpu, _, _, rc = self._resolve(st, handle, _KIND_GPU)
            if rc:
                return rc
            rc, gi = self._driver(st).create_gi(gpu, int(_val(pid)), placement)
            if rc:
                return rc
            _set_handle(ref, self._gi_handle(gpu, gi))
            return S.SUCCESS

    def _nvmlDeviceCreateGpuInstance(self, handle: Any, pid: Any, ref: Any) -> int:
        return self._create_gi(handle, pid, None, ref)

    def _nvmlDeviceCreateGpuInstanceWithPlacement(self, handle: Any, pid: Any, placement: Any, ref: Any) -> int:
        pl = _obj(placement)
        return self._create_gi(handle, pid, Placement(int(pl.start), int(pl.size)), ref)

    def _nvmlGpuInstanceDestroy(self, handle: Any) -> int:
        with self.store.transaction() as st:
            gpu, gi, _, rc = self._resolve(st, handle, _KIND_GI)
            if rc:
                return rc
            return self._driver(st).destroy_gi(gpu, gi)

    def _nvmlDeviceGetGpuInstances(self, handle: Any, pid: Any, arr: Any, count: Any) -> int:
        st = self.store.load()
        gpu, _, _, rc = self._resolve(st, handle, _KIND_GPU)
        if rc:
            return rc
        d = self._driver(st)
        if gpu.mig_current != 1:
            return S.ERROR_NOT_SUPPORTED
        if d.profile_by_id(gpu, int(_val(pid))) is None:
            return S.ERROR_INVALID_ARGUMENT
        gis = [g for g in gpu.gis if g.profile_id == int(_val(pid))]
        cobj = _obj(count)
        if arr is None:
            cobj.value = len(gis)
            return S.SUCCESS
        if cobj.value < len(gis):
            cobj.value = len(gis)
            return S.ERROR_INSUFFICIENT_SIZE
        from pynvml import c_nvmlGpuInstance_t

        target = _obj(arr)
        for i, g in enumerate(gis):
            target[i] = _handle_of(c_nvmlGpuInstance_t, self._gi_handle(gpu, g))
        cobj.value = len(gis)
        return S.SUCCESS

    def _nvmlDeviceGetGpuInstanceById(self, handle: Any, gi_id: Any, ref: Any) -> int:
        st = self.store.load()
        gpu, _, _, rc = self._resolve(st, handle, _KIND_GPU)
        if rc:
            return rc
        if gpu.mig_current != 1:
            return S.ERROR_NOT_SUPPORTED
        gi = next((g for g in gpu.gis if g.id == int(_val(gi_id))), None)
        if gi is None:
            return S.ERROR_NOT_FOUND
        _set_handle(ref, self._gi_handle(gpu, gi))
        return S.SUCCESS

    def _nvmlGpuInstanceGetInfo(self, handle: Any, ref: Any) -> int:
        st = self.store.load()
        gpu, gi, _, rc = self._resolve(st, handle, _KIND_GI)
        if rc:
            return rc
        from pynvml import c_nvmlDevice_t

        info = _obj(ref)
        info.device = _handle_of(c_nvmlDevice_t, _encode(_KIND_GPU, gpu.index))
        info.id = gi.id
        info.profileId = gi.profile_id
        info.placement.start = gi.start
        info.placement.size = gi.size
        return S.SUCCESS

    # ---------------------------------------------------------------- CI profiles / create / destroy
    def _ci_profile_info(self, handle: Any, profile: Any, eng: Any, ref: Any, versioned: bool) -> int:
        st = self.store.load()
        gpu, gi, _, rc = self._resolve(st, handle, _KIND_GI)
        if rc:
            return rc
        info = _obj(ref)
        if versioned and int(getattr(info, "version", 0)) not in CI_PROFILE_INFO_VERSIONS:
            return S.ERROR_INVALID_ARGUMENT
        idx = int(_val(profile))
        if not 0 <= idx < ci_profile_count(self._driver(st), gpu) or int(_val(eng)) != 0:
            return S.ERROR_INVALID_ARGUMENT
        gp = gpu.catalog.profile(gi.profile_id)
        cp = gp.ci_profile(idx)
        if cp is None:
            return S.ERROR_NOT_SUPPORTED
        info.id = cp.id
        info.sliceCount = cp.slices
        info.instanceCount = cp.max_instances
        info.multiprocessorCount = cp.sms
        info.sharedCopyEngineCount = gp.ce
        info.sharedDecoderCount = gp.dec
        info.sharedEncoderCount = gp.enc
        info.sharedJpegCount = gp.jpeg
        info.sharedOfaCount = gp.ofa
        if "name" in dict(type(info)._fields_):
            info.name = f"MIG {cp.name}".encode()
        return S.SUCCESS

    def _nvmlGpuInstanceGetComputeInstanceProfileInfoV(self, handle: Any, profile: Any, eng: Any, ref: Any) -> int:
        return self._ci_profile_info(handle, profile, eng, ref, True)

    def _nvmlGpuInstanceGetComputeInstanceProfileInfo(self, handle: Any, profile: Any, eng: Any, ref: Any) -> int:
        return self._ci_profile_info(handle, profile, eng, ref, False)

    def _nvmlGpuInstanceGetComputeInstanceRemainingCapacity(self, handle: Any, pid: Any, ref: Any) -> int:
        st = self.store.load()
        gpu, gi, _, rc = self._resolve(st, handle, _KIND_GI)
        if rc:
            return rc
        rc, n = self._driver(st).ci_remaining(gpu, gi, int(_val(pid)))
        if rc:
            return rc
        _obj(ref).value = n
        return S.SUCCESS

    def _nvmlGpuInstanceGetComputeInstancePossiblePlacements(self, handle: Any, pid: Any, arr: Any, count: Any) -> int:
        st = self.store.load()
        gpu, gi, _, rc = self._resolve(st, handle, _KIND_GI)
        if rc:
            return rc
        if not self._driver(st).root:
            return S.ERROR_NO_PERMISSION  # nvml.h lists NO_PERMISSION; UNCONFIRMED which callers get it (strict)
        cp = gpu.catalog.profile(gi.profile_id).ci_profile(int(_val(pid)))
        if cp is None:
            return S.ERROR_NOT_SUPPORTED
        return self._write_placements(list(cp.placements), arr, count)

    def _create_ci(self, handle: Any, pid: Any, placement: Placement | None, ref: Any) -> int:
        with self.store.transaction() as st:
            gpu, gi, _, rc = self._resolve(st, handle, _KIND_GI)
            if rc:
                return rc
            rc, ci = self._driver(st).create_ci(gpu, gi, int(_val(pid)), placement)
            if rc:
                return rc
            _set_handle(ref, self._ci_handle(gpu, gi, ci))
            return S.SUCCESS

    def _nvmlGpuInstanceCreateComputeInstance(self, handle: Any, pid: Any, ref: Any) -> int:
        return self._create_ci(handle, pid, None, ref)

    def _nvmlGpuInstanceCreateComputeInstanceWithPlacement(self, handle: Any, pid: Any, placement: Any, ref: Any) -> int:
        pl = _obj(placement)
        return self._create_ci(handle, pid, Placement(int(pl.start), int(pl.size)), ref)

    def _nvmlComputeInstanceDestroy(self, handle: Any) -> int:
        with self.store.transaction() as st:
            gpu, gi, ci, rc = self._resolve(st, handle, _KIND_CI)
            if rc:
                return rc
            return self._driver(st).destroy_ci(gpu, gi, ci)

    def _nvmlGpuInstanceGetComputeInstances(self, handle: Any, pid: Any, arr: Any, count: Any) -> int:
        st = self.store.load()
        gpu, gi, _, rc = self._resolve(st, handle, _KIND_GI)
        if rc:
            return rc
        if gpu.catalog.profile(gi.profile_id).ci_profile(int(_val(pid))) is None:
            return S.ERROR_NOT_SUPPORTED
        cis = [c for c in gi.cis if c.profile_id == int(_val(pid))]
        cobj = _obj(count)
        if arr is None:
            cobj.value = len(cis)
            return S.SUCCESS
        if cobj.value < len(cis):
            cobj.value = len(cis)
            return S.ERROR_INSUFFICIENT_SIZE
        from pynvml import c_nvmlComputeInstance_t

        target = _obj(arr)
        for i, c in enumerate(cis):
            target[i] = _handle_of(c_nvmlComputeInstance_t, self._ci_handle(gpu, gi, c))
        cobj.value = len(cis)
        return S.SUCCESS

    def _nvmlGpuInstanceGetComputeInstanceById(self, handle: Any, ci_id: Any, ref: Any) -> int:
        st = self.store.load()
        gpu, gi, _, rc = self._resolve(st, handle, _KIND_GI)
        if rc:
            return rc
        ci = next((c for c in gi.cis if c.id == int(_val(ci_id))), None)
        if ci is None:
            return S.ERROR_NOT_FOUND
        _set_handle(ref, self._ci_handle(gpu, gi, ci))
        return S.SUCCESS

    def _nvmlComputeInstanceGetInfo_v2(self, handle: Any, ref: Any) -> int:
        st = self.store.load()
        gpu, gi, ci, rc = self._resolve(st, handle, _KIND_CI)
        if rc:
            return rc
        from pynvml import c_nvmlDevice_t, c_nvmlGpuInstance_t

        info = _obj(ref)
        info.device = _handle_of(c_nvmlDevice_t, _encode(_KIND_GPU, gpu.index))
        info.gpuInstance = _handle_of(c_nvmlGpuInstance_t, self._gi_handle(gpu, gi))
        info.id = ci.id
        info.profileId = ci.profile_id
        info.placement.start = ci.start
        info.placement.size = ci.size
        return S.SUCCESS

    # ---------------------------------------------------------------- MIG device handles
    def _nvmlDeviceIsMigDeviceHandle(self, handle: Any, ref: Any) -> int:
        _obj(ref).value = int(_decode(_addr(handle))[0] == _KIND_MIG)
        return S.SUCCESS

    def _nvmlDeviceGetGpuInstanceId(self, handle: Any, ref: Any) -> int:
        gpu, gi, _, rc = self._resolve(self.store.load(), handle, _KIND_MIG)
        if rc:
            return S.ERROR_NOT_SUPPORTED if rc == S.ERROR_INVALID_ARGUMENT else rc
        _obj(ref).value = gi.id
        return S.SUCCESS

    def _nvmlDeviceGetComputeInstanceId(self, handle: Any, ref: Any) -> int:
        gpu, _, ci, rc = self._resolve(self.store.load(), handle, _KIND_MIG)
        if rc:
            return S.ERROR_NOT_SUPPORTED if rc == S.ERROR_INVALID_ARGUMENT else rc
        _obj(ref).value = ci.id
        return S.SUCCESS

    def _nvmlDeviceGetMaxMigDeviceCount(self, handle: Any, ref: Any) -> int:
        gpu, _, _, rc = self._resolve(self.store.load(), handle, _KIND_GPU)
        if rc:
            return rc
        # "Returns zero if MIG is not supported or enabled" (nvml.h)
        _obj(ref).value = gpu.catalog.compute_slices if gpu.mig_current == 1 and S.Driver.mig_supported(gpu) else 0
        return S.SUCCESS

    def _nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: Any, ref: Any) -> int:
        st = self.store.load()
        gpu, _, _, rc = self._resolve(st, handle, _KIND_GPU)
        if rc:
            return rc
        devs = self._driver(st).mig_devices(gpu)
        i = int(_val(index))
        if not 0 <= i < len(devs):
            return S.ERROR_NOT_FOUND
        gi, ci = devs[i]
        _set_handle(ref, self._ci_handle(gpu, gi, ci, _KIND_MIG))
        return S.SUCCESS

    def _nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: Any, ref: Any) -> int:
        gpu, _, _, rc = self._resolve(self.store.load(), handle, _KIND_MIG)
        if rc:
            return rc
        _set_handle(ref, _encode(_KIND_GPU, gpu.index))
        return S.SUCCESS

    def _nvmlDeviceGetAttributes_v2(self, handle: Any, ref: Any) -> int:
        st = self.store.load()
        gpu, gi, ci, rc = self._resolve(st, handle, _KIND_MIG)
        if rc:
            return S.ERROR_NOT_SUPPORTED  # "Only MIG device handles are supported"
        gp = gpu.catalog.profile(gi.profile_id)
        cp = gp.ci_profile(ci.profile_id)
        a = _obj(ref)
        a.multiprocessorCount = cp.sms
        a.sharedCopyEngineCount = gp.ce
        a.sharedDecoderCount = gp.dec
        a.sharedEncoderCount = gp.enc
        a.sharedJpegCount = gp.jpeg
        a.sharedOfaCount = gp.ofa
        a.gpuInstanceSliceCount = gp.slices
        a.computeInstanceSliceCount = cp.slices
        a.memorySizeMB = gp.memory_on(self._driver(st).driver_version)
        return S.SUCCESS

    # ---------------------------------------------------------------- processes
    def _nvmlDeviceGetComputeRunningProcesses_v3(self, handle: Any, count: Any, arr: Any) -> int:
        return self._running(handle, count, arr, mps_only=False)

    def _nvmlDeviceGetMPSComputeRunningProcesses_v3(self, handle: Any, count: Any, arr: Any) -> int:
        """The MPS clients among the compute processes (nvml.h: "information about any running processes ... using
        MPS"); the MPS server is not one of them."""
        return self._running(handle, count, arr, mps_only=True)

    def _running(self, handle: Any, count: Any, arr: Any, mps_only: bool) -> int:
        st = self.store.load()
        gpu, gi, ci, rc = self._any_device(st, handle)
        if rc:
            return rc
        d = self._driver(st)
        if gi is None and gpu.mig_current == 1 and not d.root:
            # "In MIG mode, if device handle is provided, the API returns aggregate information, only if the caller
            # has appropriate privileges" (nvml.h); per-MIG-device handles still answer
            return S.ERROR_NO_PERMISSION
        procs = d.busy(gpu, gi.id, ci.id) if gi is not None else d.live_processes(gpu)
        if mps_only:
            procs = [p for p in procs if p.mps]
        cobj = _obj(count)
        if not procs:
            cobj.value = 0
            return S.SUCCESS
        if arr is None or cobj.value < len(procs):
            cobj.value = len(procs)
            return S.ERROR_INSUFFICIENT_SIZE
        target = _obj(arr)
        for i, p in enumerate(procs):
            target[i].pid = p.pid
            target[i].usedGpuMemory = min(used_mib(p), _cap_mib(self, st, gpu, p)) << 20
            target[i].gpuInstanceId = p.gi if p.gi is not None else 0xFFFFFFFF
            target[i].computeInstanceId = p.ci if p.ci is not None else 0xFFFFFFFF
        cobj.value = len(procs)
        return S.SUCCESS

    _nvmlDeviceGetComputeRunningProcesses_v2 = _nvmlDeviceGetComputeRunningProcesses_v3

    def _nvmlDeviceGetGraphicsRunningProcesses_v3(self, handle: Any, count: Any, arr: Any) -> int:
        _obj(count).value = 0
        return S.SUCCESS


def _cap_mib(lib: FakeNvmlLib, st: S.SimState, gpu: S.SimGPU, p: S.SimProcess) -> int:
    """A client cannot use more than its instance's memory (the whole GPU's for a non-MIG client)."""
    gi = next((g for g in gpu.gis if g.id == p.gi), None) if p.gi is not None else None
    if gi is None:
        return int(gpu.catalog.memory_mib)
    gp = gpu.catalog.profile(gi.profile_id)
    return int(gp.memory_on(lib._driver(st).driver_version)) if gp is not None else int(gpu.catalog.memory_mib)


# Profile-index counts each driver knows (NVML_GPU_INSTANCE_PROFILE_COUNT / NVML_COMPUTE_INSTANCE_PROFILE_COUNT in
# the go-nvml nvml.h history): a query at or past the count is INVALID_ARGUMENT, which is where enumeration ends.
_GI_COUNTS = ((590, 0x12), (575, 0x11), (570, 0xD), (525, 0xA), (470, 0x8), (460, 0x7), (0, 0x6))
_CI_COUNTS = ((590, 0x9), (525, 0x8), (460, 0x7), (0, 0x6))


def _count(table: tuple[tuple[int, int], ...], d: S.Driver) -> int:
    return next(n for major, n in table if d.driver_version[0] >= major)


def gi_profile_count(d: S.Driver, gpu: S.SimGPU) -> int:
    """GI profile indices the driver answers (at least one past every profile the model has on this driver)."""
    top = max((p.index for p in d.profiles(gpu)), default=-1)
    return max(_count(_GI_COUNTS, d), top + 1)


def ci_profile_count(d: S.Driver, gpu: S.SimGPU) -> int:
    top = max((c.id for p in d.profiles(gpu) for c in p.ci_profiles), default=-1)
    return max(_count(_CI_COUNTS, d), top + 1)
