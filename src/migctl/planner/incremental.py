"""Incremental planning: serve new demand on a live fleet without destroying any busy instance.

Every GPU keeps its busy instances at their placements (they are ``fixed`` when placing). For each
distinct GPU state the options are: keep a subset ``K`` of its idle instances (the others are
destroyed) and add a maximal set ``A`` of new instances next to busy + ``K`` (only the instances that
get work are created). An integer program picks one option per GPU and assigns the new demand to kept
idle or new instances, minimising lexicographically: unserved demand, instances destroyed, GPUs
touched, instances created. Its LP relaxation gives the lower bound.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

from migctl.catalog.geometry import PlacedGI
from migctl.catalog.model import GpuModel, Placement
from migctl.planner.core import LiveGpu, Plan, PlanError, PlannedGpu, PlannedInstance, Request
from migctl.planner.layouts import Layout, enumerate_layouts, maximal_layouts, place
from migctl.planner.solver import build_problem
from migctl.planner.validate import check_gpu


@dataclass(frozen=True)
class _Option:
    keep: tuple[int, ...]  # indices of kept idle instances (in the GPU's instance list)
    add: Layout  # profile IDs that may be created
    destroyed: int
    old: tuple[int, ...]  # profile IDs of kept idle instances (reusable)

    @property
    def touches(self) -> bool:
        return self.destroyed > 0 or bool(self.add)


def _state_key(g: LiveGpu) -> tuple:
    return (g.model.key, tuple(sorted((i.profile_id, i.start, i.busy) for i in g.instances)))


def _placed(model: GpuModel, pid: int, start: int) -> PlacedGI:
    p = next(q for q in model.gi_profiles if q.id == pid)
    return PlacedGI(p, Placement(start, p.placement_size))


def _options(g: LiveGpu, ids: list[int]) -> list[_Option]:
    model = g.model
    busy = [_placed(model, i.profile_id, i.start) for i in g.instances if i.busy]
    idle = [k for k, i in enumerate(g.instances) if not i.busy]
    out: list[_Option] = []
    seen: set[tuple] = set()
    for r in range(len(idle), -1, -1):
        for keep in itertools.combinations(idle, r):
            fixed = busy + [_placed(model, g.instances[k].profile_id, g.instances[k].start) for k in keep]
            old = tuple(sorted(g.instances[k].profile_id for k in keep))
            valid = enumerate_layouts(model, ids, fixed) if ids else {()}
            adds = [lay for lay in maximal_layouts(valid, ids) if lay]
            destroyed = len(idle) - len(keep)
            if destroyed == 0:
                adds.append(())
            for add in adds:
                sig = (tuple(sorted((g.instances[k].profile_id, g.instances[k].start) for k in keep)), add)
                if sig in seen:
                    continue
                seen.add(sig)
                out.append(_Option(keep=keep, add=add, destroyed=destroyed, old=old))
    return out


def plan_incremental(request: Request) -> Plan:
    """Plan new demand onto the live layout (``request.live``); busy instances are never touched."""
    from ortools.linear_solver import pywraplp
    from ortools.sat.python import cp_model

    t0 = time.perf_counter()
    live = request.live or []
    if len({g.index for g in live}) != len(live):
        raise PlanError("live: a GPU index appears twice")
    for g in live:
        problems = check_gpu(g.model, [(i.profile_id, i.start) for i in g.instances])
        if problems:
            raise PlanError(f"live GPU {g.index}: the current layout is invalid: {problems[0]}")
    problem = build_problem(request.workloads, request)
    classes = problem.classes
    types: dict[tuple, list[LiveGpu]] = {}
    for g in sorted(live, key=lambda g: g.index):
        types.setdefault(_state_key(g), []).append(g)
    tkeys = list(types)
    opts: dict[tuple, list[_Option]] = {}
    for t in tkeys:
        g0 = types[t][0]
        ids = sorted({i for c in classes for i in c.eligible_on(g0.model.key)})
        opts[t] = _options(g0, ids)

    n_gpus = len(live)
    max_created = sum(c.count for c in classes)
    w_created = 1
    w_touch = max_created + 1
    w_destroy = w_touch * (n_gpus + 1)
    max_idle = sum(1 for g in live for i in g.instances if not i.busy)
    w_unserved = w_destroy * (max_idle + 1)

    def build(lp: bool):
        if lp:
            s = pywraplp.Solver.CreateSolver("GLOP")
            var = lambda ub, name: s.NumVar(0, ub, name)  # noqa: E731
            add, minimize = s.Add, s.Minimize
        else:
            s = cp_model.CpModel()
            var = lambda ub, name: s.new_int_var(0, ub, name)  # noqa: E731
            add, minimize = s.add, s.minimize
        z = {(ti, oi): var(len(types[t]), f"z{ti}_{oi}") for ti, t in enumerate(tkeys) for oi in range(len(opts[t]))}
        for ti, t in enumerate(tkeys):
            add(sum(z[ti, oi] for oi in range(len(opts[t]))) == len(types[t]))
        xo: dict[tuple, object] = {}
        xn: dict[tuple, object] = {}
        u = []
        for d, c in enumerate(classes):
            terms = []
            for k, ids in c.eligible:
                for pid in ids:
                    xo[d, k, pid] = var(c.count, f"xo{d}_{k}_{pid}")
                    xn[d, k, pid] = var(c.count, f"xn{d}_{k}_{pid}")
                    terms += [xo[d, k, pid], xn[d, k, pid]]
            u.append(var(c.count, f"u{d}"))
            add(sum(terms) + u[-1] == c.count)
        keys = {(k, pid) for (_d, k, pid) in xo}
        for k, pid in keys:
            old_sup = [o.old.count(pid) * z[ti, oi] for ti, t in enumerate(tkeys) if t[0] == k
                       for oi, o in enumerate(opts[t]) if o.old.count(pid)]
            new_sup = [o.add.count(pid) * z[ti, oi] for ti, t in enumerate(tkeys) if t[0] == k
                       for oi, o in enumerate(opts[t]) if o.add.count(pid)]
            add(sum(v for (d, k2, p2), v in xo.items() if k2 == k and p2 == pid) <= sum(old_sup))
            add(sum(v for (d, k2, p2), v in xn.items() if k2 == k and p2 == pid) <= sum(new_sup))
        obj = (
            sum(w_unserved * (1 + classes[d].priority) * u[d] for d in range(len(classes)))
            + sum((w_destroy * o.destroyed + w_touch * int(o.touches)) * z[ti, oi]
                  for ti, t in enumerate(tkeys) for oi, o in enumerate(opts[t]) if o.destroyed or o.touches)
            + sum(w_created * v for v in xn.values())
        )
        minimize(obj)
        return s, z, xo, xn, u

    lp, *_ = build(True)
    lp_val = lp.Objective().Value() if lp.Solve() == pywraplp.Solver.OPTIMAL else 0.0
    mdl, z, xo, xn, u = build(False)
    solver = cp_model.CpSolver()
    work = float(request.options.work_limit or request.options.time_limit_s)
    solver.parameters.max_deterministic_time = work  # deterministic: the status does not depend on load
    solver.parameters.max_time_in_seconds = 3 * float(request.options.time_limit_s)  # safety net only
    solver.parameters.random_seed = int(request.options.seed)
    solver.parameters.num_workers = int(request.options.workers)
    solver.parameters.interleave_search = request.options.workers > 1  # deterministic with several workers
    from migctl.planner.progress import solve

    status = solve(solver, mdl, request.options.progress, "CP-SAT incremental")
    stopped_by = ("optimal" if status == cp_model.OPTIMAL else
                  "work" if solver.deterministic_time >= work * 0.999 else "clock")
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise PlanError(f"incremental: no plan found within {request.options.time_limit_s:g} s")
    val = solver.value

    # expand: options per GPU, then units onto kept idle instances and new instances
    chosen: dict[int, _Option] = {}
    for ti, t in enumerate(tkeys):
        gl = list(types[t])
        for oi, o in enumerate(opts[t]):
            for _ in range(val(z[ti, oi])):
                chosen[gl.pop(0).index] = o
    by_index = {g.index: g for g in live}
    old_slots: dict[tuple[str, int], list[tuple[int, int]]] = {}
    new_slots: dict[tuple[str, int], list[int]] = {}
    for gidx in sorted(chosen):
        g, o = by_index[gidx], chosen[gidx]
        for k in o.keep:
            old_slots.setdefault((g.model.key, g.instances[k].profile_id), []).append((gidx, k))
        for pid in o.add:
            new_slots.setdefault((g.model.key, pid), []).append(gidx)
    serve_old: dict[tuple[int, int], tuple[str, int]] = {}
    created: dict[int, list[tuple[int, str, int]]] = {}
    next_unit = [0] * len(classes)
    unserved: dict[str, int] = {}
    for d, c in enumerate(classes):
        for k, ids in c.eligible:
            for pid in ids:
                for _ in range(val(xo[d, k, pid])):
                    name, unit = problem.members[d][next_unit[d]]
                    next_unit[d] += 1
                    serve_old[old_slots[k, pid].pop(0)] = (name, unit)
                for _ in range(val(xn[d, k, pid])):
                    name, unit = problem.members[d][next_unit[d]]
                    next_unit[d] += 1
                    created.setdefault(new_slots[k, pid].pop(0), []).append((pid, name, unit))
        for name, _unit in problem.members[d][next_unit[d]:]:
            unserved[name] = unserved.get(name, 0) + 1

    planned: list[PlannedGpu] = []
    destroyed_list: list[dict] = []
    touched = 0
    for g in sorted(live, key=lambda g: g.index):
        o = chosen[g.index]
        profiles = {p.id: p for p in g.model.gi_profiles}
        insts: list[PlannedInstance] = []
        fixed: list[PlacedGI] = []
        for k, i in enumerate(g.instances):
            p = profiles[i.profile_id]
            if i.busy or k in o.keep:
                name_unit = serve_old.get((g.index, k))
                insts.append(PlannedInstance(
                    profile_id=p.id, profile=p.name, start=i.start, size=p.placement_size, slices=p.slices,
                    workload=name_unit[0] if name_unit else i.workload, unit=name_unit[1] if name_unit else None,
                    kept=True, busy=i.busy))
                fixed.append(_placed(g.model, p.id, i.start))
            else:
                destroyed_list.append({"gpu": g.index, "profile": p.name, "start": i.start})
        new = created.get(g.index, [])
        if new:
            placed = place(g.model, [profiles[pid] for pid, _, _ in new], fixed)
            if placed is None:  # pragma: no cover - a subset of a valid addition is valid
                raise PlanError(f"GPU {g.index}: internal error placing new instances")
            starts: dict[int, list[int]] = {}
            for gi in placed:
                starts.setdefault(gi.profile.id, []).append(gi.placement.start)
            for pid, name, unit in new:
                p = profiles[pid]
                insts.append(PlannedInstance(profile_id=pid, profile=p.name, start=starts[pid].pop(0),
                                             size=p.placement_size, slices=p.slices, workload=name, unit=unit))
        insts.sort(key=lambda i: i.start)
        changed = bool(new) or o.destroyed > 0
        touched += int(changed)
        planned.append(PlannedGpu(index=g.index, model=g.model.key, instances=insts, changed=changed))
    n_created = sum(len(v) for v in created.values())
    obj = (sum(w_unserved * (1 + classes[d].priority) * 0 for d in range(len(classes)))
           + w_destroy * len(destroyed_list) + w_touch * touched + w_created * n_created)
    obj += sum(w_unserved * (1 + classes[d].priority) * val(u[d]) for d in range(len(classes)))
    bound = max(math.ceil(lp_val - 1e-6), math.ceil(solver.best_objective_bound - 1e-6))
    bound = min(bound, obj)
    return Plan(
        gpus=planned,
        objective=float(obj),
        lower_bound=float(bound),
        status="optimal" if bound >= obj else "feasible",
        objective_name=f"{w_destroy} x destroyed + {w_touch} x GPUs touched + created (+ {w_unserved} x unserved)",
        unserved=unserved,
        bounds={"lp": round(lp_val, 6), "cp_sat": float(math.ceil(solver.best_objective_bound - 1e-6))},
        destroyed=destroyed_list,
        stats={"instances_destroyed": len(destroyed_list), "gpus_touched": touched, "instances_created": n_created,
               "gpu_states": len(tkeys), "options": sum(len(v) for v in opts.values()),
               "stopped_by": stopped_by, "work": round(solver.deterministic_time, 3),
               "time_s": {"total": round(time.perf_counter() - t0, 4)}},
    )
