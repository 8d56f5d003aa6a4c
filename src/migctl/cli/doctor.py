"""``migctl doctor``: read-only checks of this node for migctl and for MIG changes (:mod:`migctl.doctor`)."""

from __future__ import annotations

from typing import Annotated

import typer

from migctl.cli.common import emit_json, node

STYLE = {"ok": "green", "info": "", "warn": "yellow", "fail": "bold red"}


def doctor_cmd(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output (keys documented in docs/cli.md).")] = False,
) -> None:
    """Check this node read-only: driver and catalog, MIG modes and pending changes, what holds GPUs open,
    tools, the state dir (private, on a local disk, an interrupted apply) and the queue; exit 1 on a failure."""
    from migctl import doctor
    from migctl.paths import state_dir_path

    checks = doctor.run(node(ctx), state_dir_path(), doctor.read_mounts())
    failed = any(c.status == "fail" for c in checks)
    if as_json:
        emit_json({"ok": not failed, "checks": [c.to_json() for c in checks]})
    else:
        from rich.text import Text

        from migctl.cli.render import out, table
        from migctl.inputs import printable

        t = table("status", "check", "GPU", "detail", right=("GPU",))
        for c in checks:
            # (a detail quotes process names and paths: plain text, control characters escaped, never markup)
            t.add_row(Text(c.status, style=STYLE[c.status]), c.name, "" if c.gpu is None else str(c.gpu),
                      Text(printable(c.detail, 4000)))
        out(t)
        counts = {s: sum(c.status == s for c in checks) for s in doctor.STATUSES}
        out(", ".join(f"{n} {s}" for s, n in counts.items() if n) + (": migctl cannot work safely until the "
                                                                     "failures are fixed" if failed else ""))
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor_cmd)
