"""The exact planner: a configuration integer program over valid per-GPU layouts, solved with CP-SAT.

Variables: ``y[m, c]`` = number of GPUs of model ``m`` that get maximal layout ``c`` (every valid
multiset of the relevant profiles to which none can be added; sub-multisets of valid layouts are
valid, so unused instances are simply not created), ``x[d, m, p]`` = units of demand class ``d``
served by profile ``p`` on model ``m``, ``u[d]`` = unserved units (only when the fleet is bounded).

    min  sum cost_m y[m,c] + sum W_d u[d]
    s.t. sum_d x[d,m,p] <= sum_c a[c,p] y[m,c]      (instances of p on m)
         sum_{m,p} x[d,m,p] + u[d] = n_d            (every unit served or counted unserved)
         sum_c y[m,c] <= count_m                     (fleet size, if bounded)

Any integer solution is realisable (each GPU gets a valid layout with explicit placements), so the
integer optimum is the true optimum. The LP relaxation (GLOP), rounded up, and CP-SAT's own proven
bound give the lower bound reported with every plan; a first-fit-decreasing packing warm-starts it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from migctl.planner.core import Plan, PlanError, PlannedGpu, PlannedInstance, Request, Workload
from migctl.planner.heuristics import DemandClass, HGpu, ModelSpace, first_fit, lower_bound_slices
from migctl.planner.layouts import Layout, enumerate_layouts, maximal_layouts, placements_for

if TYPE_CHECKING:  # imported where it is used: ortools is heavy
    from ortools.sat.python import cp_model


@dataclass
class Problem:
    """The packing problem in class form, with the solver's view of every fleet model."""

    classes: list[DemandClass]
    members: list[list[tuple[str, int]]]  # per class: (workload name, unit index) of every unit
    spaces: list[ModelSpace]
    maximal: dict[str, list[Layout]]


def build_problem(workloads: Sequence[Workload], request: Request) -> Problem:
    """Group identical units into classes and enumerate each model's valid and maximal layouts."""
    index: dict[tuple, int] = {}
    classes: list[DemandClass] = []
    members: list[list[tuple[str, int]]] = []
    for w in workloads:
        if w.count <= 0:
            continue
        key = (tuple(sorted(w.eligible.items())), w.priority)
        if key not in index:
            index[key] = len(classes)
            classes.append(DemandClass(eligible=key[0], count=0, priority=w.priority))
            members.append([])
        d = index[key]
        classes[d] = DemandClass(eligible=key[0], count=classes[d].count + w.count, priority=w.priority)
        members[d].extend((w.name, i) for i in range(w.count))
    spaces: list[ModelSpace] = []
    maximal: dict[str, list[Layout]] = {}
    for f in request.fleet:
        ids = sorted({i for c in classes for i in c.eligible_on(f.model.key)})
        valid = enumerate_layouts(f.model, ids) if ids else {()}
        spaces.append(
            ModelSpace(model=f.model, count=f.count, cost=f.cost, valid=frozenset(valid),
                       profiles={p.id: p for p in f.model.gi_profiles})
        )
        maximal[f.model.key] = [lay for lay in maximal_layouts(valid, ids) if lay] if ids else []
    return Problem(classes=classes, members=members, spaces=spaces, maximal=maximal)


def _unserved_weight(problem: Problem) -> list[int]:
    cap = 0
    total_units = sum(c.count for c in problem.classes)
    for sp in problem.spaces:
        cap += sp.cost * (sp.count if sp.count is not None else total_units)
    big = cap + 1
    return [big * (1 + c.priority) for c in problem.classes]


OBJECTIVE_LIMIT = 2**62  # CP-SAT's coefficients and objective are 64-bit integers


def check_objective_fits(problem: Problem) -> None:
    """A PlanError when the largest objective (every GPU bought, every unit unserved) could pass
    :data:`OBJECTIVE_LIMIT`: large costs, GPU counts and priorities multiply (was a TypeError from CP-SAT)."""
    total_units = sum(c.count for c in problem.classes)
    top = sum(sp.cost * (sp.count if sp.count is not None else total_units) for sp in problem.spaces)
    top += sum(w * c.count for w, c in zip(_unserved_weight(problem), problem.classes, strict=True))
    if top >= OBJECTIVE_LIMIT:
        raise PlanError(f"the fleet's costs and GPU counts and the workloads' priorities multiply past what the "
                        f"solver takes (its objective could reach {top:.3g}; at most 2^62); valid: smaller costs, "
                        "counts or priorities")


