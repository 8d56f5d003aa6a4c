"""``migctl smi ...``: nvidia-smi compatibility mode (see docs/smi.md).

nvidia-smi's syntax (``-lgip``, ``-cgi 5,5 -C``, the ``mig`` sub-command) is not click-friendly, so the
command takes its words raw and :mod:`migctl.smi` parses them.
"""

from __future__ import annotations

import sys

import typer

from migctl.cli.common import node


def register(app: typer.Typer) -> None:
    """Add the ``smi`` command to the migctl app."""

    @app.command(
        "smi",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
        add_help_option=False,
        help="nvidia-smi compatibility mode: migctl smi [nvidia-smi options], e.g. migctl smi mig -lgip.",
    )
    def smi(ctx: typer.Context) -> None:
        from migctl.smi import run_smi

        code = run_smi(node(ctx), list(ctx.args), sys.stdout)
        sys.stdout.flush()
        if code:
            # SystemExit, not typer.Exit: main() runs click with standalone_mode=False, where typer.Exit's code
            # would be returned by app() and dropped; main() turns SystemExit into its return value.
            raise SystemExit(code)
