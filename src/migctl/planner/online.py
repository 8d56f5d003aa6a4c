"""Online placement of MIG instances on live GPUs, with departures, and idle-only defragmentation.

Pure logic over the catalog's geometry (no I/O). A :class:`Placer` holds the layout of every GPU of a
fleet (models may differ) as a set of ``(profile id, start)`` instances; :meth:`Placer.choose` picks the
GPU, profile and placement for a new instance under one of these rules:

* ``first``: the lowest-numbered GPU, then the lowest start (classic first-fit);
* ``best``: the GPU left fullest (compute share, then memory share), then first-fit order (best-fit);
* ``driver``: best-fit's GPU, then the placement the driver picks when none is given
  (:data:`~migctl.catalog.geometry.AUTO_PLACEMENT_ORDER`): what ``nvidia-smi mig -cgi`` without a
  placement does on the fullest GPU, and what ``migctl run`` did before it used ``migctl``;
* ``fgd``: the fragmentation gradient (FGD, Weng et al., ATC'23, transposed to MIG): the candidate that
  loses the least demand-weighted room, where a GPU's room for a profile is its slices times how many
  more instances of it still fit, and the weights are the demand mix observed so far;
* ``migctl``: the GPU left fullest among the GPUs already in use (a new GPU is opened only when no used
  GPU fits); among those, the candidate that loses the least demand-weighted room, then the least room for
  every profile of the catalog alike (what decides when the demand seen so far is one profile), then
  best-fit order.
  Packing tightly keeps whole GPUs free for large requests (what first-fit and best-fit get right), and
  choosing the placement by lost room keeps the free slices of a used GPU in shapes that future
  requests can take (what first-fit's lowest start gets wrong: a 1g at start 0 blocks the only 4g
  placement).

:meth:`Placer.make_room` is the defragmentation step: when a request fits nowhere, it finds the GPU where
destroying the fewest *idle* instances lets it fit (busy ones are never candidates); the caller destroys
them and places. Multi-model fleets are supported: a request names its eligible profiles per model.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from migctl.catalog.geometry import PlacedGI, auto_rank, conflict, remaining_capacity
from migctl.catalog.model import GIProfile, GpuModel, Placement

POLICIES = ("first", "best", "driver", "fgd", "migctl")

Inst = tuple[int, int]  # (profile id, start memory slice)
State = tuple[Inst, ...]  # sorted


@dataclass(frozen=True)
class Choice:
    """Where a new instance goes: GPU index, profile and placement."""

    gpu: int
    profile: GIProfile
    placement: Placement


@dataclass(frozen=True)
class Request:
    """Eligible GI profile IDs per model key, preferred (smallest) first."""

    eligible: tuple[tuple[str, tuple[int, ...]], ...]

    def on(self, model_key: str) -> tuple[int, ...]:
        for k, ids in self.eligible:
            if k == model_key:
                return ids
        return ()

    @classmethod
    def for_profile(cls, models: Iterable[GpuModel], name: str) -> Request:
        """The request for one profile name on every model that has it (e.g. ``1g.10gb`` on A100 and H100)."""
        out = []
        for m in models:
            p = m.profile(name)
            if p is not None and (m.key, (p.id,)) not in out:
                out.append((m.key, (p.id,)))
        return cls(tuple(out))


class _Space:
    """Per-model caches: profiles, placements, remaining capacity per state."""

    def __init__(self, model: GpuModel) -> None:
        self.model = model
        self.profiles = {p.id: p for p in model.gi_profiles}
        self._cap: dict[State, dict[int, int]] = {}
        self._opts: dict[tuple[State, int], list[Placement]] = {}
        self._fill: dict[tuple[State, tuple[int, ...]], int] = {}

    def placed(self, state: State) -> list[PlacedGI]:
        return [PlacedGI(self.profiles[pid], Placement(s, self.profiles[pid].placement_size)) for pid, s in state]

    def options(self, state: State, pid: int) -> list[Placement]:
        key = (state, pid)
        opts = self._opts.get(key)
        if opts is None:
            placed = self.placed(state)
            p = self.profiles[pid]
            opts = [pl for pl in p.placements if conflict(self.model, placed, p, pl) is None]
            if len(self._opts) > 200_000:
                self._opts.clear()
            self._opts[key] = opts
        return opts

    def capacity(self, state: State, pids: Iterable[int]) -> dict[int, int]:
        caps = self._cap.get(state)
        if caps is None:
            caps = self._cap[state] = {}
        missing = [pid for pid in pids if pid not in caps]
        if missing:
            placed = self.placed(state)
            for pid in missing:
                caps[pid] = remaining_capacity(self.model, placed, self.profiles[pid])
        return caps

    def fillable(self, state: State, pids: tuple[int, ...]) -> int:
        """Most compute slices that instances of ``pids`` can still add to ``state`` (exact search)."""
        key = (state, pids)
        got = self._fill.get(key)
        if got is None:
            got = 0
            placed = self.placed(state)
            for pid in pids:
                p = self.profiles[pid]
                for pl in p.placements:
                    if conflict(self.model, placed, p, pl) is None:
                        new = tuple(sorted(state + ((pid, pl.start),)))
                        got = max(got, p.slices + self.fillable(new, pids))
                        if got + self.used_slices(state) >= self.model.compute_slices:
                            break
                if got + self.used_slices(state) >= self.model.compute_slices:
                    break
            self._fill[key] = got
        return got

    def used_slices(self, state: State) -> int:
        return sum(self.profiles[pid].slices for pid, _ in state)

    def used(self, state: State) -> tuple[float, float]:
        c = sum(self.profiles[pid].slices for pid, _ in state)
        m = sum(self.profiles[pid].placement_size for pid, _ in state)
        return c / self.model.compute_slices, m / self.model.memory_slices


def _at_reservation(placed: list[PlacedGI], phantom: Sequence[PlacedGI]) -> list[PlacedGI]:
    """A GPU's layout when its reservations start: the instances in their way are gone by then (busy ones
    end by their limit, idle ones are destroyed), the reserved ones are there. A new instance that does not
    overlap any instance (checked apart) must fit next to this."""
    return [x for x in placed if not any(x.placement.overlaps(ph.placement) for ph in phantom)] + list(phantom)


class Placer:
    """Live layouts of a fleet and an online placement rule (see the module docstring)."""

    def __init__(self, models: Sequence[GpuModel], policy: str = "migctl") -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown placement policy {policy!r} (valid: {', '.join(POLICIES)})")
        self.policy = policy
        self.models = list(models)
        self.spaces: dict[str, _Space] = {}
        for m in self.models:
            self.spaces.setdefault(m.key, _Space(m))
        self.states: list[State] = [() for _ in self.models]
        # (model key, state) -> heap of GPU indices (lazy: entries are checked against self.states)
        self._groups: dict[tuple[str, State], list[int]] = {}
        for g, m in enumerate(self.models):
            self._groups.setdefault((m.key, ()), []).append(g)
        self._demand: dict[str, dict[int, float]] = {}

    # -------------------------------------------------------------------------------- bookkeeping

    def _move(self, g: int, new: State) -> None:
        self.states[g] = new
        heapq.heappush(self._groups.setdefault((self.models[g].key, new), []), g)

    def _first(self, key: tuple[str, State]) -> int | None:
        heap = self._groups.get(key)
        while heap and self.states[heap[0]] != key[1]:
            heapq.heappop(heap)
        if not heap:
            self._groups.pop(key, None)
            return None
        return heap[0]

    def add(self, g: int, profile_id: int, start: int) -> None:
        """Record an instance on GPU ``g`` (checked against the geometry)."""
        sp = self.spaces[self.models[g].key]
        p = sp.profiles[profile_id]
        why = conflict(sp.model, sp.placed(self.states[g]), p, Placement(start, p.placement_size))
        if why:
            raise ValueError(f"GPU {g}: {p.name} at {start}: {why}")
        self._move(g, tuple(sorted(self.states[g] + ((profile_id, start),))))

    def remove(self, g: int, profile_id: int, start: int) -> None:
        st = list(self.states[g])
        st.remove((profile_id, start))
        self._move(g, tuple(st))

    def observe(self, request: Request, weight: float = 1.0) -> None:
        """Count a request into the demand mix that weighs fragmentation (``fgd`` and ``migctl``)."""
        for key, ids in request.eligible:
            if ids:
                d = self._demand.setdefault(key, {})
                d[ids[0]] = d.get(ids[0], 0.0) + weight

    def set_demand(self, key: str, weights: Mapping[int, float]) -> None:
        self._demand[key] = dict(weights)

    def _room(self, sp: _Space, state: State) -> float:
        d = self._demand.get(sp.model.key)
        if not d:
            return 0.0
        total = sum(d.values())
        caps = sp.capacity(state, d)
        return sum(w / total * sp.profiles[pid].slices * caps[pid] for pid, w in d.items())

    # -------------------------------------------------------------------------------- placement

    def _score(self, sp: _Space, state: State, new: State, g: int, pl: Placement) -> tuple[tuple, Callable[[], tuple]]:
        """The candidate's rank as (head, rest): ``head + rest()`` is the key, and ``rest`` is only worth
        computing for a candidate whose head does not already lose."""
        if self.policy == "first":
            return (g, pl.start), tuple
        used = sp.used(new)
        if self.policy == "best":
            return (-used[0], -used[1], g, pl.start), tuple
        if self.policy == "driver":
            return (-used[0], -used[1], g, *auto_rank(sp.model, pl)), tuple
        drop = round(self._room(sp, state) - self._room(sp, new), 9)
        if self.policy == "fgd":
            return (drop, g, pl.start), tuple
        strand = self._stranded(sp, new) - self._stranded(sp, state)

        def rest() -> tuple:
            # then the room lost for every profile of the catalog alike: the tie-break when the demand seen so
            # far cannot tell placements apart (a live node that has seen one 3g.40gb: at start 0 it rules out
            # the A100's only 4g.40gb placement, at start 4 it does not)
            every = round(self._catalog_room(sp, state) - self._catalog_room(sp, new), 9)
            return (every, -used[1], g, pl.start)

        return (round(strand + self._opening(sp, state), 9), not state, -used[0], drop), rest

    @staticmethod
    def _ranked(head: tuple, rest: Callable[[], tuple], best: tuple | None) -> tuple | None:
        """``head + rest()``, or None when ``head`` alone already ranks below ``best``."""
        if best is not None and head > best[:len(head)]:
            return None
        return head + rest()

    @staticmethod
    def _catalog_room(sp: _Space, state: State) -> float:
        """The room of ``state`` for a mix of every GI profile of the model in equal parts (``_room`` with
        uniform weights)."""
        caps = sp.capacity(state, sp.profiles)
        return sum(p.slices * caps[pid] for pid, p in sp.profiles.items()) / max(1, len(sp.profiles))

    def _opening(self, sp: _Space, state: State) -> float:
        """What starting to use an empty GPU costs: the demand-weighted slices of large requests (at least
        half a GPU), which only an (almost) empty GPU can take."""
        if state:
            return 0.0
        d = self._demand.get(sp.model.key) or {}
        total = sum(d.values()) or 1.0
        half = sp.model.compute_slices / 2
        return sum(w / total * sp.profiles[p].slices for p, w in d.items() if sp.profiles[p].slices >= half)

    def _stranded(self, sp: _Space, state: State) -> int:
        """Free compute slices of ``state`` that no instance of the demanded profiles can ever use."""
        d = self._demand.get(sp.model.key)
        pids = tuple(sorted(d)) if d else tuple(sorted(sp.profiles))
        return sp.model.compute_slices - sp.used_slices(state) - sp.fillable(state, pids)

    def choose(self, request: Request, extra: Mapping[int, Sequence[PlacedGI]] | None = None,
               drain: Sequence[float] | None = None, end: float | None = None) -> Choice | None:
        """The best GPU, profile and placement for ``request`` now, or None when it fits nowhere.

        ``extra`` maps GPU indices to phantom instances (reservations) added to their layout for this
        decision only.

        ``drain`` (per GPU: when its last busy instance reaches its time limit; now for an empty or idle
        GPU) and ``end`` (when the new job reaches its own limit) make the ``migctl`` rule lifetime-aware:
        after stranded slices and preferring a used GPU, it takes the GPU whose drain time the job pushes
        back least (not at all when the job ends before the GPU's other jobs), then the fullest. Jobs that
        end together share GPUs, so GPUs empty whole sooner for large requests (the idea of lifetime-aware
        VM placement: Barbalho et al., MLSys 2023; LAVA, MLSys 2025). Other rules ignore them.
        """
        life = (drain, end) if self.policy == "migctl" and drain is not None and end is not None else None
        best: tuple | None = None
        choice: Choice | None = None
        for (key, state) in list(self._groups):
            g = self._first((key, state))
            if g is None:
                continue
            ids = request.on(key)
            if not ids:
                continue
            sp = self.spaces[key]
            gpus = [g]
            if life is not None:
                # GPUs of one state differ in their drain times: every one is a candidate
                gpus = sorted(x for x in set(self._groups[(key, state)]) if self.states[x] == state)
            elif extra:
                # GPUs of one state are interchangeable except for phantoms: the lowest-numbered one without
                # phantoms, and every one with phantoms, are the candidates
                members = sorted(x for x in set(self._groups[(key, state)]) if self.states[x] == state)
                plain = [x for x in members if x not in extra][:1]
                gpus = sorted(plain + [x for x in members if x in extra])
            for pid in ids:
                for gg in gpus:
                    phantom = list(extra.get(gg, ())) if extra else []
                    for pl in sp.options(state, pid):
                        if phantom and conflict(sp.model, _at_reservation(sp.placed(state), phantom),
                                                sp.profiles[pid], pl):
                            continue
                        new = tuple(sorted(state + ((pid, pl.start),)))
                        head, rest = self._score(sp, state, new, gg, pl)
                        head = (ids.index(pid),) + head
                        if life is not None:
                            # after (preferred profile, stranded + opening cost, used GPU first)
                            head = head[:3] + (max(0.0, life[1] - life[0][gg]),) + head[3:]
                        s = self._ranked(head, rest, best)
                        if s is not None and (best is None or s < best):
                            best, choice = s, Choice(gg, sp.profiles[pid], pl)
        return choice

    def make_room(self, request: Request, idle: Callable[[int], Sequence[Inst]],
                  allowed: Callable[[int], bool] | None = None,
                  extra: Mapping[int, Sequence[PlacedGI]] | None = None) -> tuple[list[Inst], Choice] | None:
        """Idle instances to destroy on one GPU so that ``request`` fits there, and where it then goes.

        Only instances that ``idle(g)`` returns may be destroyed; the fewest are chosen (then the fewest
        slices, then the placement rule). None when no set of idle instances makes room. ``extra`` maps GPU
        indices to phantom instances (reservations) that the new instance must keep clear of.
        """
        best: tuple | None = None
        out: tuple[list[Inst], Choice] | None = None
        seen: set[tuple] = set()
        for g, m in enumerate(self.models):
            ids = request.on(m.key)
            if not ids or (allowed is not None and not allowed(g)):
                continue
            cands = sorted(i for i in idle(g) if i in self.states[g])
            if not cands:
                continue
            phantom = list(extra.get(g, ())) if extra else []
            sig = (m.key, self.states[g], tuple(cands))
            if phantom:
                sig += (g,)
            if sig in seen:  # the same layout and idle set on a lower-numbered GPU scores at least as well
                continue
            seen.add(sig)
            sp = self.spaces[m.key]
            need = min(sp.profiles[pid].slices for pid in ids)
            if m.compute_slices - sp.used_slices(self.states[g]) + sum(sp.profiles[p].slices for p, _ in cands) < need:
                continue
            for r in range(1, len(cands) + 1):
                if best is not None and r > best[0]:
                    break
                for drop in itertools.combinations(cands, r):
                    rest = tuple(i for i in self.states[g] if i not in drop)
                    freed = sum(sp.profiles[pid].slices for pid, _ in drop)
                    for pid in ids:
                        for pl in sp.options(rest, pid):
                            if phantom and conflict(sp.model, _at_reservation(sp.placed(rest), phantom),
                                                    sp.profiles[pid], pl):
                                continue
                            new = tuple(sorted(rest + ((pid, pl.start),)))
                            head, tail = self._score(sp, rest, new, g, pl)
                            s = self._ranked((r, freed, ids.index(pid)) + head, tail, best)
                            if s is not None and (best is None or s < best):
                                best, out = s, (list(drop), Choice(g, sp.profiles[pid], pl))
        return out

    # -------------------------------------------------------------------------------- measures

    def used_slices(self) -> int:
        return sum(self.spaces[m.key].profiles[pid].slices for m, st in zip(self.models, self.states, strict=True) for pid, _ in st)

    def capacity_slices(self) -> int:
        return sum(m.compute_slices for m in self.models)


def fill(models: Sequence[GpuModel], units: Sequence[str], policy: str, load: float = 1.3) -> Placer:
    """The FGD protocol (Weng et al., ATC'23): requests for the profile names ``units`` arrive in order
    (cycled) until ``load`` x the fleet's compute slices have been requested; nothing departs. Each is placed
    by ``policy`` where it fits, or turned away. Returns the placer (its ``used_slices()`` / capacity is the
    allocation the protocol reports)."""
    uniq = list({m.key: m for m in models}.values())
    reqs = {u: Request.for_profile(uniq, u) for u in set(units)}
    slices = {u: next(p.slices for m in uniq if (p := m.profile(u)) is not None) for u in set(units)}
    pl = Placer(models, policy)
    cap = pl.capacity_slices()
    requested = i = 0
    while requested < load * cap:
        u = units[i % len(units)]
        i += 1
        pl.observe(reqs[u])
        requested += slices[u]
        c = pl.choose(reqs[u])
        if c is not None:
            pl.add(c.gpu, c.profile.id, c.placement.start)
    return pl
