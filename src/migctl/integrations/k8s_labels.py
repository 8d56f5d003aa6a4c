"""Node labels, operands, pod lookup and the CDI spec for the Kubernetes agent (pure functions, plus two
small readers of ``/proc`` and ``/proc/driver/nvidia-caps``).

Label names and values follow the GPU Operator and its components (NVIDIA/mig-parted
pkg/mig/reconfigure/reconfigure.go; NVIDIA/k8s-device-plugin internal/lm/resource.go for the GPU feature
discovery labels): ``nvidia.com/mig.config``, ``nvidia.com/mig.config.state``, ``nvidia.com/gpu.deploy.*``
= ``paused-for-mig-change``, ``nvidia.com/mig.strategy``, ``nvidia.com/mig-<profile>.<attribute>``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

CONFIG_LABEL = "nvidia.com/mig.config"
STATE_LABEL = "nvidia.com/mig.config.state"
STATES = ("pending", "rebooting", "success", "failed")
PAUSED = "paused-for-mig-change"

# operand deploy label -> label selector of its pods (reconfigure.go waitForPodsToBeDeleted); None: not waited on
OPERANDS: dict[str, str | None] = {
    "nvidia.com/gpu.deploy.device-plugin": "app=nvidia-device-plugin-daemonset",
    "nvidia.com/gpu.deploy.gpu-feature-discovery": "app=gpu-feature-discovery",
    "nvidia.com/gpu.deploy.dcgm-exporter": "app=nvidia-dcgm-exporter",
    "nvidia.com/gpu.deploy.dcgm": "app=nvidia-dcgm",
    "nvidia.com/gpu.deploy.nvsm": None,
    "nvidia.com/gpu.deploy.client": None,
}
# operands that must restart to see MIG devices that were only added (the device plugin advertises them,
# GFD labels them); DCGM and the exporter keep running through an apply that only creates instances
ADVERTISERS = ("nvidia.com/gpu.deploy.device-plugin", "nvidia.com/gpu.deploy.gpu-feature-discovery")


def pause_value(current: str | None) -> str:
    """reconfigure.go maybeSetPaused: ``false`` stays ``false``."""
    return "false" if current == "false" else PAUSED


def operands_to_pause(labels: dict[str, str], ops: list[dict[str, Any]]) -> list[str]:
    """Which operand labels an apply with ``ops`` must pause, and only those present on the node (``client``
    only when present, as in reconfigure.go): all of them when a GPU is reset or its mode set, or an instance
    destroyed; only the device plugin and GFD when instances are only created; none otherwise."""
    kinds = {op["op"] for op in ops}
    if kinds & {"destroy_gi", "destroy_ci", "reset", "set_mode"}:
        wanted = list(OPERANDS)
    elif kinds & {"create_gi", "create_ci"}:
        wanted = list(ADVERTISERS)
    else:
        return []
    return [k for k in wanted if k != "nvidia.com/gpu.deploy.client" or k in labels]


def resource_name(profile: str) -> str:
    """The device plugin's mixed-strategy resource: ``+`` becomes ``.`` (``1g.24gb+me`` -> ``mig-1g.24gb.me``)."""
    return "nvidia.com/mig-" + profile.replace("+", ".")


def gfd_labels(live: list[Any]) -> dict[str, str]:
    """GPU-feature-discovery-style labels for the MIG devices of ``live`` (mixed strategy): per profile
    ``.count``, ``.replicas``, ``.sharing-strategy``, ``.memory`` (MiB), ``.multiprocessors``, ``.slices.gi``,
    ``.slices.ci``, ``.engines.{copy,decoder,encoder,jpeg,ofa}``, ``.product`` (``<GPU name>-MIG-<profile>``,
    spaces as ``-``). GI-wide compute instances are named after their GI; a split CI (``1c.3g.40gb``) gets
    its own resource with the SMs of the CI and the engines of its GI."""
    out: dict[str, str] = {"nvidia.com/mig.strategy": "mixed"}
    counts: dict[str, int] = {}
    attrs: dict[str, dict[str, str]] = {}
    for g in live:
        if not g.mig_current or g.model is None:
            continue
        for gi in g.gis:
            gp = g.model.profile(gi.profile)
            if gp is None:
                continue
            for ci in gi.cis:
                cp = next((c for c in gp.ci_profiles if c.name == ci.profile), None)
                name = ci.profile if re.match(r"^\d+c\.", ci.profile) else gi.profile
                counts[name] = counts.get(name, 0) + 1
                attrs.setdefault(name, {
                    "replicas": "1", "sharing-strategy": "none", "memory": str(gp.memory_mib),
                    "multiprocessors": str(cp.sms if cp else gp.sms), "slices.gi": str(gp.slices),
                    "slices.ci": str(cp.slices if cp else gp.slices), "engines.copy": str(gp.ce),
                    "engines.decoder": str(gp.dec), "engines.encoder": str(gp.enc), "engines.jpeg": str(gp.jpeg),
                    "engines.ofa": str(gp.ofa), "product": f"{g.name}-MIG-{name}".replace(" ", "-"),
                })
    for name, n in sorted(counts.items()):
        res = resource_name(name)
        out[f"{res}.count"] = str(n)
        for k, v in attrs[name].items():
            out[f"{res}.{k}"] = v
    return out


