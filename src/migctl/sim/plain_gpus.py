"""GPUs without MIG for the simulator (sharing on them is MPS or time-slicing): real NVML names and the
memory ``nvidia-smi`` reports. They are not in the MIG catalog (no GI profiles); the simulator answers
Not Supported to every MIG call on them, as the driver does.

Sources:
  pciids  = pci.ids database, version 2023.04.10 (Debian package pci.ids): 10de:2684 "AD102 [GeForce RTX
            4090]", 10de:27b8 "AD104GL [L4]", 10de:2236 "GA102GL [A10]"
  smi     = ``nvidia-smi --query-gpu=name,memory.total`` captures published in public repositories
            (recorded runs): "NVIDIA GeForce RTX 4090, 24564", "NVIDIA GeForce RTX 5090, 32607 MiB",
            "NVIDIA L4, 23034 MiB", "NVIDIA L40S, 46068 MiB", "NVIDIA A10, 23028 MiB"; L4 72 W and A10 150 W
            appear in the same captures
  spec    = NVIDIA product pages / architecture whitepapers: CUDA cores (SMs = cores / 128 on Ada and
            Blackwell consumer parts, / 128 on GA102), board power
UNCONFIRMED values are listed per model (PCI ids of L40S and RTX 5090 are newer than the pci.ids copy
here; BAR1 sizes were not recorded).
"""

from __future__ import annotations

from migctl.catalog.model import GpuModel

_SOURCES = {
    "pciids": "pci.ids 2023.04.10",
    "smi": "nvidia-smi captures (name, memory.total) in public repositories",
    "spec": "NVIDIA product pages / whitepapers (CUDA cores, board power)",
}


def _m(key: str, name: str, pci: int, mem: int, sms: int, arch: str, power: int,
       unconfirmed: tuple[str, ...]) -> GpuModel:
    return GpuModel(key=key, name=name, pci_device_ids=(pci,), memory_mib=mem, sms=sms, compute_slices=0,
                    memory_slices=0, gi_profiles=(), architecture=arch, power_cap_w=power, bar1_mib=256,
                    unconfirmed=frozenset(("bar1_mib",) + unconfirmed), sources=dict(_SOURCES),
                    notes=("no MIG: MPS or time-slicing only",))


PLAIN_GPUS: dict[str, GpuModel] = {
    m.key: m
    for m in (
        _m("RTX-4090", "NVIDIA GeForce RTX 4090", 0x2684, 24564, 128, "Ada Lovelace", 450, ("power_cap_w",)),
        _m("RTX-5090", "NVIDIA GeForce RTX 5090", 0x2B85, 32607, 170, "Blackwell", 575,
           ("pci_device_ids", "power_cap_w")),
        _m("L4", "NVIDIA L4", 0x27B8, 23034, 58, "Ada Lovelace", 72, ()),
        _m("L40S", "NVIDIA L40S", 0x26B9, 46068, 142, "Ada Lovelace", 350, ("pci_device_ids", "power_cap_w")),
        _m("A10", "NVIDIA A10", 0x2236, 23028, 72, "Ampere", 150, ()),
    )
}


def plain_model(key: str) -> GpuModel | None:
    """The non-MIG model for a spec name (case-insensitive, ``RTX4090`` = ``RTX-4090``), or None."""
    norm = key.strip().upper().replace("_", "-").replace(" ", "-")
    for k, m in PLAIN_GPUS.items():
        if norm in (k, k.replace("-", "")):
            return m
    return None
