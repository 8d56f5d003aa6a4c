"""Replay of real ``nvidia-smi`` captures (tests/fixtures/captures/) on the simulator.

Each source (a blog post, an issue thread, a README) is a folder with ``capture.yaml`` (where it comes from,
GPU model, driver, licence note, the simulated node that stands in for the machine, and the commands in the
order the capture shows them) and one ``.txt`` file per shown output, verbatim. See the README in that folder.

A step with an output file is a *capture*: ``migctl smi`` is run with the same arguments on the simulated
node, both outputs are normalised (only the fields the step names) and compared. A step without output is
run to reproduce the state the capture went through. ``setup`` entries recreate state the capture implies
but does not show the commands for (MIG mode enabled before the transcript starts, instances created with a
given placement); each says why.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CAPTURES = Path(__file__).resolve().parents[1] / "fixtures" / "captures"

# What a capture may have normalised, and how. Everything else is compared character for character
# (after dropping trailing whitespace, which web pages and Markdown renderers strip).
NORMALISERS = ("uuid", "bus-id", "temp", "power", "timestamp", "pid", "mem-used")

_UUID = re.compile(r"\b(GPU|MIG)-[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
_BUS = re.compile(r"\b[0-9A-Fa-f]{8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]\b")
_TEMP = re.compile(r"( *)(\d+)C(\s+P\d+\b)")
_POWER = re.compile(r"( *)(\d+)W( ?/ )")
_STAMP = re.compile(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun) \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\s*$")
_MEM_USED = re.compile(r"( *)(\d+)MiB( / +\d+MiB)")
_BAR1_LINE = re.compile(r"^\|\s{18}\|")  # second line of a MIG device row: BAR1 usage, compared as is
_PID_ROW = re.compile(r"^(\|\s+\d+\s+(?:\S+\s+){2})(\d+)(\s+[CG]\s)")


def _blank(m: re.Match[str], token: str) -> str:
    """Digits (and the padding before them) -> a token of the same width, so column layout is still compared."""
    width = len(m.group(1)) + len(m.group(2))
    return token.rjust(width)


def normalise(line: str, fields: frozenset[str] | set[str]) -> str:
    line = line.rstrip()
    if "uuid" in fields:
        line = _UUID.sub(lambda m: f"{m.group(1)}-<uuid>", line)
    if "bus-id" in fields:
        line = _BUS.sub("<bus-id-------->", line)
    if "timestamp" in fields and _STAMP.match(line):
        return "<timestamp>"
    if "temp" in fields:
        line = _TEMP.sub(lambda m: _blank(m, "T") + "C" + m.group(3), line)
    if "power" in fields:
        line = _POWER.sub(lambda m: _blank(m, "P") + "W" + m.group(3), line)
    if "mem-used" in fields and not _BAR1_LINE.match(line):
        line = _MEM_USED.sub(lambda m: _blank(m, "U") + "MiB" + m.group(3), line)
    if "pid" in fields:
        line = _PID_ROW.sub(lambda m: m.group(1) + "#" * len(m.group(2)) + m.group(3), line)
    return line


@dataclass
class Step:
    """One command of a capture, in the order the capture shows it."""

    source: str
    index: int
    argv: list[str]
    output: list[str] | None  # None: the capture shows no output for it (run, not compared)
    output_file: str | None
    compare: str  # "exact" (whole output) or "block" (the shown lines appear contiguously in ours)
    normalise: frozenset[str]
    expect: str  # "identical" or "differs"
    why: str  # for "differs": what differs and why it cannot (yet) match
    exit: int | None  # expected exit status when the capture shows it (None: not checked)
    before: list[list[str]] = field(default_factory=list)  # commands the source describes but does not show

    def __str__(self) -> str:
        return f"{self.source}#{self.index}: nvidia-smi {' '.join(self.argv)}"


@dataclass
class Source:
    slug: str
    meta: dict[str, Any]
    spec: str
    setup: list[dict[str, Any]]
    steps: list[Step] = field(default_factory=list)

    @property
    def model(self) -> str:
        return str(self.meta["gpu"]["catalog_key"])

    @property
    def driver(self) -> str:
        return str(self.meta["driver"]["version"])

    @property
    def branch(self) -> str:
        d = self.meta["driver"]
        return f"R{str(d['version']).split('.')[0]}" if d.get("shown") else "unknown"


def _read_output(folder: Path, name: str) -> list[str]:
    lines = (folder / name).read_text(encoding="utf-8").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


_SOURCE_KEYS = {"source", "licence", "gpu", "driver", "spec", "setup", "normalise", "steps"}
_STEP_KEYS = {"run", "output", "compare", "normalise", "expect", "why", "exit", "note", "before", "before_why"}


def load_source(folder: Path) -> Source:
    meta = yaml.safe_load((folder / "capture.yaml").read_text(encoding="utf-8"))
    default_norm = frozenset(meta.get("normalise", []))
    src = Source(slug=folder.name, meta=meta, spec=str(meta["spec"]), setup=list(meta.get("setup") or []))
    unknown_keys = set(meta) - _SOURCE_KEYS
    assert not unknown_keys, f"{folder.name}: unknown keys {sorted(unknown_keys)}"
    for i, raw in enumerate(meta["steps"], 1):
        bad = set(raw) - _STEP_KEYS
        assert not bad, f"{folder.name} step {i}: unknown keys {sorted(bad)} (quote a run with commas)"
        assert not raw.get("before") or raw.get("before_why"), f"{folder.name} step {i}: `before` needs `before_why`"
        norm = frozenset(raw.get("normalise", default_norm))
        unknown = norm - set(NORMALISERS)
        assert not unknown, f"{folder.name} step {i}: unknown normalisation {sorted(unknown)}"
        out_file = raw.get("output")
        src.steps.append(
            Step(
                source=folder.name,
                index=i,
                argv=shlex.split(raw["run"]),
                output=_read_output(folder, out_file) if out_file else None,
                output_file=out_file,
                compare=raw.get("compare", "exact"),
                normalise=norm,
                expect=raw.get("expect", "identical"),
                why=str(raw.get("why", "")),
                exit=raw.get("exit"),
                before=[shlex.split(w) for w in raw.get("before", [])],
            )
        )
    return src


def load_all() -> list[Source]:
    return [load_source(p) for p in sorted(CAPTURES.iterdir()) if (p / "capture.yaml").is_file()]


def find_block(actual: list[str], expected: list[str]) -> int:
    n = len(expected)
    for i in range(len(actual) - n + 1):
        if actual[i:i + n] == expected:
            return i
    return -1


def matches(step: Step, output: str) -> bool:
    """Whether ``output`` (ours) reproduces the captured output of ``step`` under its normalisation."""
    assert step.output is not None
    actual = [normalise(x, step.normalise) for x in output.rstrip("\n").split("\n")]
    expected = [normalise(x, step.normalise) for x in step.output]
    if step.compare == "block":
        return find_block(actual, expected) >= 0
    return actual == expected


Runner = Callable[..., tuple[int, str]]


def run_setup(src: Source, run: Runner, open_node: Callable[[], Any]) -> None:
    """Apply ``setup``: ``smi`` entries run nvidia-smi words; ``gi`` entries create a GI at a placement."""
    from migctl.catalog import Placement

    for entry in src.setup:
        if "smi" in entry:
            code, out = run(src.spec, *shlex.split(entry["smi"]))
            assert code == 0, f"{src.slug}: setup `{entry['smi']}` failed ({code}): {out}"
            continue
        node = open_node()
        try:
            gpu = node.gpu(int(entry.get("gpu", 0)))
            prof = gpu.profile(int(entry["gi"]))
            assert prof is not None, f"{src.slug}: setup profile {entry['gi']} unknown"
            size = prof.placements[0].size
            gi = gpu.create_gi(prof.id, Placement(int(entry["start"]), size))
            for ci in entry.get("ci", []):
                gi.create_ci(None if ci == "default" else int(ci))
        finally:
            node.close()


@dataclass
class Result:
    step: Step
    identical: bool
    code: int
    output: str


def replay(src: Source, run: Runner, open_node: Callable[[], Any]) -> Iterator[Result]:
    """Run the source's setup and steps in order; yields one result per step with an output."""
    run_setup(src, run, open_node)
    for step in src.steps:
        for words in step.before:
            code, out = run(src.spec, *words)
            assert code == 0, f"{step}: `before` command {' '.join(words)} failed ({code}): {out}"
        code, out = run(src.spec, *step.argv)
        if step.output is None:
            continue
        ok = matches(step, out) and (step.exit is None or step.exit == code)
        yield Result(step, ok, code, out)
