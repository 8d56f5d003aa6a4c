"""``migctl k8s plan FILE``: plan MIG layouts for a fleet of Kubernetes nodes from the API.

Each node's GPUs and live layout come from the ``migctl.io/mig-layout`` annotation the agent publishes
(model, MIG mode, GI profile and placement, busy = processes on it). All GPUs of all nodes form one live
fleet for migctl's incremental planner (busy instances stay where they are; destroyed, touched and created
instances are minimised in that order). Each node whose layout changes gets one config in the ConfigMap,
labelled ``plan-<node>`` (one entry per GPU, pinned placements), and its ``nvidia.com/mig.config`` label set to
it; nodes whose layout does not change are not written at all. ``dry_run`` only reports.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from migctl.errors import UserError
from migctl.integrations.k8s_labels import CONFIG_LABEL

LAYOUT_ANNOTATION = "migctl.io/mig-layout"
MERGE = "application/merge-patch+json"


def layout_annotation(live: list[Any]) -> str:
    """The agent's annotation: per GPU its catalog model, MIG mode and instances (profile, start, busy)."""
    gpus = []
    for g in live:
        if not g.mig_capable or g.model is None:
            continue
        gpus.append({"index": g.index, "model": g.model.key, "mig": g.mig_current,
                     "instances": [{"profile": gi.profile, "start": gi.start, "busy": gi.busy}
                                   for gi in sorted(g.gis, key=lambda x: x.start)]})
    return json.dumps({"gpus": gpus}, separators=(",", ":"), sort_keys=True)


