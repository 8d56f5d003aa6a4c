"""The offline optimum of one instant: the most compute slices of a set of present jobs that a fleet's GPUs
can hold at once, respecting MIG placement rules (the upper bound of the dynamic benchmark).

Pure logic. Each GPU takes one valid layout (a multiset of GI profiles that ``geometry.place_all`` can
place, enumerated by :mod:`migctl.planner.layouts`); an integer program chooses how many GPUs of each model
use each maximal layout (x_{m,L}, summing to the model's GPU count) and how many units of each profile
are served (s_p <= demand_p, s_p <= the instances of p that the chosen layouts provide), and maximises the
served compute slices. It is solved with OR-Tools CP-SAT (imported lazily).

A unit is one instance of one profile name (e.g. ``3g.40gb``); a profile name is served on every model
that has it. A gang of k units needs them at once on distinct GPUs; counting its units separately can
only raise the optimum, so the figure stays an upper bound.

Cheap paths: the optimum never exceeds min(capacity, demand); when a greedy packing (GPU after GPU, the
layout serving the most remaining demand) reaches that, or reaches the floor of the linear relaxation
(GLOP), no integer solve is needed; a demand below one served whole is served whole, one above one that
filled the fleet fills it; results are cached by demand vector. A CP-SAT solve that is not proven
optimal within its time limit returns its best bound (still an upper bound; counted in ``unproven``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from migctl.catalog.model import GpuModel
from migctl.planner.layouts import enumerate_layouts, maximal_layouts


class PackingBound:
    """Optimum compute slices of a demand vector (profile name -> units) on a fleet of GPU models."""

    def __init__(self, models: Sequence[GpuModel], names: Sequence[str]) -> None:
        self.counts: dict[str, int] = {}
        self.model_of: dict[str, GpuModel] = {}
        for m in models:
            self.counts[m.key] = self.counts.get(m.key, 0) + 1
            self.model_of[m.key] = m
        self.names = sorted(set(names))
        self.capacity = sum(m.compute_slices for m in models)
        self.slices: dict[str, int] = {}
        # per model: maximal layouts as {profile name: count}
        self.layouts: dict[str, list[dict[str, int]]] = {}
        for key, m in self.model_of.items():
            ids = {}
            for n in self.names:
                p = m.profile(n)
                if p is not None:
                    ids[p.id] = n
                    self.slices.setdefault(n, p.slices)
            lays = maximal_layouts(enumerate_layouts(m, list(ids)), list(ids)) if ids else []
            out = []
            for lay in lays:
                d: dict[str, int] = {}
                for pid in lay:
                    d[ids[pid]] = d.get(ids[pid], 0) + 1
                out.append(d)
            self.layouts[key] = out
        self.cache: dict[tuple[int, ...], int] = {}
        self.solved = 0
        self.greedy = 0
        self.trivial = 0
        self.relaxed = 0
        self.unproven = 0
        self._last: tuple[tuple[int, ...], int, int] | None = None

    def optimum(self, demand: Mapping[str, int]) -> int:
        """Most compute slices of ``demand`` that the fleet can hold at once."""
        vec = tuple(int(demand.get(n, 0)) for n in self.names)
        got = self.cache.get(vec)
        if got is not None:
            return got
        total = sum(self.slices.get(n, 0) * c for n, c in zip(self.names, vec, strict=True))
        cap = min(self.capacity, total)
        last = self._last
        if total == 0:
            got = 0
            self.trivial += 1
        elif last is not None and last[1] == last[2] and all(a <= b for a, b in zip(vec, last[0], strict=True)):
            got = cap  # a subset of a demand that was served whole is served whole
            self.trivial += 1
        elif last is not None and last[1] == self.capacity and all(a >= b for a, b in zip(vec, last[0], strict=True)):
            got = cap  # a superset of a demand that filled the fleet fills it
            self.trivial += 1
        else:
            low = self._greedy(vec)
            if low >= cap:
                got = cap
                self.greedy += 1
            else:
                high = min(cap, self._relaxed(vec))
                if low >= high:
                    got = low
                    self.relaxed += 1
                else:
                    got = self._solve(vec, low, high)
                    self.solved += 1
        if len(self.cache) > 200_000:
            self.cache.clear()
        self.cache[vec] = got
        self._last = (vec, got, total)
        return got

    def _greedy(self, vec: tuple[int, ...]) -> int:
        """Slices served by a greedy packing (a lower bound of the optimum): GPU after GPU, the maximal layout
        that serves the most remaining demand, larger profiles first on ties."""
        left = dict(zip(self.names, vec, strict=True))
        placed = 0
        for key, lays in self.layouts.items():
            n_gpu = self.counts[key]
            while n_gpu > 0 and lays:
                best = max(lays, key=lambda lay: (sum(self.slices[n] * min(c, left[n]) for n, c in lay.items()),
                                                  sorted((self.slices[n] for n, c in lay.items() if left[n]), reverse=True)))
                served = {n: min(c, left[n]) for n, c in best.items()}
                gain = sum(self.slices[n] * c for n, c in served.items())
                if gain == 0:
                    break
                # identical GPUs take the same layout while the remaining demand still fills it
                reps = min([n_gpu] + [left[n] // c for n, c in served.items() if c])
                reps = max(1, reps)
                for n, c in served.items():
                    left[n] -= c * reps
                placed += gain * reps
                n_gpu -= reps
        return placed

    def _packing(self, vec: tuple[int, ...], var: Any, add: Any, total: Any) -> list:
        """The packing model, built with either solver's calls (``var(lo, hi, name)``, ``add(constraint)``,
        ``total(terms)``): x = GPUs of each model using each layout, s = jobs of each profile served, at most
        the demand ``vec`` and what the chosen layouts provide. Returns the objective's terms (slices)."""
        provide: dict[str, list] = {n: [] for n in self.names}
        for key, lays in self.layouts.items():
            xs = [var(0, self.counts[key], f"x_{key}_{i}") for i in range(len(lays))]
            add(total(xs) <= self.counts[key])
            for x, lay in zip(xs, lays, strict=True):
                for n, c in lay.items():
                    provide[n].append(c * x)
        obj = []
        for n, d in zip(self.names, vec, strict=True):
            if d == 0:
                continue
            s = var(0, d, f"s_{n}")
            add(s <= total(provide[n]))
            obj.append(self.slices[n] * s)
        return obj

    def _relaxed(self, vec: tuple[int, ...]) -> int:
        """The floor of the linear relaxation's optimum (GLOP): an upper bound of the integer optimum."""
        from ortools.linear_solver import pywraplp

        lp = pywraplp.Solver.CreateSolver("GLOP")
        obj = self._packing(vec, lp.NumVar, lp.Add, lp.Sum)
        lp.Maximize(lp.Sum(obj))
        if lp.Solve() != pywraplp.Solver.OPTIMAL:
            return self.capacity
        return int(lp.Objective().Value() + 1e-6)

    def _solve(self, vec: tuple[int, ...], low: int = 0, high: int | None = None) -> int:
        from ortools.sat.python import cp_model

        mdl = cp_model.CpModel()
        obj = self._packing(vec, mdl.new_int_var, mdl.add, sum)
        mdl.add(sum(obj) >= low)
        if high is not None:
            mdl.add(sum(obj) <= high)
        mdl.maximize(sum(obj))
        solver = cp_model.CpSolver()
        solver.parameters.num_workers = 1
        solver.parameters.max_time_in_seconds = 5.0
        st = solver.solve(mdl)
        if st == cp_model.OPTIMAL:
            return int(round(solver.objective_value))
        # not proven in time: the solver's best bound is still an upper bound (never a guess)
        self.unproven += 1
        return int(min(high if high is not None else self.capacity, solver.best_objective_bound + 1e-6))
