"""NVML first: a GPU's MIG model built from what the driver reports, and how it differs from the catalog.

On a real GPU the driver is the source of truth for profiles (IDs, names, slices, memory, engines, instance
counts) and GI placements; the catalog annotates and validates. CI profiles can only be asked of an existing GPU
instance (nvmlGpuInstanceGetComputeInstanceProfileInfo takes a GI handle), so the model's CI profiles come from
the catalog when it knows the GI profile, else from go-nvlib's CI rule (marked UNCONFIRMED); the CI profiles and
placements of a live GI are always read from NVML (:meth:`migctl.device.api.GpuInstance.ci_profiles`).
"""

from __future__ import annotations

from typing import Any

from migctl.catalog.loader import derive_ci_profiles
from migctl.catalog.model import CIProfile, GIProfile, GpuModel, gi_index_name, parse_driver


def derived_key(name: str) -> str:
    """A model key for a GPU the catalog does not know: ``NVIDIA B300 SXM6 AC`` -> ``B300-SXM6-AC``."""
    text = name.removeprefix("NVIDIA ").strip()
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").upper() or "UNKNOWN"


def model_from_nvml(gpu: Any) -> GpuModel:
    """The :class:`GpuModel` NVML reports for ``gpu`` (a :class:`migctl.device.api.Gpu` with profiles)."""
    infos = gpu.profiles()
    cat: GpuModel | None = gpu.catalog_model
    total = gpu.total_memory_mib()
    live = _live_ci_profiles(gpu)
    profiles = []
    for p in infos:
        starts = tuple(pl.start for pl in p.placements)
        size = p.placements[0].size if p.placements else 0
        cat_p = cat.profile(p.id) if cat is not None else None
        if p.id in live:
            cis = live[p.id]  # read from NVML on a live GI of this profile (placements too, R525+)
            ci_unconfirmed = False
        elif cat_p is not None and cat_p.name == p.name and cat_p.slices == p.slices:
            cis = cat_p.ci_profiles
            ci_unconfirmed = False
        else:
            raw = derive_ci_profiles({"slices": p.slices, "sms": p.sms}, total, None)
            cis = tuple(
                CIProfile(id=int(c["id"]), slices=int(c["slices"]), sms=int(c["sms"]),
                          max_instances=int(c["max_instances"]), placement_starts=tuple(c["starts"]),
                          placement_size=int(c["size"]), is_default=bool(c["default"]),
                          name=p.name if c["slices"] == p.slices else f"{c['slices']}c.{p.name}",
                          unconfirmed=frozenset(c["unconfirmed"]), source=str(c["source"]))
                for c in raw
            )
            ci_unconfirmed = True
        profiles.append(
            GIProfile(
                id=p.id, index_name=gi_index_name(p.index), slices=p.slices, memory_mib=p.memory_mib, sms=p.sms,
                ce=p.ce, dec=p.dec, enc=p.enc, jpeg=p.jpeg, ofa=p.ofa, max_instances=p.instance_count,
                placement_starts=starts, placement_size=size, name=p.name, ci_profiles=cis,
                unconfirmed=frozenset({"ci_profiles"}) if ci_unconfirmed else frozenset(),
                source=f"NVML, driver {gpu.node.driver_version}", p2p=p.p2p,
            )
        )
    grid = max((pl.end for p in infos for pl in p.placements), default=0)
    compute = max((p.slices for p in infos), default=0)
    sms = max((p.sms for p in infos), default=0)
    return GpuModel(
        key=cat.key if cat is not None else derived_key(gpu.name),
        name=gpu.name,
        pci_device_ids=(gpu.pci_device_id >> 16,),
        memory_mib=total,
        sms=cat.sms if cat is not None else sms,
        compute_slices=compute,
        memory_slices=grid,
        gi_profiles=tuple(profiles),
        architecture=cat.architecture if cat is not None else "",
        power_cap_w=cat.power_cap_w if cat is not None else 0,
        bar1_mib=cat.bar1_mib if cat is not None else 0,
        aliases=cat.aliases if cat is not None else (),
        unconfirmed=cat.unconfirmed if cat is not None else frozenset({"sms", "ci_profiles"}),
        sources={"NVML": f"read from driver {gpu.node.driver_version}"} | (dict(cat.sources) if cat else {}),
        notes=cat.notes if cat is not None else (),
    )


def _live_ci_profiles(gpu: Any) -> dict[int, tuple[CIProfile, ...]]:
    """CI profiles as NVML reports them, for each GI profile that has a live GI (CI profile info needs a GI)."""
    import pynvml as N

    out: dict[int, tuple[CIProfile, ...]] = {}
    try:
        if gpu.mig_mode()[0] != 1:
            return out
        gis = gpu.gpu_instances()
    except N.NVMLError:
        return out
    for gi in gis:
        if gi.profile_id in out:
            continue
        cis = []
        for c in gi.ci_profiles():
            sizes = {pl.size for pl in c.placements}
            if len(sizes) != 1:
                break  # placements unknown (no NVML call before R525) or not uniform: keep the catalog's
            cis.append(CIProfile(id=c.id, slices=c.slices, sms=c.sms, max_instances=c.instance_count,
                                 placement_starts=tuple(pl.start for pl in c.placements),
                                 placement_size=sizes.pop(), is_default=c.is_default, name=c.name,
                                 source=f"NVML, driver {gpu.node.driver_version}"))
        else:
            if cis and sum(1 for c in cis if c.is_default) == 1:
                out[gi.profile_id] = tuple(cis)
    return out


