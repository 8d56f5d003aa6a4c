"""Shared rendering helpers for the CLI: tables, number and placement formats, error text.

Everything that prints goes through :func:`out` (stdout) or :func:`note` (stderr), so commands stay
short and all verbs look alike. Tables are rich tables (imported lazily) with a simple head; when stdout is not a
terminal they are rendered wide enough never to wrap, so piped output stays greppable.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from migctl.inputs import is_digits

if TYPE_CHECKING:  # rich is imported lazily: `migctl --help` must not load it
    from rich.console import Console
    from rich.table import Table

UNCONFIRMED_MARK = "?"
UNCONFIRMED_LEGEND = "? = value not established by a source (UNCONFIRMED); `migctl catalog MODEL --sources` shows sources"


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None
    if not stream.isatty() and not os.environ.get("COLUMNS"):
        width = 250  # piped / captured output: never wrap table rows
    return Console(file=stream, highlight=False, soft_wrap=True, width=width, emoji=False, markup=False)


def out(*objects: Any) -> None:
    """Print text or rich renderables on stdout (table rows without trailing blanks)."""
    import io

    from rich.console import Console

    real = _console()
    buf = io.StringIO()
    Console(file=buf, highlight=False, soft_wrap=True, width=real.width, emoji=False, markup=False,
            force_terminal=real.is_terminal, color_system=real.color_system).print(*objects)
    real.file.write("\n".join(line.rstrip() for line in buf.getvalue().split("\n")))
    real.file.flush()


def note(text: str) -> None:
    """A hint or warning on stderr (does not change the exit code)."""
    _console(stderr=True).print(text)


def table(*columns: str, title: str | None = None, right: Iterable[str] = ()) -> Table:
    """A table in the CLI's house style; ``right`` names the right-aligned (numeric) columns."""
    from rich import box
    from rich.table import Table

    t = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", show_edge=False, pad_edge=False,
              header_style="bold", title_style="bold")
    right_set = set(right)
    for c in columns:
        t.add_column(c, justify="right" if c in right_set else "left", no_wrap=True)
    return t


def gib(mib: int) -> str:
    """MiB as nvidia-smi's GiB figure (``9984`` -> ``"9.75"``)."""
    return f"{mib / 1024:.2f}"


def mode_name(value: int | None) -> str:
    """NVML MIG mode value -> ``Enabled`` / ``Disabled`` (``N/A`` when not MIG capable)."""
    if value is None:
        return "N/A"
    return "Enabled" if value == 1 else "Disabled"


def placements_text(placements: Sequence[Any]) -> str:
    """``{0,4}:4`` as in ``nvidia-smi mig -lgipp``; mixed sizes are listed one by one; ``-`` when none."""
    if not placements:
        return "-"
    sizes = {p.size for p in placements}
    if len(sizes) == 1:
        return "{" + ",".join(str(p.start) for p in placements) + "}:" + str(sizes.pop())
    return ",".join(f"{p.start}:{p.size}" for p in placements)


def placement_json(p: Any) -> dict[str, int]:
    """A placement as JSON: ``{"start": S, "size": N}``."""
    return {"start": int(p.start), "size": int(p.size)}


def mark(value: Any, field: str, unconfirmed: Iterable[str]) -> str:
    """``value`` as text, with a trailing ``?`` when ``field`` is listed as unconfirmed."""
    text = str(value)
    return text + UNCONFIRMED_MARK if field in set(unconfirmed) else text


def pids_text(pids: Iterable[int]) -> str:
    """``PID 12, 34`` for error messages."""
    ps = sorted(set(pids))
    return ("PID " if len(ps) == 1 else "PIDs ") + ", ".join(str(p) for p in ps)


def id_list(values: Iterable[int]) -> str:
    """Comma-separated IDs, ``none`` when empty."""
    vs = list(values)
    return ", ".join(str(v) for v in vs) if vs else "none"


def parse_ids(text: str, what: str) -> list[int]:
    """``"1,2, 3"`` -> ``[1, 2, 3]``; raises a user error naming ``what`` on anything else."""
    from migctl.cli.common import fail

    out_ids: list[int] = []
    for tok in text.split(","):
        t = tok.strip()
        if not is_digits(t):
            fail(f"{what} must be comma-separated non-negative integers, got {text!r}")
        if int(t) not in out_ids:
            out_ids.append(int(t))
    return out_ids
