"""migctl sim ...: inspect and drive the simulated node (status, reset-state, add-client, clients, set, reboot,
add-holder, remove-holder).

On a real node (NVML answered by the driver) every subcommand says so and exits 2.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from migctl.cli.common import emit_json, fail, node, state
from migctl.cli.render import id_list, mode_name, note, out, table
from migctl.inputs import printable

sim_app = typer.Typer(help="The simulated node: status, reset-state, add-client, remove-client, clients, set, reboot, "
                           "add-holder, remove-holder.",
                      no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output (keys documented in docs/cli.md).")]
NOT_SIM = ("not a simulated node (NVML is answered by the NVIDIA driver); use --sim SPEC or MIGCTL_SIM, "
           "e.g. --sim 8xH100-80GB")


def _sim_node(ctx: typer.Context) -> tuple[Any, Any]:
    """(device Node, SimNode), or a user error on a real node."""
    n = node(ctx)
    if n.sim is None:
        fail(NOT_SIM)
    return n, n.sim


@sim_app.command("status")
def status_cmd(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The simulated node: spec, driver, state file, and each GPU's MIG mode, instances and clients."""
    n, sn = _sim_node(ctx)
    gpus = []
    for g in n.gpus():
        try:
            cur, pending = g.mig_mode()
        except Exception:  # not MIG capable
            cur = pending = None
        n_gis = len(g.gpu_instances()) if cur == 1 else 0
        gpus.append({"index": g.index, "model": g.model.key if g.model else None, "name": g.name, "uuid": g.uuid,
                     "bus_id": g.bus_id, "mig_current": None if cur is None else cur == 1,
                     "mig_pending": None if pending is None else pending == 1, "gpu_instances": n_gis,
                     "mig_devices": len(g.mig_devices()) if cur == 1 else 0, "clients": len(g.processes())})
    path = str(sn.store.path) if sn.store.path is not None else None
    st = sn.store.load()
    data = {"spec": str(sn.spec), "driver_version": n.driver_version, "state_file": path,
            "state_file_exists": bool(sn.store.path and sn.store.path.exists()), "behaviour": dict(st.behaviour),
            "holders": [{"gpu": g.index, "name": h.name, "gi_id": h.gi, "ci_id": h.ci} for g in st.gpus
                        for h in g.holders],
            "boots": st.boots, "gpus": gpus}
    if as_json:
        emit_json(data)
        return
    out(f"Simulated node {data['spec']}  (driver {data['driver_version']})")
    out(f"State file: {path or 'in memory'}{'' if data['state_file_exists'] or path is None else ' (not written yet)'}")
    out("Driver behaviour: " + ", ".join(f"{k}={v}" for k, v in data["behaviour"].items()))
    if data["holders"]:
        out("Holders: " + "; ".join(f"GPU {h['gpu']}" + ("" if h["gi_id"] is None else f" GI {h['gi_id']}")
                                    + ("" if h["ci_id"] is None else f" CI {h['ci_id']}") + f" {printable(h['name'])}"
                                    for h in data["holders"]))
    t = table("GPU", "Model", "Bus ID", "MIG", "GIs", "MIG devices", "Clients", right=("GPU", "GIs", "MIG devices", "Clients"))
    for r in gpus:
        mig = "N/A" if r["mig_current"] is None else mode_name(int(r["mig_current"]))
        if r["mig_pending"] is not None and r["mig_pending"] != r["mig_current"]:
            mig += f" (pending {mode_name(int(r['mig_pending'])).lower()})"
        t.add_row(str(r["index"]), r["model"] or "?", r["bus_id"], mig, str(r["gpu_instances"]), str(r["mig_devices"]),
                  str(r["clients"]))
    out(t)


