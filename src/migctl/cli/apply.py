"""``migctl apply``, ``validate``, ``assert``, ``export``, ``checkpoint``, ``restore``, ``generate-config``,
``recover``: declarative, transactional MIG configuration (mig-parted v1 configs).

Exit codes: 0 ok; 1 assert found differences; 2 invalid input; 3 refused (instances in use);
4 node lock held by another apply; 5 an operation failed (the node was rolled back).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from migctl.cli.common import emit_json, fail, node, seconds


def _progress(quiet: bool) -> Any:
    if quiet:
        return None

    import time

    t0 = [time.monotonic()]

    def show(k: int, n: int, desc: str) -> None:
        """Every step, as it starts, with the time since the first step of this run of steps."""
        if k == 1:
            t0[0] = time.monotonic()
        sys.stderr.write(f"[{k}/{n}] {desc}  (+{time.monotonic() - t0[0]:.1f}s)\n")
        sys.stderr.flush()

    return show


def register(app: typer.Typer) -> None:
    @app.command("apply")
    def apply_cmd(
        ctx: typer.Context,
        file: Path = typer.Option(..., "-f", "--file", help="mig-parted v1 config (or a ConfigMap holding config.yaml)."),
        label: str = typer.Option(..., "-c", "--config", "--selected-config", help="Config label to apply."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan only; change nothing."),
        hooks: Path | None = typer.Option(None, "-k", "--hooks-file", help="mig-parted hooks v1 file."),
        force: bool = typer.Option(False, "--force", help="Terminate processes on instances that must be destroyed."),
        wait: float = typer.Option(0, "--wait", callback=seconds, help="Wait up to SECONDS for busy instances to become idle."),
        lock_timeout: float = typer.Option(60, "--lock-timeout", callback=seconds, help="Seconds to wait for another apply (0: fail at once)."),
        as_json: bool = typer.Option(False, "--json", help="Print the plan and result as JSON."),
        quiet: bool = typer.Option(False, "-q", "--quiet", help="No plan or progress output."),
        svg: Path | None = typer.Option(None, "--svg", help="Write the before -> after slice map as an SVG image."),
    ) -> None:
        """Apply config LABEL from FILE: minimal per-GPU changes, busy instances untouched, rollback on failure."""
        from migctl.reconcile import apply_config

        n = node(ctx)

        def show_plan(plan: Any) -> None:
            if not as_json and not quiet:
                print(plan.render(), flush=True)
            if (dry_run and not as_json and not quiet) or svg is not None:
                _change_picture(n, plan, show=dry_run and not as_json and not quiet, svg=svg)

        result = apply_config(file, label, node=n, dry_run=dry_run, force=force, wait=wait, hooks=hooks,
                              progress=None if as_json else _progress(quiet), lock_timeout=lock_timeout,
                              on_plan=show_plan)
        if as_json:
            emit_json(result.to_dict())
            return
        if quiet:
            return
        if result.recovered:
            print(f"note: {result.recovered}")
        if result.killed_pids:
            print(f"terminated PIDs {', '.join(map(str, result.killed_pids))} (--force)")
        if dry_run:
            print("dry run: nothing changed")
        elif not result.plan.ops:
            print(f"config {label!r} is already applied: nothing to do")
        else:
            print(f"applied config {label!r}: {result.ops_done} operation(s)")

    @app.command("validate")
    def validate_cmd(
        file: Path = typer.Option(..., "-f", "--file", help="mig-parted v1 config to check."),
        label: str | None = typer.Option(None, "-c", "--config", help="Also check that this label exists."),
        model: list[str] | None = typer.Option(None, "--model", help="Check the label fits N GPUs of this catalog model (repeatable, e.g. 8xH100-80GB)."),  # noqa: E501
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Check a config without touching any GPU: schema, profile names against the catalog, fit."""
        from migctl.config import load_config

        cfg = load_config(file)
        checked: list[str] = []
        unfit: dict[str, str] = {}
        if label is not None:
            cfg.entries_for(label)
        if model:
            from migctl.sim import SpecError, parse_spec

            try:
                spec = parse_spec(",".join(model))
            except SpecError as e:
                fail(str(e))
            gpus = [_FakeGpu(i, k) for i, k in enumerate(spec.models)]
            from migctl.config import ConfigError

            for lab in [label] if label else cfg.labels:
                try:
                    cfg.resolve(lab, gpus)  # type: ignore[arg-type]
                    checked.append(lab)
                except ConfigError as e:
                    if label:  # the one label asked for must fit: exit 2 with FILE:LINE
                        raise
                    unfit[lab] = str(e)
        if as_json:
            emit_json({"file": str(file), "valid": True, "labels": cfg.labels, "warnings": cfg.warnings,
                       "fit_on_model": checked, "not_on_model": unfit})
            return
        for w in cfg.warnings:
            sys.stderr.write(f"warning: {w}\n")
        print(f"{file}: valid mig-parted v1 config, {len(cfg.labels)} label(s)"
              + (f"; {len(checked)} apply to {', '.join(model or [])}" if model else ""))
        for lab, why in unfit.items():
            print(f"  {lab}: does not apply to {', '.join(model or [])}: {why}")

    @app.command("assert")
    def assert_cmd(
        ctx: typer.Context,
        file: Path = typer.Option(..., "-f", "--file"),
        label: str = typer.Option(..., "-c", "--config", "--selected-config"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Exit 0 when config LABEL is applied; exit 1 with a readable diff otherwise."""
        from migctl.reconcile import assert_config

        diffs = assert_config(file, label, node=node(ctx))
        if as_json:
            emit_json({"config": label, "applied": not diffs, "differences": list(diffs)})
            if diffs:
                raise SystemExit(1)
            return
        if diffs:
            for d in diffs:
                sys.stderr.write(f"  {d}\n")
            fail("Assertion failure: selected configuration not currently applied (differences above)", 1)
        print(f"config {label!r} is applied")

    @app.command("export")
    def export_cmd(
        ctx: typer.Context,
        label: str = typer.Option("current", "-l", "--label", help="Label of the exported config."),
        output: str = typer.Option("yaml", "-o", "--output", help="yaml or json."),
        placements: bool = typer.Option(False, "--placements", help="Add migctl's placements extension."),
    ) -> None:
        """Print the live layout as a mig-parted v1 config (identical GPUs merged)."""
        from migctl.reconcile.live import read_node
        from migctl.reconcile.roundtrip import export_config, to_yaml

        if output not in ("yaml", "json"):
            fail(f"unknown output format {output!r} (valid: yaml, json)")
        live = read_node(node(ctx))
        for g in live:
            orphans = [gi for gi in g.gis if not gi.cis]
            if orphans:
                sys.stderr.write(
                    f"migctl: warning: GPU {g.index} has GPU instance(s) with no compute instance, not exported: "
                    + ", ".join(f"{gi.profile}@{gi.start} (GI {gi.id})" for gi in orphans)
                    + "; `migctl recover` removes one a crashed migctl left\n")
        data = export_config(live, label, placements)
        if output == "json":
            emit_json(data)
        else:
            sys.stdout.write(to_yaml(data))

    @app.command("checkpoint")
    def checkpoint_cmd(
        ctx: typer.Context,
        file: Path | None = typer.Option(None, "-f", "--file", help="Write here (default: stdout)."),
        as_json: bool = typer.Option(False, "--json", help="With -f: report {file} as JSON (stdout is JSON anyway)."),
    ) -> None:
        """Save every GPU's MIG layout (mode, profiles, GI/CI placements), keyed by GPU UUID."""
        import json

        from migctl.reconcile.roundtrip import checkpoint

        text = json.dumps(checkpoint(node(ctx)), indent=2) + "\n"
        if file is None:
            sys.stdout.write(text)
        else:
            from migctl.inputs import write_text_file

            write_text_file(file, text, "checkpoint")
            if as_json:
                emit_json({"file": str(file), "written": True})
            else:
                print(f"checkpoint written to {file}")

    @app.command("restore")
    def restore_cmd(
        ctx: typer.Context,
        file: Path = typer.Option(..., "-f", "--file", help="A checkpoint written by migctl checkpoint."),
        dry_run: bool = typer.Option(False, "--dry-run"),
        force: bool = typer.Option(False, "--force"),
        wait: float = typer.Option(0, "--wait", callback=seconds),
        lock_timeout: float = typer.Option(60, "--lock-timeout", callback=seconds),
        quiet: bool = typer.Option(False, "-q", "--quiet"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Restore a checkpoint exactly (same profiles and placements), transactionally."""
        from migctl.reconcile import apply_desired
        from migctl.reconcile.roundtrip import load_checkpoint, restore_resolver

        resolver = restore_resolver(load_checkpoint(file))
        quiet = quiet or as_json
        result = apply_desired(resolver, "checkpoint", str(file), node=node(ctx), dry_run=dry_run, force=force,
                               wait=wait, progress=_progress(quiet), lock_timeout=lock_timeout,
                               on_plan=None if quiet else (lambda p: print(p.render(), flush=True)))
        if as_json:
            emit_json({"file": str(file), "dry_run": dry_run, "operations": result.ops_done,
                       "killed_pids": list(result.killed_pids or [])})
        elif not quiet:
            print("dry run: nothing changed" if dry_run else f"restored {file}: {result.ops_done} operation(s)")

    @app.command("generate-config")
    def generate_cmd(
        ctx: typer.Context,
        model: list[str] | None = typer.Option(None, "--model", help="Catalog model(s) (default: this node's GPUs)."),
        output: str = typer.Option("yaml", "-o", "--output"),
    ) -> None:
        """mig-parted style configs: all-disabled, all-enabled, all-<profile>, all-balanced."""
        from migctl.catalog import load_model
        from migctl.reconcile.roundtrip import generate_config, to_yaml

        if output not in ("yaml", "json"):
            fail(f"unknown output format {output!r} (valid: yaml, json)")
        models = [load_model(m) for m in model] if model else [g.model for g in node(ctx).gpus() if g.model]
        data = generate_config(models)
        if output == "json":
            emit_json(data)
        else:
            sys.stdout.write(to_yaml(data))

    @app.command("recover")
    def recover_cmd(
        ctx: typer.Context,
        lock_timeout: float = typer.Option(60, "--lock-timeout", callback=seconds),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Finish an interrupted apply: roll every GPU back to the layout it had before."""
        from migctl.reconcile import node_lock, recover

        n = node(ctx)
        with node_lock(n, lock_timeout):
            msg = recover(n, _progress(as_json))
        if as_json:
            emit_json({"recovered": msg is not None, "message": msg or "no interrupted apply: nothing to recover"})
        else:
            print(msg or "no interrupted apply: nothing to recover")


def _change_picture(n: Any, plan: Any, show: bool, svg: Path | None) -> None:
    """Before -> after slice maps of the GPUs the plan touches (destroyed, created, kept)."""
    from migctl.catalog import parse_driver
    from migctl.cli.observe import show_picture, write_svg
    from migctl.observe.picture import maps_from_node_plan, picture

    maps = maps_from_node_plan(plan, parse_driver(n.driver_version))
    if show and maps:
        show_picture(picture(maps, change=True))
    if svg is not None:
        write_svg(svg, maps, f"migctl apply: {plan.label}", change=True)


class _FakeGpu:
    """A GPU of a catalog model, for ``validate --model`` (no device access)."""

    def __init__(self, index: int, key: str) -> None:
        from migctl.catalog import load_model

        self.index = index
        self.model = load_model(key)
        self.pci_device_id = self.model.pci_device_id_full
