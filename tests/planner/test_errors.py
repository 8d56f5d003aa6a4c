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
