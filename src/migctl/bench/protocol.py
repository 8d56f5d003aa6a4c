"""The JSON-line protocol of ``migctl bench``.

A workload reports its measurement by printing one line on stdout::

    {"throughput": 123.4, "latency_ms": 8.1, "unit": "tokens/s"}

* ``throughput`` (required): a finite number >= 0, per process, in ``unit`` (default ``items/s``);
* ``latency_ms`` (required): a finite number > 0, the latency of one request/batch in milliseconds;
* ``unit`` (optional): a short string; every run of one bench must use the same unit;
* other keys are kept in the JSON output and otherwise ignored.

A *protocol line* is a line that is a JSON object with a ``throughput`` or ``latency_ms`` key (or a
line starting with ``{`` that mentions ``"throughput"`` but is not valid JSON: that is an error, not
noise). Every other line is the program's own output and is ignored. When several protocol lines are
printed, the last one counts (a workload may report progress). No protocol line at all: the run is
measured by its wall time instead (see :func:`migctl.bench.runner`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

MAX_UNIT = 32
FIELDS = ("throughput", "latency_ms")


class ProtocolError(ValueError):
    """A protocol line that cannot be used; the message names the line and what is wrong."""


@dataclass(frozen=True)
class Report:
    """What one process reported."""

    throughput: float
    latency_ms: float
    unit: str = "items/s"
    extra: dict[str, Any] = field(default_factory=dict)


def _number(obj: dict[str, Any], key: str, positive: bool) -> float:
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ProtocolError(f"{key} must be a number, not {json.dumps(v)[:40]}")
    x = float(v)
    if not math.isfinite(x) or x < 0 or (positive and x == 0):
        raise ProtocolError(f"{key} must be a finite number {'> 0' if positive else '>= 0'}, not {v!r}")
    return x


def parse_line(line: str) -> Report | None:
    """The report on ``line``, None when the line is not a protocol line; raises :class:`ProtocolError`."""
    s = line.strip()
    if not s.startswith("{"):
        return None
    try:
        obj = json.loads(s)
    except ValueError as e:  # JSONDecodeError, or an integer of more digits than int() converts
        if '"throughput"' in s or '"latency_ms"' in s:
            why = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else "a number too long"
            raise ProtocolError(f"not valid JSON ({why})") from None
        return None
    except RecursionError:  # the C decoder's bound on nesting (a program's output is not ours to trust)
        if '"throughput"' in s or '"latency_ms"' in s:
            raise ProtocolError("not valid JSON (nested too deeply)") from None
        return None
    if not isinstance(obj, dict) or not any(k in obj for k in FIELDS):
        return None
    missing = [k for k in FIELDS if k not in obj]
    if missing:
        raise ProtocolError(f"missing field(s) {', '.join(missing)} (a report needs throughput and latency_ms)")
    thr = _number(obj, "throughput", positive=False)
    lat = _number(obj, "latency_ms", positive=True)
    unit = obj.get("unit", "items/s")
    if not isinstance(unit, str) or not unit.strip() or len(unit) > MAX_UNIT or not unit.isprintable():
        raise ProtocolError(f"unit must be a short printable string (at most {MAX_UNIT} characters)")
    extra = {k: v for k, v in obj.items() if k not in (*FIELDS, "unit")}
    return Report(throughput=thr, latency_ms=lat, unit=unit.strip(), extra=extra)


def parse_output(text: str) -> Report | None:
    """The last report in a program's stdout, None when there is none; errors name the line number."""
    last: Report | None = None
    for n, line in enumerate(text.splitlines(), start=1):
        try:
            r = parse_line(line)
        except ProtocolError as e:
            raise ProtocolError(f"stdout line {n}: {e}") from None
        if r is not None:
            last = r
    return last
