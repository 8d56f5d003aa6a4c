"""Round trips: export the live layout as a v1 config, checkpoint/restore (placements preserved), and
mig-parted's generate-config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from migctl.catalog import GpuModel
from migctl.catalog.geometry import PlacedGI, place_all, remaining_capacity
from migctl.config.parted import Desired
from migctl.errors import UserError
from migctl.reconcile.live import LiveGpu, desired_from_layout, read_node

CHECKPOINT_FORMAT = "migctl-checkpoint"


def _filter(model: GpuModel) -> list[str]:
    return [f"0x{d:04X}10DE" for d in model.pci_device_ids]


def gpu_entry(g: LiveGpu, placements: bool = False) -> dict[str, Any]:
    """The v1 entry body (without ``devices``) describing one live GPU."""
    entry: dict[str, Any] = {"mig-enabled": g.mig_current}
    if not g.mig_current:
        return entry
    counts: dict[str, int] = {}
    pins: dict[str, list[int]] = {}
    for gi in sorted(g.gis, key=lambda x: x.start):
        for ci in gi.cis or []:
            counts[ci.profile] = counts.get(ci.profile, 0) + 1
            pins.setdefault(ci.profile, []).append(gi.start)
    entry["mig-devices"] = counts
    if placements and counts:
        entry["placements"] = pins
    return entry


def export_config(live: list[LiveGpu], label: str = "current", placements: bool = False) -> dict[str, Any]:
    """The live layout as a mig-parted v1 config: identical GPUs merged, device-filter when models are mixed.

    Note: v1 has one CI per GI; a GI with several CIs exports one ``mig-devices`` count per CI (as mig-parted
    does), which re-applies as separate GIs. Use checkpoint/restore to preserve such layouts exactly.
    """
    gpus = [g for g in live if g.mig_capable]
    mixed = len({g.model.key for g in gpus if g.model}) > 1
    groups: dict[str, tuple[dict[str, Any], list[int]]] = {}
    for g in gpus:
        body = gpu_entry(g, placements)
        key = json.dumps([g.model.key if (mixed and g.model) else "", body], sort_keys=True)
        groups.setdefault(key, (body, []))[1].append(g.index)
    entries = []
    for key, (body, idx) in groups.items():
        model_key = json.loads(key)[0]
        e: dict[str, Any] = {}
        if model_key:
            e["device-filter"] = _filter(next(g.model for g in gpus if g.model and g.model.key == model_key))
        e["devices"] = "all" if len(groups) == 1 and len(idx) == len(live) else idx
        e.update(body)
        entries.append(e)
    return {"version": "v1", "mig-configs": {label: entries}}


def to_yaml(data: dict[str, Any]) -> str:
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def _list(d: Any, v: list[Any]) -> Any:
        flow = all(isinstance(x, (int, str)) for x in v)
        return d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=flow)

    _Dumper.add_representer(list, _list)
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


# ------------------------------------------------------------------------------------------ checkpoint
def checkpoint(node: Any) -> dict[str, Any]:
    """Every GPU's mode, GI profiles and placements and CIs, keyed by GPU UUID (like mig-parted's)."""
    return {
        "format": CHECKPOINT_FORMAT, "version": 1,
        "gpus": [{"uuid": g.uuid, "index": g.index, "model": g.model.key if g.model else g.name,
                  "layout": g.layout()} for g in read_node(node) if g.mig_capable],
    }


def restore_resolver(data: dict[str, Any]) -> Any:
    """A resolver (for apply_desired) that maps checkpointed GPUs to live ones by UUID."""
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise UserError("not a migctl checkpoint file (expected format: migctl-checkpoint)")
    problem = checkpoint_problem(data)
    if problem:
        raise UserError(f"damaged checkpoint: {problem}; nothing was changed")
    by_uuid = {g["uuid"]: g for g in data["gpus"]}

    def resolve(live: list[LiveGpu]) -> dict[int, Desired]:
        out: dict[int, Desired] = {}
        for g in live:
            saved = by_uuid.get(g.uuid)
            if saved is not None:
                out[g.index] = desired_from_layout(g.index, saved["layout"], "checkpoint")
        missing = set(by_uuid) - {g.uuid for g in live}
        if missing:
            raise UserError(f"checkpoint names GPUs this node does not have: {', '.join(sorted(missing))}")
        return out

    return resolve


def checkpoint_problem(data: dict[str, Any]) -> str | None:
    """What is wrong with the fields of a checkpoint (None when they are what :func:`checkpoint` writes; whether
    each layout fits its GPU is the planner's check, :func:`migctl.reconcile.plan.target_problem`)."""
    from migctl.reconcile.journal import layout_problem

    if type(data.get("version")) is not int or data["version"] != 1:
        return f"version {data.get('version')!r} (this migctl reads version 1)"
    gpus = data.get("gpus")
    if not isinstance(gpus, list):
        return "'gpus' missing or not a list"
    seen: set[str] = set()
    for n, g in enumerate(gpus):
        if not isinstance(g, dict) or not isinstance(g.get("uuid"), str) or not g["uuid"].startswith("GPU-"):
            return f"gpus[{n}]: expected an object with a GPU UUID ('uuid': 'GPU-...')"
        if g["uuid"] in seen:
            return f"gpus[{n}]: GPU {g['uuid']} appears twice"
        seen.add(g["uuid"])
        problem = layout_problem(f"gpus[{n}].layout", g.get("layout"))
        if problem:
            return problem
    return None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    from migctl.inputs import load_json, printable, read_text

    data = load_json(read_text(path, "checkpoint"), printable(path))
    if not isinstance(data, dict):
        raise UserError(f"{printable(path)}: not a migctl checkpoint (expected a JSON object)")
    return data


# ------------------------------------------------------------------------------------------ generate-config
def config_name(profile: str) -> str:
    """mig-parted's config label for a profile: ``all-<profile>`` with '+' written '.'."""
    return "all-" + profile.replace("+", ".")


def _balanced(model: GpuModel) -> dict[str, int] | None:
    def base(g: int) -> str | None:
        ps = [p for p in model.gi_profiles if p.slices == g and not p.suffix]
        return min(ps, key=lambda p: (p.memory_mib, p.id)).name if ps else None

    if model.compute_slices >= 7:
        want = {base(1): 2, base(2): 1, base(3): 1}
    else:
        want = {base(1): 2, base(2): 1}
    if None in want:
        return None
    profiles = [model.profile(n) for n, c in want.items() for _ in range(c)]  # type: ignore[arg-type]
    if place_all(model, profiles) is None:  # type: ignore[arg-type]
        return None
    return want  # type: ignore[return-value]


def generate_config(models: list[GpuModel]) -> dict[str, Any]:
    """all-disabled, all-enabled, all-<profile> (as many as fit) and all-balanced for ``models``."""
    uniq: list[GpuModel] = []
    for m in models:
        if m.gi_profiles and m not in uniq:
            uniq.append(m)
    mixed = len(uniq) > 1
    configs: dict[str, list[dict[str, Any]]] = {
        "all-disabled": [{"devices": "all", "mig-enabled": False}],
        "all-enabled": [{"devices": "all", "mig-enabled": True, "mig-devices": {}}],
    }

    def entry(m: GpuModel, devs: dict[str, int]) -> dict[str, Any]:
        e: dict[str, Any] = {}
        if mixed:
            e["device-filter"] = _filter(m)
        e.update({"devices": "all", "mig-enabled": True, "mig-devices": devs})
        return e

    for m in uniq:
        for p in m.gi_profiles:
            n = remaining_capacity(m, [], p)
            configs.setdefault(config_name(p.name), []).append(entry(m, {p.name: n}))
    for m in uniq:
        b = _balanced(m)
        if b:
            configs.setdefault("all-balanced", []).append(entry(m, b))
    return {"version": "v1", "mig-configs": configs}


__all__ = ["PlacedGI", "checkpoint", "config_name", "export_config", "generate_config", "restore_resolver"]
