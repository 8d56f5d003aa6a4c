"""``migctl catalog``: the hardware catalog (no GPU needed), and ``catalog --from-node``: a catalog data file
written from what NVML reports for this node's GPU (issue 8: a GPU the catalog does not know)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from migctl.cli.common import emit_json, fail, node
from migctl.cli.devices import GpuSel, JsonOpt, _select
from migctl.cli.render import UNCONFIRMED_LEGEND, gib, mark, out, placement_json, placements_text, table


# --------------------------------------------------------------------------------------------- catalog
def _catalog_models_json(models: list[Any]) -> list[dict[str, Any]]:
    return [
        {
            "key": m.key, "name": m.name, "architecture": m.architecture, "memory_mib": m.memory_mib,
            "sms": m.sms, "compute_slices": m.compute_slices, "memory_slices": m.memory_slices,
            "pci_device_ids": [f"0x{x:04X}" for x in m.pci_device_ids], "aliases": list(m.aliases),
            "gi_profiles": len(m.gi_profiles),
        }
        for m in models
    ]


def _driver_text(v: tuple[int, ...] | None) -> str | None:
    if v is None:
        return None
    return ".".join(str(x) for x in v)


def _catalog_model_json(m: Any) -> dict[str, Any]:
    return {
        "key": m.key, "name": m.name, "architecture": m.architecture, "memory_mib": m.memory_mib,
        "sms": m.sms, "compute_slices": m.compute_slices, "memory_slices": m.memory_slices,
        "pci_device_ids": [f"0x{x:04X}" for x in m.pci_device_ids], "aliases": list(m.aliases),
        "unconfirmed": sorted(m.unconfirmed), "sources": dict(m.sources), "notes": list(m.notes),
        "min_driver": _driver_text(m.min_driver),
        "gi_profiles": [
            {
                "id": p.id, "index": p.index, "index_name": p.index_name, "name": p.name, "slices": p.slices,
                "memory_mib": p.memory_mib, "sms": p.sms, "ce": p.ce, "dec": p.dec, "enc": p.enc,
                "jpeg": p.jpeg, "ofa": p.ofa, "max_instances": p.max_instances,
                "placements": [placement_json(pl) for pl in p.placements],
                "min_driver": _driver_text(p.min_driver),
                "unconfirmed": sorted(p.unconfirmed), "source": p.source,
                "ci_profiles": [
                    {
                        "id": c.id, "name": c.name, "slices": c.slices, "sms": c.sms,
                        "max_instances": c.max_instances, "placements": [placement_json(pl) for pl in c.placements],
                        "default": c.is_default, "unconfirmed": sorted(c.unconfirmed), "source": c.source,
                    }
                    for c in p.ci_profiles
                ],
            }
            for p in m.gi_profiles
        ],
    }


def _catalog_from_node(ctx: typer.Context, gpu: str | None, output: str | None, as_json: bool = False) -> None:
    """Write (or print) a catalog data file for the GPU(s) of this node, from what NVML reports."""
    import os

    from migctl.device.model import catalog_yaml

    texts: dict[str, str] = {}
    for g in _select(ctx, gpu):
        if not g.profiles():
            why = "it has no MIG" if not g.mig_capable() else (
                f"driver {node(ctx).driver_version} lists no profiles while MIG is disabled; enable MIG first")
            if gpu is not None:
                fail(f"GPU {g.index} ({g.name}): no MIG profiles to write: {why}")
            continue
        texts.setdefault(g.model.key, catalog_yaml(g))
    if not texts:
        fail("no GPU of this node reports MIG profiles; nothing to write (enable MIG on a MIG-capable GPU first)")
    if output is None:
        if as_json:
            emit_json({"written": None, "models": texts})
            return
        out("\n---\n".join(texts.values()).rstrip("\n"))
        return
    if len(texts) > 1:
        fail(f"this node has {len(texts)} GPU models ({', '.join(texts)}); pick one with -i for -o FILE")
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        fail(f"{output} exists; migctl does not overwrite it (choose another -o FILE)")
    except OSError as e:
        fail(f"cannot create {output}: {e.strerror}")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(next(iter(texts.values())))
    if as_json:
        emit_json({"written": output, "models": texts})
        return
    out(f"Wrote {output} ({next(iter(texts))}); check its unconfirmed values, then contribute it as "
        "src/migctl/catalog/data/<model>.yaml")


def catalog_cmd(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Argument(help="A model key or alias (e.g. H100-80GB, A30); all models when omitted.")] = None,
    as_json: JsonOpt = False,
    sources: Annotated[bool, typer.Option("--sources", help="Show where every value comes from.")] = False,
    from_node: Annotated[bool, typer.Option("--from-node", help="Write a catalog file from what NVML reports for "
                                            "this node's GPU (for a GPU the catalog does not know).")] = False,
    gpu: GpuSel = None,
    output: Annotated[str | None, typer.Option("-o", "--output", help="With --from-node: the file to create "
                                               "(0600, never overwritten); stdout when omitted.")] = None,
) -> None:
    """The MIG hardware catalog: models, or one model's GI and CI profiles (no GPU needed)."""
    from migctl.catalog import all_models, load_model

    if from_node:
        if model is not None:
            fail("--from-node reads the node's GPUs; give -i GPU, not a MODEL")
        _catalog_from_node(ctx, gpu, output, as_json)
        return
    if gpu is not None or output is not None:
        fail("-i and -o go with --from-node")
    if model is None:
        models = all_models()
        if as_json:
            emit_json({"models": _catalog_models_json(models)})
            return
        t = table("Model", "Name", "Arch", "Memory MiB", "SMs", "Slices C/M", "Profiles", "PCI device IDs",
                  right=("Memory MiB", "SMs", "Profiles"))
        for m in models:
            t.add_row(m.key, m.name, m.architecture, str(m.memory_mib), str(m.sms),
                      f"{m.compute_slices}/{m.memory_slices}", str(len(m.gi_profiles)),
                      ",".join(f"{x:04X}" for x in m.pci_device_ids))
        out(t)
        out("`migctl catalog MODEL` shows a model's profiles.")
        return

    m = load_model(model)
    if as_json:
        emit_json(_catalog_model_json(m))
        return
    any_unconfirmed = bool(m.unconfirmed)
    out(f"{m.name} ({m.key}{', ' + m.architecture if m.architecture else ''}): {mark(m.memory_mib, 'memory_mib', m.unconfirmed)} MiB, "
        f"{mark(m.sms, 'sms', m.unconfirmed)} SMs, {m.compute_slices} compute slices, {m.memory_slices} memory slices; "
        f"PCI device IDs {', '.join(f'0x{x:04X}' for x in m.pci_device_ids)}")
    if m.aliases:
        out(f"Aliases: {', '.join(m.aliases)}")
    if m.min_driver:
        out(f"MIG from driver {_driver_text(m.min_driver)}")
    with_driver = any(p.min_driver for p in m.gi_profiles)
    cols = ["ID", "Index", "Name", "Memory MiB", "GiB", "SMs", "CE", "DEC", "ENC", "JPEG", "OFA", "Max", "Placements"]
    if with_driver:
        cols.append("Min driver")
    gt = table(*cols, title="GPU instance profiles", right=cols[3:12])
    for p in m.gi_profiles:
        u = p.unconfirmed
        any_unconfirmed = any_unconfirmed or bool(u)
        row = [mark(p.id, "id", u), p.index_name, mark(p.name, "name", u), mark(p.memory_mib, "memory_mib", u),
               mark(gib(p.memory_mib), "memory_mib", u), mark(p.sms, "sms", u), mark(p.ce, "ce", u),
               mark(p.dec, "dec", u), mark(p.enc, "enc", u), mark(p.jpeg, "jpeg", u), mark(p.ofa, "ofa", u),
               mark(p.max_instances, "max_instances", u), mark(placements_text(p.placements), "placements", u)]
        if with_driver:
            row.append(mark(_driver_text(p.min_driver) or "", "min_driver", u))
        gt.add_row(*row)
    out(gt)
    ct = table("GI profile", "CI ID", "Name", "SMs", "Max", "Placements", title="Compute instance profiles (* = default)",
               right=("SMs", "Max"))
    for p in m.gi_profiles:
        for i, c in enumerate(p.ci_profiles):
            u = c.unconfirmed
            any_unconfirmed = any_unconfirmed or bool(u)
            ct.add_row(f"{p.name} ({p.id})" if i == 0 else "", mark(f"{c.id}{'*' if c.is_default else ''}", "id", u),
                       mark(c.name, "name", u), mark(c.sms, "sms", u), mark(c.max_instances, "max_instances", u),
                       mark(placements_text(c.placements), "placements", u))
    out(ct)
    if any_unconfirmed:
        out(UNCONFIRMED_LEGEND)
    if sources:
        out("")
        out("Sources:")
        for k, v in m.sources.items():
            out(f"  [{k}] {v}")
        for p in m.gi_profiles:
            out(f"  {p.name} ({p.id}): {p.source or '-'}")
            for c in p.ci_profiles:
                if c.source:
                    out(f"    {c.name} (CI {c.id}): {c.source}")
        for n in m.notes:
            out(f"  note: {n}")
