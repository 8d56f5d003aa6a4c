"""Core verbs: gpus, catalog, profiles, placements, mode, reset, gi ..., ci ....

Each verb mirrors an nvidia-smi command (named in its help) and works the same on real GPUs and on
the simulator. Conventions shared by all of them:

* -i/--gpu selects GPUs as nvidia-smi does (indices, UUIDs or PCI bus ids, comma-separated; all by default);
* every listing takes --json (keys documented in docs/cli.md);
* bad input is checked for *all* targets before anything changes, and fails with one line naming what was
  wrong and what is valid (exit 2); an operation the device refuses exits 1.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from migctl.cli.common import emit_json, fail, node, seconds
from migctl.cli.guard import LOCK_WAIT_S, busy_gis, busy_gpus, held_by_migctl, node_locked
from migctl.cli.render import (
    gib,
    id_list,
    mode_name,
    note,
    out,
    parse_ids,
    pids_text,
    placement_json,
    placements_text,
    table,
)

# exit codes
EXIT_DEVICE = 1  # the device refused or failed the operation (e.g. Insufficient Resources, an NVML error)
EXIT_BUSY = 3  # instances or GPUs in use: refused before anything changed (the same code as apply's)
EXIT_INPUT = 2  # bad input; nothing was changed

GpuSel = Annotated[
    str | None,
    typer.Option("-i", "--gpu", "--id", help="GPUs: comma-separated indices, UUIDs or PCI bus ids (default: all)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output (keys documented in docs/cli.md).")]
LockOpt = Annotated[float, typer.Option(
    "--lock-timeout", callback=seconds,
    help="Seconds to wait for the node lock that apply, run and the worker hold while they change instances (0: fail at once).")]

gi_app = typer.Typer(help="GPU instances: create, destroy, list (nvidia-smi mig -cgi/-dgi/-lgi).", no_args_is_help=True)


# --------------------------------------------------------------------------------------------- helpers
def _nvml() -> Any:
    import pynvml

    return pynvml


def _select(ctx: typer.Context, spec: str | None) -> list[Any]:
    return node(ctx).select(spec)


def _gpu_label(gpu: Any) -> str:
    return f"GPU {gpu.index} ({gpu.bus_id})"


def _device_error(action: str, e: BaseException) -> str:
    """One line for an NVML failure, with a hint for the common ones."""
    N = _nvml()
    text = str(e)
    if isinstance(e, N.NVMLError_NoPermission):
        text += " (MIG configuration needs root)"
    return f"{action}: {text}"


def _require_mig_enabled(gpus: list[Any]) -> None:
    """Bad input unless every selected GPU has MIG mode enabled now."""
    bad = []
    for g in gpus:
        cur, pending = g.mig_state()
        if cur != 1:
            why = "not MIG capable" if cur is None else "MIG mode disabled" + (", enable pending" if pending == 1 else "")
            bad.append(f"GPU {g.index} ({why})")
    if bad:
        enabled = [str(g.index) for g in gpus[0].node.gpus() if g.mig_state()[0] == 1] if gpus else []
        hint = f"MIG-enabled GPUs: {','.join(enabled)} (select with -i)" if enabled else "enable it with `migctl mode enable`"
        fail(f"MIG mode is not enabled on {', '.join(bad)}; {hint}", EXIT_INPUT)


def _mig_enabled(gpus: list[Any]) -> list[Any]:
    return [g for g in gpus if g.mig_state()[0] == 1]


def _procs(gpu: Any) -> list[Any]:
    N = _nvml()
    try:
        return gpu.processes()
    except N.NVMLError:
        return []


def _profiles_text(gpu: Any) -> str:
    return ", ".join(f"{p.id} ({p.name})" for p in gpu.profiles())


def _catalog_profile(gpu: Any, profile_id: int) -> Any:
    return gpu.model.profile(profile_id) if gpu.model is not None else None


def _free_placements(gpu: Any, profile_id: int, gis: list[Any] | None = None) -> list[Any] | None:
    """Placements where a GI of profile_id fits now (catalog geometry over the live GIs); None if unknown."""
    from migctl.catalog.geometry import PlacedGI, free_placements

    model = gpu.model
    prof = _catalog_profile(gpu, profile_id)
    if model is None or prof is None:
        return None
    placed = []
    for g in gpu.gpu_instances() if gis is None else gis:
        p = _catalog_profile(gpu, g.profile_id)
        if p is None:
            return None
        placed.append(PlacedGI(p, g.placement))
    return free_placements(model, placed, prof)


def _gi_json(gpu: Any, gi: Any) -> dict[str, Any]:
    prof = gi.profile()
    return {
        "gpu": gpu.index,
        "gi_id": gi.id,
        "profile_id": gi.profile_id,
        "profile": prof.name,
        "placement": placement_json(gi.placement),
        "memory_mib": prof.memory_mib,
        "sms": prof.sms,
        "compute_instances": [c.id for c in gi.compute_instances()],
    }


def _gi_list(gpu: Any) -> list[Any]:
    N = _nvml()
    try:
        return gpu.gpu_instances()
    except N.NVMLError_NotSupported:
        return []


def _find_gis(gpu: Any, ids: list[int] | None) -> list[Any]:
    """The GIs named by ids on gpu (all when None); bad input if one does not exist."""
    gis = gpu.gpu_instances()
    if ids is None:
        return gis
    by_id = {g.id: g for g in gis}
    missing = [i for i in ids if i not in by_id]
    if missing:
        fail(
            f"GPU {gpu.index} has no GPU instance {id_list(missing)}; existing GPU instance IDs: {id_list(sorted(by_id))}",
            EXIT_INPUT,
        )
    return [by_id[i] for i in ids]


# --------------------------------------------------------------------------------------------- gpus
def gpus_cmd(
    ctx: typer.Context, gpu: GpuSel = None, as_json: JsonOpt = False,
    show_map: Annotated[bool, typer.Option("--map", help="Draw each GPU's memory and compute slices.")] = False,
    svg: Annotated[Path | None, typer.Option("--svg", help="Also write the slice map as an SVG image.")] = None,
) -> None:
    """List GPUs and the MIG devices under each (like nvidia-smi -L), with bus id and MIG mode."""
    n = node(ctx)
    if show_map or svg is not None:
        _gpus_map(n, gpu, show_map, svg)
        return
    rows = []
    for g in n.select(gpu):
        cur, pending = g.mig_state()
        devs = []
        for d in g.mig_devices() if cur == 1 else []:
            used = _used_mib(d)
            devs.append({"index": d.index, "profile": d.profile_name, "gi_id": d.gi_id, "ci_id": d.ci_id,
                         "uuid": d.uuid, "memory_mib": d.memory_mib, "memory_used_mib": used, "sms": d.sms})
        from migctl.instance_journal import orphan_gis

        orphans = [{"gi_id": gi.id, "profile_id": gi.profile_id, "start": gi.placement.start,
                    "size": gi.placement.size} for gi in (orphan_gis(g) if cur == 1 else [])]
        rows.append({
            "index": g.index, "name": g.name, "uuid": g.uuid, "bus_id": g.bus_id,
            "model": g.model.key if g.model is not None else None,
            "mig_capable": cur is not None,
            "mig_current": None if cur is None else cur == 1,
            "mig_pending": None if pending is None else pending == 1,
            "mig_devices": devs,
            "catalog_differences": g.catalog_differences() if cur is not None else [],
            "orphan_gis": orphans,  # GPU instances without a compute instance: no MIG device, unusable
        })
    for r in rows:  # NVML is the source of truth; say where the catalog disagrees or does not know the GPU
        for line in r["catalog_differences"]:
            note(f"migctl: warning: {line}")
    if as_json:
        emit_json({"backend": n.backend, "driver_version": n.driver_version, "gpus": rows})
        return
    from rich.text import Text

    for r in rows:
        if not r["mig_capable"]:
            mode = "MIG N/A"
        else:
            mode = "MIG " + mode_name(int(r["mig_current"]))
            if r["mig_pending"] != r["mig_current"]:
                mode += f" (pending {mode_name(int(r['mig_pending'])).lower()}: `migctl reset -i {r['index']}`)"
        line = Text(f"GPU {r['index']}: {r['name']} (UUID: {r['uuid']})  {r['bus_id']}  ")
        line.append(mode, style="bold" if r["mig_current"] else "")
        out(line)
        for d in r["mig_devices"]:
            used = "" if d["memory_used_mib"] is None else f"  {d['memory_used_mib']} MiB used"
            out(f"  {'MIG ' + d['profile']:<15} Device {d['index']:>2}: (UUID: {d['uuid']})  "
                f"GI {d['gi_id']:>2}  CI {d['ci_id']}  {d['memory_mib']} MiB  {d['sms']} SMs{used}")
        for o in r["orphan_gis"]:
            out(f"  GI {o['gi_id']:>2} (profile {o['profile_id']}, slices {o['start']}+{o['size']}): no compute "
                "instance, unusable (`migctl recover` removes one a crashed migctl left; `migctl gi destroy` any)")
    if not rows:
        out("No GPUs found.")


def _used_mib(d: Any) -> int | None:
    """Memory used on the MIG device (its GPU instance) as NVML reports it; None where NVML declines."""
    import pynvml

    try:
        return int(d.memory()[0])
    except pynvml.NVMLError:
        return None


def _gpus_map(n: Any, gpu: str | None, show: bool, svg: Path | None) -> None:
    from migctl.cli.observe import show_picture, write_svg
    from migctl.observe.picture import picture
    from migctl.observe.snapshot import Observer
    from migctl.observe.state import StateReader

    wanted = {g.index for g in n.select(gpu)}
    maps = [m for m in Observer(n, leases=StateReader(n).leases).snapshot().gpus if m.index in wanted]
    if show:
        show_picture(picture(maps))
    if svg is not None:
        write_svg(svg, maps, "migctl gpus --map")
        if show:
            note(f"slice map written to {svg}")


# --------------------------------------------------------------------------------------------- profiles
def profiles_cmd(ctx: typer.Context, gpu: GpuSel = None, as_json: JsonOpt = False) -> None:
    """GPU instance profiles each GPU offers, with Free/Total (nvidia-smi mig -lgip), from NVML."""
    N = _nvml()
    result = []
    for g in _select(ctx, gpu):
        cur, _ = g.mig_state()
        entry: dict[str, Any] = {"index": g.index, "name": g.name, "mig_capable": cur is not None,
                                 "mig_enabled": cur == 1, "profiles": []}
        if cur is not None:
            for p in g.profiles():
                try:
                    free: int | None = g.remaining(p.id) if cur == 1 else None
                except N.NVMLError_NotSupported:
                    free = None
                entry["profiles"].append({
                    "id": p.id, "index": p.index, "name": p.name, "slices": p.slices, "free": free,
                    "total": p.instance_count, "memory_mib": p.memory_mib, "sms": p.sms, "ce": p.ce, "dec": p.dec,
                    "enc": p.enc, "jpeg": p.jpeg, "ofa": p.ofa, "p2p": p.p2p,
                    "placements": [placement_json(pl) for pl in p.placements],
                })
        result.append(entry)
    if as_json:
        emit_json({"gpus": result})
        return
    cols = ("GPU", "Name", "ID", "Free/Total", "Memory MiB", "GiB", "P2P", "SMs", "CE", "DEC", "ENC", "JPEG", "OFA",
            "Placements")
    t = table(*cols, title="GPU instance profiles", right=("GPU", "ID", "Free/Total", "Memory MiB", "GiB", "SMs", "CE",
                                                           "DEC", "ENC", "JPEG", "OFA"))
    disabled = []
    for e in result:
        if not e["mig_capable"]:
            note(f"GPU {e['index']} ({e['name']}) does not support MIG")
            continue
        if not e["mig_enabled"]:
            disabled.append(str(e["index"]))
        for p in e["profiles"]:
            free = "-" if p["free"] is None else str(p["free"])
            t.add_row(str(e["index"]), "MIG " + p["name"], str(p["id"]), f"{free}/{p['total']}", str(p["memory_mib"]),
                      gib(p["memory_mib"]), "Yes" if p["p2p"] else "No", str(p["sms"]), str(p["ce"]), str(p["dec"]),
                      str(p["enc"]), str(p["jpeg"]), str(p["ofa"]), placements_text(_pls(p["placements"])))
    if t.row_count:
        out(t)
    else:
        out("No MIG-supported devices found.")
    if disabled:
        note(f"MIG mode is disabled on GPU {','.join(disabled)} (Free shown as -); `migctl mode enable -i "
             f"{','.join(disabled)}` enables it")


def _pls(items: list[dict[str, int]]) -> list[Any]:
    from migctl.catalog import Placement

    return [Placement(i["start"], i["size"]) for i in items]


# --------------------------------------------------------------------------------------------- placements
def placements_cmd(ctx: typer.Context, gpu: GpuSel = None, as_json: JsonOpt = False) -> None:
    """Possible placements of every GI profile (nvidia-smi mig -lgipp) and which are free now."""
    result = []
    for g in _select(ctx, gpu):
        cur, _ = g.mig_state()
        if cur is None:
            result.append({"index": g.index, "name": g.name, "mig_capable": False, "mig_enabled": False,
                           "memory_slices": None, "occupied": [], "profiles": []})
            continue
        profiles = g.profiles()
        gis = _gi_list(g) if cur == 1 else []
        grid = g.model.memory_slices if g.model is not None else max(
            (pl.end for p in profiles for pl in p.placements), default=0)
        occupied = [{"gi_id": gi.id, "profile_id": gi.profile_id, "profile": gi.profile().name,
                     "placement": placement_json(gi.placement)} for gi in gis]
        profs = []
        for p in profiles:
            free = _free_placements(g, p.id, gis)
            free_starts = None if free is None else {pl.start for pl in free}
            profs.append({
                "id": p.id, "name": p.name,
                "placements": [{**placement_json(pl), "free": None if free_starts is None else pl.start in free_starts}
                               for pl in p.placements],
            })
        result.append({"index": g.index, "name": g.name, "mig_capable": True, "mig_enabled": cur == 1,
                       "memory_slices": grid, "occupied": occupied, "profiles": profs})
    if as_json:
        emit_json({"gpus": result})
        return
    for e in result:
        if not e["mig_capable"]:
            note(f"GPU {e['index']} ({e['name']}) does not support MIG")
            continue
        slots = ["."] * int(e["memory_slices"])
        for o in e["occupied"]:
            pl = o["placement"]
            for s in range(pl["start"], pl["start"] + pl["size"]):
                if s < len(slots):
                    slots[s] = str(o["gi_id"])
        state = "" if e["mig_enabled"] else "  (MIG mode disabled: nothing can be created)"
        out(f"GPU {e['index']}: {e['name']}  memory slices [{' '.join(f'{s:>2}' for s in slots)} ] "
            f"(GI ID per slice, . = free){state}")
        t = table("Name", "ID", "Placements", "Free now", right=("ID",))
        for p in e["profiles"]:
            pls = _pls(p["placements"])
            if not e["mig_enabled"]:
                free_text = "-"
            elif any(x["free"] is None for x in p["placements"]):
                free_text = "?"
            else:
                free_text = placements_text([pl for pl, x in zip(pls, p["placements"], strict=True) if x["free"]])
                free_text = "none" if free_text == "-" else free_text
            t.add_row("MIG " + p["name"], str(p["id"]), placements_text(pls), free_text)
        out(t)


# --------------------------------------------------------------------------------------------- mode
def _set_modes(N: Any, gpus: list[Any], states: dict[int, tuple[int | None, int | None]], want: int, verb: str,
               as_json: bool) -> tuple[list[dict[str, Any]], str | None]:
    rows = []
    failed = None
    for g in gpus:
        cur, pending = states[g.index]
        row: dict[str, Any] = {"index": g.index, "bus_id": g.bus_id, "requested": mode_name(want)}
        if cur is None:
            note(f"GPU {g.index} ({g.name}) does not support MIG; skipped")
            rows.append({**row, "result": "unsupported", "mig_current": None, "mig_pending": None, "pids": []})
            continue
        if cur == want and pending == want:
            result, pids, reason = "unchanged", [], None
            msg = f"MIG mode is already {mode_name(want).lower()} on {_gpu_label(g)}"
        else:
            try:
                status = g.set_mig_mode(bool(want))
            except N.NVMLError as e:
                failed = _device_error(f"cannot {verb} MIG mode on {_gpu_label(g)}", e)
                break
            if status == 0:
                result, pids, reason = "done", [], None
                msg = f"{'Enabled' if want else 'Disabled'} MIG mode on {_gpu_label(g)}"
            else:
                pids = [p.pid for p in _procs(g)]
                reason = str(N.NVMLError(status))
                result = "pending"
                if pids:
                    msg = (f"MIG mode {verb} is pending on {_gpu_label(g)}: the GPU is in use by {pids_text(pids)}; "
                           f"once {'it has' if len(pids) == 1 else 'they have'} exited, `migctl reset -i {g.index}` "
                           "applies it (or reboot)")
                else:
                    msg = (f"MIG mode {verb} is pending on {_gpu_label(g)} ({reason}); `migctl reset -i {g.index}` "
                           "or a reboot applies it")
        now_cur, now_pending = g.mig_state()
        rows.append({**row, "result": result, "mig_current": now_cur == 1, "mig_pending": now_pending == 1,
                     "pids": pids, "reason": reason})
        if not as_json:
            out(msg)
    return rows, failed


def mode_cmd(
    ctx: typer.Context,
    action: Annotated[str | None, typer.Argument(help="enable or disable; omit it to show the current and pending mode.",
                                                 metavar="ACTION")] = None,
    gpu: GpuSel = None,
    as_json: JsonOpt = False,
    lock_timeout: LockOpt = LOCK_WAIT_S,
) -> None:
    """Enable or disable MIG mode (nvidia-smi -i N -mig 1|0), or show it.

    Refused while migctl holds an instance of the GPU or the GPU itself (a lease, an MPS server or a time-sliced
    client), which the driver cannot see and the change would take away; processes leave it pending, as nvidia-smi.
    """
    N = _nvml()
    if action is not None and action.lower() not in ("enable", "disable", "1", "0", "on", "off"):
        fail(f"unknown mode action {action!r}; valid: enable, disable (or omit it to show the mode)", EXIT_INPUT)
    gpus = _select(ctx, gpu)
    states = {g.index: g.mig_state() for g in gpus}
    if action is None:
        rows = [{"index": g.index, "bus_id": g.bus_id, "mig_capable": states[g.index][0] is not None,
                 "mig_current": None if states[g.index][0] is None else states[g.index][0] == 1,
                 "mig_pending": None if states[g.index][1] is None else states[g.index][1] == 1} for g in gpus]
        if as_json:
            emit_json({"gpus": rows})
            return
        t = table("GPU", "Bus ID", "MIG current", "MIG pending", right=("GPU",))
        for g in gpus:
            cur, pending = states[g.index]
            t.add_row(str(g.index), g.bus_id, mode_name(cur), mode_name(pending))
        out(t)
        return

    want = 1 if action.lower() in ("enable", "1", "on") else 0
    verb = "enable" if want else "disable"
    unsupported = [g for g in gpus if states[g.index][0] is None]
    if unsupported and (gpu is not None or len(unsupported) == len(gpus)):
        capable = [str(g.index) for g in gpus[0].node.gpus() if g.mig_state()[0] is not None]
        fail(f"{', '.join(f'GPU {g.index} ({g.name})' for g in unsupported)} does not support MIG; "
             f"MIG-capable GPUs: {','.join(capable) or 'none'}", EXIT_INPUT)
    with node_locked(node(ctx), f"migctl mode {verb}", lock_timeout):
        held = held_by_migctl(node(ctx), [g for g in gpus if states[g.index][0] is not None
                                          and states[g.index] != (want, want)])
        if held:
            fail(f"cannot {verb} MIG mode: {'; '.join(held)}; a mode change resets the GPU and destroys every "
                 "instance (nothing was changed)", EXIT_BUSY)
        rows, failed = _set_modes(N, gpus, states, want, verb, as_json)
    if as_json:
        emit_json({"gpus": rows, "error": failed})
    if failed:
        fail(failed, EXIT_DEVICE)


# --------------------------------------------------------------------------------------------- reset
def reset_cmd(ctx: typer.Context, gpu: GpuSel = None, as_json: JsonOpt = False, lock_timeout: LockOpt = LOCK_WAIT_S
              ) -> None:
    """Reset GPUs (nvidia-smi --gpu-reset): applies a pending MIG mode, removes all GPU instances.

    Refused, for every selected GPU, while anything holds any of them (a process, or a lease, MPS server or
    time-sliced client on one of its instances, as `gi destroy`).
    """
    N = _nvml()
    gpus = _select(ctx, gpu)
    with node_locked(node(ctx), "migctl reset", lock_timeout):
        busy = busy_gpus(node(ctx), gpus)
        if busy:
            fail(f"cannot reset: {'; '.join(busy)}; stop them first (nothing was reset)", EXIT_BUSY)
        # one reset for every selected GPU, by bus id, with NVML shut down meanwhile (Node.reset_gpus, as mig-parted)
        n_gis = {g.index: len(_gi_list(g)) if g.mig_state()[0] == 1 else 0 for g in gpus}
        indices = [g.index for g in gpus]
        from migctl.device import DeviceError

        try:
            node(ctx).reset_gpus(gpus)
        except N.NVMLError as e:
            if as_json:
                emit_json({"gpus": [], "error": str(e)})
            label = ", ".join(_gpu_label(g) for g in gpus)
            fail(getattr(e, "detail", None) or _device_error(f"cannot reset {label}", e), EXIT_DEVICE)
        except DeviceError as e:  # the real path: nvidia-smi refused, failed, timed out, or is missing
            if as_json:
                emit_json({"gpus": [], "error": str(e)})
            fail(str(e), EXIT_DEVICE)
    rows = []
    for i in indices:
        g = node(ctx).gpu(i)  # handles were dropped by the reset: re-read
        cur, _ = g.mig_state()
        rows.append({"index": g.index, "bus_id": g.bus_id, "mig_current": None if cur is None else cur == 1,
                     "gpu_instances_removed": n_gis[i]})
        if not as_json:
            extra = f"; removed {n_gis[i]} GPU instance{'s' if n_gis[i] != 1 else ''}" if n_gis[i] else ""
            out(f"Reset {_gpu_label(g)}: MIG mode {mode_name(cur).lower()}{extra}")
    if as_json:
        emit_json({"gpus": rows, "error": None})


# --------------------------------------------------------------------------------------------- gi
def _gi_tokens(profiles: list[str]) -> list[str]:
    tokens = [t.strip() for arg in profiles for t in arg.split(",") if t.strip()]
    if not tokens:
        fail("no GPU instance profile given; e.g. `migctl gi create 3g.40gb,1g.10gb` (see `migctl profiles`)", EXIT_INPUT)
    return tokens


def _order_hint(gpu: Any, requested: list[Any], before: list[tuple[int, Any]], created_ids: list[int]) -> str:
    """A hint when the whole request fits if created largest first (the driver places GIs in order)."""
    from migctl.catalog.geometry import PlacedGI, auto_placement

    model = gpu.model
    if model is None:
        return ""
    placed = []
    for pid, pl in before:
        p = _catalog_profile(gpu, pid)
        if p is None:
            return ""
        placed.append(PlacedGI(p, pl))
    profs = [_catalog_profile(gpu, p.id) for p in requested]
    if any(p is None for p in profs):
        return ""
    order = sorted(profs, key=lambda p: (-p.placement_size, -p.slices, p.id))
    for p in order:
        pl = auto_placement(model, placed, p)
        if pl is None:
            return ""
        placed.append(PlacedGI(p, pl))
    undo = f"`migctl gi destroy -i {gpu.index} --gi {','.join(map(str, created_ids))}`, then " if created_ids else ""
    return (f"; hint: they all fit if created largest first: {undo}"
            f"`migctl gi create -i {gpu.index} {','.join(p.name for p in order)}`")


def _no_room_message(gpu: Any, prof: Any, token: str, e: BaseException) -> str:
    """Why prof could not be created: what is occupied, and where it could still go."""
    gis = _gi_list(gpu)
    occupied = ", ".join(f"GI {g.id} {g.profile().name} at {g.placement}" for g in gis) or "nothing"
    free = _free_placements(gpu, prof.id, gis)
    if free is None:
        where = "unknown (GPU model not in the catalog)"
    elif free:
        where = ", ".join(str(p) for p in free) + f" (try --placement {free[0].start})"
    else:
        where = "none"
    return (f"cannot create GPU instance {prof.name} (profile {prof.id}, given as {token!r}) on GPU {gpu.index}: {e}; "
            f"occupied: {occupied}; free placements for {prof.name}: {where}")


def _create_gis(N: Any, plan: list[tuple[Any, list[tuple[str, Any]]]], placement: int | None, default_ci: bool,
                as_json: bool) -> tuple[list[dict[str, Any]], str | None]:
    from migctl.catalog import Placement

    created: list[dict[str, Any]] = []
    error: str | None = None
    for g, resolved in plan:
        before = [(x.profile_id, x.placement) for x in g.gpu_instances()]
        created_here: list[int] = []
        for tok, p in resolved:
            try:
                pl = Placement(placement, p.placements[0].size) if placement is not None else None
                gi = g.create_gi(p.id, pl)
            except N.NVMLError as e:
                if isinstance(e, N.NVMLError_InsufficientResources):
                    error = _no_room_message(g, p, tok, e)
                    if placement is None and len(resolved) > 1:
                        error += _order_hint(g, [r[1] for r in resolved], before, created_here)
                else:
                    error = _device_error(f"cannot create GPU instance {p.name} (profile {p.id}) on GPU {g.index}", e)
                break
            rec: dict[str, Any] = {"gpu": g.index, "gi_id": gi.id, "profile_id": p.id, "profile": p.name,
                                   "placement": placement_json(gi.placement), "compute_instances": []}
            created.append(rec)
            created_here.append(gi.id)
            if not as_json:
                out(f"Created GPU instance {gi.id:>2} on GPU {g.index}: MIG {p.name} (profile {p.id}) at {gi.placement}")
            if default_ci:
                try:
                    ci = gi.create_ci()
                except N.NVMLError as e:
                    error = _device_error(f"cannot create the default compute instance in GPU instance {gi.id} "
                                          f"on GPU {g.index}", e)
                    break
                dev = ci.mig_device()
                cprof = ci.profile()
                rec["compute_instances"].append({"ci_id": ci.id, "profile_id": ci.profile_id,
                                                 "profile": cprof.name if cprof else None,
                                                 "uuid": dev.uuid if dev else None})
                if not as_json:
                    out(f"  Created compute instance {ci.id} in GPU instance {gi.id}: MIG {cprof.name if cprof else '?'} "
                        f"(CI profile {ci.profile_id}){', ' + dev.uuid if dev else ''}")
        if error:
            break
    return created, error


@gi_app.command("create")
def gi_create(
    ctx: typer.Context,
    profiles: Annotated[list[str], typer.Argument(help="PROFILE[,PROFILE...]: ID, short name (3g.40gb) or 'MIG 3g.40gb'.",
                                                  metavar="PROFILES")],
    gpu: GpuSel = None,
    placement: Annotated[int | None, typer.Option("--placement", help="Start memory slice (single profile only).")] = None,
    default_ci: Annotated[bool, typer.Option("--default-ci", "-C", help="Also create the default CI in each new GI.")] = False,
    as_json: JsonOpt = False,
    lock_timeout: LockOpt = LOCK_WAIT_S,
) -> None:
    """Create GPU instances (nvidia-smi mig -cgi PROFILES [-C]), in order, stopping at the first failure."""

    N = _nvml()
    tokens = _gi_tokens(profiles)
    gpus = _select(ctx, gpu)
    _require_mig_enabled(gpus)
    if placement is not None and len(tokens) != 1:
        fail(f"--placement applies to one profile, but {len(tokens)} were given ({', '.join(tokens)})", EXIT_INPUT)
    plan: list[tuple[Any, list[tuple[str, Any]]]] = []
    for g in gpus:
        resolved = []
        for tok in tokens:
            p = g.profile(tok)
            if p is None:
                fail(f"unknown GPU instance profile {tok!r} for GPU {g.index} ({g.name}); valid: {_profiles_text(g)}",
                     EXIT_INPUT)
            if placement is not None and placement not in [pl.start for pl in p.placements]:
                fail(f"placement {placement} is not valid for {p.name} (profile {p.id}); valid starts: "
                     f"{', '.join(str(pl.start) for pl in p.placements)} (size {p.placements[0].size})", EXIT_INPUT)
            resolved.append((tok, p))
        whole_gpu = [pr.pid for pr in _procs(g) if pr.gi_id is None]
        if whole_gpu:
            fail(f"GPU {g.index} is in use by {pids_text(whole_gpu)} (a client of the whole GPU); GPU instances "
                 "cannot be created until it exits (nothing was created)", EXIT_DEVICE)
        plan.append((g, resolved))

    with node_locked(node(ctx), "migctl gi create", lock_timeout):
        created, error = _create_gis(N, plan, placement, default_ci, as_json)
    if as_json:
        emit_json({"created": created, "error": error})
    if error:
        if created and not as_json:
            out(f"Created {len(created)} GPU instance(s) before the failure; `migctl gi destroy` removes them")
        fail(error, EXIT_DEVICE)


@gi_app.command("destroy")
def gi_destroy(
    ctx: typer.Context,
    gpu: GpuSel = None,
    gi: Annotated[str | None, typer.Option("--gi", "-gi", help="GPU instance IDs, comma-separated.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Destroy every GPU instance on the selected GPUs.")] = False,
    as_json: JsonOpt = False,
    lock_timeout: LockOpt = LOCK_WAIT_S,
) -> None:
    """Destroy GPU instances (nvidia-smi mig -dci; -dgi), their compute instances first.

    Refused (nothing destroyed) while anything holds one of them: a process, a lease of `migctl run` or the
    queue (before its first CUDA call too), an MPS server or time-sliced client migctl started.
    """
    N = _nvml()
    if gi is None and not all_:
        fail("name the GPU instances to destroy with --gi IDS or --all (see `migctl gi list`)", EXIT_INPUT)
    if gi is not None and all_:
        fail("--gi and --all are exclusive; use one", EXIT_INPUT)
    ids = parse_ids(gi, "--gi") if gi is not None else None
    gpus = _select(ctx, gpu)
    _require_mig_enabled(gpus)
    _guarded_destroy(ctx, "gi destroy", lock_timeout, lambda: [(g, _find_gis(g, ids)) for g in gpus], busy_gis,
                     lambda targets: _destroy_gis(N, targets, as_json), as_json, "No GPU instances to destroy.")


def _guarded_destroy(ctx: typer.Context, verb: str, lock_timeout: float, read: Callable[[], Any],
                     busy: Callable[[Any, Any], list[str]], destroy: Callable[[Any], tuple[list[Any], str | None]],
                     as_json: bool, nothing: str) -> None:
    """Destroy what ``read`` names unless ``busy`` (:mod:`migctl.cli.guard`) says something holds it, under the
    node lock; print what went, or ``nothing``."""
    read()  # bad IDs are refused at once, not after waiting for the lock
    with node_locked(node(ctx), f"migctl {verb}", lock_timeout):
        targets = read()  # read again under the lock: what is checked is what goes
        held = busy(node(ctx), targets)
        if held:
            fail(f"cannot destroy: {'; '.join(held)} (nothing was destroyed)", EXIT_BUSY)
        destroyed, error = destroy(targets)
    if as_json:
        emit_json({"destroyed": destroyed, "error": error})
    elif not destroyed and not error:
        out(nothing)
    if error:
        fail(error, EXIT_DEVICE)


def _destroy_gis(N: Any, targets: list[tuple[Any, list[Any]]], as_json: bool) -> tuple[list[dict[str, Any]], str | None]:
    destroyed: list[dict[str, Any]] = []
    error = None
    for g, gis in targets:
        for x in gis:
            try:
                cis = x.compute_instances()
                for c in cis:
                    c.destroy()
                    if not as_json:
                        out(f"Destroyed compute instance {c.id} from GPU {g.index} GPU instance {x.id}")
                x.destroy()
            except N.NVMLError as e:
                error = _device_error(f"cannot destroy GPU instance {x.id} on GPU {g.index}", e)
                break
            destroyed.append({"gpu": g.index, "gi_id": x.id, "compute_instances": [c.id for c in cis]})
            if not as_json:
                out(f"Destroyed GPU instance {x.id} from GPU {g.index}")
        if error:
            break
    return destroyed, error


@gi_app.command("list")
def gi_list(ctx: typer.Context, gpu: GpuSel = None, as_json: JsonOpt = False) -> None:
    """List GPU instances (nvidia-smi mig -lgi)."""
    rows = []
    disabled = []
    for g in _select(ctx, gpu):
        if g.mig_state()[0] != 1:
            disabled.append(str(g.index))
            continue
        rows.extend(_gi_json(g, x) for x in _gi_list(g))
    if as_json:
        emit_json({"gpu_instances": rows})
        return
    if rows:
        t = table("GPU", "GI", "Name", "Profile ID", "Placement", "Memory MiB", "SMs", "CI IDs",
                  right=("GPU", "GI", "Profile ID", "Memory MiB", "SMs"))
        for r in rows:
            t.add_row(str(r["gpu"]), str(r["gi_id"]), "MIG " + r["profile"], str(r["profile_id"]),
                      f"{r['placement']['start']}:{r['placement']['size']}", str(r["memory_mib"]), str(r["sms"]),
                      id_list(r["compute_instances"]))
        out(t)
    else:
        out("No GPU instances found.")
    if disabled:
        note(f"MIG mode is disabled on GPU {','.join(disabled)}")


# --------------------------------------------------------------------------------------------- registration
def register(app: typer.Typer) -> None:
    """Add the core verbs to the migctl app."""
    app.command("gpus")(gpus_cmd)
    from migctl.cli.catalog import catalog_cmd

    app.command("catalog")(catalog_cmd)
    app.command("profiles")(profiles_cmd)
    app.command("placements")(placements_cmd)
    app.command("mode")(mode_cmd)
    app.command("reset")(reset_cmd)
    app.add_typer(gi_app, name="gi")
    from migctl.cli.ci import (
        ci_app,  # (the ci verbs, in their own module; imported here: they use this one's helpers)
    )

    app.add_typer(ci_app, name="ci")