def gfd_patch(current: dict[str, str], live: list[Any]) -> dict[str, str | None]:
    """A label patch: the new GFD labels, and ``None`` for MIG resource labels no longer backed by a device."""
    new = gfd_labels(live)
    patch: dict[str, str | None] = {k: v for k, v in new.items() if current.get(k) != v}
    for k in current:
        if k.startswith("nvidia.com/mig-") and k not in new:
            patch[k] = None
    return patch


# ------------------------------------------------------------------------------------------ pods by PID
_POD_UID = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")


def pod_uid_of(pid: int, proc: Path = Path("/proc")) -> str | None:
    """The UID of the pod a process runs in: from its cgroup path (kubelet's ``pod<uid>`` slice), else a
    ``POD_UID`` variable in its environment (the downward API's ``metadata.uid``)."""
    try:
        m = _POD_UID.search((proc / str(pid) / "cgroup").read_text())
        if m:
            return m.group(1).replace("_", "-")
    except OSError:
        pass
    try:
        for item in (proc / str(pid) / "environ").read_bytes().split(b"\0"):
            if item.startswith(b"POD_UID="):
                return item[8:].decode(errors="replace")
    except OSError:
        pass
    return None


# ------------------------------------------------------------------------------------------ CDI
def _mig_minors(path: Path = Path("/proc/driver/nvidia-caps/mig-minors")) -> dict[str, int]:
    try:
        return {k: int(v) for k, v in (ln.split() for ln in path.read_text().splitlines() if ln.strip())}
    except (OSError, ValueError):
        return {}


def cap_minor(minors: dict[str, int], gpu: int, gi: int, ci: int | None = None) -> int:
    """The nvidia-caps device minor of a GI's (or CI's) access capability: from the driver's mig-minors file
    when present, else its layout (config 1, monitor 2, then 9 minors per GI and 15 GIs per GPU: UNCONFIRMED,
    derived from mig-minors files seen in issue reports)."""
    key = f"gpu{gpu}/gi{gi}/access" if ci is None else f"gpu{gpu}/gi{gi}/ci{ci}/access"
    if key in minors:
        return minors[key]
    base = 3 + gpu * 135 + gi * 9
    return base if ci is None else base + 1 + ci


def cdi_spec(node: Any, minors: dict[str, int] | None = None) -> dict[str, Any]:
    """A CDI 0.6 spec (kind ``nvidia.com/gpu``) with one device per MIG device, named ``<gpu>:<mig index>``
    and by its ``MIG-...`` UUID, as ``nvidia-ctk cdi generate`` names them."""
    mm = _mig_minors() if minors is None else minors
    devices = []
    for gpu in node.gpus():
        for d in gpu.mig_devices():
            nodes = [{"path": f"/dev/nvidia{gpu.index}"},
                     {"path": f"/dev/nvidia-caps/nvidia-cap{cap_minor(mm, gpu.index, d.gi_id)}"},
                     {"path": f"/dev/nvidia-caps/nvidia-cap{cap_minor(mm, gpu.index, d.gi_id, d.ci_id)}"}]
            edits = {"deviceNodes": nodes}
            devices.append({"name": f"{gpu.index}:{d.index}", "containerEdits": edits})
            devices.append({"name": d.uuid, "containerEdits": edits})
    return {
        "cdiVersion": "0.6.0", "kind": "nvidia.com/gpu", "devices": devices,
        "containerEdits": {"env": ["NVIDIA_VISIBLE_DEVICES=void"],
                           "deviceNodes": [{"path": "/dev/nvidiactl"}, {"path": "/dev/nvidia-uvm"},
                                           {"path": "/dev/nvidia-uvm-tools"}]},
    }
