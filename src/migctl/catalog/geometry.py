"""Placement geometry and the rules that decide whether GPU instances can coexist on one GPU.

Pure functions over the catalog; shared by the simulator (to behave like the driver), the reconciler
(to choose placements that keep the target reachable) and the planner (to enumerate valid layouts).

Rules (mig-hardware.md §0, §1, §2.1):
* a GI occupies ``placement.size`` memory slices from ``placement.start``; GIs never overlap;
* compute slices of all GIs add up to at most ``model.compute_slices``;
* at most ``profile.max_instances`` GIs of one profile (``+me`` profiles: 1);
* ``+me.all`` (ALL_ME) profiles "prevent allocation of all but _NO_ME profiles" (nvml.h) and, by the
  same token, need every other GI to be ``-me`` (the converse is UNCONFIRMED).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from migctl.catalog.model import GIProfile, GpuModel, Placement


@dataclass(frozen=True)
class PlacedGI:
    """A GPU instance as geometry sees it: its profile and placement."""

    profile: GIProfile
    placement: Placement


# Order in which the driver tries placements when none is given, for 8-memory-slice parts, by GI size in
# memory slices. Observed on real A100/H100/GH200 (mig-hardware.md §7): 7x1g fills 6,4,5,0,1,2,3; a 2g goes
# to 4:2 first; 3g goes to 4:4 first (which is why `-cgi 19,19,14,9` fails and `-cgi 9,19,14,19` works);
# GH200 1g.24gb x3 went to 4:2, 0:2, 2:2. The driver's actual algorithm is UNCONFIRMED; this table
# reproduces every recorded sequence. Other grids (A30, RTX PRO 6000) fill in ascending order (recorded).
AUTO_PLACEMENT_ORDER: dict[int, dict[int, tuple[int, ...]]] = {
    8: {1: (6, 4, 5, 0, 1, 2, 3), 2: (4, 0, 2, 6), 4: (4, 0), 8: (0,)},
}


def is_all_me(p: GIProfile) -> bool:
    return p.index_name.endswith("_ALL_ME")


def is_no_me(p: GIProfile) -> bool:
    return p.index_name.endswith("_NO_ME")


def conflict(model: GpuModel, existing: Sequence[PlacedGI], profile: GIProfile, placement: Placement) -> str | None:
    """Why ``profile`` at ``placement`` cannot be added next to ``existing``; None when it can."""
    if placement.size != profile.placement_size or placement.start not in profile.placement_starts:
        valid = ",".join(str(s) for s in profile.placement_starts)
        return f"placement {placement} is not valid for {profile.name} (valid: {{{valid}}}:{profile.placement_size})"
    for gi in existing:
        if gi.placement.overlaps(placement):
            return f"memory slices {placement} overlap {gi.profile.name} at {gi.placement}"
    used = sum(gi.profile.slices for gi in existing)
    if used + profile.slices > model.compute_slices:
        return f"needs {profile.slices} compute slices, {model.compute_slices - used} of {model.compute_slices} free"
    same = sum(1 for gi in existing if gi.profile.id == profile.id)
    if same >= profile.max_instances:
        return f"{profile.name} allows at most {profile.max_instances} instance(s) per GPU"
    if is_all_me(profile) and any(not is_no_me(gi.profile) for gi in existing):
        return f"{profile.name} takes all media engines; only -me instances may coexist with it"
    if any(is_all_me(gi.profile) for gi in existing) and not is_no_me(profile):
        return f"an existing +me.all instance allows only -me profiles next to it, not {profile.name}"
    return None


def free_placements(model: GpuModel, existing: Sequence[PlacedGI], profile: GIProfile) -> list[Placement]:
    """Placements at which ``profile`` could be created now, in ascending order."""
    return [pl for pl in profile.placements if conflict(model, existing, profile, pl) is None]


def remaining_capacity(model: GpuModel, existing: Sequence[PlacedGI], profile: GIProfile) -> int:
    """How many more GIs of ``profile`` fit together (nvmlDeviceGetGpuInstanceRemainingCapacity; -lgip "Free")."""
    current = list(existing)
    count = 0
    while True:
        free = free_placements(model, current, profile)
        if not free:
            return count
        # all placements of one profile have the same size; taking the lowest free start first is optimal
        current.append(PlacedGI(profile, free[0]))
        count += 1


def auto_rank(model: GpuModel, placement: Placement) -> tuple[int, int]:
    """Where ``placement`` comes in the order the driver tries placements of its size (lower first; see
    AUTO_PLACEMENT_ORDER; ascending starts where no order is recorded)."""
    order = AUTO_PLACEMENT_ORDER.get(model.memory_slices, {}).get(placement.size, ())
    start = placement.start
    return (order.index(start) if start in order else len(order) + start, start)


def auto_placement(model: GpuModel, existing: Sequence[PlacedGI], profile: GIProfile) -> Placement | None:
    """The placement the driver picks when none is given (see AUTO_PLACEMENT_ORDER), or None."""
    free = free_placements(model, existing, profile)
    if not free:
        return None
    return min(free, key=lambda pl: auto_rank(model, pl))


def tree_gi_id(model: GpuModel, placement: Placement) -> int:
    """GI ID by the memory-partition tree numbering seen on real drivers (mig-hardware.md §7).

    0 = whole GPU, 1-2 = halves, 3-6 = quarters, 7-14 = eighths (on 4-slot grids, 1-2 halves and 3-6
    quarters). The exact driver policy is UNCONFIRMED; it matches the recorded A30, A100, H100, GH200 and
    RTX PRO 6000 sequences.
    """
    unit = min(p.placement_size for p in model.gi_profiles)
    slots = model.memory_slices // unit
    size_units = max(1, placement.size // unit)
    level = max(0, round(math.log2(slots / size_units)))
    index = placement.start // (unit * size_units)
    if level == 1 and slots == 8 and model.architecture == "Ampere":
        # A100 halves are numbered from the top: 4:4 is GI 1, 0:4 is GI 2 (-lgi on drivers 450.80.02,
        # 515.86.01 and 550.54.14: tests/fixtures/captures). Other transcripts show the opposite on other
        # parts (mig-hardware.md section 7); the rule is limited to where captures show it.
        index = 1 - index
    return (1 << level) - 1 + index


def validate_layout(model: GpuModel, instances: Iterable[PlacedGI]) -> list[str]:
    """Problems with a whole layout (empty list when valid), checking each GI against the ones before it."""
    problems: list[str] = []
    placed: list[PlacedGI] = []
    for gi in instances:
        why = conflict(model, placed, gi.profile, gi.placement)
        if why:
            problems.append(f"{gi.profile.name}@{gi.placement}: {why}")
        else:
            placed.append(gi)
    return problems


def place_all(model: GpuModel, profiles: Sequence[GIProfile], fixed: Sequence[PlacedGI] = ()) -> list[PlacedGI] | None:
    """Explicit placements for ``profiles`` next to ``fixed`` GIs, or None when no arrangement exists.

    Exact search (backtracking, largest first). Identical profiles are interchangeable, so they are placed
    at increasing starts (symmetry breaking), which keeps the search fast on infeasible multisets.
    """
    order = sorted(profiles, key=lambda p: (-p.placement_size, -p.slices, p.id))
    current = list(fixed)
    result: list[PlacedGI] = []

    def rec(i: int) -> bool:
        if i == len(order):
            return True
        p = order[i]
        lowest = result[-1].placement.start if i > 0 and order[i - 1].id == p.id else -1
        for pl in p.placements:
            if pl.start <= lowest or conflict(model, current, p, pl) is not None:
                continue
            gi = PlacedGI(p, pl)
            current.append(gi)
            result.append(gi)
            if rec(i + 1):
                return True
            current.pop()
            result.pop()
        return False

    return result if rec(0) else None
