"""The agent as real processes: SIGKILL mid-apply and restart (journal, operands), re-apply after a reboot,
and a fleet of nodes reconciled by as many agent processes against one stand-in API server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.k8s.cluster import CM, DP, NS, STATE, add_node, events, labels, wait_for
from tests.k8s.conftest import ROOT
from tests.k8s.fleet import run_fleet


def _agent_proc(kc: Path, node: str, env: dict[str, str]) -> subprocess.Popen:
    full = {**os.environ, **env, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "migctl.cli.main", "k8s", "agent", "--node", node, "--kubeconfig",
                             str(kc), "--namespace", NS, "--configmap", CM, "--resync", "2", "-v"],
                            env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_agent_sigkilled_mid_apply_resumes_and_reapplies_after_reboot(server, tmp_path, monkeypatch) -> None:
    from migctl.device import open_node
    from migctl.reconcile import Journal
    from migctl.reconcile.live import read_node

    kc = server.kubeconfig(tmp_path / "kc")
    spec = "2xH100-80GB"
    env = {"MIGCTL_SIM": spec, "MIGCTL_SIM_STATE": str(tmp_path / "sim.json"),
           "MIGCTL_STATE_DIR": str(tmp_path / "state")}
    for k, v in env.items():  # this process reads the same simulated node
        monkeypatch.setenv(k, v)
    add_node(server, "n1", "all-balanced")
    p = _agent_proc(kc, "n1", {**env, "MIGCTL_SIM_CRASH_AT": "12"})
    out, _ = p.communicate(timeout=120)
    assert p.returncode == -signal.SIGKILL, out
    lab = labels(server, "n1")
    assert lab[STATE] == "pending" and lab[DP] == "paused-for-mig-change"  # what the crash left behind
    assert Journal(open_node(spec, env["MIGCTL_SIM_STATE"])).exists()
    p = _agent_proc(kc, "n1", env)
    try:
        wait_for(lambda: labels(server, "n1").get(STATE) == "success"
                 and labels(server, "n1").get("nvidia.com/mig-3g.40gb.count") == "2", timeout=60, what="resumed")
        assert all(v == "true" for k, v in labels(server, "n1").items() if k.startswith("nvidia.com/gpu.deploy."))
        assert any(r == "MigConfigRecovered" for r, _ in events(server, "n1"))
        assert not Journal(open_node(spec, env["MIGCTL_SIM_STATE"])).exists()
        # a reboot: MIG mode survives, instances do not; the agent (restarted with the node) re-applies
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=60)
        assert p.returncode == 0
        node = open_node(spec, env["MIGCTL_SIM_STATE"])
        for g in node.gpus():
            for gi in g.gpu_instances():
                for ci in gi.compute_instances():
                    ci.destroy()
                gi.destroy()
        assert all(g.mig_current and not g.gis for g in read_node(node))
        n_applied = sum(r == "MigConfigApplied" for r, _ in events(server, "n1"))
        p = _agent_proc(kc, "n1", env)
        wait_for(lambda: sum(r == "MigConfigApplied" for r, _ in events(server, "n1")) > n_applied, timeout=60,
                 what="re-applied after reboot")
        assert [len(g.gis) for g in read_node(open_node(spec, env["MIGCTL_SIM_STATE"]))] == [4, 4]
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=60)
    seq = server.label_sequence("n1", STATE)
    assert seq[:2] == [None, "pending"] and seq[-1] == "success" and "failed" not in seq


def test_a_fleet_of_agent_processes(server, tmp_path) -> None:
    """Eight Nodes, eight agent processes (forked from one launcher so imports are paid once), one server:
    every node reaches success with its layout, then a relabel of all of them converges too. The same at
    50 nodes is benchmarks/k8s/fleet.py."""
    run_fleet(server, tmp_path, 8)  # asserts every node's labels, label sequence and the launcher's exit
