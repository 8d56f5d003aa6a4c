"""The independent validator: it catches each kind of invalid layout and agrees with the catalog geometry."""

from __future__ import annotations

import random

from migctl.catalog import load_model
from migctl.catalog.geometry import PlacedGI, validate_layout
from migctl.catalog.model import Placement
from migctl.planner.core import Plan, PlannedGpu, PlannedInstance
from migctl.planner.validate import check_gpu, validate_plan

H100 = "H100-80GB"


def test_valid_layout_passes():
    m = load_model(H100)
    assert check_gpu(m, [(9, 0), (14, 4), (19, 6)]) == []


def test_overlap_bad_start_slices_and_max_instances_are_caught():
    m = load_model(H100)
    assert any("overlaps" in p for p in check_gpu(m, [(9, 0), (14, 2)]))
    assert any("cannot start" in p for p in check_gpu(m, [(19, 7)]))  # 1g cannot start at memory slice 7
    assert any("compute slices" in p for p in check_gpu(m, [(0, 0), (19, 0)]))  # 7g + 1g: 8 slices
    assert any("at most 1" in p for p in check_gpu(m, [(20, 0), (20, 1)]))  # 1g.10gb+me: one per GPU
    assert any("does not exist" in p for p in check_gpu(m, [(99, 0)]))


def test_three_g_three_g_one_g_is_invalid():
    m = load_model(H100)
    for start in range(8):
        assert check_gpu(m, [(9, 0), (9, 4), (19, start)]) != []


def test_agrees_with_geometry_on_random_layouts():
    rng = random.Random(7)
    for key in ("H100-80GB", "A30"):
        m = load_model(key)
        for _ in range(400):
            insts = []
            for _ in range(rng.randint(1, 5)):
                p = rng.choice(m.gi_profiles)
                insts.append((p.id, rng.choice(p.placement_starts)))
            placed = [
                PlacedGI(next(p for p in m.gi_profiles if p.id == pid), Placement(s, 0)) for pid, s in insts
            ]
            placed = [PlacedGI(g.profile, Placement(g.placement.start, g.profile.placement_size)) for g in placed]
            assert (check_gpu(m, insts) == []) == (validate_layout(m, placed) == []), (key, insts)


def test_plan_level_checks():
    inst = PlannedInstance(profile_id=19, profile="1g.10gb", start=0, size=1, slices=1, workload="w", unit=0)
    plan = Plan(gpus=[PlannedGpu(0, H100, [inst]), PlannedGpu(0, H100, [])], objective=1, lower_bound=1,
                status="optimal")
    assert any("twice" in p for p in validate_plan(plan))
