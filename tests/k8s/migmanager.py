"""The GPU Operator MIG manager's sequence of nvidia-mig-parted calls and an independent layout check.

The sequence is that of NVIDIA/mig-parted pkg/mig/reconfigure/reconfigure.go (Run): ``assert
--valid-config``; ``assert`` (already applied: success); ``assert --mode-only`` (is a mode change
needed); ``-d apply --mode-only`` then ``-d assert --mode-only`` (a failure means reboot with
WITH_REBOOT=true); ``-d apply``. Written here from that file's logic, for the tests.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Outcome:
    state: str  # success | failed | rebooting
    calls: list[tuple[tuple[str, ...], int]] = field(default_factory=list)
    failed_err: str = ""
    mode_change_required: bool = False


def reconfigure(call: Callable[..., Any], cfg: str, label: str, with_reboot: bool = False) -> Outcome:
    """``call(*argv)`` runs nvidia-mig-parted and returns an object with ``rc`` and ``err``."""
    o = Outcome("failed")

    def run(*argv: str) -> Any:
        r = call(*argv)
        o.calls.append((argv, r.rc))
        if r.rc != 0:
            o.failed_err = r.err
        return r

    if run("assert", "--valid-config", "-f", cfg, "-c", label).rc != 0:
        return o
    if run("assert", "-f", cfg, "-c", label).rc == 0:
        o.state, o.failed_err = "success", ""
        return o
    o.mode_change_required = run("assert", "--mode-only", "-f", cfg, "-c", label).rc != 0
    rc = run("-d", "apply", "--mode-only", "-f", cfg, "-c", label).rc
    if rc == 0:
        rc = run("-d", "assert", "--mode-only", "-f", cfg, "-c", label).rc
    if rc != 0 and with_reboot:
        o.state = "rebooting"
        return o
    if run("-d", "apply", "-f", cfg, "-c", label).rc != 0:
        return o
    o.state, o.failed_err = "success", ""
    return o


# ------------------------------------------------------------------------------------------ independent check
def _filters(entry: dict[str, Any]) -> list[int]:
    f = entry.get("device-filter")
    if f is None:
        return []
    items = [f] if isinstance(f, str) else list(f)
    return [int(x.split(":")[0], 16) for x in items]


def wanted(doc: dict[str, Any], label: str, index: int, pci_full: int) -> dict[str, Any] | None:
    """What the raw config (read with PyYAML only) asks of GPU ``index`` with PCI id ``pci_full``."""
    out = None
    for e in doc["mig-configs"][label]:
        filt = _filters(e)
        if filt and pci_full not in filt:
            continue
        dev = e["devices"]
        if dev != "all" and index not in dev:
            continue
        out = {"mig": bool(e["mig-enabled"]), "devices": dict(e.get("mig-devices") or {})}
    return out


def live_counts(gpu: Any) -> Counter[str]:
    """Live MIG devices per mig-devices key: a CI profile name, with GI-wide CIs named like their GI."""
    c: Counter[str] = Counter()
    for gi in gpu.gis:
        for ci in gi.cis:
            c[ci.profile if re.match(r"^\d+c\.", ci.profile) else gi.profile] += 1
    return c


def layout_problems(doc: dict[str, Any], label: str, live: list[Any]) -> list[str]:
    """Differences between the live node and what ``label`` asks (empty when it holds)."""
    bad = []
    for g in live:
        w = wanted(doc, label, g.index, g.pci_device_id)
        if w is None or not g.mig_capable:
            continue
        if g.mig_current != w["mig"]:
            bad.append(f"GPU {g.index}: mode {g.mig_current}, want {w['mig']}")
            continue
        if w["mig"]:
            want = Counter({k: v for k, v in w["devices"].items() if v})
            have = live_counts(g)
            if have != want:
                bad.append(f"GPU {g.index}: have {dict(have)}, want {dict(want)}")
    return bad
