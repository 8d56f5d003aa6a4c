"""Core data types of the planner: normalised demand, fleet, plans, and the planner's error type.

Plain dataclasses (no pydantic) so that the solver and the validators stay cheap to import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from migctl.catalog.model import GpuModel


class PlanError(ValueError):
    """Bad planner input (unknown profile or model, a need no GPU can hold, ...); the message is one line."""


@dataclass(frozen=True)
class Workload:
    """One workload after normalisation: ``count`` identical units, each needing one GPU instance.

    ``eligible`` maps a model key to the GI profile IDs that may serve one unit on that model, the
    preferred (smallest) first.
    """

    name: str
    count: int
    priority: int
    eligible: dict[str, tuple[int, ...]]
    need: str = ""  # how the need was written, for messages and output


@dataclass(frozen=True)
class FleetEntry:
    """GPUs of one model available to the plan; ``count`` None means "as few as needed" (unbounded)."""

    model: GpuModel
    count: int | None
    cost: int = 1


@dataclass(frozen=True)
class LiveInstance:
    """A GPU instance that exists now (incremental planning)."""

    profile_id: int
    start: int
    busy: bool
    workload: str | None = None


@dataclass(frozen=True)
class LiveGpu:
    """A GPU as it is now: its model and instances (incremental planning)."""

    index: int
    model: GpuModel
    instances: tuple[LiveInstance, ...] = ()


@dataclass
class Options:
    """Solver options."""

    time_limit_s: float = 10.0
    seed: int = 0
    workers: int = 2
    allow_upsize: bool = False
    progress: Any = None  # a migctl.planner.progress.SolveProgress to report live status to (display only)
    # incremental planning stops on deterministic work (CP-SAT deterministic time), not on the clock, so the same
    # input and seed give the same status on any machine; None = time_limit_s units. The clock still stops a
    # solve at 3 x time_limit_s as a safety net (stats.stopped_by says which limit ended it).
    work_limit: float | None = None


@dataclass
class Request:
    """A complete, validated planning request."""

    workloads: list[Workload]
    fleet: list[FleetEntry]
    options: Options = field(default_factory=Options)
    live: list[LiveGpu] | None = None
    serving: Any = None  # migctl.planner.serving.ServingSpec when in serving mode


@dataclass
class PlannedInstance:
    """One GPU instance of a planned layout, with its explicit placement and what it serves."""

    profile_id: int
    profile: str
    start: int
    size: int
    slices: int
    workload: str | None = None
    unit: int | None = None  # index of the served unit within its workload
    kept: bool = False  # exists already and is kept unchanged (incremental planning)
    busy: bool = False
    detail: dict[str, Any] = field(default_factory=dict)  # e.g. serving config (batch, processes)


@dataclass
class PlannedGpu:
    """The planned layout of one GPU."""

    index: int
    model: str
    instances: list[PlannedInstance]
    changed: bool = True  # incremental planning: whether the GPU's layout changes
    mig_enabled: bool = True  # False: the whole GPU with MIG disabled (serving mode), described by ``whole``
    whole: dict[str, Any] | None = None  # {workload, unit, slices, detail} of a whole GPU

    @property
    def used_slices(self) -> int:
        if not self.mig_enabled:
            return int((self.whole or {}).get("slices", 0))
        return sum(i.slices for i in self.instances)


@dataclass
class Plan:
    """A planner result: per-GPU layouts, the assignment, objective, lower bound and gap."""

    gpus: list[PlannedGpu]
    objective: float
    lower_bound: float
    status: str
    objective_name: str = "gpus"
    unserved: dict[str, int] = field(default_factory=dict)
    bounds: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    destroyed: list[dict[str, Any]] = field(default_factory=list)  # incremental: instances removed
    explain: list[dict[str, Any]] = field(default_factory=list)  # serving: per model, why it got what it got

    @property
    def gap(self) -> float:
        """Relative gap (objective - bound) / objective; 0 when the plan is proven optimal."""
        if self.objective <= 0:
            return 0.0
        return max(0.0, (self.objective - self.lower_bound) / self.objective)

    @property
    def gpu_count(self) -> int:
        return sum(1 for g in self.gpus if g.instances or not g.mig_enabled)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "status": self.status,
            "objective": {"name": self.objective_name, "value": self.objective},
            "lower_bound": self.lower_bound,
            "gap": round(self.gap, 6),
            "bounds": self.bounds,
            "gpus_used": self.gpu_count,
            "unserved": self.unserved,
            "stats": self.stats,
            "destroyed": self.destroyed,
            **({"explain": self.explain} if self.explain else {}),
            "gpus": [
                {
                    "index": g.index,
                    "model": g.model,
                    "changed": g.changed,
                    **({"mig_enabled": False, "whole": g.whole} if not g.mig_enabled else {}),
                    "instances": [
                        {
                            "profile": i.profile,
                            "profile_id": i.profile_id,
                            "placement": {"start": i.start, "size": i.size},
                            "workload": i.workload,
                            "unit": i.unit,
                            **({"kept": True} if i.kept else {}),
                            **({"busy": True} if i.busy else {}),
                            **({"detail": i.detail} if i.detail else {}),
                        }
                        for i in g.instances
                    ],
                }
                for g in self.gpus
            ],
        }
