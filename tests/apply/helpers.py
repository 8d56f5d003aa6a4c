"""Helpers shared by the apply tests."""

from __future__ import annotations

from pathlib import Path

COMPAT = Path(__file__).resolve().parents[1] / "fixtures" / "compat" / "mig-parted"


def layouts(node) -> dict[int, dict]:
    from migctl.reconcile.live import read_node

    return {g.index: g.layout() for g in read_node(node)}


def uuids(node) -> dict[int, set[str]]:
    from migctl.reconcile.live import read_node

    return {g.index: {c.uuid for gi in g.gis for c in gi.cis} for g in read_node(node)}
