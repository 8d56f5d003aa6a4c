"""``migctl plan FILE``: plan MIG layouts for a fleet (see docs/planner.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from migctl.cli.common import int_range, positive_seconds

if TYPE_CHECKING:
    from migctl.planner.core import Plan


def _fail(message: str, code: int = 2) -> None:
    from migctl.errors import UserError

    raise UserError(message, code)


def live_layout(node: Any) -> list[dict[str, Any]]:
    """The node's current layout in the planner's ``live`` form; an instance is busy as :mod:`migctl.busy`
    says (a live lease, an NVML process or an MPS server). A GPU the catalog does not ship is planned from
    the model NVML describes."""
    from migctl.busy import busy_view
    from migctl.catalog.loader import learn_model

    view = busy_view(node)
    out: list[dict[str, Any]] = []
    for gpu in node.gpus():
        if gpu.model is None or not gpu.mig_capable():
            continue
        if getattr(gpu, "catalog_model", gpu.model) is None:
            learn_model(gpu.model)
        busy_gis = {h_gi for (g, h_gi) in view.gis if g == gpu.index and view.gis[(g, h_gi)]}
        busy_gis |= {gi for (g, gi, _ci) in view.devices if g == gpu.index and view.devices[(g, gi, _ci)]}
        instances = []
        if gpu.mig_mode()[0] == 1:
            for gi in gpu.gpu_instances():
                instances.append({"profile": gi.profile().name, "start": gi.placement.start, "busy": gi.id in busy_gis})
        out.append({"index": gpu.index, "model": gpu.model.key, "instances": instances})
    return out


def plan_command(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="planning request (YAML; workloads may come from a CSV it names)"),
    json_out: bool = typer.Option(False, "--json", help="print the plan as JSON instead of a table"),
    config_out: Path | None = typer.Option(None, "--config-out", help="write the mig-parted config here"),
    label: str = typer.Option("migctl-plan", "--label", help="label of the mig-parted config"),
    time_limit: float | None = typer.Option(None, "--time-limit", callback=positive_seconds, help="solver time limit in seconds"),
    seed: int | None = typer.Option(None, "--seed", callback=int_range(0, 2**31 - 1, "--seed"), help="solver random seed"),
    apply: bool = typer.Option(False, "--apply", help="apply the plan with migctl's reconciler"),
    live: bool = typer.Option(
        False, "--live", help="plan incrementally from this node's current layout (busy instances stay)"
    ),
    svg: Path | None = typer.Option(None, "--svg", help="write the planned GPUs' slice maps as an SVG image"),
    pictures: bool = typer.Option(True, "--map/--no-map", help="draw each planned GPU's slices (up to 16 GPUs)"),
) -> None:
    """Choose per-GPU MIG layouts for the workloads in FILE; print the plan, its lower bound and gap."""
    from migctl.cli.common import node as cli_node
    from migctl.inputs import check_writable
    from migctl.planner import PlanError, load_request, plan, validate_plan
    from migctl.planner.output import to_json, to_mig_parted, to_mig_parted_yaml

    if svg is not None:  # before the solver runs
        from migctl.cli.observe import check_svg

        check_svg(svg)
    if config_out is not None:
        check_writable(config_out, "--config-out")

    try:
        if live:
            from migctl.planner.request import parse_request, read_request_data

            data = read_request_data(file, "'workloads'")
            data["live"] = live_layout(cli_node(ctx))
            data.pop("fleet", None)  # the fleet is the node
            request = parse_request(data, base_dir=file.parent)
        elif apply:
            # with --apply the fleet is the live node unless the file gives one (which must then match it)
            from migctl.planner.request import parse_request, read_request_data

            data = read_request_data(file)
            if not data.get("fleet"):
                counts: dict[str, int] = {}
                from migctl.catalog.loader import learn_model

                for g in cli_node(ctx).gpus():
                    if g.model is not None:
                        if getattr(g, "catalog_model", g.model) is None:
                            learn_model(g.model)  # a GPU the catalog does not ship: plan from what NVML says
                        counts[g.model.key] = counts.get(g.model.key, 0) + 1
                data["fleet"] = [{"model": k, "count": v} for k, v in counts.items()]
            request = parse_request(data, base_dir=file.parent)
        else:
            request = load_request(file)
        if time_limit is not None:
            if time_limit <= 0:
                raise PlanError("--time-limit must be > 0")
            request.options.time_limit_s = time_limit
        if seed is not None:
            request.options.seed = seed
        result = _plan_with_status(plan, request)
    except PlanError as e:
        _fail(str(e))
        return
    problems = validate_plan(result, request.workloads if request.live is None else ())
    if problems:  # never emit an invalid layout
        _fail(f"internal error, the plan failed validation: {problems[0]}", code=1)
    if json_out:
        typer.echo(to_json(result))
    else:
        render_table(result)
        if pictures:
            _pictures(result)
    if svg is not None:
        from migctl.cli.observe import write_svg
        from migctl.observe.picture import maps_from_planner

        write_svg(svg, maps_from_planner(result), "migctl plan")
    if config_out is not None:
        from migctl.inputs import write_text_file

        write_text_file(config_out, to_mig_parted_yaml(result, label), "mig-parted config")
    if result.unserved:
        what = ", ".join(f"{k} x{v}" for k, v in result.unserved.items())
        _fail(f"the plan leaves demand unserved ({what})" + ("; not applied" if apply else "")
              + " (valid: a larger fleet, or fewer workloads)", code=1)
    if apply:
        _check_plan_fits_node(result, cli_node(ctx))
        try:
            from migctl.reconcile import apply_config  # type: ignore[attr-defined]
        except ImportError:
            _fail("--apply needs migctl.reconcile.apply_config, which is not available in this installation")
            return
        try:
            apply_config(to_mig_parted(result, label), label, node=cli_node(ctx))
            typer.echo(f"applied plan as config {label!r}")
        except Exception as e:  # the reconciler's errors carry their exit code; keep them to one line
            code = getattr(e, "exit_code", 1)
            _fail(f"apply failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                  code=code if isinstance(code, int) else 1)
    sys.stdout.flush()


def _plan_with_status(plan_fn: Any, request: Any) -> Any:
    """Run the planner; on a terminal, show its live status (best, bound, gap, elapsed vs limit) on stderr."""
    if not sys.stderr.isatty():
        return plan_fn(request)
    import threading

    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from migctl.planner.progress import SolveProgress

    prog = SolveProgress(time_limit_s=float(request.options.time_limit_s))
    request.options.progress = prog
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = plan_fn(request)
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e
        finally:
            prog.finished = prog.finished or __import__("time").monotonic()

    t = threading.Thread(target=work, name="migctl-plan", daemon=True)
    console = Console(file=sys.stderr, highlight=False, emoji=False)
    with Live(Text(prog.line()), console=console, refresh_per_second=4, transient=False) as live:
        t.start()
        while t.is_alive():
            t.join(0.25)
            live.update(Text(prog.line()))
        if "result" in box:
            res = box["result"]
            prog.phase = "done"
            prog.improve(res.objective, res.lower_bound)
        live.update(Text(prog.line()))
    if "error" in box:
        raise box["error"]
    return box["result"]


def _pictures(result: Any, limit: int = 16) -> None:
    from migctl.cli.observe import show_picture
    from migctl.observe.picture import maps_from_planner, picture

    used = [g for g in result.gpus if g.instances]
    if not used:
        return
    if len(used) > limit:
        typer.echo(f"({len(used)} GPUs planned: slice maps are drawn for up to {limit}; use --svg FILE for all)")
        return
    show_picture(picture(maps_from_planner(result)))


def _check_plan_fits_node(result: Plan, node: Any) -> None:
    """Refuse to apply a plan made for other GPUs: every planned GPU must exist here with the same model."""
    live = {g.index: (g.model.key if g.model is not None else None) for g in node.gpus()}
    for g in result.gpus:
        if not g.instances:
            continue
        if g.index not in live:
            _fail(f"the plan uses GPU {g.index} but this node has {len(live)} GPU(s); not applied "
                  "(valid: plan for this node, e.g. without 'fleet' or with --live)")
        if live[g.index] != g.model:
            _fail(f"the plan puts {g.model} layouts on GPU {g.index}, which is a {live[g.index]}; not applied "
                  "(valid: plan for this node, e.g. without 'fleet' or with --live)")


def register(app: typer.Typer) -> None:
    """Add the ``plan`` command to the migctl CLI."""
    app.command("plan")(plan_command)


def render_table(plan: Plan, console: Any = None) -> None:
    """Print the plan as rich tables: one row per GPU, then the summary (objective, bound, gap)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t = Table(title="MIG plan")
    t.add_column("GPU", justify="right")
    t.add_column("model")
    t.add_column("slices", justify="right")
    t.add_column("instances (profile@start -> workload)")
    for g in plan.gpus:
        if not g.mig_enabled:
            w = g.whole or {}
            t.add_row(str(g.index), g.model, str(g.used_slices), f"whole GPU, MIG disabled -> {w.get('workload')}")
            continue
        desc = ", ".join(
            f"{i.profile}@{i.start}" + (f"->{i.workload}" if i.workload else "") + (" (busy)" if i.busy else "")
            for i in g.instances
        )
        t.add_row(str(g.index), g.model, str(g.used_slices), desc or "-")
    console.print(t)
    console.print(
        f"objective ({plan.objective_name}): {plan.objective:g}   lower bound: {plan.lower_bound:g}   "
        f"gap: {100 * plan.gap:.2f}%   status: {plan.status}   GPUs used: {plan.gpu_count}"
    )
    if plan.unserved:
        console.print("unserved: " + ", ".join(f"{k} x{v}" for k, v in plan.unserved.items()))
    if plan.destroyed:
        console.print(f"instances destroyed: {len(plan.destroyed)}")
    for e in plan.explain:
        console.print(f"why: {e['why']}")
