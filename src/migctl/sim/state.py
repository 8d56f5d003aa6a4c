"""The simulated node's state and the driver semantics that change it.

Every operation returns an NVML return code (``NVML_SUCCESS`` or an ``NVML_ERROR_*`` value) exactly as
the driver would, so :mod:`migctl.sim.fakelib` can hand it straight back through pynvml. The rules
(mode changes pending while busy, Insufficient Resources on overlap, In use on live clients, ID and
placement choice) are documented with their sources in docs/simulator.md.
"""

from __future__ import annotations

import functools
import os
import random
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from migctl.catalog import GIProfile, GpuModel, Placement, load_model, parse_driver
from migctl.catalog.geometry import PlacedGI, auto_placement, conflict, remaining_capacity, tree_gi_id
from migctl.proc import pid_alive

# NVML return codes (nvml.h; identical values in pynvml).
SUCCESS = 0
ERROR_UNINITIALIZED = 1
ERROR_INVALID_ARGUMENT = 2
ERROR_NOT_SUPPORTED = 3
ERROR_NO_PERMISSION = 4
ERROR_NOT_FOUND = 6
ERROR_INSUFFICIENT_SIZE = 7
ERROR_RESET_REQUIRED = 16
ERROR_IN_USE = 19
ERROR_INSUFFICIENT_RESOURCES = 23