def heuristic_cost(problem: Problem, gpus: Sequence[HGpu], unserved: Sequence[int]) -> int:
    cost = {sp.model.key: sp.cost for sp in problem.spaces}
    w = _unserved_weight(problem)
    return sum(cost[g.model] for g in gpus) + sum(wd * u for wd, u in zip(w, unserved, strict=True))


def lp_bound(problem: Problem) -> float:
    """Optimum of the configuration LP (GLOP); a lower bound on the objective."""
    from ortools.linear_solver import pywraplp

    s = pywraplp.Solver.CreateSolver("GLOP")
    if s is None:  # pragma: no cover - GLOP ships with ortools
        return 0.0
    inf = s.infinity()
    weights = _unserved_weight(problem)
    obj = s.Objective()
    y: dict[tuple[str, int], object] = {}
    for sp in problem.spaces:
        k = sp.model.key
        for ci, _lay in enumerate(problem.maximal[k]):
            y[k, ci] = s.NumVar(0, inf, f"y_{k}_{ci}")
            obj.SetCoefficient(y[k, ci], sp.cost)
        if sp.count is not None and problem.maximal[k]:
            ct = s.Constraint(-inf, sp.count)
            for ci in range(len(problem.maximal[k])):
                ct.SetCoefficient(y[k, ci], 1)
    cap: dict[tuple[str, int], object] = {}
    for sp in problem.spaces:
        k = sp.model.key
        ids = sorted({i for c in problem.classes for i in c.eligible_on(k)})
        for pid in ids:
            ct = s.Constraint(-inf, 0)
            for ci, lay in enumerate(problem.maximal[k]):
                if lay.count(pid):
                    ct.SetCoefficient(y[k, ci], -lay.count(pid))
            cap[k, pid] = ct
    for d, c in enumerate(problem.classes):
        ct = s.Constraint(c.count, c.count)
        u = s.NumVar(0, c.count, f"u_{d}")
        obj.SetCoefficient(u, weights[d])
        ct.SetCoefficient(u, 1)
        for k, ids in c.eligible:
            for pid in ids:
                x = s.NumVar(0, c.count, f"x_{d}_{k}_{pid}")
                ct.SetCoefficient(x, 1)
                cap[k, pid].SetCoefficient(x, 1)
    obj.SetMinimization()
    if s.Solve() != pywraplp.Solver.OPTIMAL:
        return 0.0
    return float(obj.Value())


def combinatorial_bound(problem: Problem) -> int:
    """Cheap bound for single-model fleets (slices, memory slices, big units); 0 otherwise."""
    if len(problem.spaces) != 1:
        return 0
    sp = problem.spaces[0]
    if any(not c.eligible_on(sp.model.key) for c in problem.classes):
        return 0
    return lower_bound_slices(problem.classes, sp) * sp.cost


