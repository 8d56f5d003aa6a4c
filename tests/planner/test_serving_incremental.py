"""Serving mode (ParvaGPU data, verified from the same table) and incremental planning."""

from __future__ import annotations

from pathlib import Path

import pytest

from migctl.planner import parse_request, plan, validate_plan
from migctl.planner.serving import verify_serving

PARVA = Path(__file__).resolve().parents[1] / "fixtures" / "parvagpu"
PUBLISHED = {1: 2, 2: 3, 3: 5, 4: 7, 5: 13, 6: 16}


@pytest.mark.parametrize("slo_set", [1, 2, 6])
def test_parvagpu_sets_meet_slo_with_no_more_gpus(slo_set):
    r = parse_request({"serving": {"gpu_model": "A100-80GB", "parvagpu": {"dir": str(PARVA), "slo_set": slo_set}},
                       "options": {"time_limit_s": 10}})
    p = plan(r)
    assert verify_serving(p, r.serving) == []
    assert validate_plan(p) == []
    assert p.objective <= PUBLISHED[slo_set]
    assert p.lower_bound <= p.objective


def _live(instances_by_gpu, workloads, model="H100-80GB"):
    live = [{"index": i, "model": model, "instances": insts} for i, insts in enumerate(instances_by_gpu)]
    return parse_request({"live": live, "workloads": workloads})


def _busy_kept(req, p):
    for g in req.live:
        planned = next(x for x in p.gpus if x.index == g.index)
        got = {(i.profile_id, i.start) for i in planned.instances}
        for i in g.instances:
            if i.busy:
                assert (i.profile_id, i.start) in got


def test_reuses_idle_instance_without_touching_anything():
    req = _live([[{"profile": "3g.40gb", "start": 0, "busy": True}, {"profile": "2g.20gb", "start": 4}], []],
                [{"name": "n", "profile": "2g.20gb", "count": 1}])
    p = plan(req)
    assert p.stats["gpus_touched"] == 0 and p.stats["instances_destroyed"] == 0
    assert validate_plan(p, req.workloads) == []
    _busy_kept(req, p)


def test_destroys_idle_only_when_needed_and_never_busy():
    # GPU 0: busy 4g + idle 1g x3; new 3g needs the idle 1g's space (no other GPU)
    req = _live([[{"profile": "4g.40gb", "start": 0, "busy": True}, {"profile": "1g.10gb", "start": 4},
                  {"profile": "1g.10gb", "start": 5}, {"profile": "1g.10gb", "start": 6, "busy": True}]],
                [{"name": "n", "profile": "2g.20gb", "count": 1}])
    p = plan(req)
    assert p.stats["instances_destroyed"] == 2 and p.stats["gpus_touched"] == 1
    assert validate_plan(p, req.workloads) == []
    _busy_kept(req, p)
    assert p.unserved == {}


def test_prefers_empty_gpu_to_destroying():
    req = _live([[{"profile": "4g.40gb", "start": 0, "busy": True}, {"profile": "1g.10gb", "start": 4},
                  {"profile": "1g.10gb", "start": 5}], []],
                [{"name": "n", "profile": "3g.40gb", "count": 1}])
    p = plan(req)
    assert p.stats["instances_destroyed"] == 0 and p.stats["gpus_touched"] == 1
    assert any(i.workload == "n" for i in p.gpus[1].instances)


def test_unservable_demand_is_reported_not_forced():
    req = _live([[{"profile": "7g.80gb", "start": 0, "busy": True}]], [{"name": "n", "profile": "1g.10gb"}])
    p = plan(req)
    assert p.unserved == {"n": 1}
    _busy_kept(req, p)
