"""Bad input gets one clear line (PlanError in Python, exit 2 on the CLI), never a traceback."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from migctl.cli.plan import register
from migctl.planner import PlanError, load_request, parse_request


def _req(workloads, fleet=None):
    return parse_request({"fleet": fleet or [{"model": "H100-80GB"}], "workloads": workloads})


def test_unknown_profile_names_valid_ones():
    with pytest.raises(PlanError, match=r"unknown profile '9g.90gb'.*valid profiles.*3g.40gb"):
        _req([{"name": "x", "profile": "9g.90gb"}])


def test_need_larger_than_any_gpu():
    with pytest.raises(PlanError, match=r"needs 100 GiB, more than any instance offers"):
        _req([{"name": "x", "memory_gib": 100}])
    with pytest.raises(PlanError, match=r"needs 8 compute slices"):
        _req([{"name": "x", "compute_slices": 8}])


def test_unknown_model_and_fields():
    with pytest.raises(PlanError, match="unknown GPU model 'H999'; valid models"):
        _req([{"name": "x", "memory_gib": 1}], fleet=[{"model": "H999"}])
    with pytest.raises(PlanError, match="Extra inputs"):
        _req([{"name": "x", "memory_gib": 1, "colour": "red"}])
    with pytest.raises(PlanError, match="either a profile or memory"):
        _req([{"name": "x", "memory_gib": 1, "profile": "1g.10gb"}])
    with pytest.raises(PlanError, match="no fleet"):
        parse_request({"workloads": [{"name": "x", "profile": "1g.10gb"}]})


def test_bad_yaml_and_missing_file(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("fleet: [\n")
    with pytest.raises(PlanError, match="invalid YAML"):
        load_request(f)
    with pytest.raises(PlanError, match="no such file"):
        load_request(tmp_path / "missing.yaml")


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.command()
    def other() -> None:  # a second command keeps typer's subcommand mode
        pass

    return app


def test_cli_error_exit_2_one_line(tmp_path, capsys):
    from migctl.cli.main import main

    f = tmp_path / "bad.yaml"
    f.write_text("fleet: [{model: H100-80GB}]\nworkloads: [{name: x, profile: 9g.90gb}]\n")
    capsys.readouterr()
    assert main(["plan", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("migctl: error: ") and len(err.strip().splitlines()) == 1, err
    assert "unknown profile" in err


def test_cli_json_and_config(tmp_path):
    import json

    import yaml

    f = tmp_path / "ok.yaml"
    f.write_text("fleet: [{model: H100-80GB}]\nworkloads: [{name: x, profile: 3g.40gb, count: 3}]\n")
    cfg = tmp_path / "cfg.yaml"
    res = CliRunner().invoke(_app(), ["plan", str(f), "--json", "--config-out", str(cfg), "--label", "L"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["objective"]["value"] == 2 and data["lower_bound"] == 2
    c = yaml.safe_load(cfg.read_text())
    assert c["version"] == "v1"
    entries = c["mig-configs"]["L"]
    assert sum(len(e["devices"]) for e in entries) == 2
    for e in entries:
        assert e["mig-enabled"] is True
        for prof, n in e["mig-devices"].items():
            assert len(e["placements"][prof]) == n


def test_csv_workloads(tmp_path):
    (tmp_path / "w.csv").write_text("name,profile,memory_gib,count,models\na,1g.10gb,,4,H100-80GB\nb,,30,2,\n")
    f = tmp_path / "r.yaml"
    f.write_text("fleet: [{model: H100-80GB}]\nworkloads_csv: w.csv\n")
    r = load_request(f)
    assert [w.count for w in r.workloads] == [4, 2]
    assert r.workloads[1].eligible["H100-80GB"][0] == 9  # 30 GiB -> 3g.40gb


@pytest.mark.parametrize("data, why", [
    ({"fleet": {"H100-80GB": 2}, "workloads": [{"name": "x", "memory_gib": float("inf")}]},
     r"workloads.0.memory_gib: Input should be less than or equal to 1000000"),
    ({"fleet": {"H100-80GB": 2}, "workloads": [{"name": "x", "memory_gib": 1e308}]},
     r"workloads.0.memory_gib: Input should be less than or equal to 1000000"),
    ({"fleet": {"H100-80GB": 2}, "workloads": [{"name": "x", "profile": "1g.10gb", "priority": 10**30}]},
     r"workloads.0.priority: Input should be less than or equal to 1000000"),
    ({"fleet": {"H100-80GB": -1}, "workloads": [{"name": "x", "profile": "1g.10gb"}]},
     r"fleet.H100-80GB: count must be 0 to 1000000 GPUs$"),
    ({"fleet": {"H100-80GB": 10**21}, "workloads": [{"name": "x", "profile": "1g.10gb"}]},
     r"fleet.H100-80GB: count must be 0 to 1000000 GPUs$"),
    ({"fleet": [{"model": "H100-80GB", "count": 2, "cost": 10**23}], "workloads": [{"name": "x", "profile": "1g.10gb"}]},
     r"cost: Input should be less than or equal to 1000000"),
    ({"fleet": {"H100-80GB": 2}, "workloads": [{"name": "x", "profile": "1g.10gb"}], "options": {"seed": 10**20}},
     r"options.seed: Input should be less than or equal to 2147483647"),
    ({"live": [{"index": 10**21, "model": "H100-80GB"}], "workloads": [{"name": "x", "profile": "1g.10gb"}]},
     r"live.0.index: Input should be less than or equal to 9999"),
], ids=["inf-memory", "huge-memory", "huge-priority", "negative-count-mapping", "huge-count-mapping", "huge-cost",
        "huge-seed", "huge-live-index"])
def test_numbers_past_what_the_solver_takes_are_one_line(data, why):
    """Each was a traceback from `migctl plan`: OverflowError (memory_gib .inf or 1e308), TypeError from CP-SAT
    (priority 10^30, cost 10^23: float coefficients), its argument errors (count 10^21, seed 10^20), or a
    pydantic ValidationError (any count the mapping form of `fleet` refused, -1 included); a live GPU index
    of 10^21 was planned and printed."""
    with pytest.raises(PlanError, match=why):
        parse_request(data)


def test_an_objective_past_64_bits_is_one_line():
    """Each bound alone is within range, but they multiply: every GPU's cost times the count, times each
    workload's priority, must stay within CP-SAT's 64-bit objective."""
    from migctl.planner import plan

    req = parse_request({"fleet": [{"model": "H100-80GB", "count": 1_000_000, "cost": 1_000_000}],
                         "workloads": [{"name": "x", "profile": "1g.10gb", "priority": 1_000_000, "count": 7}]})
    with pytest.raises(PlanError, match=r"multiply past what the solver takes .* valid: smaller costs, counts or"):
        plan(req)


@pytest.mark.parametrize("cell", ["count=1_0", "count=\u0661", "compute_slices=\u0661", "memory_gib=1_0.5",
                                  "memory_gib=\u0661"])
def test_csv_numbers_are_ascii(tmp_path, cell):
    """int() and float() read '1_0' as 10 and Arabic-Indic digits as theirs; a CSV cell is what it looks like."""
    key, value = cell.split("=")
    (tmp_path / "w.csv").write_text(f"name,{key}\nx,{value}\n", encoding="utf-8")
    (tmp_path / "r.yaml").write_text("fleet: {H100-80GB: 2}\nworkloads_csv: w.csv\n")
    with pytest.raises(PlanError, match=rf"w.csv:2: {key} must be an? (integer|number), not"):
        load_request(tmp_path / "r.yaml")
