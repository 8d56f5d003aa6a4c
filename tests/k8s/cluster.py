"""Helpers for the tests against the stand-in API server."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.k8s.apiserver import ApiServer
from tests.k8s.conftest import COMPAT

NS = "gpu-operator"
CM = "migctl-mig-parted-config"
OPERANDS = ["device-plugin", "gpu-feature-discovery", "dcgm-exporter", "dcgm", "nvsm"]
STATE = "nvidia.com/mig.config.state"
CONFIG = "nvidia.com/mig.config"
DP = "nvidia.com/gpu.deploy.device-plugin"


def operator_config() -> str:
    import yaml

    for d in yaml.safe_load_all((COMPAT / "gpu-operator_default-mig-parted-config.yaml").read_text()):
        if isinstance(d, dict) and "config.yaml" in (d.get("data") or {}):
            return d["data"]["config.yaml"]
    raise AssertionError("no config.yaml")


def add_node(server: ApiServer, name: str, label: str | None = "all-disabled", **extra: str) -> None:
    labels = {f"nvidia.com/gpu.deploy.{o}": "true" for o in OPERANDS}
    if label is not None:
        labels[CONFIG] = label
    labels.update(extra)
    server.put("nodes", {"metadata": {"name": name, "labels": labels}})


def wait_for(pred: Callable[[], object], timeout: float = 60.0, what: str = "") -> object:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or pred}")


def labels(server: ApiServer, node: str) -> dict[str, str]:
    o = server.get("nodes", node)
    assert o is not None
    return o["metadata"].get("labels") or {}


def events(server: ApiServer, node: str) -> list[tuple[str, str]]:
    return [(e["reason"], e["message"]) for e in server.list("events") if e["involvedObject"]["name"] == node]
