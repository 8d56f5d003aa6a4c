"""The agent as real processes: SIGKILL mid-apply and restart (journal, operands), re-apply after a reboot,
and 50 nodes reconciled by 50 agent processes against one stand-in API server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.k8s.cluster import CM, CONFIG, DP, NS, STATE, add_node, events, labels, wait_for
from tests.k8s.conftest import ROOT


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


def test_fifty_nodes_fifty_agent_processes(server, tmp_path) -> None:
    """50 Nodes, 50 agent processes (forked from one launcher so imports are paid once), one server: every
    node reaches success with its layout, then a relabel of all 50 converges too."""
    n = 50
    kc = server.kubeconfig(tmp_path / "kc")
    small = ("version: v1\nmig-configs:\n  all-balanced:\n    - devices: all\n      mig-enabled: true\n"
             "      mig-devices: {\"1g.5gb\": 2, \"2g.10gb\": 1, \"3g.20gb\": 1}\n"
             "  all-1g.5gb:\n    - devices: all\n      mig-enabled: true\n      mig-devices: {\"1g.5gb\": 7}\n")
    server.put("configmaps", {"metadata": {"name": CM, "namespace": NS}, "data": {"config.yaml": small}})
    for i in range(n):
        add_node(server, f"node{i}", "all-balanced")
    full = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + str(ROOT / "src")}
    launcher = subprocess.Popen([sys.executable, "-m", "tests.k8s.fleet", str(kc), str(tmp_path), "node", str(n),
                                 "1xA100-40GB"], env=full, stderr=subprocess.PIPE, text=True)
    try:
        def done(key: str, value: str) -> bool:
            time.sleep(0.5)  # poll gently: the server is busy with 100 watches
            return all(labels(server, f"node{i}").get(STATE) == "success"
                       and labels(server, f"node{i}").get(key) == value for i in range(n))

        wait_for(lambda: done("nvidia.com/mig-3g.20gb.count", "1"), timeout=90, what="50 nodes all-balanced")
        for i in range(n):
            server.patch_labels(f"node{i}", {CONFIG: "all-1g.5gb"})
        wait_for(lambda: done("nvidia.com/mig-1g.5gb.count", "7"), timeout=90, what="50 nodes relabelled")
    finally:
        launcher.send_signal(signal.SIGTERM)
        _, err = launcher.communicate(timeout=60)
    assert launcher.returncode == 0, err
    for i in range(n):
        lab = labels(server, f"node{i}")
        assert all(v == "true" for k, v in lab.items() if k.startswith("nvidia.com/gpu.deploy."))
        assert server.label_sequence(f"node{i}", STATE) == [None, "pending", "success", "pending", "success"]
