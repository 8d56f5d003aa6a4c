"""Reshaping a live node for one request: destroy the fewest *idle* MIG instances on one GPU so that the
requested profile fits, and create it, through the transactional apply (journal, rollback, busy check).

Idle = not busy by :mod:`migctl.busy` (no live lease or lease process group, no NVML process, no MPS
server); busy instances are fixed. The choice is :meth:`migctl.planner.online.Placer.make_room` (fewest
instances destroyed, then fewest slices, then migctl's placement rule) over the live layouts. The new
layout of that GPU is applied with :func:`migctl.reconcile.engine.apply_desired`, which refuses to touch
a busy instance even if one became busy in between.
"""

from __future__ import annotations

from typing import Any

from migctl.jobs.common import JobsError
from migctl.jobs.leases import LeaseManager, Request


def reshape_for(node: Any, req: Request) -> str | None:
    """Make room for ``req`` on ``node``; a one-line description of the change, or None if none helps."""
    from migctl.busy import annotate
    from migctl.planner.online import Placer
    from migctl.planner.online import Request as PRequest
    from migctl.reconcile.engine import apply_desired
    from migctl.reconcile.live import desired_from_layout, read_node

    live = [g for g in read_node(node) if g.model is not None and g.mig_current
            and (req.gpus is None or g.index in req.gpus)]
    if not live:
        return None
    annotate(node, live)  # the one authority: leases (and their process groups), NVML processes, MPS servers
    models = [g.model for g in live]
    placer = Placer(models, "migctl")
    idle: dict[int, list[tuple[int, int]]] = {}
    for i, g in enumerate(live):
        for gi in g.gis:
            placer.add(i, gi.profile_id, gi.start)
            if not gi.busy:
                idle.setdefault(i, []).append((gi.profile_id, gi.start))
    eligible = []
    for m in {m.key: m for m in models}.values():
        if req.profile:
            p = m.profile(req.profile)
            ids = (p.id,) if p is not None else ()
        else:
            plain = [p for p in m.gi_profiles if not p.suffix and (req.mem_mib is None or p.memory_mib >= req.mem_mib)]
            ids = tuple(p.id for p in sorted(plain, key=lambda p: (p.memory_mib, p.slices)))
        if ids:
            eligible.append((m.key, ids))
    if not eligible:
        raise JobsError(f"no MIG profile on this node fits {req.describe()}")
    made = placer.make_room(PRequest(tuple(eligible)), lambda i: idle.get(i, []))
    if made is None:
        return None
    drop, choice = made
    g = live[choice.gpu]
    layout = g.layout()
    gone = set(drop)
    layout["gis"] = [x for x in layout["gis"]
                     if (g.model.profile(x["profile"]).id, x["start"]) not in gone]  # type: ignore[union-attr]
    ci = choice.profile.default_ci
    layout["gis"].append({"profile": choice.profile.name, "start": choice.placement.start,
                          "size": choice.profile.placement_size,
                          "cis": [{"profile": ci.name, "start": 0, "size": ci.slices}]})
    index = g.index

    def resolve(_live: Any) -> dict[int, Any]:
        return {index: desired_from_layout(index, layout, source="reshape")}

    apply_desired(resolve, f"reshape for {req.describe()}", source="run --reshape", node=node)
    names = ", ".join(f"{g.model.profile(pid).name}@{s}" for pid, s in drop)  # type: ignore[union-attr]
    return (f"reshaped GPU {index}: destroyed idle {names}; created {choice.profile.name}@{choice.placement.start}")


def reshape_if_needed(node: Any, req: Request) -> str | None:
    """Reshape only when no fitting device is free and there is no room to create one."""
    if LeaseManager(node)._looks_possible(req):
        return None
    return reshape_for(node, req)
