"""Load the hardware catalog from its data files (``data/<model>.yaml``), one file per GPU model.

Every value in those files carries a source; values not established by a source are listed under
``unconfirmed``. Loading checks the data for internal consistency (names reproduce the go-nvlib rule,
placements fit the grid, IDs unique) so that a bad edit fails loudly, not at run time.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import Any

from migctl.catalog.model import (
    CI_INDEX_NAMES,
    GI_INDEX_NAMES,
    CIProfile,
    DriverVariant,
    GIProfile,
    GpuModel,
    attribute_suffix,
    parse_driver,
    profile_name,
)


class CatalogError(ValueError):
    """The catalog data is inconsistent, or a model key is unknown."""


# CI profile index by CI slice count (NVML_COMPUTE_INSTANCE_PROFILE_<n>_SLICE).
_CI_ID_BY_SLICES = {1: 0, 2: 1, 3: 2, 4: 3, 7: 4, 8: 5, 6: 6}


def _ci_slice_options(gi_slices: int) -> list[int]:
    """CI sizes a GI of ``gi_slices`` offers: go-nvlib keeps C when C == G or (C < G and 2C <= G + 1) [S5]."""
    return [c for c in sorted(_CI_ID_BY_SLICES) if c == gi_slices or (c < gi_slices and 2 * c <= gi_slices + 1)]


def _ci_starts(gi_slices: int, ci_slices: int) -> tuple[int, ...]:
    """CI placements: starts aligned to the next power of two of the CI size (go-nvml mock pattern, UNCONFIRMED)."""
    align = 1
    while align < ci_slices:
        align *= 2
    return tuple(s for s in range(0, gi_slices, align) if s + ci_slices <= gi_slices)


def derive_ci_profiles(gi: dict[str, Any], total_mib: int, default_ci: int | None) -> list[dict[str, Any]]:
    """CI profiles for a GI whose data file does not list them, by the go-nvlib rule; all marked UNCONFIRMED."""
    g = int(gi["slices"])
    out = []
    for c in _ci_slice_options(g):
        starts = _ci_starts(g, c)
        out.append(
            {
                "id": _CI_ID_BY_SLICES[c],
                "slices": c,
                "sms": int(gi["sms"]) * c // g,
                "max_instances": len(starts),
                "starts": list(starts),
                "size": c,
                "default": False,
                "unconfirmed": ["sms", "max_instances", "placements"] if c != g else ["placements"],
                "source": "derived: go-nvlib CI rule (C==G or 2C<=G+1) [S5]; SMs pro rata; placements as go-nvml mock",
            }
        )
    full = next(ci for ci in out if ci["slices"] == g)
    full["default"] = True
    if default_ci is not None and default_ci != full["id"]:
        # e.g. Hopper 1_SLICE_REV2 GIs: the full-size CI is profile 7 (1_SLICE_REV1) [mig-hardware.md §0.5]
        full["id"] = default_ci
    return out


def _index_literal(name: str) -> bool:
    try:
        return name.startswith("INDEX_") and int(name[6:], 0) >= 0
    except ValueError:
        return False


def _driver(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    return parse_driver(str(value))


def _build_ci(raw: dict[str, Any], gi_slices: int, gi_memory: int, total_mib: int, suffix: str) -> CIProfile:
    slices = int(raw["slices"])
    name = profile_name(gi_slices, gi_memory, total_mib, suffix, ci_slices=slices)
    return CIProfile(
        id=int(raw["id"]),
        slices=slices,
        sms=int(raw["sms"]),
        max_instances=int(raw["max_instances"]),
        placement_starts=tuple(int(s) for s in raw["starts"]),
        placement_size=int(raw["size"]),
        is_default=bool(raw.get("default", False)),
        name=name,
        unconfirmed=frozenset(raw.get("unconfirmed", ())),
        source=str(raw.get("source", "")),
    )


def build_model(raw: dict[str, Any]) -> GpuModel:
    """Turn one parsed data file into a :class:`GpuModel`, validating it."""
    key = raw["key"]
    total = int(raw["memory_mib"])
    grid = int(raw["memory_slices"])
    profiles: list[GIProfile] = []
    seen_ids: set[int] = set()
    for p in raw["gi_profiles"]:
        index_name = str(p["index"])
        if index_name not in GI_INDEX_NAMES and not _index_literal(index_name):
            raise CatalogError(f"{key}: unknown GI profile index {index_name!r}; valid: "
                               f"{', '.join(GI_INDEX_NAMES)} or INDEX_0xNN")
        pid = int(p["id"])
        if pid in seen_ids:
            raise CatalogError(f"{key}: duplicate GI profile ID {pid}")
        seen_ids.add(pid)
        suffix = attribute_suffix(index_name)
        slices = int(p["slices"])
        memory = int(p["memory_mib"])
        name = profile_name(slices, memory, total, suffix)
        if "name" in p and p["name"] != name:
            raise CatalogError(f"{key}: profile {pid} recorded as {p['name']!r} but the naming rule gives {name!r}")
        starts = tuple(int(s) for s in p["placements"]["starts"])
        size = int(p["placements"]["size"])
        for s in starts:
            if s < 0 or s + size > grid:
                raise CatalogError(f"{key}: profile {name} placement {s}:{size} is outside the {grid}-slice grid")
        ci_raw = p.get("ci_profiles") or derive_ci_profiles(p, total, p.get("default_ci"))
        cis = tuple(_build_ci(c, slices, memory, total, suffix) for c in ci_raw)
        if sum(1 for c in cis if c.is_default) != 1:
            raise CatalogError(f"{key}: profile {name} must have exactly one default CI profile")
        for c in cis:
            if c.id not in CI_INDEX_NAMES.values():
                raise CatalogError(f"{key}: profile {name} has unknown CI profile ID {c.id}")
        variants = tuple(
            DriverVariant(
                min_driver=_driver(v.get("min_driver")),
                max_driver=_driver(v.get("max_driver")),
                memory_mib=v.get("memory_mib"),
                source=str(v.get("source", "")),
            )
            for v in p.get("variants", ())
        )
        profiles.append(
            GIProfile(
                id=pid,
                index_name=index_name,
                slices=slices,
                memory_mib=memory,
                sms=int(p["sms"]),
                ce=int(p["ce"]),
                dec=int(p["dec"]),
                enc=int(p["enc"]),
                jpeg=int(p["jpeg"]),
                ofa=int(p["ofa"]),
                max_instances=int(p["max_instances"]),
                placement_starts=starts,
                placement_size=size,
                name=name,
                ci_profiles=cis,
                min_driver=_driver(p.get("min_driver")),
                variants=variants,
                unconfirmed=frozenset(p.get("unconfirmed", ())),
                source=str(p.get("source", "")),
            )
        )
    return GpuModel(
        key=key,
        name=str(raw["name"]),
        pci_device_ids=tuple(int(x) for x in raw["pci_device_ids"]),
        memory_mib=total,
        sms=int(raw["sms"]),
        compute_slices=int(raw["compute_slices"]),
        memory_slices=grid,
        gi_profiles=tuple(profiles),
        architecture=str(raw.get("architecture", "")),
        power_cap_w=int(raw.get("power_cap_w", 0)),
        bar1_mib=int(raw.get("bar1_mib", 0)),
        aliases=tuple(raw.get("aliases", ())),
        unconfirmed=frozenset(raw.get("unconfirmed", ())),
        sources=dict(raw.get("sources", {})),
        notes=tuple(raw.get("notes", ())),
        min_driver=_driver(raw.get("min_driver")),
    )


@functools.lru_cache(maxsize=1)
def _data_files() -> list[str]:
    root = resources.files("migctl.catalog") / "data"
    return sorted(p.name for p in root.iterdir() if p.name.endswith(".yaml"))


@functools.cache
def _load_file(filename: str) -> GpuModel:
    import yaml

    text = (resources.files("migctl.catalog") / "data" / filename).read_text(encoding="utf-8")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return build_model(yaml.load(text, Loader=loader))


@functools.lru_cache(maxsize=1)
def _index() -> dict[str, str]:
    """Map of normalised model keys and aliases to data file names (by file name; cheap)."""
    out: dict[str, str] = {}
    for f in _data_files():
        out[_norm(f[: -len(".yaml")])] = f
    return out


def _norm(key: str) -> str:
    return key.strip().upper().replace("_", "-").replace(" ", "-")


def model_keys() -> list[str]:
    """Catalog keys of every model, in file order."""
    return [load_model(k).key for k in (f[: -len(".yaml")] for f in _data_files())]


def all_models() -> list[GpuModel]:
    return [_load_file(f) for f in _data_files()]


def load_model_file(path: str) -> GpuModel:
    """A model from a data file outside the catalog (a model the catalog does not ship yet, e.g. one written by
    ``migctl catalog --from-node``). Validated like the shipped files; bad files raise :class:`CatalogError`."""
    from pathlib import Path


    f = Path(path)
    try:
        st = f.stat()
    except OSError as e:
        raise CatalogError(f"cannot read model file {path}: {e.strerror}") from None
    return _load_path(str(f), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=32)
def _load_path(path: str, mtime_ns: int, size: int) -> GpuModel:
    from migctl.inputs import InputError, load_yaml_file

    try:  # (a regular file of at most 1 MiB, UTF-8, bounded YAML: a FIFO or /dev/zero is refused, not read)
        raw = load_yaml_file(path, "model file", limit=1 << 20)
    except InputError as e:
        raise CatalogError(str(e)) from None
    if not isinstance(raw, dict):
        raise CatalogError(f"model file {path} is not a mapping of model fields (see catalog/data/*.yaml)")
    try:
        return build_model(raw)
    except CatalogError as e:
        raise CatalogError(f"model file {path}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise CatalogError(f"model file {path} is missing or has a bad field: {e.__class__.__name__}: {e}") from None


_LEARNED: dict[str, GpuModel] = {}


def learn_model(model: GpuModel) -> None:
    """Make a model that NVML described (a GPU the catalog does not ship) known to :func:`load_model` in this
    process, so the planner can plan for it by its key. In memory only: nothing is written."""
    _LEARNED[_norm(model.key)] = model


def load_model(key: str) -> GpuModel:
    """The model with catalog key or alias ``key`` (case-insensitive), e.g. ``H100-80GB`` or ``h100``;
    ``file:PATH`` loads a model file outside the catalog."""
    if key.startswith("file:"):
        return load_model_file(key[5:])
    idx = _index()
    n = _norm(key)
    if n in idx:
        return _load_file(idx[n])
    for m in all_models():
        if n == _norm(m.key) or n in (_norm(a) for a in m.aliases):
            return m
    if n in _LEARNED:
        return _LEARNED[n]
    valid = ", ".join(model_keys())
    raise CatalogError(f"unknown GPU model {key!r}; valid models: {valid}")


_PCI_LINE = re.compile(r"^pci_device_ids:[ \t]*\[([^\]#\n]*)\]", re.MULTILINE)


def pci_ids_in_text(text: str) -> tuple[int, ...] | None:
    """The ``pci_device_ids`` of a data file read from its text without parsing the YAML (the one-line flow
    list every shipped file uses), or None when the line is not in that form."""
    found = _PCI_LINE.findall(text)
    if len(found) != 1:
        return None
    try:
        return tuple(int(x.strip(), 0) for x in found[0].split(",") if x.strip())
    except ValueError:
        return None


@functools.lru_cache(maxsize=1)
def _pci_index() -> dict[str, tuple[int, ...] | None]:
    """Data file name -> its PCI device ids (None: not readable without parsing the file). Lets a lookup by
    PCI id parse only the files that can match: every ``migctl`` command on a node looks its GPUs up this
    way, and parsing all the YAML files took most of the catalog's share of a command's start."""
    root = resources.files("migctl.catalog") / "data"
    return {f: pci_ids_in_text((root / f).read_text(encoding="utf-8")) for f in _data_files()}


def model_by_pci_id(device_id: int, name: str | None = None) -> GpuModel | None:
    """The model for a PCI device id (0xDDDD or NVML's 0xDDDD10DE form), or None.

    Some ids are shared by several catalog models (mig-parted groups H100 SXM and PCIe under one
    filter); the device name (nvmlDeviceGetName) then decides.
    """
    dev = device_id >> 16 if device_id > 0xFFFF else device_id
    index = _pci_index()
    matches = [_load_file(f) for f in _data_files() if index.get(f) is None or dev in index[f]]
    matches = [m for m in matches if dev in m.pci_device_ids]
    if name is not None:
        by_name = [m for m in matches if m.name == name]
        if by_name:
            return by_name[0]
    return matches[0] if matches else None
