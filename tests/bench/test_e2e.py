"""The example end to end on a simulated 4 x A100-80GB node: migctl bench -> migctl plan -> migctl apply ->
migctl run, with the CPU workload shipped in examples/ (its throughput follows the instance it gets)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from migctl.planner import load_request, validate_plan
from migctl.planner import plan as make_plan
from migctl.planner.serving import verify_serving

WORKLOAD = Path(__file__).resolve().parents[2] / "examples" / "bench_workload.py"


def _table(path):
    with path.open() as f:
        return {(r["Mig instance"], r["Batch size"]): float(r["Throughput"]) for r in csv.DictReader(f)}


def test_bench_plan_apply_run(a100x4, tmp_path):
    sim = a100x4
    work = [sys.executable, str(WORKLOAD), "--batches", "3"]
    large, small = tmp_path / "large.csv", tmp_path / "small.csv"
    # a large model: 30 GiB (does not fit 1g.10gb), keeps every SM busy -> the whole GPU's extra SMs count
    r = sim.migctl("bench", "--profiles", "1g.10gb,3g.40gb,7g.80gb,whole", "--batch", "4", "--repeat", "3",
                   "-o", str(large), "--json-out", str(tmp_path / "large.json"), "--",
                   *work, "--item-ms", "60", "--overhead-ms", "3", "--model-gib", "30", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "CUDA out of memory" in r.stdout  # the 1g.10gb row failed and says why
    t = _table(large)
    assert set(t) == {("3", "4"), ("7", "4"), ("whole", "4")}
    assert t[("whole", "4")] > t[("7", "4")] > t[("3", "4")]  # 108 SMs > 98 > 42 (catalog)
    js = json.loads((tmp_path / "large.json").read_text())
    assert js["restored"] and len(js["runs"]) == 3 * 4 + 1  # the failed 1g.10gb stops after its warm-up
    # a small model: uses 4 SMs of any instance -> a 1g.10gb serves as much as a whole GPU
    r = sim.migctl("bench", "--profiles", "1g.10gb,whole", "--repeat", "2", "-o", str(small), "--",
                   *work, "--sms-per-item", "4", "--item-ms", "20", timeout=300)
    assert r.returncode == 0, r.stderr
    s = _table(small)
    assert abs(s[("1", "1")] / s[("whole", "1")] - 1) < 0.25
    assert sim.layout(0) == {"mig": True, "gis": []}

    # halfway between what one whole GPU + one 7g.80gb serve and what two whole GPUs serve: two whole GPUs
    # are enough, any two GPUs with a MIG layout fall short (the only measured fact needed: whole > 7g.80gb,
    # asserted above); five 1g.10gb serve 4.9 x one of them
    tw, t7 = t[("whole", "4")], t[("7", "4")]
    large_rate = round(1.5 * tw + 0.5 * t7, 3)
    (tmp_path / "serving.yaml").write_text(
        "serving:\n  gpu_model: A100-80GB\n  models:\n"
        f"    - {{name: llm, profile_csv: large.csv, rate: {large_rate}, slo_ms: 400}}\n"
        f"    - {{name: bert, profile_csv: small.csv, rate: {round(4.9 * s[('1', '1')], 1)}, slo_ms: 400}}\n")
    cfg = tmp_path / "plan.yaml"
    r = sim.migctl("plan", str(tmp_path / "serving.yaml"), "--config-out", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    whole = [g for g in out["gpus"] if g.get("mig_enabled") is False]
    mig = [g for g in out["gpus"] if g.get("mig_enabled", True)]
    assert len(whole) == 2 and all(g["whole"]["workload"] == "llm" for g in whole)
    assert len(mig) == 1 and [i["profile"] for i in mig[0]["instances"]] == ["1g.10gb"] * 5
    assert {e["model"] for e in out["explain"]} == {"llm", "bert"}
    req = load_request(tmp_path / "serving.yaml")
    again = make_plan(req)
    assert verify_serving(again, req.serving) == [] and validate_plan(again) == []

    r = sim.migctl("apply", "-f", str(cfg), "-c", "migctl-plan", "-q")
    assert r.returncode == 0, r.stderr
    assert sim.migctl("assert", "-f", str(cfg), "-c", "migctl-plan").returncode == 0
    assert [sim.layout(g["index"])["mig"] for g in whole] == [False, False]

    r = sim.migctl("run", "-v", "--profile", "1g.10gb", "--", *work, "--sms-per-item", "4")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    assert rep["unit"] == "items/s" and rep["throughput"] > 0  # sized from MIGCTL_MIG_PROFILE=1g.10gb
