"""``migctl`` entry point. Each verb lives in its own module exposing ``register(app)``.

The CLI is thin: it parses, calls the library, renders. Heavy imports happen inside commands.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    import click

from migctl.cli import fastparams
from migctl.cli.common import CliState

fastparams.install()  # typer's coercion without pydantic for plain values (a third of a listing's time)

_APP_SETTINGS: dict[str, Any] = dict(
    name="migctl",
    help="Planned, safe and reproducible NVIDIA MIG partitioning (real GPUs through NVML, or a simulated node).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app = typer.Typer(**_APP_SETTINGS)

# Verb modules, registered in this order (a module that is missing is skipped, so the CLI stays usable
# while a verb is being developed).
VERB_MODULES = [
    "migctl.cli.devices",
    "migctl.cli.sim_cmds",
    "migctl.cli.smi",
    "migctl.cli.apply",
    "migctl.cli.plan",
    "migctl.cli.jobs",
    "migctl.cli.slurm",
    "migctl.cli.k8s",
    "migctl.cli.observe",
    "migctl.cli.bench",
    "migctl.cli.doctor",
]


def _print_version(value: bool) -> None:
    if value:
        from migctl import __version__

        sys.stdout.write(f"migctl {__version__}\n")
        raise SystemExit(0)


@app.callback()
def _root(
    ctx: typer.Context,
    sim: str | None = typer.Option(
        None, "--sim", envvar="MIGCTL_SIM", help="Use a simulated node, e.g. 8xH100-80GB or 2xA100-40GB,2xA30@545.23.08."
    ),
    sim_state: str | None = typer.Option(
        None, "--sim-state", envvar="MIGCTL_SIM_STATE", help="State file of the simulated node (default: per spec, in the user state dir)."
    ),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=lambda v: _print_version(v),
                                 help="Print migctl's version and exit."),
) -> None:
    ctx.obj = CliState(sim=sim, sim_state=sim_state)


def _register() -> None:
    for name in VERB_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        mod.register(app)


_register()


def _abort_classes() -> tuple[type[BaseException], ...]:
    """typer.Abort (typer >= 0.22) and click's Abort, whichever exist."""
    out: list[type[BaseException]] = []
    for mod, name in (("typer", "Abort"), ("click.exceptions", "Abort")):
        try:
            out.append(getattr(importlib.import_module(mod), name))
        except (ImportError, AttributeError):
            continue
    return tuple(out)


_ABORTS = _abort_classes()


_COMMAND: list[click.Command] = []


def _command() -> click.Command:
    """The click command tree of ``app``, built once per process (what ``app(...)`` would build on every call;
    a process that runs main() many times, such as the test suite, pays for it once)."""
    if not _COMMAND:
        _COMMAND.append(typer.main.get_command(app))
    return _COMMAND[0]


def _verb_command(verb: str) -> click.Command | None:
    """The click tree of ``app`` with only the command or group named ``verb``: what a process that runs one
    command needs. Building every command's parameters costs about a fifth of a listing's time. None when
    no command or group has that name (an unknown word: the whole tree answers, with its suggestions)."""
    try:
        from typer.main import get_command_name
    except ImportError:
        return None
    one = typer.Typer(**_APP_SETTINGS)
    try:  # typer's registries; a typer that keeps them otherwise gets the whole tree
        one.registered_callback = app.registered_callback
        one.registered_commands = [c for c in app.registered_commands
                                   if (c.name or (c.callback and get_command_name(c.callback.__name__))) == verb]
        one.registered_groups = [g for g in app.registered_groups if g.name == verb]
    except AttributeError:
        return None
    if len(one.registered_commands) + len(one.registered_groups) != 1:
        return None
    return typer.main.get_command(one)


