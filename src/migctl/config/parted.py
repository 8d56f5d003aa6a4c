"""mig-parted v1 configs: validation against the catalog and resolution to a per-GPU desired layout.

Semantics follow mig-parted (existing-tools.md): an entry matches a GPU when its ``devices`` names the
GPU's index (or ``all``) and its ``device-filter`` (if any) names the GPU's PCI device id; unmatched GPUs
are left alone. Each ``mig-devices`` instance is one GPU instance with one compute instance: ``3g.40gb``
is a 3g GI with its full-size CI, ``1c.3g.40gb`` a 3g GI with one 1-slice CI.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from migctl.catalog import GIProfile, GpuModel, Placement, all_models, model_by_pci_id
from migctl.catalog.geometry import PlacedGI, conflict, place_all
from migctl.config.loader import (
    FILTER_RE,
    PROFILE_RE,
    ConfigError,
    YamlDoc,
    parse_yaml,
    pydantic_message,
    read_text,
)


class GpuLike(Protocol):
    index: int
    pci_device_id: int
    model: GpuModel | None


@dataclass(frozen=True)
class WantCI:
    """A compute instance wanted inside a GPU instance (``start`` None: wherever the driver puts it)."""

    profile: str
    start: int | None = None


@dataclass(frozen=True)
class WantGI:
    """A GPU instance wanted on a GPU: profile name, optional pinned start memory slice, its CIs."""

    profile: str
    start: int | None
    cis: tuple[WantCI, ...]

    def key(self) -> tuple[str, tuple[str, ...]]:
        return self.profile, tuple(sorted(c.profile for c in self.cis))

    def label(self) -> str:
        cis = ",".join(c.profile for c in self.cis)
        at = f"@{self.start}" if self.start is not None else ""
        return f"{self.profile}{at}" + (f"[{cis}]" if cis != self.profile else "")


@dataclass(frozen=True)
class Desired:
    """The desired state of one GPU."""

    index: int
    mig_enabled: bool
    gis: tuple[WantGI, ...]
    source: str = ""  # FILE:LINE of the entry that produced it

    def describe(self) -> str:
        if not self.mig_enabled:
            return "MIG disabled"
        return ", ".join(g.label() for g in self.gis) or "MIG enabled, no instances"


def split_profile(key: str) -> tuple[str, str] | None:
    """``1c.3g.40gb`` -> (``3g.40gb``, ``1c.3g.40gb``); ``3g.40gb`` -> (``3g.40gb``, ``3g.40gb``)."""
    m = PROFILE_RE.match(key)
    if not m:
        return None
    gi = key.split(".", 1)[1] if m.group(1) else key
    if m.group(1) and int(m.group(1)) == int(m.group(2)):
        return gi, gi  # "3c.3g.40gb" is the full CI
    return gi, key


def resolve_key(model: GpuModel, key: str) -> tuple[GIProfile, Any] | str:
    """(GI profile, CI profile) for a mig-devices key on ``model``, or why not (with the valid names)."""
    parts = split_profile(key)
    if parts is None:
        return f"{key!r} is not a MIG profile name (expected e.g. 1g.10gb, 1g.10gb+me, 1c.3g.40gb)"
    gi_name, ci_name = parts
    gp = model.profile(gi_name)
    if gp is None:
        valid = ", ".join(p.name for p in model.gi_profiles)
        return f"profile {key!r} does not exist on {model.key} (valid: {valid})"
    cp = next((c for c in gp.ci_profiles if c.name == ci_name), None)
    if cp is None:
        valid = ", ".join(c.name for c in gp.ci_profiles)
        return f"compute profile {key!r} does not exist in {gi_name} on {model.key} (valid: {valid})"
    return gp, cp


def parse_filter(text: str) -> tuple[int, int | None] | None:
    """``0x20B010DE[:0xSSSSVVVV]`` -> (0x20B010DE, subsystem or None)."""
    m = FILTER_RE.match(text.strip())
    if not m:
        return None
    dev = int(m.group(1), 16)
    vendor = int(m.group(2), 16) if m.group(2) else 0x10DE
    sub = int(m.group(3), 16) if m.group(3) else None
    return (dev << 16) | vendor, sub


@dataclass
class Entry:
    """A validated device entry, with where it came from."""

    label: str
    position: int
    raw: Any  # schema.DeviceEntry
    where: str
    filters: tuple[tuple[int, int | None], ...]
    doc: YamlDoc

    @property
    def devices(self) -> str | list[int]:
        return self.raw.devices

    def models(self) -> list[GpuModel]:
        """Catalog models the device-filter names (empty without a filter or for unknown ids)."""
        out: list[GpuModel] = []
        for dev, _ in self.filters:
            m = model_by_pci_id(dev)
            if m is not None and m not in out:
                out.append(m)
        return out

    def matches(self, gpu: GpuLike) -> bool:
        if self.devices != "all" and gpu.index not in self.devices:  # type: ignore[operator]
            return False
        if not self.filters:
            return True
        sub = getattr(gpu, "pci_subsystem_id", None)
        for dev, fsub in self.filters:
            if (dev >> 16) == (int(gpu.pci_device_id) >> 16 if gpu.pci_device_id > 0xFFFF else gpu.pci_device_id):
                # subsystem ids are compared when the device layer reports one (else device id only)
                if fsub is None or sub is None or int(sub) == fsub:
                    return True
        return False

    def wants(self, model: GpuModel) -> tuple[WantGI, ...] | str:
        """The GI list this entry asks of a GPU of ``model``, or why it cannot (profile missing, no fit)."""
        if not self.raw.mig_enabled:
            return ()
        out: list[WantGI] = []
        pins = self.raw.placements or {}
        for key, count in (self.raw.mig_devices or {}).items():
            r = resolve_key(model, key)
            if isinstance(r, str):
                return r
            gp, cp = r
            starts = pins.get(key)
            for i in range(count):
                out.append(WantGI(gp.name, starts[i] if starts else None, (WantCI(cp.name),)))
        why = fit_problem(model, out)
        if why:
            return why
        return tuple(out)


def fit_problem(model: GpuModel, gis: list[WantGI] | tuple[WantGI, ...], fixed: list[PlacedGI] | None = None) -> str | None:
    """Why ``gis`` cannot all be placed on an empty ``model`` GPU (next to ``fixed``), or None."""
    placed = list(fixed or [])
    free: list[GIProfile] = []
    for g in gis:
        gp = model.profile(g.profile)
        assert gp is not None
        if g.start is None:
            free.append(gp)
            continue
        pl = next((p for p in gp.placements if p.start == g.start), None)
        if pl is None:
            valid = ", ".join(str(s) for s in gp.placement_starts)
            return f"placement {g.start} is not valid for {gp.name} on {model.key} (valid starts: {valid})"
        why = conflict(model, placed, gp, pl)
        if why:
            return f"{gp.name} at {pl}: {why}"
        placed.append(PlacedGI(gp, pl))
    if place_all(model, free, placed) is None:
        names = ", ".join(g.label() for g in gis)
        slices = sum(model.profile(g.profile).slices for g in gis)  # type: ignore[union-attr]
        return (
            f"{names} do not fit on one {model.key} ({slices} of {model.compute_slices} compute slices, "
            f"{model.memory_slices} memory slices; no valid placement exists)"
        )
    return None


class MigConfig:
    """A loaded, validated mig-parted v1 config."""

    def __init__(self, doc: YamlDoc, model: Any, entries: dict[str, list[Entry]]) -> None:
        self.doc = doc
        self.schema = model
        self.entries = entries
        self.file = doc.file
        self.warnings: list[str] = []

    @property
    def labels(self) -> list[str]:
        return list(self.entries)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.doc.data)

    def entries_for(self, label: str) -> list[Entry]:
        if label not in self.entries:
            valid = ", ".join(self.labels) or "none"
            raise ConfigError(f"{self.file}: no config labelled {label!r} (valid: {valid})")
        return self.entries[label]

    def resolve(self, label: str, gpus: list[GpuLike], strict: bool = True) -> dict[int, Desired]:
        """Desired state per matched GPU (unmatched GPUs are absent: they are left alone).

        Raises ConfigError when a matched GPU cannot take its entry (profile missing on its model, no fit,
        MIG on a GPU that has none, or two entries asking different things of one GPU), when an entry names a
        GPU index the node does not have, and when the label matches no GPU at all (instead of a silent
        "nothing to do"). ``strict=False`` keeps mig-parted's own semantics for those two cases (entries that
        match nothing are skipped), for the ``nvidia-mig-parted`` drop-in.
        """
        out: dict[int, Desired] = {}
        indices = {g.index for g in gpus}
        for e in self.entries_for(label):
            if strict and e.raw.devices != "all":
                missing = sorted(set(e.raw.devices) - indices)
                if missing:
                    have = ", ".join(map(str, sorted(indices))) or "none"
                    raise ConfigError(f"{e.where}: devices names GPU {', '.join(map(str, missing))}, which this "
                                      f"node does not have (valid: {have})")
        matched = False
        for gpu in gpus:
            for e in self.entries_for(label):
                if not e.matches(gpu):
                    continue
                matched = True
                model = gpu.model
                if model is None or not model.gi_profiles:
                    if e.raw.mig_enabled:
                        raise ConfigError(f"{e.where}: GPU {gpu.index} (PCI id 0x{gpu.pci_device_id:08X}) is not MIG-capable")
                    continue
                wants = e.wants(model)
                if isinstance(wants, str):
                    raise ConfigError(f"{e.where}: GPU {gpu.index} ({model.key}): {wants}")
                d = Desired(gpu.index, bool(e.raw.mig_enabled), wants, e.where)
                prev = out.get(gpu.index)
                if prev is not None and (prev.mig_enabled, sorted(g.key() for g in prev.gis)) != (
                    d.mig_enabled, sorted(g.key() for g in d.gis)
                ):
                    raise ConfigError(
                        f"{e.where}: GPU {gpu.index} is also matched by the entry at {prev.source} with a different "
                        "layout; make the entries' devices/device-filter disjoint"
                    )
                out[gpu.index] = d
        if strict and gpus and not matched:
            models = ", ".join(sorted({getattr(g.model, "key", "?") for g in gpus}))
            raise ConfigError(f"{self.file}: config {label!r} matches no GPU of this node ({len(gpus)} x {models}); "
                              "check its devices and device-filter")
        return out


# ------------------------------------------------------------------------------------------ validation
def _max_per_gpu() -> int:
    """The most MIG devices (GI x CI) one GPU of any catalog model can hold: a bound on any per-GPU count."""
    return max(p.max_instances * max((c.max_instances for c in p.ci_profiles), default=1)
               for m in all_models() for p in m.gi_profiles)


def _catalog_names() -> dict[str, list[str]]:
    """Every GI and CI profile name in the catalog -> models offering it."""
    out: dict[str, list[str]] = {}
    for m in all_models():
        for p in m.gi_profiles:
            for c in p.ci_profiles:
                out.setdefault(c.name, []).append(m.key)
            out.setdefault(p.name, [])
            if m.key not in out[p.name]:
                out[p.name].append(m.key)
    return out


def _validate_entry(doc: YamlDoc, label: str, i: int, raw: Any, warnings: list[str]) -> Entry:
    base = ("mig-configs", label, i)
    filters: list[tuple[int, int | None]] = []
    fl = raw.device_filter
    for j, text in enumerate([fl] if isinstance(fl, str) else (fl or [])):
        parsed = parse_filter(text)
        if parsed is None:
            path = base + ("device-filter",) + ((j,) if not isinstance(fl, str) else ())
            raise ConfigError(
                f"{doc.where(path)}: device-filter {text!r} is not a PCI device id "
                "(valid: 0xDDDD10DE or 0xDDDD10DE:0xSSSSVVVV, e.g. 0x233010DE)"
            )
        filters.append(parsed)
    if raw.devices != "all":
        for j, idx in enumerate(raw.devices):
            if idx < 0:
                raise ConfigError(f"{doc.where(base + ('devices', j))}: GPU index {idx} is negative (valid: 0, 1, ...)")
        if len(set(raw.devices)) != len(raw.devices):
            raise ConfigError(f"{doc.where(base + ('devices',))}: devices lists a GPU index twice")
    entry = Entry(label, i, raw, doc.where(base), tuple(filters), doc)
    mig_devices = raw.mig_devices or {}
    if not raw.mig_enabled and any(mig_devices.values()):
        raise ConfigError(f"{doc.where(base + ('mig-devices',))}: mig-devices given but mig-enabled is false")
    names = _catalog_names()
    models = entry.models()
    for key, count in mig_devices.items():
        kpath = base + ("mig-devices", key)
        if count < 0:
            raise ConfigError(f"{doc.where(kpath)}: count of {key!r} is negative ({count}); valid: 0 or more")
        cap = _max_per_gpu()
        if count > cap:  # refused before any fitting work: a GPU never holds more
            raise ConfigError(f"{doc.where(kpath)}: count of {key!r} is {str(count)[:20]}; a GPU holds at most "
                              f"{cap} MIG devices (valid: 0 to {cap}, per GPU)")
        if split_profile(key) is None:
            raise ConfigError(
                f"{doc.where(kpath, key=True)}: {key!r} is not a MIG profile name "
                "(valid forms: 1g.10gb, 1g.10gb+me, 1g.24gb+gfx, 1g.24gb-me, 1g.24gb+me.all, 1c.3g.40gb)"
            )
        for m in models:
            r = resolve_key(m, key)
            if isinstance(r, str):
                raise ConfigError(f"{doc.where(kpath, key=True)}: {r}")
        if not filters and key not in names and key.split(".", 1)[-1] not in names:
            # mig-parted accepts it (the file may target GPUs newer than our catalog); apply refuses it
            # on any GPU that lacks it, naming the valid profiles there.
            warnings.append(f"{doc.where(kpath, key=True)}: profile {key!r} is not offered by any GPU in the catalog")
    pins = raw.placements or {}
    for key, starts in pins.items():
        ppath = base + ("placements", key)
        if key not in mig_devices:
            valid = ", ".join(mig_devices) or "none"
            raise ConfigError(f"{doc.where(ppath, key=True)}: placements for {key!r}, which mig-devices does not list (valid: {valid})")
        if len(starts) != mig_devices[key]:
            raise ConfigError(
                f"{doc.where(ppath)}: {len(starts)} placement(s) for {key!r} but mig-devices asks for {mig_devices[key]}"
            )
    # fit: on every model the filter names; without a filter, on at least one model offering every profile
    if raw.mig_enabled and mig_devices:
        if models:
            for m in models:
                w = entry.wants(m)
                if isinstance(w, str):
                    raise ConfigError(f"{entry.where}: {w}")
        elif not filters:
            offering = [m for m in all_models() if all(not isinstance(resolve_key(m, k), str) for k in mig_devices)]
            if not offering:
                warnings.append(f"{entry.where}: no catalog GPU offers all of {', '.join(mig_devices)}")
                return entry
            problems = [entry.wants(m) for m in offering]
            if all(isinstance(p, str) for p in problems):
                raise ConfigError(f"{entry.where}: {problems[0]}")
    return entry


def load_config(source: str | Path | dict[str, Any] | MigConfig, file: str | None = None) -> MigConfig:
    """Load and validate a mig-parted v1 config from a path, YAML text (with ``file``) or a dict."""
    if isinstance(source, MigConfig):
        return source
    if isinstance(source, dict):
        import yaml

        text = yaml.safe_dump(source, sort_keys=False)
        doc = parse_yaml(text, file or "<config>")
    elif isinstance(source, Path) or (isinstance(source, str) and file is None and "\n" not in source):
        doc = parse_yaml(read_text(source), str(source))
    else:
        doc = parse_yaml(str(source), file or "<config>")
    return validate_doc(doc)


def validate_doc(doc: YamlDoc) -> MigConfig:
    """Schema (pydantic) then semantic validation of a parsed config."""
    from pydantic import ValidationError

    from migctl.config.schema import ConfigFile

    if not isinstance(doc.data, dict):
        raise ConfigError(f"{doc.where(())}: expected a mapping with version and mig-configs, got {type(doc.data).__name__}")
    try:
        model = ConfigFile.model_validate(doc.data)
    except ValidationError as e:
        errs = e.errors()
        msg = pydantic_message(doc, errs[0], "config")
        more = len({tuple(x["loc"][:4]) for x in errs}) - 1
        raise ConfigError(msg + (f" (and {more} more problem(s))" if more > 0 else "")) from None
    entries: dict[str, list[Entry]] = {}
    warnings: list[str] = []
    for label, items in model.mig_configs.items():
        entries[label] = [_validate_entry(doc, label, i, raw, warnings) for i, raw in enumerate(items)]
    cfg = MigConfig(doc, model, entries)
    cfg.warnings = warnings
    return cfg


def placement_of(model: GpuModel, profile: str, start: int) -> Placement | None:
    gp = model.profile(profile)
    if gp is None:
        return None
    return next((p for p in gp.placements if p.start == start), None)
