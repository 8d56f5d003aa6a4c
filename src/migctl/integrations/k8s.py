"""What the NVIDIA GPU Operator consumes: the mig-parted ConfigMap (key ``config.yaml``), the
``nvidia.com/mig.config=<label>`` node label (as a kubectl command and a merge patch), and the
``nvidia.com/mig-<profile>`` extended resources the device plugin's *mixed* strategy will advertise.

Plain YAML text; no Kubernetes client is needed.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

CONFIG_LABEL_KEY = "nvidia.com/mig.config"


def configmap(config_text: str, name: str = "custom-mig-parted-config", namespace: str = "gpu-operator") -> str:
    """A ConfigMap manifest carrying ``config_text`` under ``data.config.yaml``."""
    import yaml

    class _Lit(str):
        pass

    class _Dumper(yaml.SafeDumper):
        pass

    _Dumper.add_representer(_Lit, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style="|"))
    text = config_text if config_text.endswith("\n") else config_text + "\n"
    doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace},
           "data": {"config.yaml": _Lit(text)}}
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False)


def label_command(node: str, label: str) -> str:
    return f"kubectl label node {node} {CONFIG_LABEL_KEY}={label} --overwrite"


def label_patch(label: str) -> dict[str, Any]:
    """A merge patch (``kubectl patch node NODE --type merge -p '<json>'``)."""
    return {"metadata": {"labels": {CONFIG_LABEL_KEY: label}}}


def mixed_resources(layouts: list[dict[str, Any]]) -> dict[str, int]:
    """``nvidia.com/mig-<profile>`` -> count, from per-GPU layouts (one resource per MIG device / CI)."""
    counts: Counter[str] = Counter()
    for lay in layouts:
        if not lay.get("mig"):
            continue
        for gi in lay.get("gis", []):
            for ci in gi.get("cis", []):
                counts[f"nvidia.com/mig-{ci['profile']}"] += 1
    return dict(sorted(counts.items()))


def render(config_text: str, label: str, node: str, layouts: list[dict[str, Any]], name: str, namespace: str) -> str:
    """Everything as one multi-document YAML text (comments carry the label command and resources)."""
    res = mixed_resources(layouts)
    lines = [
        "# GPU Operator: set mig.config / mig.configMap (or migManager.config.name) to this ConfigMap, then label:",
        f"#   {label_command(node, label)}",
        f"#   kubectl patch node {node} --type merge -p '{json.dumps(label_patch(label))}'",
        "# Resources the device plugin advertises with MIG strategy 'mixed' (per node):",
    ]
    lines += [f"#   {k}: {v}" for k, v in res.items()] or ["#   (none: MIG disabled or no instances)"]
    lines.append("---")
    return "\n".join(lines) + "\n" + configmap(config_text, name, namespace)
