"""Acceptance: the real nvidia-smi sessions in shared/seeds replay on the simulator with identical output.

Only UUIDs (GPU-…/MIG-…) and PCI bus ids are normalised; in the default ``nvidia-smi`` table, temperature
and power draw are normalised too (memory used is compared as is). Where the seed shows only part of an
output (the default table without its timestamp or processes table, or only the MIG devices table), that
part must appear as one contiguous block; everything else must match line for line.
"""

from __future__ import annotations

from seedlib import Step, extract, find_block, normalise, seed_path

SPEC_A30 = "4xA30@545.23.08"


def _check(step: Step, code: int, output: str) -> None:
    assert code == (6 if step.expected[:1] == ["No compute instances found: Not Found"] else 0), f"{step}: exit {code}"
    summary = step.argv == []
    actual = [normalise(x, telemetry=summary) for x in output.splitlines()]
    expected = [normalise(x, telemetry=summary) for x in step.expected]
    if summary:
        assert find_block(actual, expected) >= 0, f"{step}: seed block not found in\n" + "\n".join(actual)
    else:
        assert actual == expected, f"{step}"


def test_seed_003_a30_session_replays(smi_cli) -> None:
    steps = extract(seed_path("003_"), "An example on a node with 4 A30")
    # the extractor must find the whole session (a broken extractor must not pass vacuously)
    assert len(steps) == 22
    assert sum(1 for s in steps if s.expected) == 19
    for step in steps:
        code, output = smi_cli(SPEC_A30, *step.argv)
        if not step.expected:  # the seed elides this output (-dgi, -dci, a repeated -lgi)
            continue
        _check(step, code, output)


def test_seed_003_lgipp(smi_cli) -> None:
    """The ``-lgipp`` example at the top of seed 003 (GPU 0 in MIG mode)."""
    step = next(s for s in extract(seed_path("003_")) if s.argv == ["mig", "-lgipp"])
    assert len(step.expected) == 5
    assert smi_cli(SPEC_A30, "-i", "0", "-mig", "1")[0] == 0
    code, output = smi_cli(SPEC_A30, *step.argv)
    assert code == 0
    assert output.splitlines() == step.expected


def test_seed_000_h100_lgip(smi_cli) -> None:
    """Seed 000: ``nvidia-smi mig -lgip`` on an H100 80GB with a current driver (81-column table)."""
    text = seed_path("000_").read_text().splitlines()
    start = next(i for i, x in enumerate(text) if x.startswith("sudo nvidia-smi mig -lgip")) + 1
    end = next(i for i in range(start, len(text)) if not text[i].startswith(("+", "|")))
    expected = text[start:end]
    assert len(expected) == 26 and len(expected[0]) == 81
    assert smi_cli("1xH100-80GB", "-mig", "1")[0] == 0
    code, output = smi_cli("1xH100-80GB", "mig", "-lgip")
    assert code == 0
    assert output.splitlines() == expected
