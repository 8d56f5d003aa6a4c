"""Apply resets every GPU whose MIG mode change is pending in ONE ``Node.reset_gpus`` call (issue 8, item 4).

The count comes from the journal (each reset call is journalled, fsynced, before it runs; a finished apply's
journal is kept as ``*.last.json``) and from the simulator's state (modes), never from a mock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from migctl.reconcile import ApplyFailed, Journal, apply_config
from migctl.reconcile.live import read_node

ALL_MIG = {"version": "v1", "mig-configs": {
    "on": [{"devices": "all", "mig-enabled": True, "mig-devices": {"3g.20gb": 2}}],
    "off": [{"devices": "all", "mig-enabled": False}],
}}


def _resets(node) -> list[dict]:
    j = Journal(node)
    return json.loads(j.last_path.read_text())["resets"] if j.last_path.exists() else []


def _modes(node) -> list[tuple[int, int]]:
    return [tuple(g.mig_mode()) for g in node.gpus()]


def test_enabling_mig_on_three_ampere_gpus_resets_them_in_one_call(mknode) -> None:
    node, s = mknode("3xA100-40GB")
    s.set_behaviour("ampere-activation", "reset")
    bus = [g.bus_id for g in node.gpus()]
    r = apply_config(ALL_MIG, "on", node=node)
    resets = [op for op in r.plan.ops if op["op"] == "reset"]
    assert [op["gpus"] for op in resets] == [[0, 1, 2]]
    kinds = [op["op"] for op in r.plan.ops]
    assert kinds.index("reset") > max(i for i, k in enumerate(kinds) if k == "set_mode")
    assert kinds.index("reset") < kinds.index("create_gi")
    assert _resets(node) == [{"phase": "forward", "gpus": [0, 1, 2], "bus_ids": bus}]
    assert _modes(node) == [(1, 1)] * 3
    assert all(len(g.gis) == 2 for g in read_node(node))
    assert "reset in one call" in r.plan.render()


def test_hopper_mode_change_needs_no_reset_call(mknode) -> None:
    node, _ = mknode("3xH100-80GB")
    hopper = {"version": "v1", "mig-configs": {
        "on": [{"devices": "all", "mig-enabled": True, "mig-devices": {"3g.40gb": 2}}]}}
    r = apply_config(hopper, "on", node=node)
    assert [op["gpus"] for op in r.plan.ops if op["op"] == "reset"] == [[0, 1, 2]]
    assert "resets" not in json.loads(Journal(node).last_path.read_text())  # applied without a reset
    assert _modes(node) == [(1, 1)] * 3


def test_refused_reset_names_the_holder_and_rolls_back(mknode) -> None:
    node, s = mknode("3xA100-40GB")
    s.set_behaviour("ampere-activation", "reset")
    assert s.add_holder(1, "nvidia-persistenced") == 0
    with pytest.raises(ApplyFailed) as ei:
        apply_config(ALL_MIG, "on", node=node)
    msg = str(ei.value)
    assert "\n" not in msg and "GPU 1" in msg and "nvidia-persistenced" in msg and "rolled back" in msg
    assert "persistence mode" in msg
    assert ei.value.result.rolled_back
    assert _modes(node) == [(0, 0)] * 3  # the pending enables were cancelled: nothing left to a later reset
    assert not Journal(node).exists()
    # one forward call for all three: GPUs 0 and 2 were reset (MIG on), GPU 1 refused; the rollback disables MIG
    # again on 0 and 2 with one more call
    assert [(e["phase"], e["gpus"]) for e in _resets(node)] == [("forward", [0, 1, 2]), ("rollback", [0, 2])]


def test_refused_reset_through_the_cli_is_one_error_line(tmp_path) -> None:
    import yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(ALL_MIG))
    env = {**os.environ, "MIGCTL_SIM": "3xA100-40GB", "MIGCTL_SIM_STATE": str(tmp_path / "sim.json")}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "migctl.cli.main", *args], env=env, capture_output=True,
                              text=True, timeout=120)

    assert cli("sim", "set", "ampere-activation=reset").returncode == 0
    assert cli("sim", "add-holder", "dcgm", "-i", "2").returncode == 0
    p = cli("apply", "-f", str(cfg), "-c", "on", "-q")
    assert p.returncode == 5
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("migctl: error:")]
    assert len(errors) == 1 and "GPU 2" in errors[0] and "dcgm" in errors[0], p.stderr
    assert "Traceback" not in p.stderr


def test_sigkill_after_the_reset_is_recovered(tmp_path, mknode) -> None:
    import yaml

    probe, ps = mknode("3xA100-40GB")
    ps.set_behaviour("ampere-activation", "reset")
    ps.inject_fault(None)
    apply_config(ALL_MIG, "on", node=probe)
    last = ps.op_count()  # the last create: well after the reset
    state = tmp_path / "sim.json"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(ALL_MIG))
    node, s = mknode("3xA100-40GB", state)
    s.set_behaviour("ampere-activation", "reset")
    env = {**os.environ, "MIGCTL_SIM": "3xA100-40GB", "MIGCTL_SIM_STATE": str(state)}
    s.inject_fault(None)
    proc = subprocess.run([sys.executable, "-m", "migctl.cli.main", "apply", "-f", str(cfg), "-c", "on", "-q"],
                          env={**env, "MIGCTL_SIM_CRASH_AT": str(last)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    j = Journal(node)
    assert j.exists() and [e["gpus"] for e in json.loads(j.path.read_text())["resets"]] == [[0, 1, 2]]
    assert _modes(node) == [(1, 1)] * 3  # the reset happened before the crash
    s.inject_fault(None)
    proc = subprocess.run([sys.executable, "-m", "migctl.cli.main", "recover"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "rolled back the interrupted apply" in proc.stdout, proc.stderr
    assert _modes(node) == [(0, 0)] * 3 and not j.exists()
    assert [(e["phase"], e["gpus"]) for e in _resets(node)] == [("forward", [0, 1, 2]), ("rollback", [0, 1, 2])]


def test_fault_in_the_reset_call_rolls_back(mknode) -> None:
    node, s = mknode("3xA100-40GB")
    s.set_behaviour("ampere-activation", "reset")
    s.inject_fault(5)  # 3 mode changes, then the reset of GPU 0 (ok), GPU 1 fails: the call fails as a whole
    with pytest.raises(ApplyFailed) as ei:
        apply_config(ALL_MIG, "on", node=node)
    assert ei.value.result.rolled_back and "reset" in str(ei.value)
    s.inject_fault(None)
    assert _modes(node) == [(0, 0)] * 3 and all(not g.gis for g in read_node(node))
