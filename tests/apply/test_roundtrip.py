"""assert / export / checkpoint / restore / generate-config / k8s export, and fuzzed configs via the CLI."""

from __future__ import annotations

import json

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from migctl.catalog import load_model
from migctl.config import load_config
from migctl.reconcile import apply_config, apply_desired, assert_config
from migctl.reconcile.live import read_node
from migctl.reconcile.roundtrip import checkpoint, export_config, generate_config, restore_resolver

from .helpers import COMPAT, layouts

DEFAULT = COMPAT / "deployments_systemd_config-default.yaml"


def test_export_reapplies_to_the_same_layout_and_merges_identical_gpus(mknode) -> None:
    node, _ = mknode("2xH100-80GB,1xA30")
    apply_config(COMPAT / "gpu-operator_default-mig-parted-config.yaml", "all-balanced", node=node)
    data = export_config(read_node(node), "current")
    entries = data["mig-configs"]["current"]
    assert len(entries) == 2 and entries[0]["devices"] == [0, 1] and "device-filter" in entries[0]
    assert load_config(data).labels == ["current"]
    assert assert_config(data, "current", node=node) == []
    node2, _ = mknode("3xH100-80GB")
    apply_config(DEFAULT, "all-1g.20gb", node=node2)
    assert export_config(read_node(node2))["mig-configs"]["current"] == [
        {"devices": "all", "mig-enabled": True, "mig-devices": {"1g.20gb": 4}}]


def test_assert_reports_readable_diff(mknode) -> None:
    node, _ = mknode("1xH100-80GB")
    apply_config(DEFAULT, "all-balanced", node=node)
    diff = assert_config(DEFAULT, "all-7g.80gb", node=node)
    assert diff == ["GPU 0: have 2g.20gb@0, 1g.10gb@2, 1g.10gb@3, 3g.40gb@4; want 7g.80gb"]


def test_checkpoint_restore_preserves_placements(mknode) -> None:
    node, _ = mknode("2xH100-80GB")
    apply_config({"version": "v1", "mig-configs": {"x": [{"devices": "all", "mig-enabled": True,
                  "mig-devices": {"1g.10gb": 2, "1c.3g.40gb": 1},
                  "placements": {"1g.10gb": [5, 6], "1c.3g.40gb": [0]}}]}}, "x", node=node)
    saved = checkpoint(node)
    before = layouts(node)
    apply_config(DEFAULT, "all-disabled", node=node)
    apply_desired(restore_resolver(saved), "checkpoint", node=node)
    assert layouts(node) == before


def test_generate_config_matches_mig_parted_defaults() -> None:
    ours = generate_config([load_model("H100-80GB")])["mig-configs"]
    theirs = yaml.safe_load(DEFAULT.read_text())["mig-configs"]
    for label in ("all-1g.10gb.me", "all-1g.20gb", "all-2g.20gb", "all-3g.40gb", "all-4g.40gb", "all-7g.80gb"):
        assert ours[label][0]["mig-devices"] == theirs[label][0]["mig-devices"], label
    h100 = next(e for e in theirs["all-balanced"] if "0x233010DE" in e.get("device-filter", []))
    assert ours["all-balanced"][0]["mig-devices"] == h100["mig-devices"]
    a30 = generate_config([load_model("A30")])["mig-configs"]
    assert a30["all-balanced"][0]["mig-devices"] == {"1g.6gb": 2, "2g.12gb": 1}
    mixed = generate_config([load_model("A100-40GB"), load_model("H100-80GB")])
    assert load_config(mixed) and mixed["mig-configs"]["all-1g.10gb"][0]["mig-devices"] == {"1g.10gb": 4}


