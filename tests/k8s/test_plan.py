"""`migctl k8s plan`: nodes' layouts from the API (the agent's annotation), migctl's incremental planner,
one config per changed node in the ConfigMap, labels set on changed nodes only; --dry-run writes nothing."""

from __future__ import annotations

import json

import pytest
import yaml
from tests.k8s.cluster import CM, CONFIG, NS, add_node, labels

A, B = "node-a", "node-b"


def _sim(tmp_path, name: str):
    from migctl.device import open_node

    return open_node("2xH100-80GB", str(tmp_path / f"{name}.json"))


def _annotate(server, tmp_path, name: str) -> None:
    from migctl.integrations.k8s_plan import LAYOUT_ANNOTATION, layout_annotation
    from migctl.reconcile.live import read_node

    o = server.get("nodes", name)
    o["metadata"].setdefault("annotations", {})[LAYOUT_ANNOTATION] = layout_annotation(read_node(_sim(tmp_path, name)))
    server.put("nodes", o)


def _run(server, tmp_path, *args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from migctl.cli.main import app

    kc = server.kubeconfig(tmp_path / "kc")
    req = tmp_path / "req.yaml"
    req.write_text(yaml.safe_dump({"workloads": [{"name": "llm", "profile": "3g.40gb", "count": 3},
                                                 {"name": "nb", "profile": "1g.10gb", "count": 4}],
                                   "options": {"time_limit_s": 10}}))
    r = CliRunner().invoke(app, ["k8s", "plan", str(req), "--kubeconfig", str(kc), "-n", NS, "--configmap", CM, *args])
    return r.exit_code, r.output


def test_k8s_plan_writes_one_config_per_changed_node(server, tmp_path, client) -> None:
    import migctl.sim as sim
    from migctl.reconcile import apply_config
    from migctl.reconcile.live import read_node

    # node-a: all-balanced with its first 3g.40gb busy; node-b: MIG disabled; node-c: no agent (no annotation)
    cfg = {"version": "v1", "mig-configs": {"bal": [{"devices": "all", "mig-enabled": True,
                                                     "mig-devices": {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1}}]}}
    node_a = _sim(tmp_path, A)
    apply_config(cfg, "bal", node=node_a)
    gi = next(g for g in node_a.gpu(0).gpu_instances() if g.profile().name == "3g.40gb")
    busy_uuid = next(d.uuid for d in node_a.gpu(0).mig_devices() if d.gi_id == gi.id)
    p = client(120)
    assert sim.active().add_client(0, p.pid, gi.id, 0) == 0
    for n in (A, B):
        add_node(server, n, "all-disabled")
        _annotate(server, tmp_path, n)
    add_node(server, "node-c", "all-disabled")
    before = len(server.requests)
    code, out = _run(server, tmp_path, "--dry-run")
    assert code == 0, out
    assert "node node-c: skipped (no migctl.io/mig-layout annotation" in out and "dry run: nothing written" in out
    assert not [m for m, _, _ in server.requests[before:] if m in ("PUT", "PATCH", "POST")]
    code, out = _run(server, tmp_path, "--json")
    assert code == 0, out
    res = json.loads(out)
    assert res["plan"]["unserved"] == {} and res["skipped"].keys() == {"node-c"}
    changed = {c["node"]: c for c in res["changed"]}
    assert changed, out
    doc = yaml.safe_load(server.get("configmaps", CM, NS)["data"]["config.yaml"])
    for n, c in changed.items():
        assert labels(server, n)[CONFIG] == c["label"] == f"plan-{n}"
        assert doc["mig-configs"][c["label"]] == c["config"]
    for n in res["unchanged"]:
        assert labels(server, n)[CONFIG] == "all-disabled"
    assert "all-balanced" in doc["mig-configs"]  # the operator's configs are kept
    # the busy 3g.40gb stays where it is in node-a's planned layout (if node-a changes at all)
    if A in changed:
        gpu0 = next(e for e in changed[A]["config"] if e["devices"] == [0])
        assert 4 in gpu0["placements"]["3g.40gb"]
    # apply each planned config as the agent would, refresh the annotations: a second plan changes nothing
    for n, c in changed.items():
        node = _sim(tmp_path, n)
        if n == A:
            sim.active().add_client(0, p.pid, gi.id, 0)
        apply_config({"version": "v1", "mig-configs": {c["label"]: c["config"]}}, c["label"], node=node)
        _annotate(server, tmp_path, n)
    assert busy_uuid in {c.uuid for g in read_node(_sim(tmp_path, A)) for x in g.gis for c in x.cis}
    before = len(server.requests)
    code, out = _run(server, tmp_path, "--json")
    assert code == 0, out
    again = json.loads(out)
    assert again["changed"] == [] and set(again["unchanged"]) == {A, B}
    assert not [m for m, _, _ in server.requests[before:] if m == "PATCH"]


def test_k8s_plan_errors_are_one_line(server, tmp_path) -> None:
    from migctl.cli.main import main

    kc = server.kubeconfig(tmp_path / "kc")
    bad = tmp_path / "bad.yaml"
    bad.write_text("workloads: [{name: x, profile: 9g.99gb, count: 1}]\n")
    add_node(server, A, "all-disabled")
    assert main(["k8s", "plan", str(bad), "--kubeconfig", str(kc)]) == 2  # no node publishes a layout
    _annotate(server, tmp_path, A)
    assert main(["k8s", "plan", str(bad), "--kubeconfig", str(kc)]) == 2  # unknown profile
    assert main(["k8s", "plan", str(tmp_path / "missing.yaml"), "--kubeconfig", str(kc)]) == 2


_GPU = {"index": 0, "model": "H100-80GB", "mig": True, "instances": []}
_ONE = {"profile": "1g.10gb", "start": 0, "busy": False}


@pytest.mark.parametrize("raw, why", [
    (json.dumps({"gpus": [_GPU, {"index": 1, "model": "H100-80GB"}]}), "gpus[1]: not an object with exactly"),
    ('{"gpus":[{"index":1e400,"model":"H100-80GB","mig":true,"instances":[]}]}', "index inf is not a GPU index"),
    ("[" * 100000 + "]" * 100000, "JSON nested too deeply"),
    (json.dumps({"gpus": [dict(_GPU, index="0")]}), "index '0' is not a GPU index"),
    (json.dumps({"gpus": [_GPU, _GPU]}), "GPU index 0 appears twice"),
    (json.dumps({"gpus": [dict(_GPU, model="RTX 9090")]}), "unknown GPU model 'RTX 9090'"),
    (json.dumps({"gpus": [dict(_GPU, instances=[dict(_ONE, start=1.7)])]}), "start must be a non-negative integer"),
    (json.dumps({"gpus": [dict(_GPU, instances=[dict(_ONE, busy="false")])]}), "busy true or false"),
    (json.dumps({"gpus": [dict(_GPU, instances=[dict(_ONE, profile="9g.1tb")])]}), "profile '9g.1tb' is not"),
    (json.dumps({"gpus": [dict(_GPU, instances=[dict(_ONE, profile="7g.80gb"), _ONE])]}), "the layout is invalid"),
    (json.dumps({"gpus": [dict(_GPU, mig="no")]}), "mig must be true or false"),
], ids=["partial", "inf", "deep", "text-index", "twice", "model", "float-start", "text-busy", "profile", "overlap",
        "mig-text"])
def test_a_node_with_a_damaged_layout_annotation_is_skipped_whole(server, tmp_path, raw, why) -> None:
    """A hand-edited annotation names the node and what is wrong and leaves that node out, whole: it was a
    traceback (an index of 1e400, JSON nested 100,000 deep), failed the whole fleet's plan with "live GPU 2: ..."
    (an unknown model or profile, an invalid layout), or was converted and planned (a start of 1.7 planned
    as 1 and the node relabelled; busy "false" taken as busy), or planned the node's good GPUs while saying
    it was skipped."""
    from migctl.integrations.k8s_plan import LAYOUT_ANNOTATION

    for n in (A, B):
        add_node(server, n, "all-disabled")
    _annotate(server, tmp_path, A)
    o = server.get("nodes", B)
    o["metadata"]["annotations"] = {LAYOUT_ANNOTATION: raw}
    server.put("nodes", o)
    code, out = _run(server, tmp_path, "--json")
    assert code == 0, out
    res = json.loads(out)
    assert why in res["skipped"][B], res["skipped"]
    assert [c["node"] for c in res["changed"]] == [A]
    assert labels(server, B)[CONFIG] == "all-disabled"
    assert "plan-node-b" not in yaml.safe_load(server.get("configmaps", CM, NS)["data"]["config.yaml"])["mig-configs"]
