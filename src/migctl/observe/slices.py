"""A GPU's slice map: which GPU instance sits on which memory and compute slices, what is free, what is stranded.

Pure logic over the catalog (no I/O). Memory slices are the placement grid (``model.memory_slices``; a GI
occupies ``placement.size`` of them from ``placement.start``); compute slices are counted per GPU
(``model.compute_slices``), a GI holding ``profile.slices`` of them, its CIs some of those.

* *free* memory slices: covered by no GI;
* *creatable* profiles: those with at least one placement that :func:`migctl.catalog.geometry.conflict`
  accepts next to the existing GIs (the driver's own rules: overlap, compute budget, instance counts, +me);
* *stranded* memory slices: free slices that no creatable profile at any valid placement would cover;
  stranded compute slices: free compute slices when no profile can be created at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from migctl.catalog import GIProfile, GpuModel, Placement
from migctl.catalog.geometry import PlacedGI, conflict


def users_text(pids: tuple[int, ...], shared: tuple[str, ...], idle_servers: tuple[int, ...],
               process: str = "") -> list[str]:
    """Who is on a device, for a display: its processes (``process`` before each PID, e.g. "process "), an idle
    MPS server marked as such, then the sharing holders NVML does not list yet."""
    return [f"{p} (idle MPS server)" if p in idle_servers else f"{process}{p}" for p in pids] + [
        f"idle MPS server {p}" for p in idle_servers if p not in pids] + list(shared)


@dataclass(frozen=True)
class CiView:
    """A compute instance (one MIG device) of a GI."""

    ci_id: int
    slices: int
    uuid: str = ""
    profile: str = ""  # e.g. 1c.3g.40gb, or the GI profile for a full-GI CI
    device_index: int | None = None
    pids: tuple[int, ...] = ()
    leased_by: int | None = None  # holder PID of a migctl lease
    job_id: int | None = None
    # MPS servers and time-sliced clients migctl started on it, e.g. "MPS server 812" (migctl.busy counts them
    # from the start, before any client has a CUDA context that NVML would list)
    shared: tuple[str, ...] = ()
    # PIDs of migctl's MPS servers on it whose clients have all ended (killed before they could stop it): NVML
    # lists the server as a process, but nothing uses the device, and the next run, worker pass or apply stops it
    idle_servers: tuple[int, ...] = ()

    @property
    def busy(self) -> bool:
        return bool(set(self.pids) - set(self.idle_servers)) or self.leased_by is not None or bool(self.shared)


@dataclass(frozen=True)
class GiView:
    """A GPU instance as the picture and the metrics see it."""

    gi_id: int
    profile: str  # e.g. 3g.40gb
    profile_id: int
    start: int
    size: int
    compute_slices: int
    cis: tuple[CiView, ...] = ()
    mem_used_mib: int | None = None
    mem_total_mib: int | None = None
    activity: float | None = None  # 0..1, NVML GPM GRAPHICS_UTIL / 100 (None where NVML does not offer it)
    state: str = ""  # pictures of a change: "kept", "created", "destroyed" ("" for the live view)
    label: str = ""  # extra text (a planned workload)

    @property
    def busy(self) -> bool:
        return any(c.busy for c in self.cis)

    @property
    def placement(self) -> Placement:
        return Placement(self.start, self.size)


@dataclass
class GpuMap:
    """One GPU: its geometry and its GIs."""

    index: int
    name: str
    model: GpuModel | None
    mig_current: bool | None = None  # None: not MIG capable
    mig_pending: bool | None = None
    gis: list[GiView] = field(default_factory=list)
    driver: tuple[int, ...] | None = None
    uuid: str = ""
    bus_id: str = ""
    mem_used_mib: int | None = None
    mem_total_mib: int | None = None
    mem_reserved_mib: int = 0  # what the driver reserves (NVML v2 memory info); used + free + reserved = total
    mem_free_mib: int | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    title: str = ""  # e.g. "before" / "after"
    # a GPU not in MIG mode, used whole: its compute processes, and the MPS server and shared clients migctl
    # started on it (busy before their first CUDA call, as :mod:`migctl.busy` counts them)
    pids: tuple[int, ...] = ()
    shared: tuple[str, ...] = ()
    idle_servers: tuple[int, ...] = ()  # as :attr:`CiView.idle_servers`

    @property
    def whole_busy(self) -> bool:
        """A GPU not in MIG mode that something uses (processes, MPS server, shared clients; not an idle MPS
        server alone)."""
        return bool(set(self.pids) - set(self.idle_servers)) or bool(self.shared)

    @property
    def memory_slices(self) -> int:
        return self.model.memory_slices if self.model else 0

    @property
    def compute_slices(self) -> int:
        return self.model.compute_slices if self.model else 0

    # ------------------------------------------------------------------ analysis
    def _live(self) -> list[GiView]:
        return list(self.gis)  # a "before" picture counts instances about to be destroyed: they exist now

    def profiles(self) -> tuple[GIProfile, ...]:
        if self.model is None:
            return ()
        return self.model.profiles_on(self.driver)

    def placed(self) -> list[PlacedGI]:
        out = []
        if self.model is None:
            return out
        for g in self._live():
            p = self.model.profile(g.profile_id)
            if p is not None:
                out.append(PlacedGI(p, g.placement))
        return out

    def used_memory_slots(self) -> set[int]:
        return {s for g in self._live() for s in range(g.start, g.start + g.size)}

    def free_memory_slots(self) -> list[int]:
        used = self.used_memory_slots()
        return [s for s in range(self.memory_slices) if s not in used]

    def used_compute_slices(self) -> int:
        return sum(g.compute_slices for g in self._live())

    def free_compute_slices(self) -> int:
        return max(0, self.compute_slices - self.used_compute_slices())

    def creatable(self) -> list[tuple[GIProfile, Placement]]:
        """Every (profile, placement) the driver would accept now (empty unless MIG is enabled)."""
        if self.model is None or not self.mig_current:
            return []
        key = tuple((g.profile_id, g.start) for g in self.gis)
        cached = self.__dict__.get("_creatable")
        if cached is not None and cached[0] == key:
            return cached[1]
        placed = self.placed()
        out = [(p, pl) for p in self.profiles() for pl in p.placements if conflict(self.model, placed, p, pl) is None]
        self.__dict__["_creatable"] = (key, out)
        return out

    def largest_creatable(self) -> GIProfile | None:
        """The profile with the most compute slices (then memory) that can still be created."""
        cands = {p.id: p for p, _ in self.creatable()}
        if not cands:
            return None
        return max(cands.values(), key=lambda p: (p.slices, p.memory_mib, -p.id))

    def stranded_memory_slots(self) -> list[int]:
        if not self.mig_current:
            return []
        reachable = {s for _, pl in self.creatable() for s in range(pl.start, pl.start + pl.size)}
        return [s for s in self.free_memory_slots() if s not in reachable]

    def stranded_compute_slices(self) -> int:
        if not self.mig_current:
            return 0
        return self.free_compute_slices() if not self.creatable() else 0
