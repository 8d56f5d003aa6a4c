"""Independent validation of a :class:`Plan`, from first principles.

Deliberately does NOT use :mod:`migctl.catalog.geometry` (no ``conflict``/``place_all``): it re-derives
the rules from the catalog's raw data so that a bug in the geometry code or in the planner cannot hide.

Rules checked per GPU: the profile exists on the model; the placement start is one of the profile's
starts and the size is its placement size; the memory-slice ranges lie in the grid and do not overlap;
compute slices add up to at most the model's; at most ``max_instances`` of each profile; a ``+me.all``
instance only next to ``-me`` instances. Per plan: each workload unit is served at most once, by a profile
eligible for it, and every unit not listed as unserved is served.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from migctl.catalog.model import GpuModel
from migctl.planner.core import Plan, PlannedGpu, Workload


def check_gpu(model: GpuModel, instances: Sequence[tuple[int, int]]) -> list[str]:
    """Problems with one GPU's layout given as ``(profile_id, start)`` pairs; empty when valid."""
    problems: list[str] = []
    by_id = {p.id: p for p in model.gi_profiles}
    used = [False] * model.memory_slices
    slices = 0
    counts: Counter[int] = Counter()
    kinds = []
    for pid, start in instances:
        p = by_id.get(pid)
        if p is None:
            problems.append(f"profile id {pid} does not exist on {model.key}")
            continue
        kinds.append(p.index_name)
        if start not in p.placement_starts:
            problems.append(f"{p.name} cannot start at memory slice {start} (starts {list(p.placement_starts)})")
        if start < 0 or start + p.placement_size > model.memory_slices:
            problems.append(f"{p.name}@{start} leaves the {model.memory_slices}-slice grid")
            continue
        for s in range(start, start + p.placement_size):
            if used[s]:
                problems.append(f"{p.name}@{start}:{p.placement_size} overlaps another instance at memory slice {s}")
                break
        for s in range(start, start + p.placement_size):
            used[s] = True
        slices += p.slices
        counts[pid] += 1
    if slices > model.compute_slices:
        problems.append(f"{slices} compute slices used, {model.compute_slices} available")
    for pid, n in counts.items():
        if n > by_id[pid].max_instances:
            problems.append(f"{n} x {by_id[pid].name}, at most {by_id[pid].max_instances} allowed")
    if any(k.endswith("_ALL_ME") for k in kinds) and len(kinds) > 1:
        others = [k for k in kinds if not k.endswith("_ALL_ME")]
        if len(others) != len(kinds) - 1 or any(not k.endswith("_NO_ME") for k in others):
            problems.append("a +me.all instance may only share the GPU with -me instances")
    return problems


def validate_plan(plan: Plan, workloads: Sequence[Workload] = (), models: dict[str, GpuModel] | None = None) -> list[str]:
    """Every problem found in ``plan`` (empty list when valid); workloads enable the assignment checks."""
    from migctl.catalog import load_model

    problems: list[str] = []
    seen_index: set[int] = set()
    served: Counter[str] = Counter()
    units: set[tuple[str, int]] = set()
    eligible = {w.name: w for w in workloads}
    for g in plan.gpus:
        if g.index in seen_index:
            problems.append(f"GPU {g.index} appears twice")
        seen_index.add(g.index)
        model = (models or {}).get(g.model) or load_model(g.model)
        for msg in check_gpu(model, [(i.profile_id, i.start) for i in g.instances]):
            problems.append(f"GPU {g.index} ({g.model}): {msg}")
        for i in g.instances:
            p = next((q for q in model.gi_profiles if q.id == i.profile_id), None)
            if p is not None and (p.name != i.profile or p.placement_size != i.size or p.slices != i.slices):
                problems.append(f"GPU {g.index}: instance {i.profile}@{i.start} does not match profile {p.name}")
            if i.workload is None or not eligible or (i.kept and i.workload not in eligible):
                continue
            w = eligible.get(i.workload)
            if w is None:
                problems.append(f"GPU {g.index}: instance serves unknown workload {i.workload!r}")
                continue
            if i.profile_id not in w.eligible.get(g.model, ()):
                problems.append(f"GPU {g.index}: {i.profile} may not serve workload {w.name!r} ({w.need})")
            key = (w.name, i.unit if i.unit is not None else -1)
            if key in units:
                problems.append(f"workload {w.name!r} unit {i.unit} is served twice")
            units.add(key)
            served[w.name] += 1
    for w in workloads:
        want = w.count - plan.unserved.get(w.name, 0)
        if served[w.name] != want:
            problems.append(f"workload {w.name!r}: {served[w.name]} units served, expected {want}")
    return problems


def gpu_problems(gpu: PlannedGpu) -> list[str]:
    """Problems of one planned GPU (convenience wrapper over :func:`check_gpu`)."""
    from migctl.catalog import load_model

    return check_gpu(load_model(gpu.model), [(i.profile_id, i.start) for i in gpu.instances])
