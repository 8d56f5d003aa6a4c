"""Planner input: YAML (and CSV for large workload sets) parsed with pydantic v2 into a :class:`Request`.

Format (see docs/planner.md)::

    fleet:                       # list form, or a mapping {model: count | auto}
      - {model: H100-80GB, count: 4}
      - {model: A100-80GB}       # no count: as few as needed
    workloads:
      - {name: llm, profile: 3g.40gb, count: 2, models: [H100-80GB], priority: 5}
      - {name: etl, memory_gib: 8, compute_slices: 1, count: 10}
    workloads_csv: more.csv      # optional; columns name,profile,memory_gib,compute_slices,count,models,priority
    options: {allow_upsize: false, time_limit_s: 10, seed: 0}
    live: [...]                  # optional: current layout, switches to incremental planning
    serving: {...}               # optional: serving mode (see migctl.planner.serving)
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from migctl.catalog.model import GIProfile, GpuModel
from migctl.inputs import MAX_PRIORITY, decimal_text, is_digits
from migctl.planner.core import FleetEntry, LiveGpu, LiveInstance, Options, PlanError, Request, Workload

MAX_FLEET_GPUS = 1_000_000  # GPUs of one fleet entry (measured: two entries of 10^6 H100/A100 plan in 43 s)
MAX_COST = 1_000_000  # a GPU's cost in a fleet entry
MAX_MEMORY_GIB = 1e6  # a workload's memory_gib (finite: more than any GPU; infinity was an OverflowError)


def _load_model(key: str) -> GpuModel:
    from migctl.catalog import CatalogError, load_model

    try:
        return load_model(key)
    except CatalogError as e:
        raise PlanError(str(e)) from None


def _schemas() -> dict[str, Any]:
    """The pydantic models (imported lazily: pydantic is not needed to plan from Python objects)."""
    from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

    class _Base(BaseModel):
        model_config = ConfigDict(extra="forbid")

    class WorkloadIn(_Base):
        name: str
        profile: str | int | None = None
        memory_gib: float | None = Field(default=None, gt=0, le=MAX_MEMORY_GIB)
        compute_slices: int | None = Field(default=None, ge=1)
        count: int = Field(default=1, ge=0)
        models: list[str] | None = None
        priority: int = Field(default=0, ge=0, le=MAX_PRIORITY)
        allow_upsize: bool | None = None

        @model_validator(mode="after")
        def _need(self) -> WorkloadIn:
            if self.profile is None and self.memory_gib is None and self.compute_slices is None:
                raise ValueError("give a profile, or memory_gib and/or compute_slices")
            if self.profile is not None and (self.memory_gib is not None or self.compute_slices is not None):
                raise ValueError("give either a profile or memory_gib/compute_slices, not both")
            return self

    class FleetIn(_Base):
        model: str
        count: int | str | None = None
        cost: int = Field(default=1, ge=1, le=MAX_COST)

        @field_validator("count")
        @classmethod
        def _count(cls, v: int | str | None) -> int | None:
            if v is None or (isinstance(v, str) and v.strip().lower() in ("auto", "as-needed", "")):
                return None
            if isinstance(v, str):
                if not is_digits(v.strip()):
                    raise ValueError(f"count must be a number or 'auto', not {v!r}")
                v = int(v)
            if not 0 <= v <= MAX_FLEET_GPUS:
                raise ValueError(f"count must be 0 to {MAX_FLEET_GPUS} GPUs")
            return v

    class OptionsIn(_Base):
        time_limit_s: float = Field(default=10.0, gt=0, le=1e6)
        seed: int = Field(default=0, ge=0, le=2**31 - 1)  # CP-SAT's random_seed is an int32
        workers: int = Field(default=2, ge=1, le=64)
        allow_upsize: bool = False
        work_limit: float | None = Field(default=None, gt=0, le=1e6)

    class LiveInstanceIn(_Base):
        profile: str | int
        start: int = Field(ge=0)
        busy: bool = False
        workload: str | None = None

    class LiveGpuIn(_Base):
        index: int = Field(ge=0, le=9999)  # a GPU index as --gpu takes it (at most 4 digits)
        model: str
        instances: list[LiveInstanceIn] = []

    class RequestIn(_Base):
        fleet: list[FleetIn] | dict[str, int | str | None] | None = None
        workloads: list[WorkloadIn] = []
        workloads_csv: str | None = None
        options: OptionsIn = OptionsIn()
        live: list[LiveGpuIn] | None = None
        serving: dict[str, Any] | None = None

    return {"RequestIn": RequestIn, "WorkloadIn": WorkloadIn, "FleetIn": FleetIn}


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        e = errors()[0]
        loc = ".".join(str(x) for x in e.get("loc", ()))
        msg = str(e.get("msg", "")).removeprefix("Value error, ")  # our validators' own words
        return f"{loc}: {msg}" if loc else msg
    return str(exc).splitlines()[0]


def read_request_data(path: str | Path, keys: str = "'fleet' and 'workloads'") -> dict[str, Any]:
    """The mapping of a plan file, read with the input bounds (not yet parsed: callers may fill in the fleet
    or the live layout first); ``keys`` names what the mapping must hold, for the error line."""
    from migctl.inputs import InputError, load_yaml_file

    p = Path(path)
    if p.suffix.lower() == ".csv":
        raise PlanError(f"{p}: a CSV holds workloads only; reference it from a YAML file as workloads_csv")
    try:
        data = load_yaml_file(p, "plan file")
    except InputError as e:
        raise PlanError(str(e)) from None
    if not isinstance(data, dict):
        raise PlanError(f"{p}: expected a mapping with {keys}")
    return data


def load_request(path: str | Path) -> Request:
    """Read a planning request from a YAML file (workloads may also come from a CSV next to it)."""
    return parse_request(read_request_data(path), base_dir=Path(path).parent)


def read_workloads_csv(path: Path) -> list[dict[str, Any]]:
    """Workload rows from a CSV (columns name,profile,memory_gib,compute_slices,count,models,priority)."""
    import io

    from migctl.inputs import InputError, read_text

    try:
        rows = list(csv.DictReader(io.StringIO(read_text(path, "workloads CSV"), newline="")))
    except InputError as e:
        raise PlanError(str(e)) from None
    except csv.Error as e:
        raise PlanError(f"workloads CSV {path}: {e}") from None
    out: list[dict[str, Any]] = []
    for i, row in enumerate(rows, start=2):
        item: dict[str, Any] = {}
        for k, v in row.items():
            if k is None or v is None or str(v).strip() == "":
                continue
            k = k.strip()
            v = str(v).strip()
            if k == "models":
                item[k] = [m.strip() for m in v.replace(";", "|").split("|") if m.strip()]
            elif k in ("count", "priority", "compute_slices"):
                # (ASCII digits: int() also reads '١' and '1_0')
                if not is_digits(v.removeprefix("-")):
                    raise PlanError(f"{path}:{i}: {k} must be an integer, not {v!r}")
                item[k] = int(v)
            elif k == "memory_gib":
                if not decimal_text(v):
                    raise PlanError(f"{path}:{i}: memory_gib must be a number, not {v!r}")
                item[k] = float(v)
            elif k == "allow_upsize":
                item[k] = v.lower() in ("1", "true", "yes")
            else:
                item[k] = v
        item.setdefault("name", f"row{i}")
        out.append(item)
    return out


def parse_request(data: dict[str, Any], base_dir: Path | None = None) -> Request:
    """Validate a request given as plain data (parsed YAML) and normalise it."""
    from pydantic import ValidationError

    schemas = _schemas()
    data = dict(data)
    if data.get("workloads_csv"):
        csv_path = Path(data["workloads_csv"])
        if not csv_path.is_absolute() and base_dir is not None:
            csv_path = base_dir / csv_path
        data["workloads"] = list(data.get("workloads") or []) + read_workloads_csv(csv_path)
    try:
        req = schemas["RequestIn"].model_validate(data)
    except ValidationError as e:
        raise PlanError(f"invalid request: {_first_error(e)}") from None
    options = Options(**req.options.model_dump())

    live: list[LiveGpu] | None = None
    if req.live is not None:
        live = [_live_gpu(g) for g in req.live]

    fleet: list[FleetEntry] = []
    if isinstance(req.fleet, dict):
        items = []
        for k, v in req.fleet.items():
            try:
                items.append(schemas["FleetIn"].model_validate({"model": k, "count": v}))
            except ValidationError as e:  # (was a traceback: a count of -1 or 10^21 in the mapping form)
                raise PlanError(f"invalid request: fleet.{k}: {_first_error(e).removeprefix('count: ')}") from None
    else:
        items = list(req.fleet or [])
    seen: set[str] = set()
    for f in items:
        m = _load_model(f.model)
        if m.key in seen:
            raise PlanError(f"fleet lists model {m.key} twice")
        seen.add(m.key)
        fleet.append(FleetEntry(model=m, count=f.count, cost=f.cost))
    if live is not None and not fleet:
        models = {g.model.key: g.model for g in live}
        fleet = [FleetEntry(model=m, count=sum(1 for g in live if g.model.key == k)) for k, m in models.items()]

    serving = None
    if req.serving is not None:
        from migctl.planner.serving import parse_serving

        serving = parse_serving(req.serving, base_dir)
        if not fleet:
            fleet = [FleetEntry(model=serving.model, count=None)]
    if not fleet:
        raise PlanError("no fleet: give 'fleet' as a list of {model, count} (count omitted = as few as needed)")

    names: set[str] = set()
    workloads = []
    for w in req.workloads:
        if w.name in names:
            raise PlanError(f"workload name {w.name!r} is used twice")
        names.add(w.name)
        workloads.append(
            normalise_workload(
                w.name, fleet, profile=w.profile, memory_gib=w.memory_gib, compute_slices=w.compute_slices,
                count=w.count, models=w.models, priority=w.priority,
                allow_upsize=options.allow_upsize if w.allow_upsize is None else w.allow_upsize,
                upsize_explicit=w.allow_upsize is not None,
            )
        )
    if not workloads and serving is None and live is None:
        raise PlanError("no workloads: give 'workloads' (or 'workloads_csv', or 'serving')")
    _check_demand_bounded(fleet, req.workloads, live)
    return Request(workloads=workloads, fleet=fleet, options=options, live=live, serving=serving)


MAX_AUTO_GPUS = 100_000  # a fleet with count 'auto' is planned up to this many GPUs per model


def _check_demand_bounded(fleet: list[FleetEntry], workloads: list[Any], live: list[LiveGpu] | None) -> None:
    """Refuse, before any solving, more instances than the fleet (or the node) could ever hold."""
    per_gpu = max((p.max_instances for f in fleet for p in f.model.gi_profiles), default=7)
    gpus = (len(live) if live is not None and all(f.count is not None for f in fleet)
            else sum(MAX_AUTO_GPUS if f.count is None else f.count for f in fleet))
    cap = gpus * per_gpu
    total = sum(int(w.count) for w in workloads)
    if total > cap:
        where = "this node" if live is not None else "the fleet"
        raise PlanError(f"workloads ask for {total} instances; {where} can hold at most {cap} "
                        f"({gpus} GPU(s) x {per_gpu}); valid: fewer instances or a larger fleet")


def _live_gpu(g: Any) -> LiveGpu:
    m = _load_model(g.model)
    insts = []
    for inst in g.instances:
        p = m.profile(inst.profile)
        if p is None:
            valid = ", ".join(q.name for q in m.gi_profiles)
            raise PlanError(f"live GPU {g.index}: unknown profile {inst.profile!r} on {m.key}; valid: {valid}")
        insts.append(LiveInstance(profile_id=p.id, start=inst.start, busy=inst.busy, workload=inst.workload))
    return LiveGpu(index=g.index, model=m, instances=tuple(insts))


def _dominates(q: GIProfile, p: GIProfile) -> bool:
    """Whether an instance of ``q`` offers at least everything ``p`` does (slices, memory, engines)."""
    return (
        q.slices >= p.slices and q.memory_mib >= p.memory_mib and q.dec >= p.dec and q.enc >= p.enc
        and q.jpeg >= p.jpeg and q.ofa >= p.ofa
    )


def _size_key(p: GIProfile) -> tuple[int, int, int, int]:
    return (p.slices, p.placement_size, p.memory_mib, p.id)


def normalise_workload(
    name: str,
    fleet: list[FleetEntry],
    *,
    profile: str | int | None = None,
    memory_gib: float | None = None,
    compute_slices: int | None = None,
    count: int = 1,
    models: list[str] | None = None,
    priority: int = 0,
    allow_upsize: bool = False,
    upsize_explicit: bool = False,
) -> Workload:
    """Turn a workload's need into eligible GI profiles per fleet model; raise :class:`PlanError` if none.

    A profile need is served by exactly that profile, or with ``allow_upsize`` by any profile that offers at
    least as much (slices, memory, media engines). A memory/compute need is served by the plain profiles
    (no ``+me``/``-me``/``+gfx``) that satisfy both, smallest first; with ``allow_upsize`` explicitly false
    only the smallest one.
    """
    fleet_keys = [f.model.key for f in fleet]
    if models:
        allowed = []
        for k in models:
            m = _load_model(k)
            if m.key not in fleet_keys:
                raise PlanError(f"workload {name!r}: model {m.key} is not in the fleet ({', '.join(fleet_keys)})")
            allowed.append(m.key)
    else:
        allowed = fleet_keys
    by_key = {f.model.key: f.model for f in fleet}
    eligible: dict[str, tuple[int, ...]] = {}
    if profile is not None:
        need = str(profile)
        for k in allowed:
            m = by_key[k]
            p = m.profile(profile)
            if p is None:
                if models:
                    valid = ", ".join(q.name for q in m.gi_profiles)
                    raise PlanError(f"workload {name!r}: unknown profile {profile!r} on {k}; valid: {valid}")
                continue
            if allow_upsize:
                cands = sorted((q for q in m.gi_profiles if _dominates(q, p)), key=_size_key)
                cands.remove(p)
                eligible[k] = (p.id, *(q.id for q in cands))
            else:
                eligible[k] = (p.id,)
        if not eligible:
            valid = "; ".join(f"{k}: {', '.join(q.name for q in by_key[k].gi_profiles)}" for k in allowed)
            raise PlanError(f"workload {name!r}: unknown profile {profile!r}; valid profiles are {valid}")
    else:
        parts = []
        if memory_gib is not None:
            parts.append(f"{memory_gib:g} GiB")
        if compute_slices is not None:
            parts.append(f"{compute_slices} compute slices")
        need = " and ".join(parts)
        mem_mib = math.ceil(memory_gib * 1024) if memory_gib is not None else 0
        slices = compute_slices or 0
        for k in allowed:
            m = by_key[k]
            cands = sorted(
                (q for q in m.gi_profiles if q.suffix == "" and q.memory_mib >= mem_mib and q.slices >= slices),
                key=_size_key,
            )
            if cands:
                if upsize_explicit and not allow_upsize:
                    cands = cands[:1]
                eligible[k] = tuple(q.id for q in cands)
        if not eligible:
            largest = "; ".join(
                f"{k}: {max(by_key[k].gi_profiles, key=_size_key).name} "
                f"({max(q.memory_mib for q in by_key[k].gi_profiles) / 1024:.1f} GiB, {by_key[k].compute_slices} slices)"
                for k in allowed
            )
            raise PlanError(f"workload {name!r} needs {need}, more than any instance offers ({largest})")
    return Workload(name=name, count=count, priority=priority, eligible=eligible, need=need)
