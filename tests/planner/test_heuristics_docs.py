"""Baselines produce valid packings no better than the exact plan; the documented example plans."""

from __future__ import annotations

import random
import re
from pathlib import Path

import yaml

from migctl.planner import parse_request, plan, validate_plan
from migctl.planner.heuristics import OnlineCluster, balanced, best_fit, first_fit
from migctl.planner.solver import build_problem, gpus_to_plan

DOCS = Path(__file__).resolve().parents[2] / "docs" / "planner.md"


def _random_request(seed: int):
    rng = random.Random(seed)
    profs = ["1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb"]
    return parse_request({
        "fleet": [{"model": "H100-80GB"}],
        "workloads": [{"name": f"w{i}", "profile": rng.choice(profs), "count": rng.randint(1, 12)} for i in range(6)],
    })


def test_baselines_valid_and_not_better_than_exact():
    for seed in range(5):
        r = _random_request(seed)
        exact = plan(r)
        prob = build_problem(r.workloads, r)
        for gpus, unserved in (first_fit(prob.classes, prob.spaces), best_fit(prob.classes, prob.spaces)):
            planned, missing = gpus_to_plan(prob, gpus, unserved)
            assert not missing
            from migctl.planner.core import Plan

            p = Plan(gpus=planned, objective=len(planned), lower_bound=0, status="heuristic")
            assert validate_plan(p, r.workloads) == []
            assert len(planned) >= exact.objective >= exact.lower_bound
        bal = balanced(prob.classes, prob.spaces[0], prob.maximal["H100-80GB"])
        if bal is not None:
            assert len(bal[0]) >= exact.objective


def test_online_policies_never_overlap():
    from migctl.catalog import load_model

    m = load_model("H100-80GB")
    rng = random.Random(1)
    ids = [19, 15, 14, 9, 5]
    for pol in ("first", "best", "ours"):
        cl = OnlineCluster(m, 5, pol, weights={i: 1.0 for i in ids})
        for _ in range(60):
            cl.place(rng.choice(ids))
        for state in cl.states:
            from migctl.planner.validate import check_gpu

            assert check_gpu(m, list(state)) == []
        assert 0 < cl.allocation <= 1


def test_medium_instance_is_fast_and_tight():
    rng = random.Random(5)
    profs = ["1g.10gb", "2g.20gb", "3g.40gb", "1g.20gb", "7g.80gb"]
    r = parse_request({"fleet": [{"model": "A100-80GB"}, {"model": "H100-80GB"}],
                       "workloads": [{"name": f"w{i}", "profile": rng.choice(profs), "count": rng.randint(5, 40)}
                                     for i in range(15)],
                       "options": {"time_limit_s": 5}})
    p = plan(r)
    assert validate_plan(p, r.workloads) == []
    assert p.gap <= 0.02
    assert p.stats["time_s"]["total"] < 10


def test_docs_example_plans():
    text = DOCS.read_text()
    block = re.search(r"```yaml\n(fleet:.*?)```", text, re.S)
    assert block is not None
    data = yaml.safe_load(block.group(1))
    data.pop("workloads_csv", None)
    r = parse_request(data)
    p = plan(r)
    assert validate_plan(p, r.workloads) == [] and p.unserved == {}
