"""Entry point of the ``nvidia-mig-parted`` console script."""

from __future__ import annotations

import sys

from migctl.errors import UserError
from migctl.parted.args import ArgError, parse, usage


def main(argv: list[str] | None = None) -> int:
    """Run one ``nvidia-mig-parted`` command; returns the exit status (0, or 1 on any failure)."""
    from migctl.parted.commands import VERBS, Fatal, Log, capitalize

    args = sys.argv[1:] if argv is None else argv
    try:
        p = parse(args)
    except ArgError as e:
        sys.stderr.write(Log.line("fatal", capitalize(str(e))) + "\n")
        return 1
    if p.version:
        from migctl import __version__

        print(f"nvidia-mig-parted version {__version__} (migctl drop-in)")
        return 0
    if p.help or p.command is None:
        sys.stdout.write(usage(p.command))
        return 0
    log = Log(p.bool("debug"))
    try:
        VERBS[p.command](p, log)
    except Fatal as e:
        sys.stderr.write(Log.line("fatal", capitalize(str(e))) + "\n")
        return 1
    except KeyboardInterrupt as e:  # (an apply stopped by Ctrl-C or SIGTERM says whether it rolled back)
        sys.stderr.write(Log.line("fatal", "Interrupted" + (f": {e}" if str(e) else "")) + "\n")
        return 1
    except UserError as e:  # migctl's own one-line errors (a bad MIGCTL_STATE_DIR, a state file): as they are
        sys.stderr.write(Log.line("fatal", capitalize(str(e))) + "\n")
        return 1
    except Exception as e:  # never a traceback: one line naming the error, exit 1 like mig-parted
        msg = str(e) or e.__class__.__name__
        sys.stderr.write(Log.line("fatal", capitalize(f"{e.__class__.__name__}: {msg}")) + "\n")
        return 1
    return 0


def run() -> None:
    sys.exit(main())
