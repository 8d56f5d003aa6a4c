"""Plan output: JSON and a mig-parted config that ``migctl apply`` accepts.

mig-parted config (``placements`` is migctl's optional extension that pins each instance's start
memory slice; identical GPUs are merged into one entry; mixed fleets get a ``device-filter``)::

    version: v1
    mig-configs:
      <label>:
        - devices: [0, 1]
          mig-enabled: true
          mig-devices: {"1g.10gb": 2, "3g.40gb": 1}
          placements: {"1g.10gb": [0, 1], "3g.40gb": [4]}
"""

from __future__ import annotations

import json
from typing import Any

from migctl.planner.core import Plan


def to_json(plan: Plan, indent: int | None = 2) -> str:
    """The plan as JSON text."""
    return json.dumps(plan.to_dict(), indent=indent, sort_keys=False)


def to_mig_parted(plan: Plan, label: str = "migctl-plan", include_empty: bool = False) -> dict[str, Any]:
    """The plan as a mig-parted config dict (``version: v1``), one label, identical GPUs merged."""
    from migctl.catalog import load_model

    mixed = len({g.model for g in plan.gpus}) > 1
    entries: dict[tuple[Any, ...], dict[str, Any]] = {}
    for g in sorted(plan.gpus, key=lambda g: g.index):
        if not g.mig_enabled:  # the whole GPU, MIG disabled (serving mode)
            key = (g.model, "whole")
            if key not in entries:
                entry = {"devices": []}
                if mixed:
                    entry["device-filter"] = f"0x{load_model(g.model).pci_device_id_full:08X}"
                entry["mig-enabled"] = False
                entries[key] = entry
            entries[key]["devices"].append(g.index)
            continue
        if not g.instances and not include_empty:
            continue
        counts: dict[str, int] = {}
        placements: dict[str, list[int]] = {}
        for i in sorted(g.instances, key=lambda i: (i.profile, i.start)):
            counts[i.profile] = counts.get(i.profile, 0) + 1
            placements.setdefault(i.profile, []).append(i.start)
        key = (g.model, tuple(sorted((k, tuple(v)) for k, v in placements.items())))
        if key not in entries:
            entry: dict[str, Any] = {"devices": []}
            if mixed:
                entry["device-filter"] = f"0x{load_model(g.model).pci_device_id_full:08X}"
            entry["mig-enabled"] = True
            entry["mig-devices"] = counts
            entry["placements"] = placements
            entries[key] = entry
        entries[key]["devices"].append(g.index)
    return {"version": "v1", "mig-configs": {label: list(entries.values())}}


def to_mig_parted_yaml(plan: Plan, label: str = "migctl-plan") -> str:
    """The mig-parted config as YAML text."""
    import yaml

    return yaml.safe_dump(to_mig_parted(plan, label), sort_keys=False, default_flow_style=None)