# Selectable behaviours of the simulated driver (spec options ``;key=value`` or ``migctl sim set``), with their
# defaults. Sources and the rules each one drives are listed in docs/simulator.md.
BEHAVIOURS: dict[str, tuple[str, ...]] = {
    # who calls NVML: root, or an unprivileged user (NO_PERMISSION from the privileged calls, nvml.h)
    "caller": ("root", "user"),
    # bare metal, or a pass-through VM (mode changes stay pending with RESET_REQUIRED; reset Not Supported)
    "vm": ("none", "passthrough"),
    # GI profile info while MIG is disabled: "driver" = Not Supported below R570 (UNCONFIRMED bound; mig-parted
    # discovery.go names 535), "not-supported" / "supported" force either answer
    "profile-info-mig-off": ("driver", "not-supported", "supported"),
    # NVML entry points: "driver" = only those the spec's driver has (nvml.h history), "all" = every one
    "functions": ("driver", "all"),
    # nvidia-persistenced running: holds every GPU open (reset refused, Ampere mode changes stay pending)
    "persistenced": ("off", "on"),
    # Ampere MIG mode change: "nvml" = nvmlDeviceSetMigMode resets the GPU itself unless something holds it
    # (nvml.h: "This API may unbind or reset the device to activate the requested mode"); "reset" = it always stays
    # pending until a GPU reset, as mig-parted assumes (it resets pre-Hopper GPUs after every mode change;
    # which setups do this beyond held GPUs: UNCONFIRMED)
    "ampere-activation": ("nvml", "reset"),
}
DEFAULT_BEHAVIOUR = {k: v[0] for k, v in BEHAVIOURS.items()}
# Profile info answers Not Supported with MIG disabled below this driver (UNCONFIRMED: the stricter choice; the
# only recorded data point is mig-parted discovery.go's "older drivers (e.g., 535)").
PROFILE_INFO_MIG_OFF_FROM = (570,)


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def plain(obj: Any) -> Any:
    """``dataclasses.asdict`` for the state's types (dataclasses, lists, dicts and plain values), without its
    deep copies: every simulator mutation writes the state, and ``asdict`` was about half of that write."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {name: plain(getattr(obj, name)) for name in _field_names(type(obj))}
    if isinstance(obj, list):
        return [plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    return obj


STATE_FORMAT = "migctl-sim-state"
STATE_VERSION = 1


@dataclass
class SimCI:
    id: int
    profile_id: int
    start: int
    size: int
    uuid: str
    serial: int = 0  # unique for the life of the node: a handle to a destroyed CI never matches a new one


@dataclass
class SimGI:
    id: int
    profile_id: int
    start: int
    size: int
    cis: list[SimCI] = field(default_factory=list)
    serial: int = 0

    @property
    def placement(self) -> Placement:
        return Placement(self.start, self.size)


@dataclass
class SimProcess:
    """A client of a GPU (gi is None) or of a MIG device (gi, ci): a real OS process, alive while its PID is."""

    pid: int
    gi: int | None
    ci: int | None
    used_mib: int = 0
    start_time: float = 0.0  # psutil create_time, to tell a reused PID from the original
    name: str = ""
    # The PID namespace the client was registered from (``pid:[inode]``); the driver has none (nvidia-docker
    # #1483), so a process registered from another namespace is reported with a PID that means nothing here.
    pidns: str = ""
    # Delayed registration (``client_delay``): a CUDA process appears in NVML only once it has a context,
    # i.e. after its first CUDA call (nvml.h: "processes which have active context"). Until this time
    # (epoch seconds) the client is not listed and does not hold its instance.
    visible_after: float = 0.0
    # An MPS client: listed by nvmlDeviceGetMPSComputeRunningProcesses as well as the compute list (nvidia-smi's
    # "M+C"; the MPS server itself is only in the compute list, "C": a real 580.159.04 table, docs/real-gpu.md)
    mps: bool = False


@dataclass
class SimHolder:
    """Something that holds a GPU (gi None) or a MIG device open without being a compute process: NVML shows no
    process for it, but reset (GPU holders) and destroy (GI/CI holders) answer In use, as a DCGM watch or
    nvidia-persistenced does on a real node."""

    name: str
    gi: int | None = None
    ci: int | None = None


@dataclass
class SimGPU:
    index: int
    model: str
    uuid: str
    bus_id: str
    serial: str
    mig_current: int = 0
    mig_pending: int = 0
    persistence_mode: int = 1  # nvmlDeviceGet/SetPersistenceMode; nvidia-smi -pm
    gis: list[SimGI] = field(default_factory=list)
    processes: list[SimProcess] = field(default_factory=list)
    temperature_c: int = 30
    power_w: int = 30
    mig_supported: bool = True
    holders: list[SimHolder] = field(default_factory=list)

    @property
    def catalog(self) -> GpuModel:
        from migctl.sim.plain_gpus import PLAIN_GPUS  # GPUs without MIG (no GI profiles)

        return PLAIN_GPUS.get(self.model) or load_model(self.model)


@dataclass
class SimState:
    spec: str
    driver: str
    gpus: list[SimGPU]
    seed: str
    fail_at: int | None = None  # fault injection: fail the Nth mutating operation (test hook)
    op_count: int = 0
    behaviour: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_BEHAVIOUR))
    serial: int = 0  # last instance serial handed out
    boots: int = 0  # `migctl sim reboot` count
    client_delay: float = 0.0  # seconds before a newly added client appears in NVML (`migctl sim client-delay`)

    def next_serial(self) -> int:
        self.serial += 1
        return self.serial

    def b(self, key: str) -> str:
        return self.behaviour.get(key, DEFAULT_BEHAVIOUR[key])

    # ---------------------------------------------------------------- serialisation
    def to_json(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "version": STATE_VERSION, **plain(self)}

    @classmethod
    def from_json(cls, data: Any, checked: bool = False) -> SimState:
        """The state ``data`` holds, every field checked (:mod:`migctl.sim.validate`) unless ``checked``: the same
        content passed those checks before in this process."""
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise ValueError("not a migctl simulator state file")
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"simulator state version {data.get('version')!r} is not supported (expected {STATE_VERSION})")
        from migctl.sim import validate

        if not checked:
            validate.check_fields({k: v for k, v in data.items() if k not in ("format", "version")}, cls, "state")
        gpus = []
        for g in data["gpus"]:
            gis = [SimGI(**{**gi, "cis": [SimCI(**ci) for ci in gi.get("cis", [])]}) for gi in g.get("gis", [])]
            procs = [SimProcess(**p) for p in g.get("processes", [])]
            holders = [SimHolder(**h) for h in g.get("holders", [])]
            gpus.append(SimGPU(**{**g, "gis": gis, "processes": procs, "holders": holders}))
        state = cls(
            spec=data["spec"],
            driver=data["driver"],
            gpus=gpus,
            seed=data["seed"],
            fail_at=data.get("fail_at"),
            op_count=data.get("op_count", 0),
            behaviour={**DEFAULT_BEHAVIOUR, **data.get("behaviour", {})},
            serial=data.get("serial", 0),
            boots=data.get("boots", 0),
            client_delay=float(data.get("client_delay", 0.0)),
        )
        if not checked:
            validate.check(state, BEHAVIOURS)
        return state

    @classmethod
    def new(cls, models: tuple[str, ...], driver: str, spec: str, seed: str | None = None,
            behaviour: dict[str, str] | None = None) -> SimState:
        seed = seed or uuidlib.uuid4().hex
        rng = random.Random(seed)
        gpus = []
        for i, key in enumerate(models):
            key, _, flag = key.partition("~")
            bus = (0x17 + 0x1E * i) % 0x100 if len(models) <= 8 else i + 1
            gpus.append(
                SimGPU(
                    index=i,
                    model=key,
                    uuid="GPU-" + str(uuidlib.UUID(int=rng.getrandbits(128))),
                    bus_id=f"00000000:{bus:02X}:00.0",
                    serial=str(1320000000000 + rng.randrange(10**9)),
                    temperature_c=27 + rng.randrange(4),
                    power_w=26 + rng.randrange(10),
                    mig_supported=flag != "nomig",
                )
            )
        return cls(spec=spec, driver=driver, gpus=gpus, seed=seed, behaviour={**DEFAULT_BEHAVIOUR, **(behaviour or {})})


def _own_pidns() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


class Driver:
    """Driver semantics over a :class:`SimState`. ``alive`` decides PID liveness (injectable for tests)."""

    def __init__(self, state: SimState, alive: Callable[[int, float], bool] = pid_alive) -> None:
        self.state = state
        self.alive = alive
        self.driver_version = parse_driver(state.driver)
        self.dirty = False

    # ---------------------------------------------------------------- helpers
    def gpu(self, index: int) -> SimGPU | None:
        if 0 <= index < len(self.state.gpus):
            return self.state.gpus[index]
        return None

    def model(self, gpu: SimGPU) -> GpuModel:
        return gpu.catalog

    @staticmethod
    def mig_supported(gpu: SimGPU) -> bool:
        return gpu.mig_supported and bool(gpu.catalog.gi_profiles)

    def profiles(self, gpu: SimGPU) -> tuple[GIProfile, ...]:
        return gpu.catalog.profiles_on(self.driver_version)

    def profile_by_id(self, gpu: SimGPU, profile_id: int) -> GIProfile | None:
        return next((p for p in self.profiles(gpu) if p.id == profile_id), None)

    def profile_by_index(self, gpu: SimGPU, index: int) -> GIProfile | None:
        return next((p for p in self.profiles(gpu) if p.index == index), None)

    def placed(self, gpu: SimGPU) -> list[PlacedGI]:
        out = []
        for gi in gpu.gis:
            p = gpu.catalog.profile(gi.profile_id)
            assert p is not None
            out.append(PlacedGI(p, gi.placement))
        return out

    def live_processes(self, gpu: SimGPU) -> list[SimProcess]:
        """Clients that are alive and already visible (see ``SimProcess.visible_after``). A client registered
        from another PID namespace cannot be checked from here and counts as alive (stricter)."""
        own = _own_pidns()
        live = [p for p in gpu.processes if (p.pidns and p.pidns != own) or self.alive(p.pid, p.start_time)]
        if len(live) != len(gpu.processes):
            gpu.processes = live
            self.dirty = True
        now = time.time()
        return [p for p in live if p.visible_after <= now]

    def busy(self, gpu: SimGPU, gi: int | None = None, ci: int | None = None) -> list[SimProcess]:
        procs = self.live_processes(gpu)
        if gi is None:
            return procs
        return [p for p in procs if p.gi == gi and (ci is None or p.ci == ci)]

    def _fault(self) -> int | None:
        """Test hooks. ``fail_at``: the Nth mutating operation since ``inject_fault`` fails with Unknown Error.
        ``$MIGCTL_SIM_CRASH_AT=N``: the process SIGKILLs itself at the Nth, before the operation is written."""
        self.state.op_count += 1
        self.dirty = True
        crash = os.environ.get("MIGCTL_SIM_CRASH_AT")
        if crash and self.state.op_count >= int(crash):
            # crash test hook: die like SIGKILL in the middle of the operation (nothing of it is written)
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        if self.state.fail_at is not None and self.state.op_count == self.state.fail_at:
            return 999
        return None

    def _mig_uuid(self, gpu: SimGPU, gi: int, ci: int) -> str:
        # R470+ form MIG-<uuid>: version-5-like UUID, unique per instance life (mig-hardware.md §6)
        nonce = os.urandom(8).hex()
        return "MIG-" + str(uuidlib.uuid5(uuidlib.NAMESPACE_OID, f"{gpu.uuid}/{gi}/{ci}/{nonce}"))

    # ---------------------------------------------------------------- behaviours
    @property
    def root(self) -> bool:
        """Privileged calls (create/destroy, mode, placements, the GPU-wide process list in MIG mode) need root:
        nvml.h lists NVML_ERROR_NO_PERMISSION for each; the MIG config capability is root-only (MIG User Guide)."""
        return self.state.b("caller") == "root"

    @property
    def passthrough(self) -> bool:
        return self.state.b("vm") == "passthrough"

    @staticmethod
    def ampere(gpu: SimGPU) -> bool:
        """Ampere needs the disruptive GPU reset to change MIG mode and keeps the mode across reboots; Hopper and
        newer toggle without it and start disabled after a reboot (mig-hardware.md §1, §5.1; details UNCONFIRMED)."""
        return gpu.catalog.architecture == "Ampere"

    def profile_info_with_mig_off(self) -> bool:
        mode = self.state.b("profile-info-mig-off")
        if mode == "supported":
            return True
        if mode == "not-supported":
            return False
        return self.driver_version >= PROFILE_INFO_MIG_OFF_FROM

    def gpu_holders(self, gpu: SimGPU) -> list[str]:
        """Names of what holds the whole GPU open without a compute process (persistence daemon, DCGM-like clients)."""
        names = [h.name for h in gpu.holders if h.gi is None]
        if self.state.b("persistenced") == "on":
            names.insert(0, "nvidia-persistenced")
        return names

    def instance_holders(self, gpu: SimGPU, gi: int, ci: int | None = None) -> list[str]:
        return [h.name for h in gpu.holders
                if h.gi == gi and (ci is None or h.ci is None or h.ci == ci)]

    # ---------------------------------------------------------------- MIG mode
    def get_mig_mode(self, gpu: SimGPU) -> tuple[int, int, int]:
        if not self.mig_supported(gpu):
            return ERROR_NOT_SUPPORTED, 0, 0
        return SUCCESS, gpu.mig_current, gpu.mig_pending

    def set_mig_mode(self, gpu: SimGPU, mode: int) -> tuple[int, int]:
        """nvmlDeviceSetMigMode: returns (return code, activation status)."""
        if mode not in (0, 1):
            return ERROR_INVALID_ARGUMENT, 0
        if not self.root:
            return ERROR_NO_PERMISSION, 0
        fault = self._fault()
        if fault:
            return fault, 0
        gpu.mig_pending = mode
        if mode == gpu.mig_current:
            return SUCCESS, SUCCESS
        if self.busy(gpu):
            # the driver cannot unbind/reset a device in use: the change stays pending
            return SUCCESS, ERROR_IN_USE
        if self.passthrough:
            # nvml.h: "In a pass-through VM ... activationStatus NVML_ERROR_RESET_REQUIRED" (VM reboot needed).
            # Hopper+ in a pass-through VM: UNCONFIRMED, the stricter Ampere behaviour is kept.
            return SUCCESS, ERROR_RESET_REQUIRED
        if self.ampere(gpu) and (self.gpu_holders(gpu) or self.state.b("ampere-activation") == "reset"):
            # Ampere needs a reset to activate; a holder (persistence daemon, monitoring client) prevents it
            return SUCCESS, ERROR_IN_USE
        self._activate(gpu)
        return SUCCESS, SUCCESS

    def _activate(self, gpu: SimGPU) -> None:
        gpu.mig_current = gpu.mig_pending
        gpu.gis = []  # GIs and CIs do not survive a reset (MIG User Guide)
        gpu.holders = [h for h in gpu.holders if h.gi is None]
        self._drop_clients_of_gone_instances(gpu)
        self.dirty = True

    def reset_blockers(self, gpu: SimGPU, own_sessions: int = 0) -> list[str]:
        """What keeps a reset from happening: processes, holders, and the caller's own NVML session."""
        out = [f"PID {p.pid}" + (f" ({p.name})" if p.name else "") for p in self.busy(gpu)]
        out += self.gpu_holders(gpu)
        out += [h.name for h in gpu.holders if h.gi is not None]
        if own_sessions:
            out.append("this process's own NVML session")
        return out

    def reset(self, gpu: SimGPU, own_sessions: int = 0) -> int:
        """GPU reset (nvidia-smi -r): root only; Not Supported in a pass-through VM (DOC: "Resetting GPU ... is not
        supported"); In use while any process, holder or NVML session (the caller's own included) has the GPU
        open; otherwise applies a pending mode and clears all instances."""
        if not self.root:
            return ERROR_NO_PERMISSION
        if self.passthrough:
            return ERROR_NOT_SUPPORTED
        if self.reset_blockers(gpu, own_sessions):
            return ERROR_IN_USE
        fault = self._fault()
        if fault:
            return fault
        self._activate(gpu)
        return SUCCESS

    def reboot(self) -> None:
        """A node reboot: processes gone, instances gone, pending modes applied; Ampere keeps MIG mode, Hopper and
        newer come up with MIG disabled (mig-hardware.md §5.1 DOC note; Hopper detail UNCONFIRMED)."""
        self.state.boots += 1
        for gpu in self.state.gpus:
            gpu.processes = []
            if not self.ampere(gpu):
                gpu.mig_pending = 0
            self._activate(gpu)
        self.dirty = True

    # ---------------------------------------------------------------- GPU instances
    def gi_remaining(self, gpu: SimGPU, profile_id: int) -> tuple[int, int]:
        """With MIG disabled, drivers that answer profile info then also answer this, as for an empty GPU (driver
        580.159.04 on an H200: SUCCESS and 7 for 1g.18gb; scripts/gpu-probe, docs/real-gpu.md); on older drivers
        Not Supported, like profile info (UNCONFIRMED: the stricter choice)."""
        if gpu.mig_current != 1 and not (self.mig_supported(gpu) and self.profile_info_with_mig_off()):
            return ERROR_NOT_SUPPORTED, 0
        p = self.profile_by_id(gpu, profile_id)
        if p is None:
            return ERROR_INVALID_ARGUMENT, 0
        return SUCCESS, remaining_capacity(gpu.catalog, self.placed(gpu) if gpu.mig_current == 1 else [], p)

    def create_gi(self, gpu: SimGPU, profile_id: int, placement: Placement | None) -> tuple[int, SimGI | None]:
        if not self.mig_supported(gpu):
            return ERROR_NOT_SUPPORTED, None
        if gpu.mig_current != 1:
            return ERROR_NOT_SUPPORTED, None
        if not self.root:
            return ERROR_NO_PERMISSION, None
        p = self.profile_by_id(gpu, profile_id)
        if p is None:
            return ERROR_INVALID_ARGUMENT, None
        if any(proc.gi is None for proc in self.busy(gpu)):
            return ERROR_IN_USE, None
        existing = self.placed(gpu)
        if placement is None:
            placement = auto_placement(gpu.catalog, existing, p)
            if placement is None:
                return ERROR_INSUFFICIENT_RESOURCES, None
        else:
            if placement not in p.placements:
                return ERROR_INVALID_ARGUMENT, None
            if conflict(gpu.catalog, existing, p, placement):
                return ERROR_INSUFFICIENT_RESOURCES, None
        fault = self._fault()
        if fault:
            return fault, None
        gi_id = tree_gi_id(gpu.catalog, placement)
        used = {gi.id for gi in gpu.gis}
        if gi_id in used:  # cannot happen with non-overlapping placements; keep IDs unique regardless
            gi_id = min(set(range(64)) - used)
        gi = SimGI(id=gi_id, profile_id=p.id, start=placement.start, size=placement.size,
                   serial=self.state.next_serial())
        gpu.gis.append(gi)
        gpu.gis.sort(key=lambda g: g.id)
        return SUCCESS, gi

    def find_gi(self, gpu: SimGPU, gi_id: int) -> SimGI | None:
        return next((g for g in gpu.gis if g.id == gi_id), None)

    def destroy_gi(self, gpu: SimGPU, gi: SimGI) -> int:
        if not self.root:
            return ERROR_NO_PERMISSION
        if gi.cis or self.busy(gpu, gi.id) or self.instance_holders(gpu, gi.id):
            return ERROR_IN_USE
        fault = self._fault()
        if fault:
            return fault
        gpu.gis.remove(gi)
        gpu.holders = [h for h in gpu.holders if h.gi != gi.id]
        self._drop_clients_of_gone_instances(gpu)
        return SUCCESS

    def _drop_clients_of_gone_instances(self, gpu: SimGPU) -> None:
        """A client added for an instance that is gone now. Only one not visible yet can be left (``busy``
        refused the destroy for the others): a process before its first CUDA call has no context, so the driver
        does not know it and nothing stops the destroy. It is dropped: it can never get a context on that
        instance. UNCONFIRMED: what that process's first CUDA call then returns on a real driver (no source)."""
        gis = {g.id: {c.id for c in g.cis} for g in gpu.gis}
        keep = [p for p in gpu.processes
                if p.gi is None or (p.gi in gis and (p.ci is None or p.ci in gis[p.gi]))]
        if len(keep) != len(gpu.processes):
            gpu.processes = keep
            self.dirty = True

    # ---------------------------------------------------------------- compute instances
    def gi_profile(self, gpu: SimGPU, gi: SimGI) -> GIProfile:
        p = gpu.catalog.profile(gi.profile_id)
        assert p is not None
        return p

    def ci_conflict(self, gpu: SimGPU, gi: SimGI, ci_profile_id: int, placement: Placement) -> int:
        gp = self.gi_profile(gpu, gi)
        cp = gp.ci_profile(ci_profile_id)
        if cp is None:
            return ERROR_INVALID_ARGUMENT
        if placement not in cp.placements:
            return ERROR_INVALID_ARGUMENT
        used = sum(c.size for c in gi.cis)
        if used + cp.slices > gp.slices:
            return ERROR_INSUFFICIENT_RESOURCES
        if any(Placement(c.start, c.size).overlaps(placement) for c in gi.cis):
            return ERROR_INSUFFICIENT_RESOURCES
        if sum(1 for c in gi.cis if c.profile_id == ci_profile_id) >= cp.max_instances:
            return ERROR_INSUFFICIENT_RESOURCES
        return SUCCESS

    def ci_free_placements(self, gpu: SimGPU, gi: SimGI, ci_profile_id: int) -> list[Placement]:
        cp = self.gi_profile(gpu, gi).ci_profile(ci_profile_id)
        if cp is None:
            return []
        return [pl for pl in cp.placements if self.ci_conflict(gpu, gi, ci_profile_id, pl) == SUCCESS]

    def ci_remaining(self, gpu: SimGPU, gi: SimGI, ci_profile_id: int) -> tuple[int, int]:
        cp = self.gi_profile(gpu, gi).ci_profile(ci_profile_id)
        if cp is None:
            return ERROR_INVALID_ARGUMENT, 0
        saved = list(gi.cis)
        count = 0
        try:
            while True:
                free = self.ci_free_placements(gpu, gi, ci_profile_id)
                if not free:
                    return SUCCESS, count
                gi.cis.append(SimCI(-1, ci_profile_id, free[0].start, free[0].size, ""))
                count += 1
        finally:
            gi.cis = saved

    def create_ci(self, gpu: SimGPU, gi: SimGI, ci_profile_id: int, placement: Placement | None) -> tuple[int, SimCI | None]:
        if not self.root:
            return ERROR_NO_PERMISSION, None
        gp = self.gi_profile(gpu, gi)
        cp = gp.ci_profile(ci_profile_id)
        if cp is None:
            return ERROR_INVALID_ARGUMENT, None
        if placement is None:
            free = self.ci_free_placements(gpu, gi, ci_profile_id)
            if not free:
                return ERROR_INSUFFICIENT_RESOURCES, None
            placement = free[0]
        else:
            rc = self.ci_conflict(gpu, gi, ci_profile_id, placement)
            if rc != SUCCESS:
                return rc, None
        fault = self._fault()
        if fault:
            return fault, None
        used = {c.id for c in gi.cis}
        ci_id = min(set(range(64)) - used)
        ci = SimCI(id=ci_id, profile_id=ci_profile_id, start=placement.start, size=placement.size,
                   uuid=self._mig_uuid(gpu, gi.id, ci_id), serial=self.state.next_serial())
        gi.cis.append(ci)
        gi.cis.sort(key=lambda c: c.id)
        return SUCCESS, ci

    def destroy_ci(self, gpu: SimGPU, gi: SimGI, ci: SimCI) -> int:
        if not self.root:
            return ERROR_NO_PERMISSION
        if self.busy(gpu, gi.id, ci.id) or self.instance_holders(gpu, gi.id, ci.id):
            return ERROR_IN_USE
        fault = self._fault()
        if fault:
            return fault
        gi.cis.remove(ci)
        gpu.holders = [h for h in gpu.holders if not (h.gi == gi.id and h.ci == ci.id)]
        self._drop_clients_of_gone_instances(gpu)
        return SUCCESS

    # ---------------------------------------------------------------- MIG devices
    def mig_devices(self, gpu: SimGPU) -> list[tuple[SimGI, SimCI]]:
        """MIG devices in index order: ascending (GI ID, CI ID) (mig-hardware.md §5.4)."""
        if gpu.mig_current != 1:
            return []
        return [(gi, ci) for gi in sorted(gpu.gis, key=lambda g: g.id) for ci in sorted(gi.cis, key=lambda c: c.id)]

    # ---------------------------------------------------------------- clients
    def add_process(self, gpu: SimGPU, proc: SimProcess) -> int:
        if proc.gi is not None:
            gi = self.find_gi(gpu, proc.gi)
            if gi is None or (proc.ci is not None and not any(c.id == proc.ci for c in gi.cis)):
                return ERROR_NOT_FOUND
        self.live_processes(gpu)  # prune clients that have exited while we hold the state
        gpu.processes = [p for p in gpu.processes if p.pid != proc.pid]
        gpu.processes.append(proc)
        self.dirty = True
        return SUCCESS

    def remove_process(self, gpu: SimGPU, pid: int) -> int:
        before = len(gpu.processes)
        gpu.processes = [p for p in gpu.processes if p.pid != pid]
        self.dirty = self.dirty or len(gpu.processes) != before
        return SUCCESS

    # ---------------------------------------------------------------- holders
    def add_holder(self, gpu: SimGPU, holder: SimHolder) -> int:
        if holder.gi is not None:
            gi = self.find_gi(gpu, holder.gi)
            if gi is None or (holder.ci is not None and not any(c.id == holder.ci for c in gi.cis)):
                return ERROR_NOT_FOUND
        gpu.holders.append(holder)
        self.dirty = True
        return SUCCESS

    def remove_holder(self, gpu: SimGPU, name: str) -> int:
        before = len(gpu.holders)
        gpu.holders = [h for h in gpu.holders if h.name != name]
        if len(gpu.holders) == before:
            return ERROR_NOT_FOUND
        self.dirty = True
        return SUCCESS
