"""Acceptance: every real nvidia-smi capture in tests/fixtures/captures/ replays on the simulator.

Each source is replayed in order on a fresh simulated node of the captured model and driver. Every output a
capture shows is compared with ours after the normalisations its ``capture.yaml`` names (UUIDs, bus ids,
temperature, power draw, timestamps, PIDs, memory used) and nothing else. A step recorded as ``differs``
says why; the test fails when such a step starts to match (update the fixture) as well as when an
``identical`` one stops matching.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from capturelib import CAPTURES, Source, load_all, replay

SOURCES = load_all()


@pytest.fixture
def node_opener(tmp_path: Path) -> Iterator[Any]:
    opened: list[Any] = []

    def make(spec: str) -> Any:
        from migctl.device import open_node

        state = tmp_path / (spec.replace("@", "_").replace(",", "_") + ".json")

        def open_() -> Any:
            node = open_node(sim=spec, sim_state=str(state))
            opened.append(node)
            return node

        return open_

    yield make


@pytest.mark.parametrize("src", SOURCES, ids=[s.slug for s in SOURCES])
def test_capture_replays(src: Source, smi_cli: Any, node_opener: Any) -> None:
    results = list(replay(src, smi_cli, node_opener(src.spec)))
    assert results, f"{src.slug}: no compared output"
    wrong = []
    for r in results:
        want = r.step.expect == "identical"
        if r.identical != want:
            state = "now matches (update the fixture: expect identical)" if r.identical else "differs"
            wrong.append(f"{r.step} {state}; exit {r.code}\n{r.output}")
    assert not wrong, "\n\n".join(wrong)


def test_capture_corpus_size() -> None:
    """The corpus the issue asks for: >= 30 captures, >= 8 GPU models, >= 5 driver branches R460..R580."""
    steps = [s for src in SOURCES for s in src.steps if s.output is not None]
    models = {src.model for src in SOURCES}
    branches = {src.branch for src in SOURCES if src.branch != "unknown" and 460 <= int(src.branch[1:]) <= 580}
    assert len(steps) >= 30, len(steps)
    assert len(models) >= 8, sorted(models)
    assert len(branches) >= 5, sorted(branches)


def test_every_fixture_file_is_replayed() -> None:
    used = {(src.slug, s.output_file) for src in SOURCES for s in src.steps if s.output_file}
    on_disk = {(p.parent.name, p.name) for p in CAPTURES.glob("*/*.txt")}
    assert on_disk == used


def test_differing_steps_say_why() -> None:
    for src in SOURCES:
        for s in src.steps:
            if s.expect == "differs":
                assert s.why.strip(), f"{s}: a differing capture must say why"
            assert s.expect in ("identical", "differs"), s
