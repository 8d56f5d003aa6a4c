"""Helpers for the nvidia-smi seed replay: extract (command, expected output) pairs and normalise output."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

# Copies of the project's seed transcripts, kept in the repository; sources and licence in tests/fixtures/seeds/README.md
SEEDS = Path(__file__).resolve().parents[1] / "fixtures" / "seeds"


def seed_path(prefix: str) -> Path:
    """The seed file whose name starts with ``prefix`` (e.g. ``003_``)."""
    matches = sorted(SEEDS.glob(f"{prefix}*.txt"))
    assert matches, f"seed {prefix}* not found under {SEEDS}"
    return matches[0]


@dataclass
class Step:
    """One ``nvidia-smi`` command of a seed transcript and the output the seed shows for it."""

    line: int  # 1-based line of the command in the seed file
    argv: list[str]  # words after ``nvidia-smi``
    expected: list[str]  # empty when the seed elides the output

    def __str__(self) -> str:
        return f"line {self.line}: nvidia-smi {' '.join(self.argv)}"


def _command(text: str) -> list[str] | None:
    """``$ sudo nvidia-smi mig -lgi # comment`` -> ``["mig", "-lgi"]``; None if not an nvidia-smi command."""
    body = text[2:] if text.startswith("$ ") else text
    words = shlex.split(body, comments=True)
    if words and words[0] == "sudo":
        words = words[1:]
    if not words or words[0] != "nvidia-smi":
        return None
    return words[1:]


def extract(path: Path, start_marker: str | None = None) -> list[Step]:
    """Commands and their shown output, inside code fences after ``start_marker``.

    A command is a fenced line starting with ``$ nvidia-smi`` (or ``nvidia-smi`` followed directly by output).
    Its output runs until the next command, a ``#`` comment line or the closing fence; trailing blank lines
    are dropped (blank lines inside, as between two tables, are kept).
    """
    lines = path.read_text().splitlines()
    begin = 0
    if start_marker is not None:
        begin = next(i for i, line in enumerate(lines) if start_marker in line)
    steps: list[Step] = []
    in_fence = False
    current: Step | None = None
    for i in range(begin, len(lines)):
        raw = lines[i]
        if raw.startswith("```"):
            in_fence = not in_fence
            current = None
            continue
        if not in_fence:
            continue
        argv = _command(raw.rstrip()) if (raw.startswith("$ ") or raw.startswith("nvidia-smi")) else None
        if argv is not None:
            bare = not raw.startswith("$ ")
            follows = i + 1 < len(lines) and lines[i + 1].strip() and not lines[i + 1].startswith(("#", "$", "```", "nvidia-smi"))
            if bare and not follows:
                current = None  # an instruction, not a session step
                continue
            current = Step(i + 1, argv, [])
            steps.append(current)
            continue
        if current is None:
            continue
        if raw.startswith("#") or raw.startswith("$ "):
            current = None
            continue
        current.expected.append(raw.rstrip())
    for s in steps:
        while s.expected and not s.expected[-1].strip():
            s.expected.pop()
    return steps


_UUID = re.compile(r"\b(GPU|MIG)-[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
_BUS = re.compile(r"\b[0-9A-Fa-f]{8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]\b")
# second line of a GPU in the default table: "| N/A   28C    P0              33W / 165W |"
_TELEMETRY = re.compile(r"^\|(\s*\S+)\s+\d+C(\s+P\d+)\s+\d+W / ")


def normalise(line: str, telemetry: bool = False) -> str:
    """Replace UUIDs and PCI bus ids (and, with ``telemetry``, temperature and power draw) by placeholders."""
    line = _UUID.sub(lambda m: f"{m.group(1)}-<uuid>", line)
    line = _BUS.sub("<bus-id>", line)
    if telemetry:
        line = _TELEMETRY.sub(lambda m: f"|{m.group(1)} <temp>{m.group(2)} <power> / ", line)
    return line


def find_block(actual: list[str], expected: list[str]) -> int:
    """Index where ``expected`` occurs as a contiguous block in ``actual``, or -1."""
    n = len(expected)
    for i in range(len(actual) - n + 1):
        if actual[i:i + n] == expected:
            return i
    return -1