@sim_app.command("reset-state")
def reset_state_cmd(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Forget the simulated node: the next command starts from fresh GPUs (new UUIDs, MIG disabled).

    Works on a corrupt or foreign state file too (that is how to recover from one).
    """
    from migctl import sim as simmod

    try:
        _, sn = _sim_node(ctx)
    except simmod.StateFileError:
        sn = simmod.active()  # installed, but its state file could not be read: forget it all the same
        if sn is None:
            raise
    path = sn.store.path
    sn.store.reset()
    state(ctx)._node = None
    if as_json:
        emit_json({"spec": str(sn.spec), "removed": None if path is None else str(path)})
        return
    out(f"Forgot simulated node {sn.spec}" + (f" (removed {path})" if path is not None else ""))


def _one_gpu(n: Any, spec: str) -> Any:
    gpus = n.select(spec)
    if len(gpus) != 1:
        fail(f"-i must name one GPU, got {len(gpus)} ({spec})")
    return gpus[0]


@sim_app.command("add-client")
def add_client_cmd(
    ctx: typer.Context,
    pid: Annotated[int, typer.Argument(help="PID of a running process (it stays a client until it exits).")],
    gpu: Annotated[str, typer.Option("-i", "--gpu", "--id", help="The GPU: index, UUID or PCI bus id.")] = "0",
    gi: Annotated[int | None, typer.Option("--gi", "-gi", help="GPU instance ID (a client of a MIG device).")] = None,
    ci: Annotated[int | None, typer.Option("--ci", "-ci", help="Compute instance ID (with --gi).")] = None,
    device: Annotated[str | None, typer.Option("--device", "-d", help="A MIG device UUID instead of -i/--gi/--ci.")] = None,
    used_mib: Annotated[int, typer.Option("--used-mib", help="Memory the client uses, MiB.")] = 0,
    name: Annotated[str, typer.Option("--name", help="A process name to show.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Register PID as a client of a GPU or of a MIG device (makes it "in use", as a CUDA process would)."""
    n, sn = _sim_node(ctx)
    if device is not None:
        d = n.find_mig_device(device)
        if d is None:
            valid = [x.uuid for g in n.gpus() for x in g.mig_devices()]
            fail(f"no MIG device {device!r}; existing: {', '.join(valid) or 'none'}")
        g, gi, ci = d.gpu, d.gi_id, d.ci_id
    else:
        g = _one_gpu(n, gpu)
        if ci is not None and gi is None:
            fail("--ci needs --gi")
    if not 0 <= used_mib <= g.total_memory_mib():
        fail(f"--used-mib {used_mib} is out of range; valid: 0..{g.total_memory_mib()} (GPU {g.index}'s memory)")
    if len(name) > 256:
        fail(f"--name is {len(name)} characters long; at most 256")
    rc = sn.add_client(g.index, pid, gi, ci, used_mib=used_mib, name=name)
    if rc == 6 and gi is None:
        fail(f"no running process with PID {pid}")
    if rc == 6:
        devs = ", ".join(f"GI {d.gi_id} CI {d.ci_id}" for d in g.mig_devices()) or "none"
        fail(f"no running process with PID {pid}, or GPU {g.index} has no MIG device GI {gi}"
             f"{'' if ci is None else f' CI {ci}'}; its MIG devices: {devs}")
    if rc:
        fail(f"cannot add client {pid} to GPU {g.index}: NVML error {rc}")
    where = f"GPU {g.index}" + ("" if gi is None else f" GI {gi}") + ("" if ci is None else f" CI {ci}")
    if as_json:
        emit_json({"pid": pid, "gpu": g.index, "gi_id": gi, "ci_id": ci})
        return
    out(f"PID {pid} is now a client of {where} (until it exits or `migctl sim remove-client {pid} -i {g.index}`)")


@sim_app.command("client-delay")
def client_delay_cmd(
    ctx: typer.Context,
    seconds: Annotated[float, typer.Argument(help="Seconds before a new client appears in NVML (0: at once).")],
    as_json: JsonOpt = False,
) -> None:
    """Delayed registration, as on a real GPU: a client appears in NVML only after its first CUDA call."""
    import math

    if not math.isfinite(seconds) or not 0 <= seconds <= 3600:
        fail(f"client delay {seconds!r} is out of range; valid: 0..3600 seconds")
    _, sn = _sim_node(ctx)
    sn.set_client_delay(seconds)
    if as_json:
        emit_json({"client_delay_s": seconds})
        return
    out(f"clients added from now on appear in NVML {seconds:g}s after they are registered")


@sim_app.command("remove-client")
def remove_client_cmd(
    ctx: typer.Context,
    pid: Annotated[int, typer.Argument(help="PID to forget.")],
    gpu: Annotated[str | None, typer.Option("-i", "--gpu", "--id", help="GPUs (default: all).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Forget a client registered with add-client."""
    n, sn = _sim_node(ctx)
    removed = []
    for g in n.select(gpu):
        if any(p.pid == pid for p in sn.store.load().gpus[g.index].processes):
            sn.remove_client(g.index, pid)
            removed.append(g.index)
    if not removed:
        fail(f"PID {pid} is not a client of GPU {gpu if gpu is not None else 'any'}; see `migctl sim clients`")
    if as_json:
        emit_json({"pid": pid, "gpus": removed})
        return
    out(f"PID {pid} is no longer a client of GPU {id_list(removed)}")


@sim_app.command("clients")
def clients_cmd(
    ctx: typer.Context,
    gpu: Annotated[str | None, typer.Option("-i", "--gpu", "--id", help="GPUs (default: all).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Live clients of the simulated GPUs (processes whose PID has exited are dropped)."""
    n, sn = _sim_node(ctx)
    rows = []
    for g in n.select(gpu):
        names = {p.pid: p.name for p in sn.store.load().gpus[g.index].processes}
        for p in g.processes():
            rows.append({"gpu": g.index, "pid": p.pid, "gi_id": p.gi_id, "ci_id": p.ci_id, "used_mib": p.used_mib,
                         "name": names.get(p.pid, "")})
    if as_json:
        emit_json({"clients": rows})
        return
    if not rows:
        out("No clients.")
        note("`migctl sim add-client PID -i N [--gi G --ci C]` registers one")
        return
    t = table("GPU", "PID", "GI", "CI", "Used MiB", "Name", right=("GPU", "PID", "GI", "CI", "Used MiB"))
    for r in rows:
        t.add_row(str(r["gpu"]), str(r["pid"]), "-" if r["gi_id"] is None else str(r["gi_id"]),
                  "-" if r["ci_id"] is None else str(r["ci_id"]), str(r["used_mib"]), printable(r["name"]))
    out(t)


@sim_app.command("set")
def set_cmd(
    ctx: typer.Context,
    settings: Annotated[list[str], typer.Argument(help="KEY=VALUE driver behaviours, e.g. caller=user vm=passthrough.")],
    as_json: JsonOpt = False,
) -> None:
    """Change how the simulated driver behaves (the same keys as the spec's ``;key=value`` options).

    caller=root|user, vm=none|passthrough, profile-info-mig-off=driver|not-supported|supported,
    functions=driver|all, persistenced=off|on. See docs/simulator.md for what each does and its source.
    """
    from migctl.sim.state import BEHAVIOURS

    _, sn = _sim_node(ctx)
    pairs = []
    valid = ", ".join(f"{k}={'|'.join(v)}" for k, v in BEHAVIOURS.items())
    for item in settings:
        key, eq, value = item.partition("=")
        if not eq or key not in BEHAVIOURS:
            fail(f"unknown simulator behaviour {item!r}; valid: {valid}")
        if value not in BEHAVIOURS[key]:
            fail(f"simulator behaviour {key}={value!r} is not valid; valid: {key}={'|'.join(BEHAVIOURS[key])}")
        pairs.append((key, value))
    for key, value in pairs:
        sn.set_behaviour(key, value)
    if as_json:
        emit_json({"behaviour": dict(sn.store.load().behaviour)})
        return
    out("Simulated driver: " + ", ".join(f"{k}={v}" for k, v in pairs))


@sim_app.command("reboot")
def reboot_cmd(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Reboot the simulated node: clients and instances are gone and pending modes apply; Ampere GPUs keep MIG
    mode, Hopper and newer come up with MIG disabled."""
    n, sn = _sim_node(ctx)
    sn.reboot()
    n.forget()
    if as_json:
        emit_json({"spec": str(sn.spec), "boots": sn.store.load().boots,
                   "gpus": [{"index": g.index, "mig_current": g.mig_mode()[0] == 1 if g.mig_capable() else None}
                            for g in n.gpus()]})
        return
    modes = ", ".join(f"GPU {g.index} MIG {mode_name(g.mig_mode()[0]).lower()}" for g in n.gpus() if g.mig_capable())
    out(f"Rebooted simulated node {sn.spec}" + (f": {modes}" if modes else ""))


@sim_app.command("add-holder")
def add_holder_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="What holds it open, e.g. dcgm or nvidia-persistenced.")],
    gpu: Annotated[str, typer.Option("-i", "--gpu", "--id", help="The GPU: index, UUID or PCI bus id.")] = "0",
    gi: Annotated[int | None, typer.Option("--gi", "-gi", help="GPU instance ID (holds a GI or MIG device).")] = None,
    ci: Annotated[int | None, typer.Option("--ci", "-ci", help="Compute instance ID (with --gi).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Something that holds a GPU or MIG device open without a compute process (a DCGM-like client, a daemon):
    NVML lists no process, but reset (and, for a GI/CI, destroy) answer In use."""
    n, sn = _sim_node(ctx)
    g = _one_gpu(n, gpu)
    if ci is not None and gi is None:
        fail("--ci needs --gi")
    if not name.strip() or len(name) > 64:
        fail("a holder name is 1 to 64 characters, e.g. dcgm")
    rc = sn.add_holder(g.index, name, gi, ci)
    if rc:
        devs = ", ".join(f"GI {d.gi_id} CI {d.ci_id}" for d in g.mig_devices()) or "none"
        fail(f"GPU {g.index} has no GI {gi}{'' if ci is None else f' CI {ci}'}; its MIG devices: {devs}")
    if as_json:
        emit_json({"gpu": g.index, "name": name, "gi_id": gi, "ci_id": ci})
        return
    where = f"GPU {g.index}" + ("" if gi is None else f" GI {gi}") + ("" if ci is None else f" CI {ci}")
    out(f"{printable(name)} now holds {where} open (`migctl sim remove-holder {printable(name)} -i {g.index}` releases it)")


@sim_app.command("remove-holder")
def remove_holder_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The holder's name.")],
    gpu: Annotated[str, typer.Option("-i", "--gpu", "--id", help="The GPU: index, UUID or PCI bus id.")] = "0",
    as_json: JsonOpt = False,
) -> None:
    """Release a holder added with add-holder."""
    n, sn = _sim_node(ctx)
    g = _one_gpu(n, gpu)
    if sn.remove_holder(g.index, name):
        held = [h.name for h in sn.store.load().gpus[g.index].holders]
        fail(f"{name!r} holds nothing on GPU {g.index}; holders there: {', '.join(held) or 'none'}")
    if as_json:
        emit_json({"gpu": g.index, "name": name, "released": True})
        return
    out(f"{printable(name)} released GPU {g.index}")


def register(app: typer.Typer) -> None:
    """Add migctl sim to the app."""
    app.add_typer(sim_app, name="sim")
