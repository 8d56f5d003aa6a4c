"""The manifests that run ``migctl k8s agent`` on every GPU node: ServiceAccount, least-privilege RBAC,
the ConfigMap of mig-parted configs, and the DaemonSet.

RBAC, verb by verb (what the agent calls):
* nodes: ``get`` (read its Node), ``watch`` (watch its Node by ``metadata.name`` field selector), ``patch``
  (its labels). RBAC cannot name "the node this pod runs on", so the rule is cluster-wide; the agent only
  ever addresses ``$NODE_NAME``.
* configmaps (one namespace, one name): ``get`` and ``watch``, restricted by ``resourceNames``.
* pods: ``list`` (pods on its node, by ``spec.nodeName`` field selector: which pod holds a MIG device).
* events: ``create`` (one Event per step, on its Node).
* pods/eviction: ``create``, only with ``--evict`` (the API server honours PodDisruptionBudgets).
"""

from __future__ import annotations

from typing import Any

APP = "migctl-mig-agent"


def _meta(name: str, namespace: str | None = None) -> dict[str, Any]:
    m: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/name": APP}}
    if namespace is not None:
        m["namespace"] = namespace
    return m


def manifests(namespace: str = "gpu-operator", image: str = "migctl:latest", configmap: str = "migctl-mig-parted-config",
              config_text: str | None = None, evict: bool = False, cdi: bool = False,
              state_dir: str = "/var/lib/migctl", node_selector: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Every object, in apply order."""
    sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(APP, namespace)}
    node_rules: list[dict[str, Any]] = [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "watch", "patch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    ]
    if evict:
        node_rules.append({"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"]})
    cr = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": _meta(APP),
          "rules": node_rules}
    crb = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": _meta(APP),
           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": APP},
           "subjects": [{"kind": "ServiceAccount", "name": APP, "namespace": namespace}]}
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _meta(APP, namespace),
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [configmap],
                       "verbs": ["get", "watch"]}]}
    rb = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": _meta(APP, namespace),
          "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": APP},
          "subjects": [{"kind": "ServiceAccount", "name": APP, "namespace": namespace}]}
    out: list[dict[str, Any]] = [sa, cr, crb, role, rb]
    if config_text is not None:
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(configmap, namespace),
                    "data": {"config.yaml": config_text}})
    args = ["k8s", "agent", "--node", "$(NODE_NAME)", "--namespace", namespace, "--configmap", configmap]
    if evict:
        args.append("--evict")
    if cdi:
        args += ["--cdi-dir", "/var/run/cdi"]
    mounts = [{"name": "state", "mountPath": state_dir}]
    volumes: list[dict[str, Any]] = [{"name": "state", "hostPath": {"path": state_dir, "type": "DirectoryOrCreate"}}]
    if cdi:
        mounts.append({"name": "cdi", "mountPath": "/var/run/cdi"})
        volumes.append({"name": "cdi", "hostPath": {"path": "/var/run/cdi", "type": "DirectoryOrCreate"}})
    container = {
        "name": "agent", "image": image, "imagePullPolicy": "IfNotPresent",
        "command": ["migctl"], "args": args,
        "env": [
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "MIGCTL_STATE_DIR", "value": state_dir},
            {"name": "MIGCTL_BACKEND", "value": "nvml"},
            {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"},
            {"name": "NVIDIA_MIG_CONFIG_DEVICES", "value": "all"},
            {"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "utility"},
        ],
        # creating/destroying MIG instances and resetting a GPU need the device nodes and CAP_SYS_ADMIN
        "securityContext": {"privileged": True},
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "volumeMounts": mounts,
    }
    ds = {
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": _meta(APP, namespace),
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": APP}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": APP}},
                "spec": {
                    "serviceAccountName": APP,
                    "hostPID": True,  # process IDs NVML reports are host PIDs: they name the pods holding MIG devices
                    "priorityClassName": "system-node-critical",
                    "nodeSelector": node_selector or {"nvidia.com/gpu.present": "true"},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "terminationGracePeriodSeconds": 120,  # let an apply finish (or roll back) on SIGTERM
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }
    out.append(ds)
    return out


def render(objs: list[dict[str, Any]]) -> str:
    """A multi-document YAML text (``kubectl apply -f -``)."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def _str(d: Any, v: str) -> Any:
        return d.represent_scalar("tag:yaml.org,2002:str", v, style="|" if "\n" in v else None)

    _Dumper.add_representer(str, _str)
    return "---\n".join(yaml.dump(o, Dumper=_Dumper, sort_keys=False) for o in objs)
