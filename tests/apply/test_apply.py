"""Apply: minimal plans, instances that stay keep their UUIDs, busy safety, hooks, lock, mode changes."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from migctl.config.hooks import HookError
from migctl.reconcile import ApplyFailed, BusyError, LockBusy, apply_config, assert_config, node_lock

from .helpers import COMPAT, layouts, uuids

DEFAULT = COMPAT / "deployments_systemd_config-default.yaml"


def cfg(devices: dict[str, int], index: str | list[int] = "all", placements: dict | None = None) -> dict:
    e = {"devices": index, "mig-enabled": True, "mig-devices": devices}
    if placements:
        e["placements"] = placements
    return {"version": "v1", "mig-configs": {"x": [e]}}


def test_matching_gpus_untouched_and_kept_instances_keep_uuids(mknode) -> None:
    node, s = mknode("2xH100-80GB")
    apply_config(DEFAULT, "all-balanced", node=node)
    before = uuids(node)
    n0 = s.op_count()
    r = apply_config(DEFAULT, "all-balanced", node=node)
    assert r.plan.ops == [] and s.op_count() == n0
    r = apply_config(DEFAULT, "all-3g.40gb", node=node)
    after = uuids(node)
    for i in (0, 1):
        assert len(before[i] & after[i]) == 1  # the 3g.40gb at 4:4 stayed, same MIG device UUID
    assert r.plan.counts()["instances_destroyed"] == 6 and r.plan.counts()["instances_created"] == 2


def test_only_the_changed_gpu_is_touched(mknode) -> None:
    node, _ = mknode("3xH100-80GB")
    apply_config(DEFAULT, "all-1g.10gb", node=node)
    before = uuids(node)
    custom = {"version": "v1", "mig-configs": {"x": [
        {"devices": [0, 2], "mig-enabled": True, "mig-devices": {"1g.10gb": 7}},
        {"devices": [1], "mig-enabled": True, "mig-devices": {"1g.10gb": 5, "2g.20gb": 1}}]}}
    r = apply_config(custom, "x", node=node)
    after = uuids(node)
    assert after[0] == before[0] and after[2] == before[2]
    assert len(before[1] & after[1]) == 5 and {g.index for g in r.plan.changing} == {1}


def test_placement_chosen_so_target_is_reachable(mknode) -> None:
    """Driver auto-placement would put a 3g at 4:4 first; a 4g then cannot fit. We pick explicit placements."""
    node, _ = mknode("1xH100-80GB")
    apply_config(cfg({"1g.10gb": 1}, placements={"1g.10gb": [6]}), "x", node=node)
    r = apply_config(cfg({"1g.10gb": 1, "2g.20gb": 1, "4g.40gb": 1}), "x", node=node)
    lay = layouts(node)[0]
    assert sorted((g["profile"], g["start"]) for g in lay["gis"]) == [("1g.10gb", 6), ("2g.20gb", 4), ("4g.40gb", 0)]
    assert r.plan.counts()["instances_kept"] == 1


def test_busy_instance_blocks_with_pids_and_reason(mknode, client) -> None:
    node, s = mknode("1xH100-80GB")
    apply_config(cfg({"3g.40gb": 2}), "x", node=node)
    lay = layouts(node)[0]
    gi4 = next(g for g in node.gpu(0).gpu_instances() if g.placement.start == 0)
    p = client()
    s.add_client(0, p.pid, gi4.id, 0)
    before = layouts(node)
    # a 4g.40gb can only sit at 0:4 -> the busy 3g at 0 blocks
    with pytest.raises(BusyError) as e:
        apply_config(cfg({"4g.40gb": 1, "3g.40gb": 1}), "x", node=node)
    msg = str(e.value)
    assert str(p.pid) in msg and "3g.40gb@0" in msg and "4g.40gb cannot be placed" in msg and "MIG-" in msg and e.value.exit_code == 3
    assert layouts(node) == before == {0: lay}
    # a target that keeps the busy instance goes ahead, without touching it
    u = uuids(node)[0]
    apply_config(cfg({"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1}), "x", node=node)
    busy_uuid = next(c.uuid for c in gi4.compute_instances() for c in [c.mig_device()] if c)
    assert busy_uuid in uuids(node)[0] and len(u & uuids(node)[0]) == 1


def test_busy_not_in_target_refused_then_wait_then_force(mknode, client) -> None:
    node, s = mknode("1xH100-80GB")
    apply_config(cfg({"1g.10gb": 7}), "x", node=node)
    gi = node.gpu(0).gpu_instances()[0]
    p = client(3)
    s.add_client(0, p.pid, gi.id, 0)
    with pytest.raises(BusyError, match=f"PIDs {p.pid}"):
        apply_config(cfg({"7g.80gb": 1}), "x", node=node)
    t0 = time.monotonic()
    apply_config(cfg({"7g.80gb": 1}), "x", node=node, wait=120)  # the client exits after 3 s
    # it went on once the client had gone, not at the end of its wait
    assert time.monotonic() - t0 < 100 and assert_config(cfg({"7g.80gb": 1}), "x", node=node) == []
    q = client(60)
    s.add_client(0, q.pid, node.gpu(0).gpu_instances()[0].id, 0)
    r = apply_config(cfg({"3g.40gb": 2}), "x", node=node, force=True)
    assert r.killed_pids == [q.pid] and q.wait(60) is not None


def test_mode_change_refused_when_gpu_busy_and_resets_only_changed(mknode, client) -> None:
    node, s = mknode("2xH100-80GB")
    apply_config(DEFAULT, "all-1g.10gb", node=node)
    p = client()
    s.add_client(1, p.pid, node.gpu(1).gpu_instances()[0].id, 0)
    with pytest.raises(BusyError, match="mode change resets GPU 1"):
        apply_config(DEFAULT, "all-disabled", node=node)
    one = {"version": "v1", "mig-configs": {"x": [{"devices": [0], "mig-enabled": False}]}}
    r = apply_config(one, "x", node=node)
    assert [op["gpu"] for op in r.plan.ops if op["op"] == "set_mode"] == [0]
    assert [op["gpus"] for op in r.plan.ops if op["op"] == "reset"] == [[0]]
    assert layouts(node)[0] == {"mig": False, "gis": []} and layouts(node)[1]["mig"]


def test_hooks_order_env_and_failing_hook_aborts(tmp_path, mknode) -> None:
    node, _ = mknode("1xH100-80GB")
    log = tmp_path / "log"
    hooks = {"version": "v1", "hooks": {
        name: [{"command": "/bin/sh", "args": ["-c", f"echo {name} $MIG_PARTED_SELECTED_CONFIG >> {log}"]}]
        for name in ("apply-start", "pre-apply-mode", "pre-apply-config", "apply-exit")}}
    apply_config(DEFAULT, "all-balanced", node=node, hooks=hooks)
    assert log.read_text().split("\n")[:4] == [
        "apply-start all-balanced", "pre-apply-mode all-balanced", "pre-apply-config all-balanced",
        "apply-exit all-balanced"]
    log.unlink()
    before = layouts(node)
    hooks["hooks"]["pre-apply-config"].append({"command": "/bin/sh", "args": ["-c", "exit 7"]})
    with pytest.raises(ApplyFailed, match="exited 7"):
        apply_config(DEFAULT, "all-3g.40gb", node=node, hooks=hooks)
    assert layouts(node) == before and "apply-exit" in log.read_text()


def test_hook_output_is_not_held_in_memory_nor_waited_for_in_the_background(mknode, tmp_path) -> None:
    """A hook's output went to pipes: a hook that left a process in the background held the apply until that
    process exited or, at the hook's timeout (600 s), failed it as "timed out" although the hook had exited
    0; and every byte a hook printed was kept in memory (300 MB printed: 1.8 GB resident). Now the output goes to a private unnamed file and only its last line is read,
    for the error; a hook past its timeout is killed and named."""
    from migctl.config import load_hooks

    node, _ = mknode("1xH100-80GB")
    pid = tmp_path / "pid"
    bg = {"version": "v1", "hooks": {"apply-start": [
        {"command": "/bin/sh", "args": ["-c", f"sleep 120 & echo $! > {pid}; exit 0"]}]}}
    apply_config(DEFAULT, "all-balanced", node=node, hooks=bg)
    try:
        os.kill(int(pid.read_text()), 0)  # the apply is done while the hook's background process still runs
    finally:
        os.kill(int(pid.read_text()), signal.SIGKILL)
    loud = {"version": "v1", "hooks": {"apply-start": [{"command": "/bin/sh", "args": [
        "-c", "head -c 20000000 /dev/zero | tr '\\0' x; printf '\\nlast \\033[31mline\\n\\n'; exit 3"]}]}}
    before = layouts(node)
    with pytest.raises(ApplyFailed, match=r"exited 3: last \\x1b\[31mline; nothing was changed"):
        apply_config(DEFAULT, "all-1g.10gb", node=node, hooks=loud)
    assert layouts(node) == before
    slow = load_hooks({"version": "v1", "hooks": {"apply-start": [{"command": "/bin/sleep", "args": ["30"]}]}})
    with pytest.raises(HookError, match=r"hook apply-start\[0\] \(/bin/sleep\) did not finish within 0.5 s; killed"):
        slow.run("apply-start", {}, timeout=0.5)


def test_mode_phase_hook_failure_rolls_back_mode(mknode) -> None:
    node, _ = mknode("2xH100-80GB")
    hooks = {"version": "v1", "hooks": {"pre-apply-config": [{"command": "/bin/false"}]}}
    with pytest.raises(ApplyFailed):
        apply_config(DEFAULT, "all-balanced", node=node, hooks=hooks)
    assert layouts(node) == {0: {"mig": False, "gis": []}, 1: {"mig": False, "gis": []}}


def test_lock_second_apply_waits_or_fails(mknode) -> None:
    node, _ = mknode("1xH100-80GB")
    with node_lock(node):
        with pytest.raises(LockBusy, match="holds the node lock") as e:
            apply_config(DEFAULT, "all-balanced", node=node, lock_timeout=0.2)
        assert e.value.exit_code == 4
    released = threading.Event()

    def hold() -> None:
        with node_lock(node):
            time.sleep(0.5)
        released.set()

    t = threading.Thread(target=hold)
    t.start()
    time.sleep(0.1)
    apply_config(DEFAULT, "all-balanced", node=node, lock_timeout=10)
    assert released.is_set()
    t.join()


def test_dry_run_changes_nothing(mknode) -> None:
    node, s = mknode("8xA100-40GB")
    before, n = layouts(node), s.op_count()
    r = apply_config(COMPAT / "examples_config.yaml", "custom-config", node=node, dry_run=True)
    assert layouts(node) == before and s.op_count() == n and r.dry_run and r.plan.ops
    assert "GPU 0 (A100-40GB): unchanged" in r.plan.render()  # devices [0..3] want MIG disabled: already so
