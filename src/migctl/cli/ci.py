"""``migctl ci profiles|create|destroy|list``: compute instances (nvidia-smi mig -lcip/-cci/-dci/-lci).

The conventions of :mod:`migctl.cli.devices` (whose helpers these verbs use) hold here too.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from migctl.cli.common import emit_json, fail, node
from migctl.cli.devices import (
    EXIT_DEVICE,
    EXIT_INPUT,
    LOCK_WAIT_S,
    GpuSel,
    JsonOpt,
    LockOpt,
    _device_error,
    _find_gis,
    _gi_list,
    _guarded_destroy,
    _mig_enabled,
    _nvml,
    _pls,
    _require_mig_enabled,
    _select,
)
from migctl.cli.guard import busy_cis, node_locked
from migctl.cli.render import id_list, out, parse_ids, placement_json, placements_text, table
from migctl.inputs import is_digits

ci_app = typer.Typer(
    help="Compute instances: profiles, create, destroy, list (nvidia-smi mig -lcip/-cci/-dci/-lci).", no_args_is_help=True
)


# --------------------------------------------------------------------------------------------- ci
def _ci_profile(gi: Any, token: str) -> Any:
    text = token.strip()
    profs = gi.ci_profiles()
    if is_digits(text):
        found = next((p for p in profs if p.id == int(text)), None)
    else:
        if text.upper().startswith("MIG "):
            text = text[4:].strip()
        found = next((p for p in profs if p.name == text), None)
    if found is None:
        valid = ", ".join(f"{p.id}{'*' if p.is_default else ''} ({p.name})" for p in profs)
        fail(f"unknown compute instance profile {token!r} for GPU instance {gi.id} ({gi.profile().name}) on GPU "
             f"{gi.gpu.index}; valid: {valid} (* = default)", EXIT_INPUT)
    return found


def _select_gis(ctx: typer.Context, gpu: str | None, gi: str | None) -> list[tuple[Any, list[Any]]]:
    ids = parse_ids(gi, "--gi") if gi is not None else None
    gpus = _select(ctx, gpu)
    if ids is not None:
        _require_mig_enabled(gpus)
        return [(g, _find_gis(g, ids)) for g in gpus]
    return [(g, _gi_list(g)) for g in _mig_enabled(gpus)]


GiOpt = Annotated[str | None, typer.Option("--gi", "-gi", help="GPU instance IDs, comma-separated (default: all).")]


@ci_app.command("profiles")
def ci_profiles(ctx: typer.Context, gpu: GpuSel = None, gi: GiOpt = None, as_json: JsonOpt = False) -> None:
    """Compute instance profiles of GPU instances (nvidia-smi mig -lcip -gi ID); * marks the default."""
    rows = []
    for g, gis in _select_gis(ctx, gpu, gi):
        for x in gis:
            profs = []
            for p in x.ci_profiles():
                profs.append({"id": p.id, "name": p.name, "default": p.is_default, "free": x.ci_remaining(p.id),
                              "total": p.instance_count, "slices": p.slices, "sms": p.sms, "ce": p.ce, "dec": p.dec,
                              "enc": p.enc, "jpeg": p.jpeg, "ofa": p.ofa,
                              "placements": [placement_json(pl) for pl in p.placements]})
            rows.append({"gpu": g.index, "gi_id": x.id, "gi_profile": x.profile().name, "profiles": profs})
    if as_json:
        emit_json({"gpu_instances": rows})
        return
    if not rows:
        out("No GPU instances found.")
        return
    t = table("GPU", "GI", "Name", "ID", "Free/Total", "SMs", "CE", "DEC", "ENC", "JPEG", "OFA", "Placements",
              title="Compute instance profiles (* = default)",
              right=("GPU", "GI", "ID", "Free/Total", "SMs", "CE", "DEC", "ENC", "JPEG", "OFA"))
    for r in rows:
        for p in r["profiles"]:
            t.add_row(str(r["gpu"]), str(r["gi_id"]), "MIG " + p["name"], f"{p['id']}{'*' if p['default'] else ''}",
                      f"{p['free']}/{p['total']}", str(p["sms"]), str(p["ce"]), str(p["dec"]), str(p["enc"]),
                      str(p["jpeg"]), str(p["ofa"]), placements_text(_pls(p["placements"])))
    out(t)


def _create_cis(N: Any, plan: list[tuple[Any, Any, list[Any]]], as_json: bool
                ) -> tuple[list[dict[str, Any]], str | None]:
    created: list[dict[str, Any]] = []
    error = None
    for g, x, profs in plan:
        for p in profs:
            try:
                ci = x.create_ci(p.id)
            except N.NVMLError as e:
                existing = ", ".join(f"CI {c.id} ({c.profile().name if c.profile() else c.profile_id}) at {c.placement}"
                                     for c in x.compute_instances()) or "none"
                error = (f"cannot create compute instance {p.name} (CI profile {p.id}) in GPU instance {x.id} on GPU "
                         f"{g.index}: {e}; existing compute instances: {existing}; free: {x.ci_remaining(p.id)}")
                break
            dev = ci.mig_device()
            created.append({"gpu": g.index, "gi_id": x.id, "ci_id": ci.id, "profile_id": p.id, "profile": p.name,
                            "placement": placement_json(ci.placement), "uuid": dev.uuid if dev else None})
            if not as_json:
                out(f"Created compute instance {ci.id} on GPU {g.index} GPU instance {x.id}: MIG {p.name} "
                    f"(CI profile {p.id}){', ' + dev.uuid if dev else ''}")
        if error:
            break
    return created, error


@ci_app.command("create")
def ci_create(
    ctx: typer.Context,
    profiles: Annotated[list[str] | None, typer.Argument(
        help="CI profiles (ID or name, e.g. 1c.3g.40gb), comma-separated; the default CI profile when omitted.",
        metavar="PROFILES")] = None,
    gpu: GpuSel = None,
    gi: Annotated[str | None, typer.Option("--gi", "-gi", help="GPU instance IDs (default: every GI with no CI yet).")] = None,
    as_json: JsonOpt = False,
    lock_timeout: LockOpt = LOCK_WAIT_S,
) -> None:
    """Create compute instances (nvidia-smi mig -cci [PROFILES] -gi ID), in order, stopping at the first failure."""
    N = _nvml()
    tokens = [t.strip() for arg in profiles or [] for t in arg.split(",") if t.strip()]
    targets = _select_gis(ctx, gpu, gi)
    if gi is None:
        targets = [(g, [x for x in gis if not x.compute_instances()]) for g, gis in targets]
    if not any(gis for _, gis in targets):
        fail("no GPU instance to create compute instances in" + (" (every GPU instance already has one)" if gi is None
             else "") + "; name one with --gi ID (see `migctl gi list`)", EXIT_INPUT)
    plan = []
    for g, gis in targets:
        for x in gis:
            profs = [_ci_profile(x, t) for t in tokens] if tokens else [next(p for p in x.ci_profiles() if p.is_default)]
            plan.append((g, x, profs))
    with node_locked(node(ctx), "migctl ci create", lock_timeout):
        created, error = _create_cis(N, plan, as_json)
    if as_json:
        emit_json({"created": created, "error": error})
    if error:
        fail(error, EXIT_DEVICE)


@ci_app.command("destroy")
def ci_destroy(
    ctx: typer.Context,
    gpu: GpuSel = None,
    gi: GiOpt = None,
    ci: Annotated[str | None, typer.Option("--ci", "-ci", help="Compute instance IDs, comma-separated (needs --gi).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Destroy every CI of the selected GPU instances.")] = False,
    as_json: JsonOpt = False,
    lock_timeout: LockOpt = LOCK_WAIT_S,
) -> None:
    """Destroy compute instances (nvidia-smi mig -dci [-ci IDS] -gi IDS); refused while anything holds one
    (as `gi destroy`)."""
    N = _nvml()
    if ci is None and not all_:
        fail("name the compute instances with --gi ID --ci IDS, or use --all (see `migctl ci list`)", EXIT_INPUT)
    if ci is not None and all_:
        fail("--ci and --all are exclusive; use one", EXIT_INPUT)
    if ci is not None and gi is None:
        fail("--ci needs --gi (compute instance IDs are per GPU instance)", EXIT_INPUT)
    ci_ids = parse_ids(ci, "--ci") if ci is not None else None
    _guarded_destroy(ctx, "ci destroy", lock_timeout, lambda: _ci_targets(ctx, gpu, gi, ci_ids), busy_cis,
                     lambda plan: _destroy_cis(N, plan, as_json), as_json, "No compute instances to destroy.")


def _ci_targets(ctx: typer.Context, gpu: str | None, gi: str | None, ci_ids: list[int] | None
                ) -> list[tuple[Any, Any, list[Any]]]:
    plan = []
    for g, gis in _select_gis(ctx, gpu, gi):
        for x in gis:
            cis = x.compute_instances()
            if ci_ids is not None:
                have = {c.id: c for c in cis}
                missing = [i for i in ci_ids if i not in have]
                if missing:
                    fail(f"GPU instance {x.id} on GPU {g.index} has no compute instance {id_list(missing)}; existing: "
                         f"{id_list(sorted(have))}", EXIT_INPUT)
                cis = [have[i] for i in ci_ids]
            plan.append((g, x, cis))
    return plan


def _destroy_cis(N: Any, plan: list[tuple[Any, Any, list[Any]]], as_json: bool
                 ) -> tuple[list[dict[str, Any]], str | None]:
    destroyed = []
    error = None
    for g, x, cis in plan:
        for c in cis:
            try:
                c.destroy()
            except N.NVMLError as e:
                error = _device_error(f"cannot destroy compute instance {c.id} of GPU instance {x.id} on GPU {g.index}", e)
                break
            destroyed.append({"gpu": g.index, "gi_id": x.id, "ci_id": c.id})
            if not as_json:
                out(f"Destroyed compute instance {c.id} from GPU {g.index} GPU instance {x.id}")
        if error:
            break
    return destroyed, error


@ci_app.command("list")
def ci_list(ctx: typer.Context, gpu: GpuSel = None, gi: GiOpt = None, as_json: JsonOpt = False) -> None:
    """List compute instances (nvidia-smi mig -lci) with their MIG device index and UUID."""
    rows = []
    for g, gis in _select_gis(ctx, gpu, gi):
        devs = {(d.gi_id, d.ci_id): d for d in g.mig_devices()}
        for x in gis:
            for c in x.compute_instances():
                p = c.profile()
                d = devs.get((x.id, c.id))
                rows.append({"gpu": g.index, "gi_id": x.id, "ci_id": c.id, "profile_id": c.profile_id,
                             "profile": p.name if p else None, "placement": placement_json(c.placement),
                             "mig_device": d.index if d else None, "uuid": d.uuid if d else None})
    if as_json:
        emit_json({"compute_instances": rows})
        return
    if not rows:
        out("No compute instances found.")
        return
    t = table("GPU", "GI", "CI", "Name", "Profile ID", "Placement", "Device", "UUID",
              right=("GPU", "GI", "CI", "Profile ID", "Device"))
    for r in rows:
        t.add_row(str(r["gpu"]), str(r["gi_id"]), str(r["ci_id"]), "MIG " + (r["profile"] or "?"), str(r["profile_id"]),
                  f"{r['placement']['start']}:{r['placement']['size']}",
                  "" if r["mig_device"] is None else str(r["mig_device"]), r["uuid"] or "")
    out(t)
