"""The stand-in API server itself, through the official client: patch content types, optimistic
concurrency (409), watch resume and 410 Gone, dropped watch connections."""

from __future__ import annotations

import threading
import time

import pytest


@pytest.fixture
def v1(server, tmp_path):
    from migctl.integrations.k8s_agent import api_from_config

    server.put("nodes", {"metadata": {"name": "n1", "labels": {"a": "1"}}})
    return api_from_config(str(server.kubeconfig(tmp_path / "kc")))


def test_patch_content_types_and_conflicts(server, v1) -> None:
    from kubernetes.client.exceptions import ApiException

    n = v1.patch_node("n1", {"metadata": {"labels": {"b": "2"}}}, _content_type="application/strategic-merge-patch+json")
    assert n.metadata.labels == {"a": "1", "b": "2"}
    n = v1.patch_node("n1", {"metadata": {"labels": {"a": None}}}, _content_type="application/merge-patch+json")
    assert n.metadata.labels == {"b": "2"}
    with pytest.raises(ApiException) as e:
        v1.patch_node("n1", [{"op": "add", "path": "/metadata/labels/c", "value": "3"}],
                      _content_type="application/json-patch+json")
    assert e.value.status == 415
    with pytest.raises(ApiException) as e:  # a stale resourceVersion in the patch: 409 Conflict
        v1.patch_node("n1", {"metadata": {"resourceVersion": "1", "labels": {"c": "3"}}},
                      _content_type="application/merge-patch+json")
    assert e.value.status == 409
    cm = v1.read_namespaced_config_map("migctl-mig-parted-config", "gpu-operator")
    server.put("configmaps", {"metadata": {"name": "migctl-mig-parted-config", "namespace": "gpu-operator"},
                              "data": {"config.yaml": "changed"}})
    with pytest.raises(ApiException) as e:
        v1.replace_namespaced_config_map("migctl-mig-parted-config", "gpu-operator", cm)
    assert e.value.status == 409


def test_watch_resume_410_and_drop(server, v1) -> None:
    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException

    rv = v1.read_node("n1").metadata.resource_version
    server.patch_labels("n1", {"x": "1"})
    seen = [e["raw_object"]["metadata"]["labels"].get("x") for e in
            watch.Watch().stream(v1.list_node, field_selector="metadata.name=n1", resource_version=rv, timeout_seconds=1)]
    assert seen == ["1"]  # resumed from rv: the change made before the watch started is delivered
    server.compact()
    with pytest.raises(ApiException) as e:
        list(watch.Watch().stream(v1.list_node, field_selector="metadata.name=n1", resource_version=rv,
                                  timeout_seconds=1))
    assert e.value.status == 410
    errors: list[BaseException] = []

    def follow() -> None:
        try:
            for _ in watch.Watch().stream(v1.list_node, field_selector="metadata.name=n1", timeout_seconds=30):
                pass
        except Exception as ex:  # noqa: BLE001
            errors.append(ex)

    t = threading.Thread(target=follow)
    t.start()
    end = time.monotonic() + 10
    while not server.watch_socks and time.monotonic() < end:
        time.sleep(0.05)
    assert server.drop_watches() == 1
    t.join(10)
    assert not t.is_alive() and errors and "ProtocolError" in type(errors[0]).__name__ + repr(errors[0])
