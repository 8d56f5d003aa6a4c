"""Fast packing heuristics: first-fit and best-fit (decreasing), the same balanced layout on every GPU,
and online placement policies (FGD protocol). They warm-start the exact solver and are the baselines of
the benchmarks.

Offline heuristics place a multiset per GPU (placements are chosen afterwards, since the layout is not
applied yet); membership in the precomputed set of valid multisets decides whether a profile fits. Open
GPUs are grouped by their current multiset, so each step looks at a few dozen distinct states, not at
every GPU.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from migctl.catalog.geometry import PlacedGI, free_placements, remaining_capacity
from migctl.catalog.model import GIProfile, GpuModel, Placement
from migctl.planner.layouts import Layout


@dataclass(frozen=True)
class DemandClass:
    """Identical units of demand: eligible profile IDs per model (preferred first), count, priority."""

    eligible: tuple[tuple[str, tuple[int, ...]], ...]
    count: int
    priority: int = 0

    def eligible_on(self, model_key: str) -> tuple[int, ...]:
        for k, ids in self.eligible:
            if k == model_key:
                return ids
        return ()


@dataclass(frozen=True)
class ModelSpace:
    """What the packers need about one fleet model: its profiles, valid multisets and availability."""

    model: GpuModel
    count: int | None  # None: unbounded
    cost: int
    valid: frozenset[Layout]
    profiles: dict[int, GIProfile]

    def used(self, layout: Layout) -> tuple[int, int]:
        return (
            sum(self.profiles[i].slices for i in layout),
            sum(self.profiles[i].placement_size for i in layout),
        )


@dataclass
class HGpu:
    """A GPU of a heuristic packing: model, multiset, and the (class, profile) of each unit on it."""

    model: str
    layout: Layout = ()
    units: list[tuple[int, int]] = field(default_factory=list)


def _unit_order(classes: Sequence[DemandClass], spaces: Sequence[ModelSpace]) -> list[int]:
    """Class index of every unit, largest first (priority first when capacity may run out)."""
    sizes = []
    for c in classes:
        best = (0, 0)
        for sp in spaces:
            ids = c.eligible_on(sp.model.key)
            if ids:
                p = sp.profiles[ids[0]]
                best = max(best, (p.slices, p.placement_size))
        sizes.append(best)
    order = sorted(range(len(classes)), key=lambda d: (-classes[d].priority, -sizes[d][0], -sizes[d][1], d))
    return [d for d in order for _ in range(classes[d].count)]


def pack(
    classes: Sequence[DemandClass], spaces: Sequence[ModelSpace], rule: str = "first", decreasing: bool = True
) -> tuple[list[HGpu], list[int]]:
    """First-fit or best-fit packing of every unit; returns the GPUs and the unserved count per class.

    ``rule`` is ``"first"`` (lowest-numbered open GPU that fits) or ``"best"`` (the open GPU left fullest).
    The preferred eligible profile is tried on every open GPU before a larger one; a new GPU is opened
    (cheapest model with GPUs left, fleet order) only when no open GPU fits.
    """
    if rule not in ("first", "best"):
        raise ValueError(f"unknown rule {rule!r}")
    units = _unit_order(classes, spaces) if decreasing else [d for d, c in enumerate(classes) for _ in range(c.count)]
    gpus: list[HGpu] = []
    opened = {sp.model.key: 0 for sp in spaces}
    # per model: layout -> heap of GPU indices currently in that state
    states: dict[str, dict[Layout, list[int]]] = {sp.model.key: {} for sp in spaces}
    unserved = [0] * len(classes)
    by_cost = sorted(range(len(spaces)), key=lambda i: (spaces[i].cost, i))

    def take(sp: ModelSpace, layout: Layout) -> int:
        heap = states[sp.model.key][layout]
        g = heapq.heappop(heap)
        if not heap:
            del states[sp.model.key][layout]
        return g

    def put(sp: ModelSpace, g: int) -> None:
        heapq.heappush(states[sp.model.key].setdefault(gpus[g].layout, []), g)

    for d in units:
        c = classes[d]
        chosen: tuple[ModelSpace, Layout, int] | None = None
        for sp in spaces:
            if chosen is not None and rule == "first":
                break
            for pid in c.eligible_on(sp.model.key):
                best_key: tuple | None = None
                for lay, heap in states[sp.model.key].items():
                    new = tuple(sorted(lay + (pid,)))
                    if new not in sp.valid:
                        continue
                    if rule == "first":
                        key: tuple = (heap[0],)
                    else:
                        used = sp.used(new)
                        key = (-used[0], -used[1], heap[0])
                    if best_key is None or key < best_key:
                        best_key = key
                        cand = (sp, lay, pid)
                if best_key is not None:
                    chosen = cand
                    break
        if chosen is not None:
            sp, lay, pid = chosen
            g = take(sp, lay)
        else:
            sp = None
            for i in by_cost:
                s = spaces[i]
                ids = c.eligible_on(s.model.key)
                if ids and (s.count is None or opened[s.model.key] < s.count):
                    sp, pid = s, ids[0]
                    break
            if sp is None:
                unserved[d] += 1
                continue
            opened[sp.model.key] += 1
            gpus.append(HGpu(model=sp.model.key))
            g = len(gpus) - 1
        gpus[g].layout = tuple(sorted(gpus[g].layout + (pid,)))
        gpus[g].units.append((d, pid))
        put(sp, g)
    return gpus, unserved


def first_fit(classes: Sequence[DemandClass], spaces: Sequence[ModelSpace]) -> tuple[list[HGpu], list[int]]:
    """First-fit decreasing."""
    return pack(classes, spaces, "first")


def best_fit(classes: Sequence[DemandClass], spaces: Sequence[ModelSpace]) -> tuple[list[HGpu], list[int]]:
    """Best-fit decreasing."""
    return pack(classes, spaces, "best")


def _greedy_fill(classes: Sequence[DemandClass], sp: ModelSpace, slots: dict[int, int]) -> list[tuple[int, int]] | None:
    """Assign every unit to a free slot (largest demand first, preferred profile first), or None."""
    free = dict(slots)
    out: list[tuple[int, int]] = []
    order = sorted(
        range(len(classes)),
        key=lambda d: (-sp.profiles[classes[d].eligible_on(sp.model.key)[0]].slices, d)
        if classes[d].eligible_on(sp.model.key) else (0, d),
    )
    for d in order:
        ids = classes[d].eligible_on(sp.model.key)
        for _ in range(classes[d].count):
            for pid in ids:
                if free.get(pid, 0) > 0:
                    free[pid] -= 1
                    out.append((d, pid))
                    break
            else:
                return None
    return out


def balanced(
    classes: Sequence[DemandClass], sp: ModelSpace, layouts: Sequence[Layout]
) -> tuple[list[HGpu], Layout] | None:
    """The same layout on every GPU: the layout of ``layouts`` needing the fewest GPUs, and that packing.

    Units that need a whole GPU (every eligible profile takes all compute slices) get GPUs of their own;
    every other GPU gets the same layout. Every class must be eligible on ``sp``'s model; returns None when
    no single layout can serve the rest.
    """
    if any(not c.eligible_on(sp.model.key) for c in classes if c.count):
        return None
    full = [c for c in classes
            if all(sp.profiles[i].slices == sp.model.compute_slices for i in c.eligible_on(sp.model.key))]
    whole = [HGpu(model=sp.model.key, layout=(c.eligible_on(sp.model.key)[0],),
                  units=[(classes.index(c), c.eligible_on(sp.model.key)[0])]) for c in full for _ in range(c.count)]
    rest = [c if c not in full else DemandClass(eligible=c.eligible, count=0, priority=c.priority) for c in classes]
    res = _balanced(rest, sp, [lay for lay in layouts
                               if not all(sp.profiles[i].slices == sp.model.compute_slices for i in lay)])
    if res is None:
        return None
    return whole + res[0], res[1]


def _balanced(
    classes: Sequence[DemandClass], sp: ModelSpace, layouts: Sequence[Layout]
) -> tuple[list[HGpu], Layout] | None:
    total = sum(c.count for c in classes)
    if total == 0:
        return [], ()
    best: tuple[int, Layout, list[tuple[int, int]]] | None = None
    for lay in layouts:
        per = {pid: lay.count(pid) for pid in set(lay)}
        if not per:
            continue
        # lower estimate of N from exact-fit counts, then search upwards with the greedy check
        lo = 1
        hi = total
        if _greedy_fill(classes, sp, {p: n * hi for p, n in per.items()}) is None:
            continue
        while lo < hi:
            mid = (lo + hi) // 2
            if _greedy_fill(classes, sp, {p: n * mid for p, n in per.items()}) is None:
                lo = mid + 1
            else:
                hi = mid
        if best is None or lo < best[0]:
            fill = _greedy_fill(classes, sp, {p: n * lo for p, n in per.items()})
            assert fill is not None
            best = (lo, lay, fill)
    if best is None:
        return None
    n, lay, fill = best
    gpus = [HGpu(model=sp.model.key, layout=lay) for _ in range(n)]
    slots: dict[int, list[int]] = {}
    for g in range(n):
        for pid in lay:
            slots.setdefault(pid, []).append(g)
    for d, pid in fill:
        gpus[slots[pid].pop(0)].units.append((d, pid))
    return gpus, lay


# ---------------------------------------------------------------------------------------------- online


class OnlineCluster:
    """N identical GPUs; requests arrive one by one and are placed at a fixed placement, never moved.

    Policies: ``first`` (lowest GPU index, lowest start), ``best`` (the GPU left fullest), ``ours``
    (fragmentation-aware: the GPU and placement that keep the most demand-weighted room for future
    requests, then the fullest GPU; an FGD-like rule for MIG), ``balanced`` (every GPU pre-partitioned
    into one layout; a request takes the smallest free instance at least as large as its profile).
    ``allocation`` counts the compute slices the accepted requests asked for.
    """

    def __init__(self, model: GpuModel, n: int, policy: str, weights: dict[int, float] | None = None,
                 layout: Layout | None = None) -> None:
        self.model = model
        self.n = n
        self.policy = policy
        self.profiles = {p.id: p for p in model.gi_profiles}
        self.weights = weights or {}
        self.allocated_slices = 0
        # state (sorted tuple of (profile_id, start)) -> heap of GPU indices
        empty: tuple[tuple[int, int], ...] = ()
        if policy == "balanced":
            if layout is None:
                raise ValueError("balanced policy needs a layout")
            from migctl.planner.layouts import placements_for

            self._slots = placements_for(model.key, layout)
            empty = ()  # state = tuple of used slot indices
        self.states: dict[tuple, list[int]] = {empty: list(range(n))}
        heapq.heapify(self.states[empty])
        self._fit_cache: dict[tuple[tuple, int], list[tuple[tuple, Placement]]] = {}
        self._score_cache: dict[tuple, float] = {}

    def _placed(self, state: tuple) -> list[PlacedGI]:
        return [PlacedGI(self.profiles[pid], Placement(s, self.profiles[pid].placement_size)) for pid, s in state]

    def _options(self, state: tuple, pid: int) -> list[tuple[tuple, Placement | None]]:
        key = (state, pid)
        if key not in self._fit_cache:
            if self.policy == "balanced":
                used = set(state)
                want = self.profiles[pid]
                free = [
                    i for i, (sp, _s) in enumerate(self._slots)
                    if i not in used and self.profiles[sp].slices >= want.slices
                    and self.profiles[sp].memory_mib >= want.memory_mib
                ]
                free.sort(key=lambda i: (self.profiles[self._slots[i][0]].slices, i))
                opts = [(tuple(sorted(state + (i,))), None) for i in free[:1]]
            else:
                p = self.profiles[pid]
                opts = [
                    (tuple(sorted(state + ((pid, pl.start),))), pl)
                    for pl in free_placements(self.model, self._placed(state), p)
                ]
            self._fit_cache[key] = opts
        return self._fit_cache[key]

    def _used(self, state: tuple) -> int:
        if self.policy == "balanced":
            return sum(self.profiles[self._slots[i][0]].slices for i in state)
        return sum(self.profiles[pid].slices for pid, _ in state)

    def _room(self, state: tuple) -> float:
        """Demand-weighted room left: sum over profiles of weight x slices x how many more fit."""
        if state not in self._score_cache:
            placed = self._placed(state)
            self._score_cache[state] = sum(
                w * self.profiles[pid].slices * remaining_capacity(self.model, placed, self.profiles[pid])
                for pid, w in self.weights.items()
            )
        return self._score_cache[state]

    def place(self, pid: int) -> int | None:
        """Place one instance of profile ``pid``; the GPU index, or None when it fits nowhere."""
        best_key: tuple | None = None
        choice: tuple[tuple, tuple] | None = None
        for state, heap in self.states.items():
            for new, pl in self._options(state, pid):
                g = heap[0]
                if self.policy in ("first", "balanced"):
                    key: tuple = (g, pl.start if pl else 0)
                elif self.policy == "best":
                    key = (-self._used(new), g, pl.start if pl else 0)
                else:
                    key = (self._room(state) - self._room(new), -self._used(new), g, pl.start if pl else 0)
                if best_key is None or key < best_key:
                    best_key, choice = key, (state, new)
        if choice is None:
            return None
        state, new = choice
        heap = self.states[state]
        g = heapq.heappop(heap)
        if not heap:
            del self.states[state]
        heapq.heappush(self.states.setdefault(new, []), g)
        self.allocated_slices += self.profiles[pid].slices
        return g

    @property
    def allocation(self) -> float:
        """Share of the cluster's compute slices allocated."""
        return self.allocated_slices / (self.n * self.model.compute_slices)


def lower_bound_slices(classes: Sequence[DemandClass], sp: ModelSpace) -> int:
    """Combinatorial bound for one model: compute slices, memory slices, and units larger than half a GPU."""
    slices = mem = big_s = big_m = 0
    for c in classes:
        ids = c.eligible_on(sp.model.key)
        if not ids:
            continue
        s = min(sp.profiles[i].slices for i in ids)
        m = min(sp.profiles[i].placement_size for i in ids)
        slices += s * c.count
        mem += m * c.count
        if 2 * s > sp.model.compute_slices:
            big_s += c.count  # two such units never share a GPU
        if 2 * m > sp.model.memory_slices:
            big_m += c.count
    return max(math.ceil(slices / sp.model.compute_slices), math.ceil(mem / sp.model.memory_slices), big_s, big_m)
