"""Transactions: a fault at every operation index rolls back whole; SIGKILL mid-apply is recovered."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from migctl.reconcile import ApplyFailed, Journal, apply_config
from migctl.reconcile.live import layout_matches, read_node

START = {"version": "v1", "mig-configs": {"start": [
    {"devices": [0], "mig-enabled": True, "mig-devices": {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1}},
    {"devices": [1], "mig-enabled": True, "mig-devices": {"1g.10gb": 7}},
    {"devices": [2], "mig-enabled": False},
]}}
TARGET = {"version": "v1", "mig-configs": {"target": [
    {"devices": [0], "mig-enabled": True, "mig-devices": {"3g.40gb": 2}},
    {"devices": [1], "mig-enabled": True, "mig-devices": {"1g.10gb": 3, "4g.40gb": 1}},
    {"devices": [2], "mig-enabled": True, "mig-devices": {"2g.20gb": 2, "3g.40gb": 1}},
]}}
SPEC = "3xH100-80GB"


def _setup(node, s, client):
    apply_config(START, "start", node=node)
    busy_gi = next(g for g in node.gpu(1).gpu_instances() if g.placement.start == 6)  # kept by the target
    p = client()
    s.add_client(1, p.pid, busy_gi.id, 0)
    busy_uuid = next(d.uuid for d in node.gpu(1).mig_devices() if d.gi_id == busy_gi.id)
    return {g.index: g.layout() for g in read_node(node)}, busy_uuid


def _check_whole(node, old, new, busy_uuid) -> list[str]:
    states = []
    for g in read_node(node):
        if layout_matches(g, old[g.index]):
            states.append("old")
        elif layout_matches(g, new[g.index]):
            states.append("new")
        else:
            raise AssertionError(f"GPU {g.index} is mixed: {g.layout()}")
    assert busy_uuid in {c.uuid for g in read_node(node) for gi in g.gis for c in gi.cis}, "busy instance destroyed"
    return states


def test_fault_at_every_operation_rolls_back_every_gpu(mknode, client) -> None:
    node, s = mknode(SPEC)
    old, busy_uuid = _setup(node, s, client)
    s.inject_fault(None)
    r = apply_config(TARGET, "target", node=node)
    new = {g.index: g.layout() for g in read_node(node)}
    n_ops = s.op_count()
    assert n_ops >= 20 and r.plan.counts()["instances_kept"] >= 2
    outcomes = []
    for k in range(1, n_ops + 2):
        node, s = mknode(SPEC)
        old_k, busy_uuid = _setup(node, s, client)
        s.inject_fault(k)
        try:
            apply_config(TARGET, "target", node=node)
            outcomes.append("applied")
            assert _check_whole(node, old_k, new, busy_uuid) == ["new"] * 3
        except ApplyFailed as e:
            outcomes.append("rolled-back")
            assert e.result.rolled_back and "Unknown Error" in str(e)
            assert _check_whole(node, old_k, new, busy_uuid) == ["old"] * 3
            assert not Journal(node).exists()
        s.inject_fault(None)
    assert outcomes.count("rolled-back") == n_ops and outcomes[-1] == "applied"


def test_a_full_disk_at_any_journal_write_leaves_the_node_whole(mknode, client, monkeypatch) -> None:
    """The disk fills up at every journal write in turn (ENOSPC from fsync, which names no file): the apply
    either never starts (no operation, no journal left) or rolls back whole, though the rollback's own records
    cannot be written any more; no journal is left behind. Before, the failed write of the rollback's first
    record raised out of the apply, leaving the node half changed and the journal pending (exit 2, as if
    nothing had changed), and a directory fsync failing after the first write's rename left a journal for an
    apply that never ran."""
    import errno

    import migctl.paths

    real = os.fsync
    node, s = mknode(SPEC)
    _setup(node, s, client)
    count = [0]

    def counting(fd: int) -> None:
        count[0] += 1
        real(fd)

    monkeypatch.setattr(migctl.paths.os, "fsync", counting)
    apply_config(TARGET, "target", node=node)
    new = {g.index: g.layout() for g in read_node(node)}
    writes = count[0]
    outcomes = []
    for k in sorted({0, 1, 2, 3, *range(4, writes, 5), writes}):  # the first writes, then every fifth
        node, s = mknode(SPEC)
        old_k, busy_uuid = _setup(node, s, client)
        def full(fd: int, left: list[int] = [k]) -> None:  # noqa: B006 (the count of writes the disk still takes)
            if left[0] <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            left[0] -= 1
            real(fd)

        monkeypatch.setattr(migctl.paths.os, "fsync", full)
        try:
            apply_config(TARGET, "target", node=node)
            outcomes.append("applied")
            whole = _check_whole(node, old_k, new, busy_uuid)
        except ApplyFailed as e:
            outcomes.append("rolled-back")
            assert e.result.rolled_back and "No space left on device" in str(e), str(e)
            whole = _check_whole(node, old_k, new, busy_uuid)
            assert whole == ["old"] * 3
        except OSError as e:
            outcomes.append("refused")
            assert e.errno == errno.ENOSPC and str(e.filename).endswith(".journal.json"), e
            whole = _check_whole(node, old_k, new, busy_uuid)
            assert whole == ["old"] * 3
        finally:
            monkeypatch.setattr(migctl.paths.os, "fsync", real)
        assert not Journal(node).exists(), (k, outcomes[-1])
    assert outcomes[0] == "refused" and outcomes[-1] == "applied" and "rolled-back" in outcomes, outcomes


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "migctl.cli.main", *args], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("recover_with", ["recover", "apply"])
def test_sigkill_mid_apply_then_recovery(tmp_path, mknode, client, recover_with) -> None:
    import yaml

    state = tmp_path / "sim.json"
    cfg_path = tmp_path / "target.yaml"
    cfg_path.write_text(yaml.safe_dump(TARGET))
    env = {**os.environ, "MIGCTL_SIM": SPEC, "MIGCTL_SIM_STATE": str(state)}
    node, s = mknode(SPEC, state)
    old, busy_uuid = _setup(node, s, client)
    for k in (1, 9, 23):
        s.inject_fault(None)  # resets the simulator's operation counter for MIGCTL_SIM_CRASH_AT
        proc = _cli(["apply", "-f", str(cfg_path), "-c", "target", "-q"], {**env, "MIGCTL_SIM_CRASH_AT": str(k)})
        assert proc.returncode == -9, proc.stderr
        assert Journal(node).exists()
        s.inject_fault(None)
        if recover_with == "recover":
            proc = _cli(["recover"], env)
            assert proc.returncode == 0 and "rolled back the interrupted apply" in proc.stdout, proc.stderr
            # where it stopped, as interrupted (it said "stopped before recovered operation N", the journal's
            # phase after the rollback)
            assert re.search(r"stopped before (forward|rollback) operation \d+\)", proc.stdout), proc.stdout
            assert all(layout_matches(g, old[g.index]) for g in read_node(node))
        else:
            proc = _cli(["apply", "-f", str(cfg_path), "-c", "target"], env)
            assert proc.returncode == 0 and "rolled back the interrupted apply" in proc.stdout, proc.stderr
            new = {g.index: g.layout() for g in read_node(node)}
            assert _check_whole(node, old, new, busy_uuid) == ["new"] * 3
            apply_config(START, "start", node=node)  # back to the start layout for the next k
            old = {g.index: g.layout() for g in read_node(node)}
        assert not Journal(node).exists()
        assert busy_uuid in {c.uuid for g in read_node(node) for gi in g.gis for c in gi.cis}


@pytest.mark.parametrize("at", [2, 5, 9])
def test_ctrl_c_mid_apply_rolls_back_whole(mknode, client, at) -> None:
    """Ctrl-C between two operations (raised by the progress callback, where a SIGINT lands when the terminal
    sends it) rolls the node back whole, and a second Ctrl-C during the rollback is held, not obeyed. Before,
    the apply stopped with the node half changed and the journal left for `migctl recover`."""
    import signal

    from migctl.reconcile import ApplyInterrupted

    node, s = mknode(SPEC)
    old, busy_uuid = _setup(node, s, client)
    seen: list[str] = []

    def progress(k: int, total: int, desc: str) -> None:
        seen.append(desc)
        if len(seen) == at:
            raise KeyboardInterrupt
        if len(seen) == at + 1:  # the rollback's first operation: Ctrl-C again, held
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(ApplyInterrupted) as e:
        apply_config(TARGET, "target", node=node, progress=progress)
    assert e.value.result.rolled_back
    assert str(e.value).startswith(f"before operation {at}/") and "rolled back" in str(e.value)
    assert len(seen) > at + 1  # the rollback ran on past the second Ctrl-C
    assert _check_whole(node, old, old, busy_uuid) == ["old"] * 3
    assert not Journal(node).exists()


@pytest.mark.parametrize("cli", ["migctl", "nvidia-mig-parted"])
def test_sigterm_mid_apply_rolls_back_whole(tmp_path, cli) -> None:
    """`migctl apply` stopped with SIGTERM (systemctl stop, kill) while a hook runs between two operations
    (MIG mode enabled, no instance created yet): the node is rolled back whole (MIG disabled again) and the
    exit is 130. Before, SIGTERM ended Python at once: MIG left enabled, journal pending."""
    import signal
    import time

    env = {**os.environ, "MIGCTL_STATE_DIR": str(tmp_path / "state"), "MIGCTL_SIM": "1xA100-80GB",
           "MIGCTL_SIM_STATE": str(tmp_path / "sim.json")}
    cfg = tmp_path / "c.yaml"
    cfg.write_text("version: v1\nmig-configs:\n  a:\n    - devices: all\n      mig-enabled: false\n"
                   "  b:\n    - devices: all\n      mig-enabled: true\n      mig-devices: {3g.40gb: 2}\n")
    gate = tmp_path / "in-hook"
    hooks = tmp_path / "hooks.yaml"
    hooks.write_text(f"version: v1\nhooks:\n  pre-apply-config:\n  - command: sh\n    args: [-c, 'touch {gate}; "
                     "sleep 30']\n")
    assert _cli(["apply", "-f", str(cfg), "-c", "a", "-q"], env).returncode == 0
    before = _cli(["mode", "--json"], env).stdout
    assert '"mig_current": false' in before
    module, extra = ("migctl.cli.main", ["-q"]) if cli == "migctl" else ("migctl.parted", [])
    p = subprocess.Popen([sys.executable, "-m", module, "apply", "-f", str(cfg), "-c", "b", "-k", str(hooks), *extra],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gate.exists()
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    line = err.strip().splitlines()[-1]
    if cli == "migctl":
        assert p.returncode == 130 and len(err.strip().splitlines()) == 1, err
        assert line.startswith("migctl: interrupted: before operation 2/") and "rolled back" in line, line
    else:  # mig-parted's way: one fatal line, exit 1
        assert p.returncode == 1 and "level=fatal" in line, err
        assert "Interrupted: before operation 2/" in line and "rolled back" in line, line
    assert _cli(["mode", "--json"], env).stdout == before
    assert not list((tmp_path / "state").glob("*.journal.json"))


def test_a_stop_signal_during_a_rollback_reaches_the_process_handler_after_it(mknode, client) -> None:
    """A process with its own SIGTERM handler (the Kubernetes agent sets a stop flag) gets a SIGTERM that came
    during a rollback once the rollback is done, not never, and not half way through it."""
    import signal

    node, s = mknode(SPEC)
    old, busy_uuid = _setup(node, s, client)
    got: list[int] = []
    seen: list[str] = []

    def progress(k: int, total: int, desc: str) -> None:
        seen.append(desc)
        if k == 1 and len(seen) > 1:  # the rollback's first operation (it counts from 1 again)
            signal.raise_signal(signal.SIGTERM)
            assert got == []  # held while the rollback runs

    s.inject_fault(5)
    before = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        with pytest.raises(ApplyFailed) as e:
            apply_config(TARGET, "target", node=node, progress=progress)
    finally:
        signal.signal(signal.SIGTERM, before)
        s.inject_fault(None)
    assert e.value.result.rolled_back and got == [signal.SIGTERM] and seen.count(seen[0]) == 1
    assert _check_whole(node, old, old, busy_uuid) == ["old"] * 3
