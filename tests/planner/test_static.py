"""Static planning: valid plans, optimality against brute force, bounds, up-sizing, mixed fleets."""

from __future__ import annotations

import random

import pytest

from migctl.catalog import load_model
from migctl.planner import parse_request, plan, validate_plan
from migctl.planner.output import to_mig_parted
from migctl.planner.validate import check_gpu


def _req(workloads, fleet=None, **options):
    return parse_request({"fleet": fleet or [{"model": "H100-80GB"}], "workloads": workloads, "options": options})


def test_simple_plan_is_valid_optimal_and_has_bound():
    r = _req([
        {"name": "a", "profile": "3g.40gb", "count": 3},
        {"name": "b", "profile": "1g.10gb", "count": 5},
        {"name": "d", "profile": "4g.40gb", "count": 1},
    ])
    p = plan(r)
    assert validate_plan(p, r.workloads) == []
    assert p.objective == p.gpu_count == 3  # 4g+3g, 3g+1g x3... : 3 GPUs
    assert p.lower_bound == 3 and p.gap == 0 and p.status == "optimal"
    assert set(p.bounds) >= {"lp", "lp_rounded", "cp_sat", "combinatorial"}


def test_three_g_three_g_one_g_never_shares_a_gpu():
    r = _req([{"name": "a", "profile": "3g.40gb", "count": 2}, {"name": "b", "profile": "1g.10gb", "count": 1}])
    p = plan(r)
    assert p.objective == 2
    assert validate_plan(p, r.workloads) == []


@pytest.mark.parametrize("seed", range(12))
def test_optimal_against_brute_force(seed, brute_force):
    rng = random.Random(seed)
    key = "H100-80GB" if seed % 3 else "A30"
    m = load_model(key)
    plain = [p for p in m.gi_profiles if p.suffix == "" and p.slices < m.compute_slices]
    n = rng.randint(2, 6)
    chosen = [rng.choice(plain) for _ in range(n)]
    upsize = seed % 4 == 0
    r = parse_request({
        "fleet": [{"model": key}],
        "workloads": [{"name": f"w{i}", "profile": p.name} for i, p in enumerate(chosen)],
        "options": {"allow_upsize": upsize},
    })
    p = plan(r)
    assert validate_plan(p, r.workloads) == []
    options = [r.workloads[i].eligible[key] for i in range(n)]
    assert p.objective == brute_force(m, options)
    assert p.lower_bound <= p.objective


def test_exact_match_by_default_and_upsize_when_asked():
    base = [{"name": "big", "profile": "4g.40gb", "count": 1}, {"name": "small", "profile": "2g.20gb", "count": 2}]
    exact = plan(_req(base))
    assert all(i.profile == "2g.20gb" for g in exact.gpus for i in g.instances if i.workload == "small")
    # a 7g-only job plus 1g requests: up-sizing lets nothing change GPU count but must stay valid
    r = _req([{"name": "x", "profile": "1g.10gb", "count": 3}], allow_upsize=True)
    p = plan(r)
    assert validate_plan(p, r.workloads) == [] and p.objective == 1


def test_memory_need_maps_to_smallest_profile():
    r = _req([{"name": "m", "memory_gib": 15, "count": 1}, {"name": "c", "compute_slices": 2, "count": 1}])
    assert r.workloads[0].eligible["H100-80GB"][0] == 15  # 1g.20gb
    assert r.workloads[1].eligible["H100-80GB"][0] == 14  # 2g.20gb
    p = plan(r)
    assert {i.profile for g in p.gpus for i in g.instances if i.workload == "m"} == {"1g.20gb"}


def test_mixed_fleet_respects_allowed_models_and_device_filter():
    r = _req(
        [{"name": "h", "profile": "3g.40gb", "count": 2, "models": ["H100-80GB"]},
         {"name": "a", "profile": "2g.12gb", "count": 2, "models": ["A30"]}],
        fleet=[{"model": "H100-80GB", "count": 2}, {"model": "A30", "count": 2}],
    )
    p = plan(r)
    assert validate_plan(p, r.workloads) == []
    assert {g.model for g in p.gpus if any(i.workload == "h" for i in g.instances)} == {"H100-80GB"}
    cfg = to_mig_parted(p, "x")
    assert all("device-filter" in e for e in cfg["mig-configs"]["x"])


def test_bounded_fleet_serves_high_priority_first():
    r = _req(
        [{"name": "lo", "profile": "7g.80gb", "count": 2, "priority": 0},
         {"name": "hi", "profile": "7g.80gb", "count": 1, "priority": 5}],
        fleet=[{"model": "H100-80GB", "count": 2}],
    )
    p = plan(r)
    assert p.unserved == {"lo": 1}
    assert validate_plan(p, r.workloads) == []


def test_deterministic():
    w = [{"name": f"w{i}", "profile": n, "count": c}
         for i, (n, c) in enumerate([("1g.10gb", 9), ("2g.20gb", 5), ("3g.40gb", 4), ("1g.20gb", 3)])]
    a, b = plan(_req(w, seed=3)).to_dict(), plan(_req(w, seed=3)).to_dict()
    a["stats"].pop("time_s")
    b["stats"].pop("time_s")
    assert a == b


def test_plan_applies_on_the_simulator(monkeypatch, tmp_path):
    import migctl.device as api
    import migctl.sim as sim
    from migctl.catalog.model import Placement

    r = _req([{"name": "a", "profile": "3g.40gb", "count": 2}, {"name": "b", "profile": "1g.10gb", "count": 6},
              {"name": "c", "profile": "2g.20gb", "count": 2}])
    p = plan(r)
    monkeypatch.setenv("MIGCTL_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("MIGCTL_SIM_STATE", raising=False)
    n = len(p.gpus)
    try:
        sim.install(f"{n}xH100-80GB", state_path=None)
        node = api.open_node(f"{n}xH100-80GB")
        for g in p.gpus:
            gpu = node.gpu(g.index)
            gpu.set_mig_mode(True)
            for i in g.instances:
                gpu.create_gi(i.profile_id, Placement(i.start, i.size))
            got = sorted((gi.profile_id, gi.placement.start) for gi in gpu.gpu_instances())
            assert got == sorted((i.profile_id, i.start) for i in g.instances)
            assert check_gpu(load_model("H100-80GB"), got) == []
    finally:
        sim.uninstall()


def test_config_applies_with_reconciler_on_simulator(monkeypatch, tmp_path):
    import migctl.reconcile as reconcile
    import migctl.sim as sim
    r = _req([{"name": "a", "profile": "3g.40gb", "count": 3}, {"name": "b", "profile": "1g.10gb", "count": 5},
              {"name": "c", "memory_gib": 15, "count": 2}])
    p = plan(r)
    cfg = to_mig_parted(p, "planned")
    monkeypatch.setenv("MIGCTL_SIM", f"{len(p.gpus)}xH100-80GB")
    monkeypatch.setenv("MIGCTL_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("MIGCTL_SIM_STATE", str(tmp_path / "sim.json"))
    try:
        reconcile.apply_config(cfg, "planned")
        assert reconcile.assert_config(cfg, "planned") == []
        from migctl.device import open_node

        node = open_node(f"{len(p.gpus)}xH100-80GB", str(tmp_path / "sim.json"))
        for g in p.gpus:
            got = sorted((gi.profile_id, gi.placement.start) for gi in node.gpu(g.index).gpu_instances())
            assert got == sorted((i.profile_id, i.start) for i in g.instances)
    finally:
        sim.uninstall()
