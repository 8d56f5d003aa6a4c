# ruff: noqa: UP006, UP007, UP035, UP045
"""``migctl bench``: measure a workload on each MIG size and the whole GPU (see docs/bench.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer

from migctl.cli.common import command_words, fail, node, seconds
from migctl.inputs import is_digits

CMD_SETTINGS = {"allow_interspersed_args": False, "ignore_unknown_options": True}


def _ints(text: str, option: str) -> list[int]:
    parts = [x.strip() for x in text.split(",") if x.strip()]
    # ASCII digits as written (int() also reads '1_0' and other scripts' digits), at most 9 of them
    if not parts or not all(is_digits(x) and len(x) <= 9 for x in parts):
        fail(f"{option} takes integers separated by commas (ASCII digits, at most 9 each), e.g. 1,4,16, not {text!r}")
    return [int(x) for x in parts]


def register(app: typer.Typer) -> None:
    @app.command("bench", context_settings=CMD_SETTINGS)
    def bench_cmd(
        ctx: typer.Context,
        cmd: Optional[List[str]] = typer.Argument(None, help="Command and arguments (after --)."),
        profiles: Optional[str] = typer.Option(
            None, "--profiles", "-p",
            help="Comma-separated GI profiles and/or 'whole' (default: one plain profile per size, plus whole)."),
        no_whole: bool = typer.Option(False, "--no-whole", help="Do not measure the whole GPU with MIG disabled."),
        batch: str = typer.Option("1", "--batch", "-b", help="Batch sizes, e.g. 1,4,16 (MIGCTL_BENCH_BATCH)."),
        procs: str = typer.Option("1", "--procs", help="Process counts per instance, e.g. 1,2 (MIGCTL_BENCH_PROCS)."),
        repeat: int = typer.Option(3, "--repeat", "-r", help="Measured runs per configuration."),
        warmup: int = typer.Option(1, "--warmup", help="Warm-up runs per configuration (discarded)."),
        timeout: float = typer.Option(300.0, "--timeout", help="Seconds one run may take before it is killed."),
        gpu: Optional[int] = typer.Option(None, "-i", "--gpu", "-g", help="GPU index (default: the first MIG-capable)."),
        table: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the ParvaGPU profile table (CSV) here."),
        json_file: Optional[Path] = typer.Option(None, "--json-out", help="Write every run and summary as JSON here."),
        plot_file: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG plot here (needs matplotlib)."),
        json_out: bool = typer.Option(False, "--json", help="Print the JSON result instead of the table."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines."),
        recover: bool = typer.Option(False, "--recover", help="Only restore a layout an interrupted bench left."),
        lock_timeout: float = typer.Option(60.0, "--lock-timeout", callback=seconds, help="Seconds to wait for the node lock."),
    ) -> None:
        """Run CMD on each MIG size (and the whole GPU) and collect throughput and latency.

        CMD reports one JSON line {"throughput": N, "latency_ms": N, "unit": "..."} on stdout (else its wall
        time is used). The GPU's layout is restored afterwards, also after a failure or Ctrl-C.
        """
        from migctl.bench import output
        from migctl.bench.runner import Settings, run_bench
        from migctl.bench.runner import recover as do_recover

        cmd = command_words(cmd, "bench")
        n = node(ctx)
        if recover:
            if cmd:
                fail("--recover takes no command")
            msg = do_recover(n, lock_timeout)
            if json_out:
                typer.echo(json.dumps({"recovered": msg is not None, "message": msg}))
            else:
                typer.echo(msg or "nothing to recover: no interrupted bench on this node")
            return
        names = [x.strip() for x in profiles.split(",") if x.strip()] if profiles is not None else None
        if names is not None and not names:
            fail("--profiles: give profile names such as 1g.10gb,3g.40gb or 'whole'")
        s = Settings(command=list(cmd or []), batches=_ints(batch, "--batch"), procs=_ints(procs, "--procs"),
                     repeat=repeat, warmup=warmup, timeout=timeout, gpu=gpu, profiles=names, whole=not no_whole,
                     lock_timeout=lock_timeout)
        # before any run: a typo in an output path must not cost the whole measurement
        from migctl.inputs import check_writable

        for p, what in ((table, "--out"), (json_file, "--json-out"), (plot_file, "--plot")):
            if p is not None:
                check_writable(p, what)
        if plot_file is not None:
            import importlib.util

            if importlib.util.find_spec("matplotlib") is None:
                fail("--plot needs matplotlib (pip install matplotlib); valid without it: --out, --json-out")

        def progress(done: int, total: int, what: str) -> None:
            if not quiet:
                sys.stderr.write(f"[{done}/{total}] {what}\n")
                sys.stderr.flush()

        def on_run(r: Any) -> None:
            if quiet:
                return
            if r.status == "ok":
                sys.stderr.write(f"    {r.throughput:.6g} {r.unit}, {r.latency_ms:.6g} ms"
                                 f"{' (warm-up, discarded)' if r.warmup else ''}\n")
            else:
                sys.stderr.write(f"    {r.status}: {r.error}\n")

        result = run_bench(n, s, progress=progress, on_run=on_run)
        if result.recovered and not quiet:
            sys.stderr.write(f"migctl: {result.recovered}\n")
        try:
            if table is not None:
                output.write_private(table, output.to_table_csv(result))
            if json_file is not None:
                output.write_private(json_file, output.to_json(result) + "\n")
            if plot_file is not None:
                output.plot(result, plot_file)
        except OSError as e:
            fail(f"cannot write output: {e.strerror or e}")
        if json_out:
            typer.echo(output.to_json(result))
        else:
            typer.echo("\n".join(output.summary_lines(result)))
        if result.interrupted:
            sys.stderr.write("migctl: interrupted; the GPU's layout was restored and the measurements so far kept\n")
            raise typer.Exit(130)
        if not any("throughput" in r for r in result.rows()):
            sys.stderr.write("migctl: error: no configuration was measured successfully\n")
            raise typer.Exit(1)
