"""`migctl k8s manifests`: valid against the Kubernetes schemas (offline, kubernetes-validate, strict) and
least privilege."""

from __future__ import annotations

import pytest
import yaml
from tests.k8s.conftest import COMPAT


def _docs(*args: str) -> list[dict]:
    from typer.testing import CliRunner

    from migctl.cli.main import app

    r = CliRunner().invoke(app, ["k8s", "manifests", *args])
    assert r.exit_code == 0, r.output
    return [d for d in yaml.safe_load_all(r.output) if d]


@pytest.mark.parametrize("args", [[], ["--evict", "--cdi", "-n", "kube-system", "--image", "reg.example/migctl:0.1"],
                                  ["-f", str(COMPAT / "gpu-operator_default-mig-parted-config.yaml")]])
def test_manifests_validate_against_the_kubernetes_schemas(args) -> None:
    import kubernetes_validate

    docs = _docs(*args)
    kinds = [d["kind"] for d in docs]
    assert kinds[:5] == ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]
    assert kinds[-1] == "DaemonSet" and ("ConfigMap" in kinds) == ("-f" in args)
    for d in docs:
        kubernetes_validate.validate(d, "1.30", strict=True)  # raises ValidationError on any unknown/wrong field
    with pytest.raises(kubernetes_validate.ValidationError):
        bad = dict(docs[-1], spec={**docs[-1]["spec"], "replicas": 3})  # a DaemonSet has no replicas
        kubernetes_validate.validate(bad, "1.30", strict=True)


def test_rbac_is_least_privilege() -> None:
    docs = {d["kind"]: d for d in _docs()}
    rules = {(tuple(r["resources"]), tuple(r["verbs"])) for r in docs["ClusterRole"]["rules"]}
    assert rules == {(("nodes",), ("get", "watch", "patch")), (("pods",), ("list",)), (("events",), ("create",))}
    role = docs["Role"]["rules"]
    assert role == [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["migctl-mig-parted-config"],
                     "verbs": ["get", "watch"]}]
    evict = {d["kind"]: d for d in _docs("--evict")}["ClusterRole"]["rules"]
    assert {"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"]} in evict
    ds = docs["DaemonSet"]["spec"]["template"]["spec"]
    c = ds["containers"][0]
    assert c["args"][:4] == ["k8s", "agent", "--node", "$(NODE_NAME)"] and "--evict" not in c["args"]
    assert ds["serviceAccountName"] == "migctl-mig-agent" and ds["hostPID"] is True


def test_manifests_configmap_is_the_validated_config(tmp_path) -> None:
    from typer.testing import CliRunner

    from migctl.cli.main import main

    docs = {d["kind"]: d for d in _docs("-f", str(COMPAT / "examples_config.yaml"))}
    cfg = yaml.safe_load(docs["ConfigMap"]["data"]["config.yaml"])
    assert "all-balanced" in cfg["mig-configs"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: v1\nmig-configs:\n  x:\n    - devices: all\n      mig-enabled: maybe\n")
    assert main(["k8s", "manifests", "-f", str(bad)]) == 2
    assert CliRunner  # imported for the other tests' runner


def test_agent_and_plan_bad_kubeconfig_one_line(tmp_path, capsys) -> None:
    from migctl.cli.main import main

    req = tmp_path / "r.yaml"
    req.write_text("workloads: [{name: a, profile: 1g.10gb, count: 1}]\n")
    for argv in (["k8s", "agent", "--node", "n1", "--kubeconfig", str(tmp_path / "nope")],
                 ["k8s", "plan", str(req), "--kubeconfig", str(tmp_path / "nope")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("migctl: error: cannot load the Kubernetes client configuration") and err.count("\n") == 1


def test_manifests_json_is_one_list_object() -> None:
    import json

    from typer.testing import CliRunner

    from migctl.cli.main import app

    r = CliRunner().invoke(app, ["k8s", "manifests", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["kind"] == "List" and [o["kind"] for o in doc["items"]][-1] == "DaemonSet"


@pytest.mark.parametrize("args, wrong", [
    (["manifests", "-n", "Bad_NS"], "--namespace 'Bad_NS': not a valid namespace (valid: an RFC 1123 label"),
    (["manifests", "--configmap", "UPPER/x"], "--configmap 'UPPER/x': not a valid name (valid: an RFC 1123 subdomain"),
    (["manifests", "--image", "img\nx: 1"], "--image 'img\\nx: 1': not an image reference"),
    (["manifests", "--image", ""], "--image '': not an image reference"),
    (["export", "--node", "n1; rm -rf ~"], "--node 'n1; rm -rf ~': not a valid name"),
    (["export", "--name", "Bad Name"], "--name 'Bad Name': not a valid name"),
    (["export", "-c", "evil label"], "-c 'evil label': not a valid label value (valid: at most 63 letters"),
    (["export", "-n", "a" * 64], "longer than 63 characters"),
    (["agent", "--node", "bad/node"], "--node 'bad/node': not a valid name"),
    (["agent", "--node", "n1", "--key", "..data"], "--key '..data': not a valid key"),
    (["plan", "req.yaml", "-n", "A"], "--namespace 'A': not a valid namespace"),
], ids=["ns", "configmap", "image-newline", "image-empty", "node-shell", "cm-name", "label", "ns-long", "agent-node",
        "key", "plan-ns"])
def test_kubernetes_names_are_checked_before_anything_is_printed_or_sent(args, wrong, simnode, capsys) -> None:
    """These were printed into manifests the API server refuses (a namespace 'Bad_NS', an image with a newline
    that became a second YAML key), or into a `kubectl label node n1; rm -rf ~ ...` command to copy into a
    shell. Now one line naming the option and the rule, exit 2, nothing printed on stdout."""
    from migctl.cli.main import main

    simnode("1xA30")
    assert main(["k8s", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("migctl: error: "), err
    assert wrong in err, err
