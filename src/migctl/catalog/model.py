"""Typed, immutable model of MIG hardware: GPU models, GPU-instance and compute-instance profiles.

Pure data and pure functions: no I/O here (loading lives in :mod:`migctl.catalog.loader`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

from migctl.inputs import is_digits

# NVML GPU-instance profile *index* constants (nvml.h / pynvml NVML_GPU_INSTANCE_PROFILE_*).
GI_INDEX_NAMES: dict[str, int] = {
    "1_SLICE": 0x0,
    "2_SLICE": 0x1,
    "3_SLICE": 0x2,
    "4_SLICE": 0x3,
    "7_SLICE": 0x4,
    "8_SLICE": 0x5,
    "6_SLICE": 0x6,
    "1_SLICE_REV1": 0x7,
    "2_SLICE_REV1": 0x8,
    "1_SLICE_REV2": 0x9,
    "1_SLICE_GFX": 0xA,
    "2_SLICE_GFX": 0xB,
    "4_SLICE_GFX": 0xC,
    "1_SLICE_NO_ME": 0xD,
    "2_SLICE_NO_ME": 0xE,
    "1_SLICE_ALL_ME": 0xF,
    "2_SLICE_ALL_ME": 0x10,
    "3_SLICE_GFX": 0x11,
}
GI_PROFILE_COUNT = 0x12


def gi_index(index_name: str) -> int:
    """The NVML profile index of an index name; ``INDEX_0x13`` names an index newer than this table (a profile
    read from a driver that knows more profile kinds than migctl)."""
    if index_name in GI_INDEX_NAMES:
        return GI_INDEX_NAMES[index_name]
    if index_name.startswith("INDEX_"):
        return int(index_name[6:], 0)
    raise KeyError(index_name)


def gi_index_name(index: int) -> str:
    """Inverse of :func:`gi_index`."""
    return next((k for k, v in GI_INDEX_NAMES.items() if v == index), f"INDEX_{index:#x}")

# NVML compute-instance profile index constants; nvidia-smi shows these as the CI "Profile ID".
CI_INDEX_NAMES: dict[str, int] = {
    "1_SLICE": 0x0,
    "2_SLICE": 0x1,
    "3_SLICE": 0x2,
    "4_SLICE": 0x3,
    "7_SLICE": 0x4,
    "8_SLICE": 0x5,
    "6_SLICE": 0x6,
    "1_SLICE_REV1": 0x7,
    "7_SLICE_NVL": 0x8,
}
CI_PROFILE_COUNT = 0x9

# Suffix that go-nvlib appends for each index family (go-nvlib mig_profile.go [S5]).
_SUFFIX_BY_INDEX_NAME = {
    "REV1": "+me",
    "GFX": "+gfx",
    "NO_ME": "-me",
    "ALL_ME": "+me.all",
}


def attribute_suffix(index_name: str) -> str:
    """The name suffix (``+me``, ``+gfx``, ``-me``, ``+me.all`` or ``""``) for a GI profile index name."""
    for key, suffix in _SUFFIX_BY_INDEX_NAME.items():
        if index_name.endswith("_" + key):
            return suffix
    return ""


def memory_size_gb(memory_mib: int, total_mib: int) -> int:
    """go-nvlib ``getMigMemorySizeGB``: the GB figure used in MIG profile names.

    frac = ceil(mem/total * 8) / 8; GB = round-half-away(frac * ceil(total / 1 GiB)).
    """
    frac = math.ceil((memory_mib / total_mib) * 8) / 8
    total_gib = math.ceil(total_mib / 1024)
    value = frac * total_gib
    return int(math.floor(value + 0.5))


def profile_name(gi_slices: int, memory_mib: int, total_mib: int, suffix: str = "", ci_slices: int | None = None) -> str:
    """Profile name per the go-nvlib rule: ``<G>g.<GB>gb[suffix]`` or ``<C>c.<G>g.<GB>gb[suffix]``."""
    base = f"{gi_slices}g.{memory_size_gb(memory_mib, total_mib)}gb{suffix}"
    if ci_slices is not None and ci_slices != gi_slices:
        return f"{ci_slices}c.{base}"
    return base


def parse_driver(version: str) -> tuple[int, ...]:
    """``"545.23.08"`` -> ``(545, 23, 8)``; used to compare driver versions."""
    return tuple(int(p) for p in version.split("."))


@dataclass(frozen=True)
class Placement:
    """A placement in memory-slice units (GI) or compute-slice units (CI): ``start:size``."""

    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size

    def slots(self) -> range:
        return range(self.start, self.start + self.size)

    def overlaps(self, other: Placement) -> bool:
        return self.start < other.end and other.start < self.end

    def __str__(self) -> str:
        return f"{self.start}:{self.size}"


@dataclass(frozen=True)
class DriverVariant:
    """A value of a profile that differs on some drivers (memory shown, availability, name)."""

    min_driver: tuple[int, ...] | None
    max_driver: tuple[int, ...] | None
    memory_mib: int | None = None
    source: str = ""

    def matches(self, driver: tuple[int, ...]) -> bool:
        if self.min_driver is not None and driver < self.min_driver:
            return False
        if self.max_driver is not None and driver > self.max_driver:
            return False
        return True


@dataclass(frozen=True)
class CIProfile:
    """A compute-instance profile offered inside a GPU instance of a given GI profile."""

    id: int  # = NVML_COMPUTE_INSTANCE_PROFILE_* index, shown by nvidia-smi as the CI profile ID
    slices: int  # compute slices of the CI
    sms: int
    max_instances: int
    placement_starts: tuple[int, ...]
    placement_size: int
    is_default: bool
    name: str  # e.g. "1c.3g.40gb" or "3g.40gb"
    unconfirmed: frozenset[str] = frozenset()
    source: str = ""

    @functools.cached_property
    def placements(self) -> tuple[Placement, ...]:
        return tuple(Placement(s, self.placement_size) for s in self.placement_starts)


@dataclass(frozen=True)
class GIProfile:
    """A GPU-instance profile of one GPU model (one row of ``nvidia-smi mig -lgip``)."""

    id: int  # device profile ID (nvmlGpuInstanceProfileInfo.id), what nvidia-smi shows
    index_name: str  # e.g. "1_SLICE_REV2"
    slices: int  # compute slices (the "g")
    memory_mib: int
    sms: int
    ce: int
    dec: int
    enc: int
    jpeg: int
    ofa: int
    max_instances: int
    placement_starts: tuple[int, ...]
    placement_size: int  # in memory-slice units
    name: str  # computed by the go-nvlib rule; checked against the recorded name on load
    ci_profiles: tuple[CIProfile, ...]
    min_driver: tuple[int, ...] | None = None
    variants: tuple[DriverVariant, ...] = ()
    unconfirmed: frozenset[str] = frozenset()
    source: str = ""
    p2p: bool = False

    @property
    def index(self) -> int:
        return gi_index(self.index_name)

    @property
    def suffix(self) -> str:
        return attribute_suffix(self.index_name)

    @functools.cached_property
    def placements(self) -> tuple[Placement, ...]:
        return tuple(Placement(s, self.placement_size) for s in self.placement_starts)

    @property
    def default_ci(self) -> CIProfile:
        for ci in self.ci_profiles:
            if ci.is_default:
                return ci
        raise LookupError(f"GI profile {self.name} has no default CI profile")

    def ci_profile(self, ci_id: int) -> CIProfile | None:
        for ci in self.ci_profiles:
            if ci.id == ci_id:
                return ci
        return None

    def available_on(self, driver: tuple[int, ...]) -> bool:
        return self.min_driver is None or driver >= self.min_driver

    def memory_on(self, driver: tuple[int, ...]) -> int:
        for v in self.variants:
            if v.memory_mib is not None and v.matches(driver):
                return v.memory_mib
        return self.memory_mib


@dataclass(frozen=True)
class GpuModel:
    """One MIG-capable GPU model: totals, slice grid and its GI profiles."""

    key: str  # catalog key, e.g. "H100-80GB"
    name: str  # nvmlDeviceGetName, e.g. "NVIDIA H100 80GB HBM3"
    pci_device_ids: tuple[int, ...]  # 0xDDDD (vendor 0x10DE implied)
    memory_mib: int  # total memory as nvidia-smi shows it
    sms: int
    compute_slices: int
    memory_slices: int  # units of the placement grid
    gi_profiles: tuple[GIProfile, ...]
    architecture: str = ""
    power_cap_w: int = 0
    bar1_mib: int = 0
    aliases: tuple[str, ...] = ()
    unconfirmed: frozenset[str] = frozenset()
    sources: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    min_driver: tuple[int, ...] | None = None  # the first driver that supports MIG on this part, when recorded

    def profiles_on(self, driver: tuple[int, ...] | None = None) -> tuple[GIProfile, ...]:
        """GI profiles available on ``driver`` (all of them if ``driver`` is None), in -lgip order."""
        if driver is None:
            return self.gi_profiles
        return tuple(p for p in self.gi_profiles if p.available_on(driver))

    def profile(self, ref: int | str, driver: tuple[int, ...] | None = None) -> GIProfile | None:
        """Look a GI profile up by ID (int or digits), short name (``3g.40gb``) or full name (``MIG 3g.40gb``)."""
        profiles = self.profiles_on(driver)
        if isinstance(ref, int) or (isinstance(ref, str) and is_digits(ref.strip())):
            pid = int(ref)
            return next((p for p in profiles if p.id == pid), None)
        text = ref.strip()
        if text.upper().startswith("MIG "):
            text = text[4:].strip()
        return next((p for p in profiles if p.name == text), None)

    @property
    def pci_device_id_full(self) -> int:
        """nvmlPciInfo.pciDeviceId form: 0xDDDD10DE for the first device id."""
        return (self.pci_device_ids[0] << 16) | 0x10DE