def solve_ip(
    problem: Problem, time_limit_s: float, seed: int, workers: int, hint: tuple[list[HGpu], list[int]] | None,
    bound: int = 0, progress: Any = None,
) -> tuple[dict[tuple[str, int], int], dict[tuple[int, str, int], int], list[int], str, float, float] | None:
    """Solve the configuration IP with CP-SAT; (y, x, u, status, objective, proven bound) or None."""
    from ortools.sat.python import cp_model

    m = cp_model.CpModel()
    weights = _unserved_weight(problem)
    total_units = sum(c.count for c in problem.classes)
    hint_cost = heuristic_cost(problem, *hint) if hint is not None else None
    y: dict[tuple[str, int], cp_model.IntVar] = {}
    for sp in problem.spaces:
        k = sp.model.key
        ub = sp.count if sp.count is not None else total_units
        if hint_cost is not None and hint is not None and not any(hint[1]):
            ub = min(ub, hint_cost // sp.cost)
        for ci in range(len(problem.maximal[k])):
            y[k, ci] = m.new_int_var(0, ub, f"y_{k}_{ci}")
        if sp.count is not None and problem.maximal[k]:
            m.add(sum(y[k, ci] for ci in range(len(problem.maximal[k]))) <= sp.count)
    x: dict[tuple[int, str, int], cp_model.IntVar] = {}
    u: list[cp_model.IntVar | int] = []
    bounded = any(sp.count is not None for sp in problem.spaces)
    for d, c in enumerate(problem.classes):
        terms = []
        for k, ids in c.eligible:
            for pid in ids:
                x[d, k, pid] = m.new_int_var(0, c.count, f"x_{d}_{k}_{pid}")
                terms.append(x[d, k, pid])
        if bounded:
            ud = m.new_int_var(0, c.count, f"u_{d}")
            u.append(ud)
            terms.append(ud)
        else:
            u.append(0)
        m.add(sum(terms) == c.count)
    for sp in problem.spaces:
        k = sp.model.key
        ids = sorted({i for c in problem.classes for i in c.eligible_on(k)})
        for pid in ids:
            supply = [lay.count(pid) * y[k, ci] for ci, lay in enumerate(problem.maximal[k]) if lay.count(pid)]
            demand = [x[d, k, pid] for d in range(len(problem.classes)) if (d, k, pid) in x]
            if demand:
                m.add(sum(demand) <= sum(supply))
    objective = (
        sum(sp.cost * y[sp.model.key, ci] for sp in problem.spaces for ci in range(len(problem.maximal[sp.model.key])))
        + sum(w * ud for w, ud in zip(weights, u, strict=True) if not isinstance(ud, int))
    )
    if bound > 0:
        m.add(objective >= bound)  # the rounded LP bound is a valid cut; it lets CP-SAT stop at once
    m.minimize(objective)
    if hint is not None:
        _add_hint(m, problem, hint, y, x, u)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = float(time_limit_s)
    solver.parameters.random_seed = int(seed)
    solver.parameters.num_workers = int(workers)
    solver.parameters.interleave_search = workers > 1  # deterministic with several workers
    from migctl.planner.progress import solve

    status = solve(solver, m, progress, "CP-SAT configuration IP")
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    ys = {key: int(solver.value(v)) for key, v in y.items()}
    xs = {key: int(solver.value(v)) for key, v in x.items()}
    us = [int(solver.value(v)) if not isinstance(v, int) else 0 for v in u]
    name = "optimal" if status == cp_model.OPTIMAL else "feasible"
    return ys, xs, us, name, float(solver.objective_value), float(solver.best_objective_bound)


def _add_hint(m: cp_model.CpModel, problem: Problem, hint: tuple[list[HGpu], list[int]], y: dict, x: dict, u: list) -> None:
    """Map a heuristic packing onto the IP's variables (each GPU to a maximal layout containing it)."""
    gpus, unserved = hint
    ycount: dict[tuple[str, int], int] = {}
    xcount: dict[tuple[int, str, int], int] = {}
    for g in gpus:
        lays = problem.maximal[g.model]
        for ci, lay in enumerate(lays):
            rest = list(lay)
            try:
                for pid in g.layout:
                    rest.remove(pid)
            except ValueError:
                continue
            ycount[g.model, ci] = ycount.get((g.model, ci), 0) + 1
            break
        else:  # pragma: no cover - every valid layout is inside a maximal one
            return
        for d, pid in g.units:
            xcount[d, g.model, pid] = xcount.get((d, g.model, pid), 0) + 1
    for key, v in y.items():
        m.add_hint(v, ycount.get(key, 0))
    for key, v in x.items():
        m.add_hint(v, xcount.get(key, 0))
    for d, v in enumerate(u):
        if not isinstance(v, int):
            m.add_hint(v, unserved[d])


def solution_to_gpus(problem: Problem, ys: dict[tuple[str, int], int], xs: dict[tuple[int, str, int], int]) -> list[HGpu]:
    """Expand layout counts and class-to-profile counts into GPUs with units on them (fullest GPUs first)."""
    gpus: list[HGpu] = []
    for sp in problem.spaces:
        k = sp.model.key
        start = len(gpus)
        slots: dict[int, list[int]] = {}
        for ci, lay in enumerate(problem.maximal[k]):
            for _ in range(ys.get((k, ci), 0)):
                gpus.append(HGpu(model=k, layout=lay))
                for pid in lay:
                    slots.setdefault(pid, []).append(len(gpus) - 1)
        ptr = {pid: 0 for pid in slots}
        for d in range(len(problem.classes)):
            for pid in problem.classes[d].eligible_on(k):
                for _ in range(xs.get((d, k, pid), 0)):
                    g = slots[pid][ptr[pid]]
                    ptr[pid] += 1
                    gpus[g].units.append((d, pid))
        for g in gpus[start:]:
            g.layout = tuple(sorted(pid for _, pid in g.units))
    return [g for g in gpus if g.units]


def gpus_to_plan(problem: Problem, gpus: Sequence[HGpu], unserved: Sequence[int]) -> tuple[list[PlannedGpu], dict[str, int]]:
    """Turn packed GPUs into planned GPUs with explicit placements and named units."""
    profiles = {sp.model.key: sp.profiles for sp in problem.spaces}
    next_unit = [0] * len(problem.classes)
    # units left unserved are the last ones of each class
    out: list[PlannedGpu] = []
    for gi, g in enumerate(gpus):
        placed = placements_for(g.model, tuple(sorted(pid for _, pid in g.units)))
        starts: dict[int, list[int]] = {}
        for pid, s in placed:
            starts.setdefault(pid, []).append(s)
        insts = []
        for d, pid in sorted(g.units, key=lambda t: (t[1], t[0])):
            name, unit = problem.members[d][next_unit[d]]
            next_unit[d] += 1
            p = profiles[g.model][pid]
            insts.append(
                PlannedInstance(profile_id=pid, profile=p.name, start=starts[pid].pop(0), size=p.placement_size,
                                slices=p.slices, workload=name, unit=unit)
            )
        insts.sort(key=lambda i: i.start)
        out.append(PlannedGpu(index=gi, model=g.model, instances=insts))
    missing: dict[str, int] = {}
    for d, n in enumerate(unserved):
        for name, _unit in problem.members[d][next_unit[d]: next_unit[d] + n]:
            missing[name] = missing.get(name, 0) + 1
    return out, missing


def plan_static(request: Request) -> Plan:
    """Plan a fleet from scratch: the configuration IP, warm-started by first-fit decreasing."""
    t0 = time.perf_counter()
    problem = build_problem(request.workloads, request)
    check_objective_fits(problem)
    for d, c in enumerate(problem.classes):
        if not any(problem.maximal.get(k) and any(pid in {i for lay in problem.maximal[k] for i in lay} for pid in ids)
                   for k, ids in c.eligible):
            name = problem.members[d][0][0]
            raise PlanError(f"workload {name!r}: no GPU of the fleet can hold it")
    t1 = time.perf_counter()
    heur = first_fit(problem.classes, problem.spaces)
    t2 = time.perf_counter()
    prog = request.options.progress
    if prog is not None:
        prog.phase = "first-fit + LP bound"
        prog.improve(best=float(heuristic_cost(problem, *heur)))
    lp = lp_bound(problem)
    integral = all(float(sp.cost).is_integer() for sp in problem.spaces)
    comb = combinatorial_bound(problem)
    cut = max(math.ceil(lp - 1e-6), comb) if integral else 0
    t3 = time.perf_counter()
    opts = request.options
    if prog is not None:
        prog.improve(bound=float(cut))
    res = solve_ip(problem, opts.time_limit_s, opts.seed, opts.workers, heur, cut, progress=prog)
    t4 = time.perf_counter()
    hcost = heuristic_cost(problem, *heur)
    if res is None or res[4] > hcost:
        gpus, unserved, status, obj, cp_bound = heur[0], heur[1], "heuristic", float(hcost), 0.0
    else:
        ys, xs, unserved, status, obj, cp_bound = res
        gpus = solution_to_gpus(problem, ys, xs)
        obj = float(heuristic_cost(problem, gpus, unserved))
    planned, missing = gpus_to_plan(problem, gpus, unserved)
    lp_round = math.ceil(lp - 1e-6) if integral else lp
    bound = max(float(lp_round), math.ceil(cp_bound - 1e-6), float(comb))
    bound = min(bound, obj)
    return Plan(
        gpus=planned,
        objective=obj,
        lower_bound=bound,
        status=status if bound < obj else "optimal",
        objective_name=("gpu cost" if any(sp.cost != 1 for sp in problem.spaces) else "gpus")
        + (" + penalty x unserved units" if missing else ""),
        unserved=missing,
        bounds={"lp": round(lp, 6), "lp_rounded": float(lp_round), "cp_sat": float(math.ceil(cp_bound - 1e-6)),
                "combinatorial": float(comb)},
        stats={
            "classes": len(problem.classes),
            "units": sum(c.count for c in problem.classes),
            "layouts": {k: len(v) for k, v in problem.maximal.items()},
            "first_fit_cost": hcost,
            "time_s": {"setup": round(t1 - t0, 4), "heuristic": round(t2 - t1, 4), "lp": round(t3 - t2, 4),
                       "ip": round(t4 - t3, 4), "total": round(time.perf_counter() - t0, 4)},
        },
    )
