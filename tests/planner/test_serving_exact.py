"""Serving mode is exact on the data as written: no rounding makes a "proven" bound exceed the optimum."""

from __future__ import annotations

from pathlib import Path

import pytest

from migctl.planner import PlanError, parse_request, plan
from migctl.planner.serving import verify_serving

HEADER = "Mig instance,Batch size,Workload Number,Throughput,Latency\n"


def _request(tmp_path: Path, rows: str, rate: float) -> object:
    csv = tmp_path / "m.csv"
    csv.write_text(HEADER + rows)
    return parse_request({"serving": {"gpu_model": "A100-80GB", "models": [
        {"name": "m", "profile_csv": str(csv), "rate": rate, "slo_ms": 1000}]}, "options": {"time_limit_s": 10}})


def test_a_throughput_with_four_decimals_is_not_rounded_away(tmp_path: Path) -> None:
    # 3 x 3.3335 = 10.0005 >= 10: three 7g instances suffice; rounding to 3.333 needed 4 and called it optimal
    r = _request(tmp_path, "7,1,1,3.3335,0.010\n", 10)
    p = plan(r)
    assert p.objective == 3 and p.lower_bound == 3 and p.status == "optimal"
    assert verify_serving(p, r.serving) == []


def test_bounds_never_exceed_the_plan_with_inexact_data(tmp_path: Path) -> None:
    # more decimals than the exact model takes: a conservative plan, a bound that relaxes the real problem
    r = _request(tmp_path, "7,1,1,3.33333333333,0.010\n", 10)
    p = plan(r)
    assert p.lower_bound <= p.objective and verify_serving(p, r.serving) == []


def test_a_tiny_throughput_is_an_error_not_a_crash(tmp_path: Path) -> None:
    r = _request(tmp_path, "7,1,1,0.0000001,0.010\n", 10)
    with pytest.raises(PlanError, match="below"):
        plan(r)


def test_integer_slo_reading_is_an_option_and_reported() -> None:
    parva = Path(__file__).resolve().parents[1] / "fixtures" / "parvagpu"
    specs = {}
    for reading in ("exact", "integer"):
        r = parse_request({"serving": {"gpu_model": "A100-80GB", "slo_reading": reading,
                                       "parvagpu": {"dir": str(parva), "slo_set": 5}}})
        specs[reading] = {m.name: m.slo_ms for m in r.serving.models}
    assert specs["exact"]["resnet50"] == 71.5 and specs["integer"]["resnet50"] == 71.0
    with pytest.raises(PlanError, match="valid: exact, or integer"):
        parse_request({"serving": {"slo_reading": "round", "parvagpu": {"dir": str(parva), "slo_set": 1}}})


def test_the_plan_reports_its_slo_reading(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text(HEADER + "7,1,1,5,0.0315\n")  # 31.5 ms: admissible under 0.45 x 71 = 31.95 and 0.45 x 71.5
    for reading in ("exact", "integer"):
        r = parse_request({"serving": {"gpu_model": "A100-80GB", "slo_reading": reading, "models": [
            {"name": "m", "profile_csv": str(csv), "rate": 10, "slo_ms": 71.5}]}})
        p = plan(r)
        assert p.stats["slo_reading"] == reading and p.objective == 2


def test_incremental_planning_stops_on_work_not_on_the_clock() -> None:
    import random

    rng = random.Random(1)
    lay = [["3g.40gb", 0], ["2g.20gb", 4], ["1g.10gb", 6]]
    live = [{"index": i, "model": "H100-80GB", "instances": [
        {"profile": p, "start": s, "busy": rng.random() < 0.5} for p, s in lay if rng.random() < 0.7]
        if rng.random() < 0.6 else []} for i in range(200)]
    wl = [{"name": "a", "profile": "1g.10gb", "count": 300}, {"name": "b", "profile": "3g.40gb", "count": 80},
          {"name": "c", "profile": "2g.20gb", "count": 100}]
    runs = []
    for _ in range(2):
        p = plan(parse_request({"live": live, "workloads": wl, "options": {"work_limit": 0.05, "time_limit_s": 60}}))
        runs.append((p.status, p.objective, p.lower_bound, p.stats["stopped_by"], p.stats["work"],
                     [[(i.profile, i.start) for i in g.instances] for g in p.gpus]))
    assert runs[0] == runs[1]
    assert runs[0][3] in ("optimal", "work")  # never the clock on a 60 s safety net
