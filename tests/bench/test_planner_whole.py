"""The serving planner decides MIG or a whole GPU from the measured table (synthetic tables, exact answers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from migctl.planner import PlanError, parse_request, plan, validate_plan
from migctl.planner.output import to_mig_parted
from migctl.planner.serving import verify_serving

HEADER = "Mig instance,Batch size,Workload Number,Throughput,Latency\n"


def _table(path: Path, rows: list[tuple[object, int, int, float, float]]) -> str:
    path.write_text(HEADER + "".join(",".join(map(str, r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _request(tmp_path: Path, models: list[dict], **serving) -> object:
    return parse_request({"serving": {"gpu_model": "A100-80GB", "models": models, **serving},
                          "options": {"time_limit_s": 10}}, base_dir=tmp_path)


# A large model: 1,000/s on a whole GPU, 200 on a 4g.40gb (the seeds' example), 380 on 7g.80gb, no row fits 1g-3g.
LARGE = [(4, 8, 1, 200.0, 0.030), (7, 8, 1, 380.0, 0.020), ("whole", 8, 1, 1000.0, 0.015), (3, 8, 1, 90.0, 0.500)]
# A small model that cannot fill a big instance: the same 100/s everywhere.
SMALL = [(1, 1, 1, 100.0, 0.010), (2, 1, 1, 100.0, 0.010), (7, 1, 1, 100.0, 0.010), ("whole", 1, 1, 100.0, 0.010)]


def test_mig_loses_whole_gpus(tmp_path):
    req = _request(tmp_path, [{"name": "llm", "profile_csv": _table(tmp_path / "l.csv", LARGE), "rate": 2000,
                               "slo_ms": 100}])
    p = plan(req)
    assert p.objective == 2 and p.status == "optimal"  # MIG would need 6 GPUs (380 per GPU at best)
    assert [g.mig_enabled for g in p.gpus] == [False, False]
    assert all(g.whole["workload"] == "llm" and g.whole["detail"]["throughput"] == 1000.0 for g in p.gpus)
    assert verify_serving(p, req.serving) == [] and validate_plan(p) == []
    cfg = to_mig_parted(p)
    assert cfg["mig-configs"]["migctl-plan"] == [{"devices": [0, 1], "mig-enabled": False}]
    e = p.explain[0]
    opts = {o["size"]: o for o in e["options"]}
    assert opts["3g.40gb"]["admissible_rows"] == 0 and opts["3g.40gb"]["rows"] == 1  # 500 ms > 0.45 x 100 ms
    assert opts["whole"]["throughput_per_slice"] == pytest.approx(1000 / 7, abs=1e-3)
    assert opts["4g.40gb"]["throughput_per_slice"] == 50.0
    assert opts["whole"]["slo_margin_pct"] == pytest.approx(100 * (1 - 15 / 45), abs=0.1)
    assert e["assigned"] == {"whole": 2} and e["throughput"] == 2000.0
    assert "MIG loses" in e["why"]


def test_mig_wins_when_the_slices_serve_more(tmp_path):
    req = _request(tmp_path, [{"name": "bert", "profile_csv": _table(tmp_path / "s.csv", SMALL), "rate": 700,
                               "slo_ms": 100}])
    p = plan(req)
    assert p.objective == 1 and [g.mig_enabled for g in p.gpus] == [True]  # 7 x 1g.10gb = 700 vs 7 whole GPUs
    assert sorted(i.profile for i in p.gpus[0].instances) == ["1g.10gb"] * 7
    assert verify_serving(p, req.serving) == [] and validate_plan(p) == []
    assert "MIG wins" in p.explain[0]["why"]


def test_a_mixed_fleet_keeps_some_gpus_whole(tmp_path):
    req = _request(tmp_path, [
        {"name": "llm", "profile_csv": _table(tmp_path / "l.csv", LARGE), "rate": 1000, "slo_ms": 100},
        {"name": "bert", "profile_csv": _table(tmp_path / "s.csv", SMALL), "rate": 1300, "slo_ms": 100},
    ])
    p = plan(req)
    assert p.objective == 3
    assert sorted(g.mig_enabled for g in p.gpus) == [False, True, True]
    assert verify_serving(p, req.serving) == [] and validate_plan(p) == []
    entries = to_mig_parted(p)["mig-configs"]["migctl-plan"]
    assert {"devices": [2], "mig-enabled": False} in entries
    assert p.to_dict()["gpus"][2]["mig_enabled"] is False and p.gpu_count == 3


def test_whole_gpu_can_be_forbidden_and_is_then_never_planned(tmp_path):
    req = _request(tmp_path, [{"name": "llm", "profile_csv": _table(tmp_path / "l.csv", LARGE), "rate": 2000,
                               "slo_ms": 100}], whole_gpu=False)
    p = plan(req)
    assert p.objective == 6 and all(g.mig_enabled for g in p.gpus)
    assert verify_serving(p, req.serving) == []
    assert "not allowed" in p.explain[0]["why"]


def test_tables_without_whole_rows_plan_as_before(tmp_path):
    rows = [r for r in SMALL if r[0] != "whole"]
    req = _request(tmp_path, [{"name": "bert", "profile_csv": _table(tmp_path / "s.csv", rows), "rate": 700,
                               "slo_ms": 100}])
    p = plan(req)
    assert p.objective == 1 and p.stats["whole_gpu_candidate"] is False


def test_the_verifier_catches_a_whole_gpu_that_does_not_serve(tmp_path):
    req = _request(tmp_path, [{"name": "llm", "profile_csv": _table(tmp_path / "l.csv", LARGE), "rate": 2000,
                               "slo_ms": 100}])
    p = plan(req)
    p.gpus.pop()
    assert verify_serving(p, req.serving) == ["llm: throughput 1000.000 < rate 2000"]
    p.gpus[0].whole["detail"]["batch"] = 99
    assert "config not found" in verify_serving(p, req.serving)[0]


@pytest.mark.parametrize("value", ["0", "big", "\u0661"])
def test_bad_mig_instance_values_are_errors(tmp_path, value):
    t = _table(tmp_path / "bad.csv", [(value, 1, 1, 1.0, 0.01)])
    with pytest.raises(PlanError, match=r"bad.csv:2: Mig instance must be a number of compute slices >= 1 or "
                                        rf"'whole', not '{value}'"):
        _request(tmp_path, [{"name": "x", "profile_csv": t, "rate": 1, "slo_ms": 10}])
    with pytest.raises(PlanError, match="whole_gpu must be true or false"):
        _request(tmp_path, [{"name": "x", "profile_csv": t, "rate": 1, "slo_ms": 10}], whole_gpu="yes")


_OK = {"name": "x", "rate": 1, "slo_ms": 100}


@pytest.mark.parametrize("serving, why", [
    ({"latency_factor": "abc"}, r"serving.latency_factor must be a number > 0 and at most 1, not 'abc'"),
    ({"latency_factor": float("inf")}, r"serving.latency_factor must be a number > 0 and at most 1, not inf"),
    ({"models": [dict(_OK, rate="abc")]}, r"serving.models\[0\].rate must be a number > 0 and at most 1e\+09"),
    ({"models": [dict(_OK, rate=float("inf"))]}, r"rate must be a number > 0 .*, not inf"),
    ({"models": [dict(_OK, rate=float("nan"))]}, r"rate must be a number > 0 .*, not nan"),
    ({"models": [dict(_OK, rate=-5)]}, r"rate must be a number > 0 .*, not -5"),
    ({"models": [dict(_OK, rate="46")]}, r"rate must be a number > 0 .*, not '46'"),
    ({"models": [dict(_OK, slo_ms=float("nan"))]}, r"slo_ms must be a number > 0"),
    ({"models": [1]}, r"serving.models\[0\]: each model is a mapping with exactly name, profile_csv, rate and slo_ms"),
    ({"models": {"a": 1}}, r"serving.models must be a list"),
    ({"parvagpu": [1]}, r"serving.parvagpu must be a mapping with dir"),
    ({"parvagpu": {"dir": ".", "slo_set": "abc"}}, r"serving.parvagpu.slo_set must be an integer from 1 to 1000"),
    ({"gpu_model": ["x"]}, r"serving.gpu_model must be a GPU model's name"),
], ids=["factor-text", "factor-inf", "rate-text", "rate-inf", "rate-nan", "rate-negative", "rate-quoted", "slo-nan",
        "model-not-mapping", "models-mapping", "parvagpu-list", "slo-set-text", "gpu-model-list"])
def test_the_serving_section_is_checked_field_by_field(tmp_path, serving, why):
    """Tracebacks before: ValueError (a latency_factor, rate or slo_set that is not a number), OverflowError
    (rate .inf), ValueError (rate .nan), TypeError or AttributeError (a model or parvagpu of another shape).
    Planned before: a negative rate (a model served by nothing), a latency_factor of .inf, a rate of "46"."""
    t = _table(tmp_path / "t.csv", SMALL)
    models = [dict(m, profile_csv=t) if isinstance(m, dict) else m for m in serving.pop("models", [_OK])] \
        if isinstance(serving.get("models", []), list) else serving.pop("models")
    with pytest.raises(PlanError, match=why):
        _request(tmp_path, models, **serving)


@pytest.mark.parametrize("row, why", [
    (("1", 1, 1, "inf", 0.01), r"t.csv:2: Throughput must be a number >= 0 and at most 1e\+09, not 'inf'"),
    (("1", 1, 1, 74.0, "nan"), r"t.csv:2: Latency must be a number >= 0 and at most 1e\+06, not 'nan'"),
    (("1", "1_0", 1, 74.0, 0.01), r"t.csv:2: Batch size must be an integer from 1 to 1000000, not '1_0'"),
    (("1", 1, 100000, 74.0, 0.01), r"t.csv:2: Workload Number must be an integer from 1 to 1000, not '100000'"),
    (("1", 1, 1, -3, 0.01), r"t.csv:2: Throughput must be a number >= 0"),
])
def test_profile_table_numbers_are_checked(tmp_path, row, why):
    t = _table(tmp_path / "t.csv", [row])
    with pytest.raises(PlanError, match=why):
        _request(tmp_path, [dict(_OK, profile_csv=t)])


def test_rates_past_a_fleet_are_refused_at_once(tmp_path):
    """A rate of 10^9 req/s ran for minutes (the plan's GPUs are built one by one); now the LP bound says
    first that no plan can be that large."""
    t = _table(tmp_path / "t.csv", SMALL)
    with pytest.raises(PlanError, match=r"serving: the rates need at least 1428572 GPUs; a serving plan has at "
                                        r"most 100000 \(valid: lower rates\)"):
        plan(_request(tmp_path, [dict(_OK, profile_csv=t, rate=1e9)]))
