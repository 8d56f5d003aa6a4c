"""``migctl exporter`` (Prometheus metrics) and ``migctl top`` (live view); the slice-map printer for the CLI."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from migctl.cli.common import fail, node

_PALETTE = ("blue", "magenta", "cyan", "yellow", "bright_blue", "bright_magenta")


def rich_style(style: str) -> str:
    """A picture style key (migctl.observe.picture) as a rich style."""
    if style.startswith("gi"):
        n, _, state = style[2:].partition(":")
        color = _PALETTE[int(n) % len(_PALETTE)] if n.isdigit() else "blue"
        return f"bold white on {color}" if state == "busy" else color
    return {"header": "bold", "dim": "dim", "free": "grey50", "stranded": "bold red",
            "created": "bold black on green", "destroyed": "bold white on red"}.get(style, "")


def to_text(lines: Sequence[Any]) -> Any:
    """Picture lines as one rich Text."""
    from rich.text import Text

    t = Text()
    for i, line in enumerate(lines):
        if i:
            t.append("\n")
        for text, style in line:
            t.append(text, style=rich_style(style) or None)
    return t


def show_picture(lines: Sequence[Any], stream: Any = None) -> None:
    """Print a picture: in colour on a terminal, plain ASCII when piped."""
    from migctl.observe.picture import to_ascii

    stream = stream or sys.stdout
    if stream.isatty():
        from rich.console import Console

        Console(file=stream, highlight=False, emoji=False, soft_wrap=True).print(to_text(lines))
    else:
        stream.write(to_ascii(lines))
        stream.flush()


def check_svg(path: Path) -> None:
    """One error line now if ``path`` cannot take the SVG picture (a PNG name, a bad path)."""
    from migctl.inputs import check_writable

    if path.suffix.lower() == ".png":
        fail(f"--svg {path}: PNG is not supported (no image library is a dependency); use a .svg file name")
    check_writable(path, "--svg")


def write_svg(path: Path, maps: Sequence[Any], title: str, change: bool = False) -> None:
    """Write the SVG picture to ``path`` (atomically, 0600), with a one-line error otherwise."""
    from migctl.inputs import write_text_file
    from migctl.observe.picture import to_svg

    check_svg(path)
    write_text_file(path, to_svg(maps, title=title, change=change), "--svg")


def register(app: typer.Typer) -> None:
    @app.command("exporter")
    def exporter_cmd(
        ctx: typer.Context,
        listen: str = typer.Option("127.0.0.1:9400", "--listen", help="HOST:PORT to serve /metrics and /healthz on "
                                   "(port 0: any free port, printed at start)."),
        dcgm_compat: bool = typer.Option(True, "--dcgm-compat/--no-dcgm-compat",
                                         help="dcgm-exporter's label names (modelName, Hostname); "
                                              "--no-dcgm-compat uses snake_case (model_name, hostname)."),
        once: bool = typer.Option(False, "--once", help="Print one scrape on stdout and exit."),
    ) -> None:
        """Prometheus exporter: dcgm-exporter-compatible per-GPU/per-MIG series and migctl's own (docs/observe.md)."""
        from migctl.observe.exporter import make_registry, parse_listen, render, serve

        try:
            host, port = parse_listen(listen)
        except ValueError as e:
            fail(str(e))
        registry, _ = make_registry(node(ctx), dcgm_compat=dcgm_compat)
        if once:
            sys.stdout.write(render(registry).decode())
            return
        try:
            server = serve(registry, host, port)
        except OSError as e:
            fail(f"cannot listen on {listen}: {e.strerror or e}")
        h, p = server.server_address[:2]
        sys.stderr.write(f"migctl exporter: serving http://{h}:{p}/metrics and /healthz\n")
        sys.stderr.flush()
        try:
            server.serve_forever(poll_interval=0.5)
        finally:
            server.server_close()

    @app.command("top")
    def top_cmd(
        ctx: typer.Context,
        interval: float = typer.Option(1.0, "--interval", help="Seconds between refreshes (0.2-60)."),
        iterations: int = typer.Option(0, "--iterations", help="Stop after N refreshes (0: until Ctrl-C)."),
        once: bool = typer.Option(False, "--once", help="Print one frame and exit (no full-screen view)."),
    ) -> None:
        """Live view of the node: slice map per GPU with memory and activity, leases, jobs, queue, pending modes."""
        if not 0.2 <= interval <= 60:
            fail(f"--interval {interval:g}: must be between 0.2 and 60 seconds")
        if iterations < 0:
            fail(f"--iterations {iterations}: must be >= 0")
        from migctl.cli.top import run_top

        run_top(node(ctx), interval=interval, iterations=1 if once else iterations, screen=not once)
