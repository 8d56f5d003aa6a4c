"""Enumeration of the valid per-GPU layouts (multisets of GI profiles) of a model.

A multiset is valid when ``geometry.place_all`` finds explicit placements for it
(next to optional ``fixed`` instances). Validity is monotone (a sub-multiset of a valid multiset is
valid), so a depth-first search that extends only valid multisets finds all of them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from migctl.catalog.geometry import PlacedGI
from migctl.catalog.geometry import place_all as place
from migctl.catalog.model import GIProfile, GpuModel

Layout = tuple[int, ...]  # sorted GI profile IDs


def _by_id(model: GpuModel) -> dict[int, GIProfile]:
    return {p.id: p for p in model.gi_profiles}


def enumerate_layouts(
    model: GpuModel, profile_ids: Sequence[int], fixed: Sequence[PlacedGI] = ()
) -> set[Layout]:
    """Every valid multiset (sorted tuple of IDs, the empty one included) over ``profile_ids`` next to ``fixed``."""
    if not fixed:
        return set(_enumerate_cached(model.key, tuple(sorted(set(profile_ids)))))
    return _enumerate(model, sorted(set(profile_ids)), tuple(fixed))


@functools.lru_cache(maxsize=256)
def _enumerate_cached(model_key: str, ids: tuple[int, ...]) -> frozenset[Layout]:
    from migctl.catalog import load_model

    return frozenset(_enumerate(load_model(model_key), list(ids), ()))


def _enumerate(model: GpuModel, ids: list[int], fixed: tuple[PlacedGI, ...]) -> set[Layout]:
    profiles = _by_id(model)
    out: set[Layout] = {()}

    def rec(current: list[int], start: int) -> None:
        for j in range(start, len(ids)):
            cand = current + [ids[j]]
            if place(model, [profiles[i] for i in cand], fixed) is None:
                continue
            out.add(tuple(sorted(cand)))
            rec(cand, j)

    rec([], 0)
    return out


def maximal_layouts(valid: set[Layout], profile_ids: Sequence[int]) -> list[Layout]:
    """The valid multisets to which no profile of ``profile_ids`` can be added, in a deterministic order."""
    ids = sorted(set(profile_ids))
    out = [lay for lay in valid if not any(tuple(sorted(lay + (i,))) in valid for i in ids)]
    return sorted(out, key=lambda lay: (-len(lay), lay))


@functools.lru_cache(maxsize=4096)
def placements_for(model_key: str, layout: Layout) -> tuple[tuple[int, int], ...]:
    """Explicit placements ``(profile_id, start)`` for a valid layout (cached; raises if invalid)."""
    from migctl.catalog import load_model

    model = load_model(model_key)
    profiles = _by_id(model)
    placed = place(model, [profiles[i] for i in layout])
    if placed is None:
        raise ValueError(f"{model_key}: layout {layout} has no valid placement")
    return tuple(sorted((gi.profile.id, gi.placement.start) for gi in placed))
