"""Helpers shared by the CLI tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

H100 = "2xH100-80GB"
MIXED = "1xH100-80GB,1xA30"


@dataclass
class Result:
    """Exit code and captured streams of one ``migctl`` invocation."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def one_error_line(r: Result) -> str:
    """Assert the run failed with exactly one ``migctl: error:`` line on stderr; return it."""
    lines = [ln for ln in r.err.splitlines() if ln.strip()]
    assert len(lines) == 1, r.err
    assert lines[0].startswith("migctl: error: "), lines[0]
    return lines[0]
