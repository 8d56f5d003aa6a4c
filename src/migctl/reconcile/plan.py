"""Diff a GPU's live layout against its desired state and produce a minimal, ordered plan.

Per GPU:
* GPUs already matching get no operation at all.
* A mode change destroys the GPU's instances, sets the mode and resets that GPU only (if the change is
  pending), then creates the target.
* Otherwise the instances that can stay stay (same GI, same placement, same MIG device UUIDs): we look for
  the largest set of live GIs that (a) match a wanted instance (profile, CI profiles, pinned placement) and
  (b) leave a valid arrangement for the rest of the target (exact search with geometry.place_all). Busy
  GIs (live processes) must stay unless ``force``; when they cannot, the plan is *blocked* and says which
  instance blocks and why.
* A target that no GPU of this model can hold (a pinned layout from a checkpoint or journal naming a profile
  the model lacks, a start that is not one of the profile's placements, pinned instances that overlap,
  compute instances that do not fit their GI) is *invalid*: nothing on the GPU is planned, whatever is busy.
* New GIs get explicit placements (never "Insufficient Resources" while an arrangement exists); each new
  CI gets an explicit placement too, so the journal records the exact layout.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from migctl.catalog import GIProfile, GpuModel, Placement
from migctl.catalog.geometry import PlacedGI, conflict, free_placements, place_all
from migctl.config.parted import Desired, WantCI, WantGI
from migctl.reconcile.live import LiveGI, LiveGpu


@dataclass
class GpuPlan:
    """What happens to one GPU."""

    index: int
    live: LiveGpu
    desired: Desired | None
    status: str = "unchanged"  # unchanged | change | blocked (busy instances in the way) | invalid | unmatched
    mode_change: bool = False
    keep: list[LiveGI] = field(default_factory=list)
    destroy: list[LiveGI] = field(default_factory=list)
    create: list[tuple[WantGI, Placement, list[tuple[str, Placement]]]] = field(default_factory=list)
    ops: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""
    busy: list[LiveGI] = field(default_factory=list)  # busy instances that block (or that --force destroys)
    busy_pids: list[int] = field(default_factory=list)

    @property
    def model(self) -> GpuModel | None:
        return self.live.model

    def target_layout(self) -> dict[str, Any]:
        """The layout this GPU has once the plan has run."""
        if self.desired is None or self.status in ("unchanged", "unmatched", "blocked", "invalid"):
            return self.live.layout()
        gis = [
            {"profile": g.profile, "start": g.start, "size": g.size,
             "cis": [{"profile": c.profile, "start": c.start, "size": c.size} for c in g.cis]}
            for g in self.keep
        ]
        for w, pl, cis in self.create:
            gis.append({"profile": w.profile, "start": pl.start, "size": pl.size,
                        "cis": [{"profile": n, "start": p.start, "size": p.size} for n, p in cis]})
        return {"mig": self.desired.mig_enabled, "gis": sorted(gis, key=lambda g: g["start"])}

    def describe(self) -> str:
        return self.desired.describe() if self.desired else "(not matched: left alone)"


@dataclass
class NodePlan:
    """The plan for a whole node: per-GPU plans; mode-phase operations run before config-phase ones."""

    label: str
    gpus: list[GpuPlan]
    skip_reset: bool = False  # mig-parted's --skip-reset: no reset step (a pending mode change stays pending)

    @property
    def ops(self) -> list[dict[str, Any]]:
        mode = [op for g in self.gpus for op in g.ops if op["phase"] == "mode"]
        reset = self.reset_op()
        cfg = [op for g in self.gpus for op in g.ops if op["phase"] == "config"]
        return mode + ([reset] if reset else []) + cfg

    def reset_op(self) -> dict[str, Any] | None:
        """One reset of every GPU whose MIG mode changes, after all mode changes are requested and before any
        instance is created (as mig-parted does); at run time only GPUs whose change is still pending are reset
        (Hopper and newer apply the mode without one)."""
        idx = [g.index for g in self.gpus if g.status == "change" and g.mode_change]
        if not idx or self.skip_reset:
            return None
        names = ", ".join(map(str, idx))
        return {"op": "reset", "gpus": idx, "phase": "mode",
                "desc": f"GPU{'s' if len(idx) > 1 else ''} {names}: reset in one call (those whose mode change "
                        "is pending)"}

    @property
    def blocked(self) -> list[GpuPlan]:
        """GPUs whose target cannot be reached now: busy instances in the way, or a target that is invalid."""
        return [g for g in self.gpus if g.status in ("blocked", "invalid")]

    @property
    def invalid(self) -> list[GpuPlan]:
        """GPUs whose target no GPU of their model can hold (waiting or ``--force`` cannot help)."""
        return [g for g in self.gpus if g.status == "invalid"]

    @property
    def changing(self) -> list[GpuPlan]:
        return [g for g in self.gpus if g.status == "change"]

    def has_phase(self, phase: str) -> bool:
        return any(op["phase"] == phase for op in self.ops)

    def counts(self) -> dict[str, int]:
        ops = self.ops
        return {
            "operations": len(ops),
            "gpus_changed": len(self.changing),
            "instances_kept": sum(len(g.keep) for g in self.changing),
            "instances_destroyed": sum(1 for op in ops if op["op"] == "destroy_gi"),
            "instances_created": sum(1 for op in ops if op["op"] == "create_gi"),
        }

    def render(self) -> str:
        """Human-readable plan: one block per GPU, then the operations."""
        lines = [f"Plan for config {self.label!r}:"]
        for g in self.gpus:
            model = g.model.key if g.model else g.live.name
            if g.status == "unmatched":
                lines.append(f"  GPU {g.index} ({model}): not matched by the config; left alone")
                continue
            lines.append(f"  GPU {g.index} ({model}): {g.status}")
            lines.append(f"      now:    {g.live.describe()}")
            lines.append(f"      target: {g.describe()}")
            if g.status in ("blocked", "invalid"):
                lines.append(f"      {g.status}: {g.reason}")
                continue
            if g.keep and g.status == "change":
                lines.append("      keep:   " + ", ".join(f"{k.label()} (GI {k.id})" for k in g.keep))
            for op in g.ops:
                lines.append(f"      - {op['desc']}")
        reset = self.reset_op()
        if reset:
            lines.append(f"  then: {reset['desc']}, before instances are created")
        c = self.counts()
        lines.append(
            f"  {c['operations']} operation(s) on {c['gpus_changed']} GPU(s): {c['instances_kept']} instance(s) kept, "
            f"{c['instances_destroyed']} destroyed, {c['instances_created']} created"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "gpus": [
                {"index": g.index, "model": g.model.key if g.model else None, "status": g.status,
                 "now": g.live.layout(), "target": g.target_layout() if g.status not in ("blocked", "invalid") else None,
                 "keep": [k.id for k in g.keep], "reason": g.reason or None,
                 "busy_pids": g.busy_pids, "ops": g.ops}
                for g in self.gpus
            ],
            **self.counts(),
        }


# ------------------------------------------------------------------------------------------ matching
def _matches(live: LiveGI, want: WantGI) -> bool:
    if live.profile != want.profile or (want.start is not None and live.start != want.start):
        return False
    if sorted(c.profile for c in live.cis) != sorted(c.profile for c in want.cis):
        return False
    pinned = [c for c in want.cis if c.start is not None]
    if pinned:
        have = sorted((c.profile, c.start) for c in live.cis)
        return sorted((c.profile, c.start) for c in want.cis) == have
    return True


def _assign(kept: tuple[LiveGI, ...], wants: tuple[WantGI, ...]) -> list[WantGI] | None:
    """Match every kept GI to a distinct want (exact pinned starts first); return the unmatched wants."""
    left = list(wants)
    used: set[int] = set()
    order = sorted(kept, key=lambda g: g.start)
    # pinned wants first: a kept GI whose start is pinned must take that want
    pairs: dict[int, int] = {}
    for gi_i, g in enumerate(order):
        for w_i, w in enumerate(left):
            if w_i not in used and w.start is not None and _matches(g, w):
                used.add(w_i)
                pairs[gi_i] = w_i
                break
    for gi_i, g in enumerate(order):
        if gi_i in pairs:
            continue
        for w_i, w in enumerate(left):
            if w_i not in used and w.start is None and _matches(g, w):
                used.add(w_i)
                pairs[gi_i] = w_i
                break
        else:
            return None
    return [w for i, w in enumerate(left) if i not in used]


def _ci_placements(gp: GIProfile, cis: tuple[WantCI, ...]) -> list[tuple[str, Placement]] | None:
    """Explicit placements for the CIs of a new GI (pinned ones as given, others lowest free)."""
    out: list[tuple[str, Placement]] = []
    for c in sorted(cis, key=lambda c: c.start is None):
        cp = next((x for x in gp.ci_profiles if x.name == c.profile), None)
        if cp is None:
            return None
        options = cp.placements if c.start is None else tuple(p for p in cp.placements if p.start == c.start)
        pl = next((p for p in options if not any(p.overlaps(o) for _, o in out)), None)
        if pl is None:
            return None
        out.append((c.profile, pl))
    return out


def _place(model: GpuModel, fixed: list[PlacedGI], wants: list[WantGI]) -> list[tuple[WantGI, Placement]] | None:
    """Placements for ``wants`` next to ``fixed`` (pinned ones as given), or None."""
    placed = list(fixed)
    out: list[tuple[WantGI, Placement]] = []
    free: list[WantGI] = []
    for w in wants:
        gp = model.profile(w.profile)
        if gp is None:
            return None
        if w.start is None:
            free.append(w)
            continue
        pl = next((p for p in gp.placements if p.start == w.start), None)
        if pl is None or conflict(model, placed, gp, pl):
            return None
        placed.append(PlacedGI(gp, pl))
        out.append((w, pl))
    profiles = [model.profile(w.profile) for w in free]
    result = place_all(model, profiles, placed)  # type: ignore[arg-type]
    if result is None:
        return None
    pool = list(free)
    for pg in result:
        w = next(x for x in pool if x.profile == pg.profile.name)
        pool.remove(w)
        out.append((w, pg.placement))
    return out


def _placed(model: GpuModel, gis: list[LiveGI] | tuple[LiveGI, ...]) -> list[PlacedGI]:
    out = []
    for g in gis:
        gp = model.profile(g.profile)
        assert gp is not None
        out.append(PlacedGI(gp, Placement(g.start, g.size)))
    return out


def _why_blocked(model: GpuModel, busy: LiveGI, wants: tuple[WantGI, ...]) -> str:
    """Why keeping ``busy`` makes the target impossible."""
    if not any(_matches(busy, w) for w in wants):
        return "it is not in the target layout"
    fixed = _placed(model, [busy])
    rest = _assign((busy,), wants) or []
    for w in rest:
        gp = model.profile(w.profile)
        if gp is None:
            continue
        options = gp.placements if w.start is None else tuple(p for p in gp.placements if p.start == w.start)
        if not any(conflict(model, fixed, gp, p) is None for p in options):
            reasons = sorted({conflict(model, fixed, gp, p) or "" for p in options})
            return f"the target's {w.label()} cannot be placed next to it ({reasons[0]})"
    return "the rest of the target has no valid arrangement next to it"


def target_problem(model: GpuModel, desired: Desired) -> str | None:
    """Why no GPU of ``model`` can hold ``desired``'s instances as pinned (None when it may): a profile the
    model lacks, a start that is not a placement of the profile, pinned GIs that overlap, a CI profile the GI
    lacks, or pinned CIs that do not fit. Configs are checked like this when they are read; a layout from a
    checkpoint or journal reaches the planner unchecked."""
    valid = ", ".join(p.name for p in model.gi_profiles)
    pinned: list[PlacedGI] = []
    for w in desired.gis:
        gp = model.profile(w.profile)
        if gp is None:
            return f"GI profile {w.profile!r} is not a profile of {model.key} (valid: {valid})"
        if w.start is not None:
            pl = next((p for p in gp.placements if p.start == w.start), None)
            if pl is None:
                starts = ",".join(str(p.start) for p in gp.placements)
                return f"{gp.name} cannot start at memory slice {w.start} (valid starts: {starts})"
            why = conflict(model, pinned, gp, pl)
            if why:
                return f"{w.label()}: {why}"
            pinned.append(PlacedGI(gp, pl))
        names = [c.name for c in gp.ci_profiles]
        for c in w.cis:
            if c.profile not in names:
                return (f"compute instance profile {c.profile!r} is not one of {gp.name}'s "
                        f"(valid: {', '.join(names)})")
            cp = gp.ci_profiles[names.index(c.profile)]
            if c.start is not None and all(p.start != c.start for p in cp.placements):
                starts = ",".join(str(p.start) for p in cp.placements)
                return (f"compute instance {c.profile} cannot start at compute slice {c.start} of a {gp.name} "
                        f"(valid starts: {starts})")
        if _ci_placements(gp, w.cis) is None:
            return f"the compute instances {w.label()} do not fit in one {gp.name}"
    return None


def _pids_text(g: LiveGI) -> str:
    devs = ", ".join(g.uuids()) or f"GI {g.id}"
    return f"{g.label()} (GI {g.id}, {devs}; PIDs {', '.join(str(p) for p in g.pids)})"


# ------------------------------------------------------------------------------------------ planning
def plan_gpu(live: LiveGpu, desired: Desired | None, force: bool = False) -> GpuPlan:
    """The plan for one GPU (see module docstring)."""
    gp = GpuPlan(live.index, live, desired)
    if desired is None:
        gp.status = "unmatched"
        return gp
    model = live.model
    if not live.mig_capable or model is None:
        if desired.mig_enabled:
            gp.status, gp.reason = "invalid", "the GPU is not MIG-capable"
        return gp
    want = desired.mig_enabled
    problem = target_problem(model, desired) if want else None
    if problem:
        gp.status, gp.reason = "invalid", problem
        return gp
    i = live.index
    if live.mig_current != want:
        gp.mode_change = True
        gp.destroy = list(live.gis)
        busy_gpu = bool(live.pids)
        if busy_gpu:
            gp.busy = [g for g in live.gis if g.busy]
            gp.busy_pids = list(live.pids)
            if not force:
                gp.status = "blocked"
                where = ", ".join(_pids_text(g) for g in gp.busy) or f"GPU {i}"
                gp.reason = (f"a MIG mode change resets GPU {i}, which has live processes "
                             f"(PIDs {', '.join(map(str, live.pids))}) on {where}")
                return gp
        gp.ops += _destroy_ops(i, live.gis, "mode")
        gp.ops.append({"op": "set_mode", "gpu": i, "enabled": want, "phase": "mode",
                       "desc": f"GPU {i}: {'enable' if want else 'disable'} MIG mode"})
        # no per-GPU reset: NodePlan.ops resets every GPU whose mode change is pending in ONE call
        if want:
            placed = _place(model, [], list(desired.gis))
            if placed is None:
                gp.status, gp.reason = "invalid", "the target has no valid arrangement on an empty GPU"
                return gp
            if not _add_creates(gp, model, placed):
                return gp
        gp.status = "change"
        return gp
    if not want:
        if live.mig_pending:
            gp.ops.append({"op": "set_mode", "gpu": i, "enabled": False, "phase": "mode",
                           "desc": f"GPU {i}: cancel the pending MIG enable"})
            gp.status = "change"
        return gp
    if not live.mig_pending:
        # MIG on with a *disable* pending contradicts the config: cancel it, or the next reset (or, on Hopper, a
        # reboot) wipes the layout while `assert` passes (issue 8)
        gp.ops.append({"op": "set_mode", "gpu": i, "enabled": True, "phase": "mode",
                       "desc": f"GPU {i}: cancel the pending MIG disable"})
    # same mode, MIG enabled: keep what can stay
    wants = desired.gis
    mandatory = [g for g in live.gis if g.busy] if not force else []
    candidates = [g for g in live.gis if any(_matches(g, w) for w in wants)]
    for g in mandatory:
        if g not in candidates:
            gp.status = "blocked"
            gp.busy, gp.busy_pids = [g], list(g.pids)
            gp.reason = f"busy instance {_pids_text(g)} is not in the target layout"
            return gp
    optional = [g for g in candidates if g not in mandatory]
    # prefer keeping busy (then any) instances; deterministic order
    optional.sort(key=lambda g: (not g.busy, g.start))
    best: tuple[tuple[LiveGI, ...], list[tuple[WantGI, Placement]]] | None = None
    for size in range(len(optional), -1, -1):
        for combo in itertools.combinations(optional, size):
            kept = tuple(mandatory) + combo
            rest = _assign(kept, wants)
            if rest is None:
                continue
            placed = _place(model, _placed(model, kept), rest)
            if placed is not None:
                best = (kept, placed)
                break
        if best is not None:
            break
    if best is None and not mandatory:
        gp.status, gp.reason = "invalid", "the target has no valid arrangement on this GPU"
        return gp
    if best is None:
        gp.status = "blocked"
        culprits = [g for g in mandatory if _place(model, _placed(model, [g]), _assign((g,), wants) or []) is None]
        culprits = culprits or mandatory
        gp.busy = culprits
        gp.busy_pids = sorted({p for g in culprits for p in g.pids})
        gp.reason = "; ".join(f"busy instance {_pids_text(g)} blocks the target: {_why_blocked(model, g, wants)}"
                              for g in culprits)
        if len(culprits) > 1 and all(_why_blocked(model, g, wants).startswith("the rest") for g in culprits):
            gp.reason = "busy instances " + ", ".join(_pids_text(g) for g in culprits) + \
                " together leave no valid arrangement for the target"
        return gp
    kept, placed = best
    gp.keep = sorted(kept, key=lambda g: g.start)
    gp.destroy = [g for g in live.gis if g not in kept]
    gp.busy = [g for g in gp.destroy if g.busy]
    gp.busy_pids = sorted({p for g in gp.busy for p in g.pids})
    if not gp.destroy and not placed and not gp.ops:
        gp.status = "unchanged"
        return gp
    gp.ops += _destroy_ops(i, gp.destroy, "config")
    if _add_creates(gp, model, placed):
        gp.status = "change"
    return gp


def _destroy_ops(i: int, gis: list[LiveGI], phase: str) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = []
    for g in sorted(gis, key=lambda g: g.start):
        for c in g.cis:
            ops.append({"op": "destroy_ci", "gpu": i, "gi": g.id, "ci": c.id, "phase": phase,
                        "desc": f"GPU {i}: destroy CI {c.id} ({c.profile}) of GI {g.id} ({g.profile}@{g.start})"})
        ops.append({"op": "destroy_gi", "gpu": i, "gi": g.id, "phase": phase,
                    "desc": f"GPU {i}: destroy GI {g.id} ({g.profile} at {g.start}:{g.size})"})
    return ops


def _add_creates(gp: GpuPlan, model: GpuModel, placed: list[tuple[WantGI, Placement]]) -> bool:
    """Add the creation of ``placed``; False (the plan marked invalid, its operations dropped) when the compute
    instances of one do not fit in it. Until 2026-12-03 the caller then marked the plan "change" anyway, so a
    checkpoint with such a GI was "restored" by destroying the GPU's instances and creating none."""
    i = gp.index
    for w, pl in sorted(placed, key=lambda x: x[1].start):
        prof = model.profile(w.profile)
        assert prof is not None
        cis = _ci_placements(prof, w.cis)
        if cis is None:
            gp.status, gp.reason = "invalid", f"the compute instances {w.label()} do not fit in one {w.profile}"
            gp.ops, gp.create = [], []
            return False
        gp.create.append((w, pl, cis))
        gp.ops.append({"op": "create_gi", "gpu": i, "profile": w.profile, "start": pl.start, "size": pl.size,
                       "phase": "config", "desc": f"GPU {i}: create GI {w.profile} at {pl}"})
        for name, cpl in cis:
            gp.ops.append({"op": "create_ci", "gpu": i, "gi_start": pl.start, "profile": name, "start": cpl.start,
                           "size": cpl.size, "phase": "config",
                           "desc": f"GPU {i}: create CI {name} at {cpl} in GI {w.profile}@{pl.start}"})
    return True


def plan_node(live: list[LiveGpu], desired: dict[int, Desired], label: str, force: bool = False) -> NodePlan:
    """The plan for every GPU of a node."""
    return NodePlan(label, [plan_gpu(g, desired.get(g.index), force) for g in live])


__all__ = ["GpuPlan", "NodePlan", "free_placements", "plan_gpu", "plan_node", "target_problem"]