def main(argv: list[str] | None = None, one_command: bool = False) -> int:
    """Run the CLI; user errors print one line on stderr and exit non-zero, never a traceback.

    ``one_command``: build only the named command's part of the click tree (:func:`_verb_command`), for a
    process that runs one command; the default builds the whole tree once per process."""
    click = _click()

    from migctl.cli.common import SIM_NOTES
    from migctl.errors import UserError

    SIM_NOTES.clear()
    engine = sys.modules.get("migctl.reconcile.engine")
    if engine is not None:
        engine.INTERRUPTED.clear()  # (an earlier in-process call's)
    try:
        head, rest = split_global_options(sys.argv[1:] if argv is None else list(argv))
        args = head + rest
        verb = rest[0] if rest and not rest[0].startswith("-") else None  # None: root help, --version
        cmd = (_verb_command(verb) if one_command and verb else None) or _command()
        rv = cmd(args=args, standalone_mode=False, prog_name="migctl")
        if rv == 130:  # Ctrl-C inside a command (typer returns 130); an apply it stopped says what it did
            said = getattr(sys.modules.get("migctl.reconcile.engine"), "INTERRUPTED", None)
            if said:
                from migctl.inputs import printable

                sys.stderr.write(f"migctl: interrupted: {printable(said.pop(), 2000)}{_sim_suffix()}\n")
                said.clear()
        _flush_sim_notes()
        return rv if isinstance(rv, int) else 0
    except SystemExit as e:
        _flush_sim_notes()
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    except UserError as e:
        from migctl.inputs import printable

        # (control characters escaped, whatever the message quotes: a config label or a file's content could
        # carry an escape sequence to the terminal, and a newline would make it two lines)
        sys.stderr.write(f"migctl: error: {printable(e, 20_000)}{_sim_suffix()}\n")
        return e.exit_code
    except click.exceptions.UsageError as e:
        if isinstance(e, getattr(click.exceptions, "NoArgsIsHelpError", ())):  # a bare group: its help (exit 2)
            sys.stderr.write(e.format_message().rstrip("\n") + "\n")
            return 2
        from migctl.inputs import printable

        cmd = e.ctx.command_path if e.ctx is not None else "migctl"
        sys.stderr.write(f"migctl: error: {printable(e.format_message(), 300)} (see '{printable(cmd)} --help')\n")
        return 2
    except _ABORTS:
        sys.stderr.write("migctl: aborted\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("migctl: interrupted\n")
        return 130
    except Exception as e:  # known library errors become one line too
        msg = _known_error(e)
        if msg is None:
            raise
        from migctl.inputs import printable

        sys.stderr.write(f"migctl: error: {printable(msg, 20_000)}{_sim_suffix()}\n")
        import pynvml

        # an NVML error no verb handled: the device failed the operation (1), not bad input (2); `run` and
        # scripts around it tell "can never be satisfied" (2) from "the device failed" by this code
        return 1 if isinstance(e, pynvml.NVMLError) else 2


def _flush_sim_notes() -> None:
    from migctl.cli.common import SIM_NOTES

    for note in SIM_NOTES:
        sys.stderr.write(f"migctl: note: {note}\n")
    SIM_NOTES.clear()


def _sim_suffix() -> str:
    """On a failed command that had started changing a simulated node: the note, on the same line."""
    from migctl.cli.common import SIM_NOTES

    text = "".join(f" (note: {n})" for n in SIM_NOTES)
    SIM_NOTES.clear()
    return text


GLOBAL_OPTIONS = ("--sim", "--sim-state")
# options that take a value in the verbs whose command words follow their options (run, submit)
_CMD_VERB_VALUES = {"--profile", "-p", "--mem", "-m", "--gpu", "-g", "-i", "--wait", "--priority", "--name",
                    "--max-reconfig-per-min", "--hysteresis", "--time-limit",
                    "--isolation", "--share", "--threads", "--mps-mem"}


def hoist_global_options(argv: list[str]) -> list[str]:
    """Move ``--sim X`` / ``--sim-state X`` given after the verb to the front, so both orders work.

    Never past ``--``, never out of the command of ``run``/``submit``, and not in ``smi`` (nvidia-smi's own
    words are passed through as they are).
    """
    head, rest = split_global_options(argv)
    return head + rest


def split_global_options(argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` as (the global options with their values, the rest in order): the rest starts with the verb
    when there is one (:func:`hoist_global_options`)."""
    head: list[str] = []
    rest: list[str] = []
    i = 0
    verb: str | None = None
    in_cmd = False
    while i < len(argv):
        a = argv[i]
        if a == "--" or in_cmd or verb == "smi":
            rest.extend(argv[i:])
            break
        name = a.split("=", 1)[0]
        if name in GLOBAL_OPTIONS:
            if "=" in a or i + 1 >= len(argv):
                head.append(a)
                i += 1
            else:
                head.extend(argv[i:i + 2])
                i += 2
            continue
        rest.append(a)
        if verb is None and not a.startswith("-"):
            verb = a
        elif verb in ("run", "submit"):
            if a in _CMD_VERB_VALUES and i + 1 < len(argv):
                rest.append(argv[i + 1])
                i += 1
            elif not a.startswith("-"):
                in_cmd = True
        i += 1
    return head, rest


def _click():  # type: ignore[no-untyped-def]
    """The click that typer uses: recent typer vendors it as ``typer._click``; older ones use click."""
    try:
        import typer._click as vendored  # type: ignore[import-not-found]

        return vendored
    except ImportError:  # pragma: no cover - typer < 0.22
        import click

        return click


def _known_error(e: Exception) -> str | None:
    from migctl.catalog import CatalogError
    from migctl.device import DeviceError
    from migctl.sim import SpecError, StateFileError

    if isinstance(e, (CatalogError, DeviceError, SpecError, StateFileError)):
        return str(e)
    import pynvml

    if isinstance(e, pynvml.NVMLError):
        return f"NVML: {e}"
    import sqlite3

    if isinstance(e, sqlite3.DatabaseError):  # the jobs database failing after it was opened (damaged, locked)
        from migctl.jobs.common import db_path, unusable_db

        return unusable_db(db_path(), e)
    if isinstance(e, OSError):  # the file system or the OS refused (a path a check did not foresee)
        from migctl.inputs import printable

        where = f": {printable(e.filename)}" if e.filename is not None else ""
        return f"{e.strerror or e}{where}"
    return None


def run() -> None:
    sys.exit(main(one_command=True))


if __name__ == "__main__":
    run()