def differences(gpu: Any) -> list[str]:
    """Lines naming what NVML reports differently from the catalog for ``gpu`` (empty when they agree)."""
    cat: GpuModel | None = gpu.catalog_model
    infos = gpu.profiles()
    if cat is None:
        if not infos:
            return []
        return [f"GPU {gpu.index} ({gpu.name}, PCI id {gpu.pci_device_id:#010x}) is not in migctl's catalog; "
                "using the profiles NVML reports (`migctl catalog --from-node -i "
                f"{gpu.index} -o FILE` writes a catalog file to contribute)"]
    if not infos:
        return []
    drv = parse_driver(gpu.node.driver_version)
    want = {p.id: p for p in cat.profiles_on(drv)}
    have = {p.id: p for p in infos}
    out = []
    for pid in sorted(set(have) - set(want)):
        out.append(f"profile {pid} ({have[pid].name}) is offered by the driver but not in the catalog")
    for pid in sorted(set(want) - set(have)):
        out.append(f"profile {pid} ({want[pid].name}) is in the catalog but not offered by driver "
                   f"{gpu.node.driver_version}")
    for pid in sorted(set(want) & set(have)):
        c, n = want[pid], have[pid]
        pairs = [("name", c.name, n.name), ("slices", c.slices, n.slices),
                 ("memory MiB", c.memory_on(drv), n.memory_mib), ("SMs", c.sms, n.sms),
                 ("instances", c.max_instances, n.instance_count), ("CE", c.ce, n.ce), ("DEC", c.dec, n.dec),
                 ("ENC", c.enc, n.enc), ("JPEG", c.jpeg, n.jpeg), ("OFA", c.ofa, n.ofa)]
        if n.placements:
            pairs.append(("placements", " ".join(map(str, c.placements)), " ".join(map(str, n.placements))))
        for what, a, b in pairs:
            if a != b:
                out.append(f"profile {pid} ({n.name}): {what} catalog {a}, NVML {b}")
    if out:
        out.insert(0, f"GPU {gpu.index} ({cat.key}): NVML (driver {gpu.node.driver_version}) differs from the "
                      f"catalog; migctl uses NVML's values")
    return out


def catalog_yaml(gpu: Any) -> str:
    """A catalog data file (``catalog/data/*.yaml`` format) for ``gpu``, from NVML, for a user to contribute."""
    import yaml

    m = model_from_nvml(gpu)
    from migctl.catalog.model import profile_name

    profiles = []
    for p in m.gi_profiles:
        entry: dict[str, Any] = {
            "id": p.id, "index": p.index_name, "name": p.name, "slices": p.slices, "memory_mib": p.memory_mib,
            "sms": p.sms, "ce": p.ce, "dec": p.dec, "enc": p.enc, "jpeg": p.jpeg, "ofa": p.ofa,
            "max_instances": p.max_instances,
            "placements": {"starts": list(p.placement_starts), "size": p.placement_size},
            "source": f"NVML, driver {gpu.node.driver_version}",
        }
        if profile_name(p.slices, p.memory_mib, m.memory_mib, p.suffix) != p.name:
            # the driver's name does not follow go-nvlib's rule with this total: keep it as a comment-like note
            entry["source"] += f"; NVML name {p.name!r} differs from the go-nvlib rule"
            del entry["name"]
        entry["ci_profiles"] = [
            {"id": c.id, "slices": c.slices, "sms": c.sms, "max_instances": c.max_instances,
             "starts": list(c.placement_starts), "size": c.placement_size, "default": c.is_default,
             "unconfirmed": sorted(c.unconfirmed), "source": c.source or "catalog"}
            for c in p.ci_profiles
        ]
        profiles.append(entry)
    data = {
        "key": m.key, "name": m.name, "architecture": m.architecture or "UNKNOWN",
        "pci_device_ids": list(m.pci_device_ids), "memory_mib": m.memory_mib, "sms": m.sms,
        "compute_slices": m.compute_slices, "memory_slices": m.memory_slices,
        "unconfirmed": sorted(set(m.unconfirmed) | {"architecture", "power_cap_w", "bar1_mib"}),
        "sources": {"NVML": f"read by `migctl catalog --from-node` from driver {gpu.node.driver_version}; CI profiles "
                            "not read from a live GI are derived (go-nvlib rule) and marked unconfirmed"},
        "gi_profiles": profiles,
    }
    header = (f"# {m.name}: written by `migctl catalog --from-node` from NVML (driver {gpu.node.driver_version}).\n"
              "# Check the unconfirmed values, then contribute it as src/migctl/catalog/data/<model>.yaml.\n")
    return header + yaml.safe_dump(data, sort_keys=False)