def config_label(node: str) -> str:
    """``plan-<node>``, shortened with a digest to fit a label value (63 characters)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in node)
    label = f"plan-{safe}"
    if len(label) > 63:
        label = label[:54] + "-" + hashlib.sha1(node.encode()).hexdigest()[:8]
    return label


@dataclass
class NodeChange:
    node: str
    label: str
    old_label: str | None
    entries: list[dict[str, Any]]
    diff: list[str] = field(default_factory=list)


@dataclass
class FleetPlan:
    changes: list[NodeChange]
    unchanged: list[str]
    skipped: dict[str, str]
    plan: Any

    def render(self) -> str:
        lines = []
        for c in self.changes:
            lines.append(f"node {c.node}: {CONFIG_LABEL}={c.label}" + (f" (was {c.old_label})" if c.old_label else ""))
            lines += [f"  {d}" for d in c.diff]
        for n in self.unchanged:
            lines.append(f"node {n}: unchanged")
        for n, why in self.skipped.items():
            lines.append(f"node {n}: skipped ({why})")
        p = self.plan
        if p is not None:
            lines.append(f"{len(self.changes)} node(s) to change, {len(self.unchanged)} unchanged; "
                         f"instances destroyed: {len(p.destroyed)}; unserved: "
                         + (", ".join(f"{k} x{v}" for k, v in p.unserved.items()) or "none"))
        return "\n".join(lines)


MAX_GPU_INDEX = 9999  # as --gpu takes it (migctl.inputs.gpu_indices: at most 4 digits)


def _integer(v: Any) -> bool:
    return type(v) is int


def read_layout(raw: str) -> list[dict[str, Any]]:
    """The GPUs of one node's layout annotation, each ``{"index", "model", "mig", "instances": [{"profile",
    "start", "busy"}]}`` as :func:`layout_annotation` writes them; anything else (a field of another type, an
    index twice, an unknown model or profile, instances that overlap or start where the profile cannot) is a
    ``ValueError`` naming the first problem. Nothing is converted: a node whose annotation was hand-edited is
    skipped rather than planned from a layout it may not have."""
    from migctl.catalog import CatalogError, load_model
    from migctl.inputs import InputError, load_json
    from migctl.planner.validate import check_gpu

    try:
        data = load_json(raw, "annotation")
    except InputError as e:
        raise ValueError(re.sub(r"^annotation:?(\d*): ", lambda m: f"line {m[1]}: " if m[1] else "", str(e))) from None
    if not isinstance(data, dict) or not isinstance(data.get("gpus"), list):
        raise ValueError('not a JSON object with a list "gpus"')
    seen: set[int] = set()
    out = []
    for n, g in enumerate(data["gpus"]):
        where = f"gpus[{n}]"
        if not isinstance(g, dict) or set(g) != {"index", "model", "mig", "instances"}:
            raise ValueError(f"{where}: not an object with exactly index, model, mig and instances")
        index, model, mig, instances = g["index"], g["model"], g["mig"], g["instances"]
        if not _integer(index) or not 0 <= index <= MAX_GPU_INDEX:
            raise ValueError(f"{where}: index {index!r} is not a GPU index (an integer 0 to {MAX_GPU_INDEX})")
        if index in seen:
            raise ValueError(f"{where}: GPU index {index} appears twice")
        seen.add(index)
        if not isinstance(model, str):
            raise ValueError(f"{where}: model {model!r} is not text")
        try:
            m = load_model(model)
        except CatalogError as e:
            raise ValueError(f"{where}: {e}") from None
        if type(mig) is not bool or not isinstance(instances, list):
            raise ValueError(f"{where}: mig must be true or false and instances a list")
        placed = []
        for k, i in enumerate(instances):
            at = f"{where}.instances[{k}]"
            if not isinstance(i, dict) or set(i) != {"profile", "start", "busy"}:
                raise ValueError(f"{at}: not an object with exactly profile, start and busy")
            if not isinstance(i["profile"], str) or m.profile(i["profile"]) is None:
                valid = ", ".join(q.name for q in m.gi_profiles)
                raise ValueError(f"{at}: profile {i['profile']!r} is not a GPU instance profile of {m.key} "
                                 f"(valid: {valid})")
            if not _integer(i["start"]) or i["start"] < 0 or type(i["busy"]) is not bool:
                raise ValueError(f"{at}: start must be a non-negative integer and busy true or false")
            placed.append((m.profile(i["profile"]).id, i["start"]))
        problems = check_gpu(m, placed)
        if problems:
            raise ValueError(f"{where}: the layout is invalid: {problems[0]}")
        out.append(g)
    return out


def _nodes_live(nodes: list[Any]) -> tuple[list[dict[str, Any]], dict[int, tuple[str, int]], dict[str, str],
                                            dict[str, list[dict[str, Any]]]]:
    live: list[dict[str, Any]] = []
    where: dict[int, tuple[str, int]] = {}
    skipped: dict[str, str] = {}
    per_node: dict[str, list[dict[str, Any]]] = {}
    for n in sorted(nodes, key=lambda n: n.metadata.name):
        name = n.metadata.name
        raw = (n.metadata.annotations or {}).get(LAYOUT_ANNOTATION)
        if raw is None:
            skipped[name] = f"no {LAYOUT_ANNOTATION} annotation: is migctl's agent running there?"
            continue
        try:
            gpus = read_layout(raw)
        except ValueError as e:  # the whole node is left out, none of its GPUs planned
            skipped[name] = f"unreadable {LAYOUT_ANNOTATION} annotation: {e}"
            continue
        per_node[name] = gpus
        for g in gpus:
            k = len(live)
            where[k] = (name, g["index"])
            live.append({"index": k, "model": g["model"], "instances": [
                {"profile": i["profile"], "start": i["start"], "busy": i["busy"]}
                for i in g["instances"] if g["mig"]]})
    return live, where, skipped, per_node


def plan_fleet(api: Any, request_data: dict[str, Any], base_dir: Any = None, selector: str | None = None,
               time_limit: float | None = None) -> FleetPlan:
    """Plan ``request_data`` (a planning request's workloads) onto the nodes the API lists."""
    from migctl.planner import PlanError, plan, validate_plan
    from migctl.planner.request import parse_request

    nodes = api.list_node(label_selector=selector).items if selector else api.list_node().items
    live, where, skipped, per_node = _nodes_live(nodes)
    if not live:
        raise UserError(f"no node publishes its MIG layout ({LAYOUT_ANNOTATION}); run `migctl k8s agent` on the "
                        "GPU nodes first" + (f" (selector {selector!r})" if selector else ""))
    data = dict(request_data)
    data.pop("fleet", None)  # the fleet is the nodes' GPUs
    data["live"] = live
    try:
        request = parse_request(data, base_dir=base_dir)
        if time_limit is not None:
            request.options.time_limit_s = time_limit
        result = plan(request)
    except PlanError as e:
        raise UserError(str(e)) from None
    problems = validate_plan(result, ())
    if problems:
        raise UserError(f"internal error, the plan failed validation: {problems[0]}", 1)
    labels = {n.metadata.name: (n.metadata.labels or {}).get(CONFIG_LABEL) for n in nodes}
    by_node: dict[str, list[Any]] = {}
    for g in result.gpus:
        node, local = where[g.index]
        by_node.setdefault(node, []).append((local, g))
    changes, unchanged = [], []
    for node, gpus in sorted(by_node.items()):
        if not any(g.changed for _, g in gpus):
            unchanged.append(node)
            continue
        current = {x["index"]: x for x in per_node[node]}
        entries, diff = [], []
        for local, g in sorted(gpus, key=lambda x: x[0]):
            was = current[local]
            if not g.instances and not (was.get("mig") and was.get("instances")):
                continue  # nothing planned and nothing there: leave the GPU (and its MIG mode) alone
            counts: dict[str, int] = {}
            pins: dict[str, list[int]] = {}
            for i in sorted(g.instances, key=lambda i: (i.profile, i.start)):
                counts[i.profile] = counts.get(i.profile, 0) + 1
                pins.setdefault(i.profile, []).append(i.start)
            entries.append({"devices": [local], "mig-enabled": True, "mig-devices": counts, "placements": pins})
            if g.changed:
                old = ", ".join(f"{i['profile']}@{i['start']}" + ("(busy)" if i["busy"] else "")
                                for i in (was.get("instances") or []) if was.get("mig")) or "empty"
                new = ", ".join(f"{i.profile}@{i.start}" for i in sorted(g.instances, key=lambda i: i.start)) or "empty"
                diff.append(f"GPU {local} ({g.model}): {old} -> {new}")
        changes.append(NodeChange(node, config_label(node), labels.get(node), entries, diff))
    return FleetPlan(changes, unchanged, skipped, result)


def write_plan(api: Any, fp: FleetPlan, namespace: str, configmap: str, key: str = "config.yaml",
               attempts: int = 5) -> None:
    """Put each changed node's config into the ConfigMap (optimistic concurrency: re-read and retry on 409),
    then point each changed node's label at it."""
    import yaml
    from kubernetes.client.exceptions import ApiException

    from migctl.inputs import load_yaml_text

    for attempt in range(attempts):
        try:
            cm = api.read_namespaced_config_map(configmap, namespace)
            exists = True
        except ApiException as e:
            if e.status != 404:
                raise
            cm, exists = None, False
        text = ((cm.data or {}).get(key) if cm is not None else None) or "version: v1\nmig-configs: {}\n"
        doc = load_yaml_text(text, f"ConfigMap {namespace}/{configmap} key {key}")
        if not isinstance(doc, dict) or not isinstance(doc.get("mig-configs"), dict):
            raise UserError(f"ConfigMap {namespace}/{configmap} key {key} is not a mig-parted v1 config")
        for c in fp.changes:
            doc["mig-configs"][c.label] = c.entries
        new_text = yaml.safe_dump(doc, sort_keys=False)
        from migctl.config import load_config

        load_config(new_text, file=f"ConfigMap {namespace}/{configmap} (planned)")  # never publish an invalid config
        body = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": configmap, "namespace": namespace},
                "data": {**((cm.data or {}) if cm is not None else {}), key: new_text}}
        try:
            if exists:
                body["metadata"]["resourceVersion"] = cm.metadata.resource_version
                api.replace_namespaced_config_map(configmap, namespace, body)
            else:
                api.create_namespaced_config_map(namespace, body)
            break
        except ApiException as e:
            if e.status != 409 or attempt == attempts - 1:
                raise
    for c in fp.changes:
        if c.old_label != c.label:
            api.patch_node(c.node, {"metadata": {"labels": {CONFIG_LABEL: c.label}}}, _content_type=MERGE)
