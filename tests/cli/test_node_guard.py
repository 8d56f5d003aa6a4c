"""One state dir, one node (migctl.node_guard): a state dir that records another node's GPUs is refused with one
line for a real node; the record follows GPUs that change in part; a damaged or planted record is replaced,
never followed. The real-NVML wiring (``open_node`` calls :func:`check` for a real node) cannot run here:
these tests drive :func:`verify`, which it calls with the node's GPU UUIDs."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from migctl.errors import UserError
from migctl.node_guard import check, verify

A = ["GPU-aaaa", "GPU-bbbb"]


def _record(d: Path) -> dict[str, object]:
    return json.loads((d / "node-nvml.json").read_text())


def test_first_use_records_the_node_and_the_same_node_passes(tmp_path: Path) -> None:
    verify(tmp_path, "nvml", A, "gpu01")
    assert _record(tmp_path) == {"gpus": A, "host": "gpu01"}
    assert stat.S_IMODE((tmp_path / "node-nvml.json").stat().st_mode) == 0o600
    before = (tmp_path / "node-nvml.json").stat().st_mtime_ns
    verify(tmp_path, "nvml", A, "gpu01")  # nothing changed: not rewritten
    assert (tmp_path / "node-nvml.json").stat().st_mtime_ns == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node-nvml.json"]  # (no temp file left)


def test_another_nodes_state_dir_is_one_line_and_changes_nothing(tmp_path: Path) -> None:
    verify(tmp_path, "nvml", A, "gpu01")
    with pytest.raises(UserError) as e:
        verify(tmp_path, "nvml", ["GPU-cccc", "GPU-dddd", "GPU-eeee"], "gpu02")
    msg = str(e.value)
    assert "\n" not in msg and "host gpu01, GPUs GPU-aaaa, GPU-bbbb" in msg, msg
    assert "this node (gpu02) has none of those GPUs (GPU-cccc, GPU-dddd and 1 more)" in msg, msg
    assert "MIGCTL_STATE_DIR" in msg and str(tmp_path / "node-nvml.json") in msg, msg
    assert _record(tmp_path) == {"gpus": A, "host": "gpu01"}


def test_gpus_changed_in_part_update_the_record(tmp_path: Path) -> None:
    """One GPU replaced (or a container that sees some of them): still this node."""
    verify(tmp_path, "nvml", A, "gpu01")
    verify(tmp_path, "nvml", ["GPU-bbbb", "GPU-ffff"], "gpu01-pod")
    assert _record(tmp_path) == {"gpus": ["GPU-bbbb", "GPU-ffff"], "host": "gpu01-pod"}
    with pytest.raises(UserError):
        verify(tmp_path, "nvml", ["GPU-aaaa"], "gpu01")  # the record followed: GPU-aaaa is no longer in it


@pytest.mark.parametrize("content", ["not json", "[]", '{"gpus": []}', '{"gpus": [1, 2]}', '{"gpus": "GPU-x"}',
                                     '{"gpus": ["GPU-x"], "host": 7}'])
def test_a_damaged_record_is_replaced(tmp_path: Path, content: str) -> None:
    (tmp_path / "node-nvml.json").write_text(content)
    verify(tmp_path, "nvml", A, "gpu01")
    assert _record(tmp_path) == {"gpus": A, "host": "gpu01"}


def test_a_planted_symlink_is_replaced_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"gpus": ["GPU-zzzz"], "host": "x"}))
    (tmp_path / "node-nvml.json").symlink_to(target)
    verify(tmp_path, "nvml", A, "gpu01")  # (the symlink's record is not read: no refusal)
    assert not (tmp_path / "node-nvml.json").is_symlink()
    assert _record(tmp_path) == {"gpus": A, "host": "gpu01"}
    assert json.loads(target.read_text()) == {"gpus": ["GPU-zzzz"], "host": "x"}


def test_no_gpus_or_an_unwritable_dir_changes_nothing(tmp_path: Path) -> None:
    verify(tmp_path, "nvml", [], "gpu01")
    assert list(tmp_path.iterdir()) == []
    if os.geteuid() != 0:  # (root writes anyway)
        tmp_path.chmod(0o500)
        try:
            verify(tmp_path, "nvml", A, "gpu01")  # the record is a guard: a failed write is not an error
        finally:
            tmp_path.chmod(0o700)


def test_a_simulated_node_is_not_guarded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A simulated node's key names its state file, and a reset simulator has new GPU UUIDs: no record."""
    from migctl.device import open_node

    monkeypatch.setenv("MIGCTL_STATE_DIR", str(tmp_path))
    node = open_node("1xA30", str(tmp_path / "sim.json"))
    check(node)
    assert not list(tmp_path.glob("node-*.json"))
