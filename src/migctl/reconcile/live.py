"""The live MIG layout of a node, read through the device layer, and its JSON form (used by the journal,
``checkpoint``/``restore`` and ``assert``).

A layout of one GPU is ``{"mig": bool, "gis": [{"profile", "start", "size", "cis": [{"profile", "start",
"size"}]}]}``; live reads add IDs, MIG device UUIDs and the PIDs using each instance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from migctl.catalog import GpuModel
from migctl.config.parted import Desired, WantCI, WantGI


@dataclass
class LiveCI:
    id: int
    profile: str
    profile_id: int
    start: int
    size: int
    uuid: str = ""
    pids: list[int] = field(default_factory=list)


@dataclass
class LiveGI:
    id: int
    profile: str
    profile_id: int
    start: int
    size: int
    cis: list[LiveCI] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)  # processes on the GI (any of its CIs)

    def key(self) -> tuple[str, tuple[str, ...]]:
        return self.profile, tuple(sorted(c.profile for c in self.cis))

    @property
    def busy(self) -> bool:
        return bool(self.pids)

    def label(self) -> str:
        cis = ",".join(c.profile for c in self.cis)
        return f"{self.profile}@{self.start}" + (f"[{cis}]" if cis != self.profile else "")

    def uuids(self) -> list[str]:
        return [c.uuid for c in self.cis if c.uuid]


@dataclass
class LiveGpu:
    index: int
    uuid: str
    name: str
    pci_device_id: int
    model: GpuModel | None
    mig_capable: bool
    mig_current: bool
    mig_pending: bool
    gis: list[LiveGI] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)  # every process on the GPU

    def layout(self) -> dict[str, Any]:
        """The JSON layout (profiles and placements; no IDs)."""
        return {
            "mig": self.mig_current,
            "gis": [
                {"profile": g.profile, "start": g.start, "size": g.size,
                 "cis": [{"profile": c.profile, "start": c.start, "size": c.size} for c in g.cis]}
                for g in sorted(self.gis, key=lambda g: g.start)
            ],
        }

    def describe(self) -> str:
        if not self.mig_capable:
            return "not MIG-capable"
        if not self.mig_current:
            return "MIG disabled" + (" (enable pending)" if self.mig_pending else "")
        layout = ", ".join(g.label() for g in sorted(self.gis, key=lambda g: g.start)) or "MIG enabled, no instances"
        return layout + ("" if self.mig_pending else " (disable pending)")


def read_gpu(gpu: Any) -> LiveGpu:
    """Read one device-layer GPU."""
    capable = gpu.model is not None and gpu.mig_capable()
    cur, pending = gpu.mig_mode() if capable else (0, 0)
    procs = gpu.processes()
    lg = LiveGpu(
        index=gpu.index, uuid=gpu.uuid, name=gpu.name, pci_device_id=gpu.pci_device_id, model=gpu.model,
        mig_capable=capable, mig_current=bool(cur), mig_pending=bool(pending), pids=sorted({p.pid for p in procs}),
    )
    if not (capable and cur):
        return lg
    uuids = {(d.gi_id, d.ci_id): d.uuid for d in gpu.mig_devices()}
    for gi in gpu.gpu_instances():
        gp = gi.profile()
        cips = {c.id: c.name for c in gi.ci_profiles()}
        lgi = LiveGI(gi.id, gp.name, gp.id, gi.placement.start, gi.placement.size,
                     pids=sorted({p.pid for p in procs if p.gi_id == gi.id}))
        for ci in gi.compute_instances():
            lgi.cis.append(
                LiveCI(ci.id, cips.get(ci.profile_id, str(ci.profile_id)), ci.profile_id, ci.placement.start,
                       ci.placement.size, uuids.get((gi.id, ci.id), ""),
                       sorted({p.pid for p in procs if p.gi_id == gi.id and p.ci_id == ci.id}))
            )
        lg.gis.append(lgi)
    return lg


def read_node(node: Any) -> list[LiveGpu]:
    """The live layout of every GPU of ``node``."""
    return [read_gpu(g) for g in node.gpus()]


def desired_from_layout(index: int, layout: dict[str, Any], source: str = "journal") -> Desired:
    """A fully pinned desired state (profiles, GI and CI placements) from a JSON layout."""
    gis = tuple(
        WantGI(g["profile"], int(g["start"]), tuple(WantCI(c["profile"], int(c["start"])) for c in g.get("cis", [])))
        for g in layout.get("gis", [])
    )
    return Desired(index, bool(layout.get("mig")), gis if layout.get("mig") else (), source)


def layout_matches(live: LiveGpu, layout: dict[str, Any]) -> bool:
    """True when ``live`` has exactly ``layout`` (mode, GI profiles and placements, CI profiles and placements)."""
    return _norm(live.layout()) == _norm(layout)


def _norm(layout: dict[str, Any]) -> Any:
    if not layout.get("mig"):
        return (False,)
    return (True, sorted(
        (g["profile"], g["start"], tuple(sorted((c["profile"], c["start"]) for c in g.get("cis", []))))
        for g in layout.get("gis", [])
    ))