def test_cli_apply_assert_export_checkpoint_restore_k8s(tmp_path, monkeypatch) -> None:
    from migctl.cli.main import app

    monkeypatch.setenv("MIGCTL_SIM", "2xH100-80GB")
    monkeypatch.setenv("MIGCTL_SIM_STATE", str(tmp_path / "sim.json"))
    run = CliRunner().invoke
    r = run(app, ["apply", "-f", str(DEFAULT), "-c", "all-balanced", "--dry-run"])
    assert r.exit_code == 0 and "Plan for config 'all-balanced'" in r.output and "dry run" in r.output
    r = run(app, ["apply", "-f", str(DEFAULT), "-c", "all-balanced"])
    assert r.exit_code == 0 and "applied config" in r.output
    assert run(app, ["assert", "-f", str(DEFAULT), "-c", "all-balanced"]).exit_code == 0
    r = run(app, ["export"])
    assert "1g.10gb: 2" in r.output and "devices: all" in r.output
    ck = tmp_path / "ck.json"
    assert run(app, ["checkpoint", "-f", str(ck)]).exit_code == 0
    assert run(app, ["apply", "-f", str(DEFAULT), "-c", "all-7g.80gb", "-q"]).exit_code == 0
    assert run(app, ["restore", "-f", str(ck), "-q"]).exit_code == 0
    assert run(app, ["assert", "-f", str(DEFAULT), "-c", "all-balanced"]).exit_code == 0
    r = run(app, ["k8s", "export", "--node", "n1", "-o", "json"])
    data = json.loads(r.output)
    assert data["label"]["command"] == "kubectl label node n1 nvidia.com/mig.config=current --overwrite"
    assert data["mixed_resources"] == {"nvidia.com/mig-1g.10gb": 4, "nvidia.com/mig-2g.20gb": 2,
                                       "nvidia.com/mig-3g.40gb": 2}
    cm = yaml.safe_load(run(app, ["k8s", "export", "-f", str(DEFAULT), "-c", "all-3g.40gb"]).output.split("---\n")[1])
    assert cm["kind"] == "ConfigMap" and load_config(yaml.safe_load(cm["data"]["config.yaml"])).labels


def test_cli_exit_codes_via_main(tmp_path, monkeypatch, capsys) -> None:
    from migctl.cli.main import main

    monkeypatch.setenv("MIGCTL_SIM", "1xH100-80GB")
    monkeypatch.setenv("MIGCTL_SIM_STATE", str(tmp_path / "sim.json"))
    assert main(["assert", "-f", str(DEFAULT), "-c", "all-balanced"]) == 1
    assert "Assertion failure" in capsys.readouterr().err
    assert main(["validate", "-f", str(DEFAULT)]) == 0
    assert main(["apply", "-f", str(DEFAULT), "-c", "nope"]) == 2
    assert "no config labelled 'nope' (valid: all-disabled, all-enabled" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ fuzz
_keys = st.sampled_from(["version", "mig-configs", "devices", "device-filter", "mig-enabled", "mig-devices",
                         "placements", "1g.10gb", "3g.40gb", "1c.3g.40gb", "x", "all", "7g.80gb+me"])
_scalars = st.one_of(st.integers(-3, 12), st.booleans(), st.none(), st.sampled_from(["all", "v1", "0x233010DE", ""]))
_tree = st.recursive(_scalars, lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(_keys, c, max_size=4)),
                     max_leaves=12)
_doc = st.one_of(
    _tree,
    st.builds(lambda e: {"version": "v1", "mig-configs": {"x": e}}, _tree),
    st.builds(lambda e: {"version": "v1", "mig-configs": {"x": [e]}}, st.dictionaries(_keys, _tree, max_size=5)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=_doc, raw=st.text(max_size=60))
def test_fuzzed_yaml_gives_clear_error_exit_2_state_unchanged(tmp_path, monkeypatch, doc, raw) -> None:
    from migctl.cli.main import main

    monkeypatch.setenv("MIGCTL_SIM", "1xH100-80GB")
    monkeypatch.setenv("MIGCTL_SIM_STATE", str(tmp_path / "fuzz.json"))
    from migctl.device import open_node

    node = open_node()
    before = layouts(node)
    for text in (yaml.safe_dump(doc), raw):
        p = tmp_path / "fuzz.yaml"
        p.write_text(text)
        try:
            cfg = load_config(p)
            ok = "x" in cfg.labels
        except Exception as e:  # must be our one-line ConfigError, never a crash
            from migctl.config import ConfigError

            assert isinstance(e, ConfigError), repr(e)
            assert str(e).startswith(str(p)) and "\n" not in str(e)
            ok = False
        if ok:
            continue  # a valid config (rare): nothing to check here
        rc = main(["apply", "-f", str(p), "-c", "x", "-q"])
        assert rc == 2
        assert layouts(node) == before
