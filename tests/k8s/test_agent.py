"""The node agent against the stand-in API server (the official kubernetes client, unmocked): label state
sequence, operands, busy devices, dropped watches, 410 Gone, 409 conflicts, bad labels, quick changes."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.k8s.apiserver import ApiServer
from tests.k8s.cluster import (
    CM,
    CONFIG,
    DP,
    NS,
    OPERANDS,
    STATE,
    add_node,
    events,
    labels,
    operator_config,
    wait_for,
)


class Running:
    def __init__(self, agent, thread: threading.Thread) -> None:
        self.agent, self.thread = agent, thread

    def stop(self) -> None:
        self.agent.stop.set()
        self.agent.wake.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture
def agent(server: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Running]]:
    """``agent("node-a", "2xH100-80GB", evict=False)``: an agent in a thread on an in-memory simulated node."""
    import migctl.sim as sim
    from migctl.device import open_node
    from migctl.integrations.k8s_agent import Agent, AgentOptions, api_from_config

    kc = server.kubeconfig(tmp_path / "kubeconfig")
    running: list[Running] = []

    def start(node: str, spec: str = "2xH100-80GB", fresh: bool = True, **opts: object) -> Running:
        monkeypatch.setenv("MIGCTL_SIM", spec)
        if fresh:
            sim.install(spec, state_path=None)
        factory = opts.pop("node_factory", None) or (lambda: open_node(spec))
        o = AgentOptions(node=node, namespace=NS, configmap=CM, busy_poll=0.2, resync=1.0, watch_timeout=5,
                         operand_timeout=10, **opts)  # type: ignore[arg-type]
        a = Agent(api_from_config(str(kc)), o, node_factory=factory)  # type: ignore[arg-type]
        t = threading.Thread(target=a.run, daemon=True)
        t.start()
        r = Running(a, t)
        running.append(r)
        return r

    yield start
    for r in running:
        if r.thread.is_alive():
            r.stop()


def _live():
    from migctl.device import open_node
    from migctl.reconcile.live import read_node

    return read_node(open_node(os.environ["MIGCTL_SIM"]))


def test_label_change_gives_the_mig_manager_label_sequence(server, agent) -> None:
    add_node(server, "n1", "all-disabled")
    a = agent("n1")
    wait_for(lambda: labels(server, "n1").get(STATE) == "success", what="first success")
    server.patch_labels("n1", {CONFIG: "all-balanced"})
    wait_for(lambda: labels(server, "n1").get(STATE) == "success" and "nvidia.com/mig-1g.10gb.count" in labels(server, "n1"))
    a.stop()
    assert server.label_sequence("n1", STATE) == [None, "success", "pending", "success"]
    for o in OPERANDS:  # a mode change resets GPUs: every operand paused, then restored
        assert server.label_sequence("n1", f"nvidia.com/gpu.deploy.{o}") == ["true", "paused-for-mig-change", "true"]
    lab = labels(server, "n1")
    assert lab["nvidia.com/mig.strategy"] == "mixed"
    assert (lab["nvidia.com/mig-1g.10gb.count"], lab["nvidia.com/mig-2g.20gb.count"], lab["nvidia.com/mig-3g.40gb.count"]) \
        == ("4", "2", "2")
    assert lab["nvidia.com/mig-3g.40gb.product"] == "NVIDIA-H100-80GB-HBM3-MIG-3g.40gb"
    assert lab["nvidia.com/mig-1g.10gb.slices.gi"] == "1" and lab["nvidia.com/mig-3g.40gb.multiprocessors"] == "60"
    # success is set only after the operands are back
    hist = server.history("nodes", "n1")
    i_success = max(i for i, o in enumerate(hist) if o["metadata"]["labels"].get(STATE) == "success")
    assert hist[i_success]["metadata"]["labels"][DP] == "true"
    reasons = [r for r, _ in events(server, "n1")]
    for r in ("MigConfigPending", "MigOperandsPaused", "MigOperandsRestored", "MigConfigApplied"):
        assert r in reasons
    # patches are merge patches, as the MIG manager sends them
    assert {ct for m, p, ct in server.requests if m == "PATCH"} == {"application/merge-patch+json"}


def test_only_creating_instances_pauses_only_device_plugin_and_gfd(server, agent) -> None:
    add_node(server, "n1", "all-enabled")
    a = agent("n1")
    wait_for(lambda: labels(server, "n1").get(STATE) == "success")
    server.patch_labels("n1", {CONFIG: "all-1g.10gb"})
    wait_for(lambda: labels(server, "n1").get("nvidia.com/mig-1g.10gb.count") == "14")
    a.stop()
    p = "paused-for-mig-change"
    # the mode change (all-enabled) paused everything; the creation-only change paused only DP and GFD
    assert server.label_sequence("n1", DP) == ["true", p, "true", p, "true"]
    assert server.label_sequence("n1", "nvidia.com/gpu.deploy.gpu-feature-discovery") == ["true", p, "true", p, "true"]
    assert server.label_sequence("n1", "nvidia.com/gpu.deploy.dcgm") == ["true", p, "true"]
    assert server.label_sequence("n1", "nvidia.com/gpu.deploy.dcgm-exporter") == ["true", p, "true"]


def test_busy_device_on_another_gpu_untouched_and_pods_not_paused(server, agent, client, monkeypatch) -> None:
    """GPU 0 holds a busy instance the target keeps; GPU 1 changes. The busy pod is never evicted or
    paused, its MIG device keeps its UUID, and the agent reaches success."""
    import migctl.sim as sim
    from migctl.device import open_node
    from migctl.reconcile import apply_config

    spec = "2xH100-80GB"
    sim.install(spec, state_path=None)
    monkeypatch.setenv("MIGCTL_SIM", spec)
    cfg = {"version": "v1", "mig-configs": {"start": [{"devices": "all", "mig-enabled": True,
                                                       "mig-devices": {"3g.40gb": 2}}]}}
    apply_config(cfg, "start", node=open_node(spec))
    node = open_node(spec)
    gi = node.gpu(0).gpu_instances()[0]
    uuid = next(d.uuid for d in node.gpu(0).mig_devices() if d.gi_id == gi.id)
    p = client(120)
    assert sim.active().add_client(0, p.pid, gi.id, 0) == 0
    server.put("pods", {"metadata": {"name": "trainer", "namespace": "ml", "uid": "11111111-2222-3333-4444-555555555555",
                                     "labels": {"app": "trainer"}}, "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}})
    text = (operator_config() + "\n").replace("mig-configs:\n", "mig-configs:\n  keep0:\n"
                                                                "    - devices: [0]\n      mig-enabled: true\n"
                                                                "      mig-devices: {\"3g.40gb\": 2}\n"
                                                                "    - devices: [1]\n      mig-enabled: true\n"
                                                                "      mig-devices: {\"1g.10gb\": 7}\n", 1)
    server.put("configmaps", {"metadata": {"name": CM, "namespace": NS}, "data": {"config.yaml": text}})
    add_node(server, "n1", "keep0")
    a = agent("n1", spec, fresh=False)
    wait_for(lambda: labels(server, "n1").get(STATE) == "success")
    a.stop()
    assert uuid in {c.uuid for g in _live() for x in g.gis for c in x.cis}
    assert server.get("pods", "trainer", "ml") is not None  # never evicted
    assert server.label_sequence("n1", STATE) == [None, "pending", "success"]
    assert not any(r == "MigDevicesInUse" for r, _ in events(server, "n1"))
    assert [len(g.gis) for g in _live()] == [2, 7]


def test_pod_holding_a_device_that_must_go_is_named_then_evicted(server, agent, client, tmp_path, monkeypatch) -> None:
    import subprocess
    import sys

    import migctl.sim as sim
    from migctl.device import open_node
    from migctl.reconcile import apply_config

    spec = "1xA100-40GB"
    sim.install(spec, state_path=None)
    monkeypatch.setenv("MIGCTL_SIM", spec)
    apply_config({"version": "v1", "mig-configs": {"s": [{"devices": "all", "mig-enabled": True,
                                                          "mig-devices": {"7g.40gb": 1}}]}}, "s", node=open_node(spec))
    uid = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], env={**os.environ, "POD_UID": uid})
    try:
        gi = open_node(spec).gpu(0).gpu_instances()[0]
        assert sim.active().add_client(0, p.pid, gi.id, 0) == 0
        server.put("pods", {"metadata": {"name": "big", "namespace": "ml", "uid": uid}, "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}})
        server.protected.add(("ml", "big"))
        add_node(server, "n1", "all-1g.5gb")
        a = agent("n1", spec, fresh=False, evict=True)
        wait_for(lambda: any(r == "MigEvictionBlocked" for r, _ in events(server, "n1")), what="PDB refusal")
        msg = next(m for r, m in events(server, "n1") if r == "MigDevicesInUse")
        assert "pod ml/big" in msg and "MIG-" in msg
        assert labels(server, "n1").get(STATE) == "pending" and labels(server, "n1")[DP] == "true"  # not paused
        server.protected.clear()
        wait_for(lambda: server.get("pods", "big", "ml") is None, what="eviction")
        p.kill()  # the pod's process ends with it
        p.wait()
        wait_for(lambda: labels(server, "n1").get(STATE) == "success", what="success after eviction")
        a.stop()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert [r for r, _ in events(server, "n1")].count("MigPodEvicted") == 1


def test_unreadable_agent_state_is_reported_and_the_agent_goes_on(server, agent, caplog) -> None:
    """A damaged local state file (not JSON, or not an object) is not silently taken for none: the agent
    warns that what a previous agent paused will not be restored, then works as a fresh agent."""
    import logging

    from migctl.paths import ensure_private_dir, state_dir

    ensure_private_dir(state_dir())
    for k, text in enumerate(("{damaged", "[1, 2]")):
        node = f"n{k}"
        (state_dir() / f"k8s-agent-{node}.json").write_text(text)
        add_node(server, node, "all-disabled")
        with caplog.at_level(logging.WARNING, logger="migctl.k8s.agent"):
            a = agent(node)
            wait_for(lambda n=node: labels(server, n).get(STATE) == "success")
            a.stop()
        warned = [r.getMessage() for r in caplog.records if "is unreadable" in r.getMessage()]
        assert any(f"k8s-agent-{node}.json" in m and "are not restored" in m for m in warned), warned


def test_damaged_fields_of_the_agent_state_are_dropped_and_said(server, agent, caplog) -> None:
    """A state file that is a JSON object but holds what the agent never writes: a ``paused`` record that is not
    a mapping stopped every agent started on it with an AttributeError, the node left ``pending``. Now each
    damaged field is dropped and named; what is sound (an operand this agent paused) is still restored."""
    import json
    import logging

    from migctl.paths import ensure_private_dir, state_dir

    gfd = "nvidia.com/gpu.deploy.gpu-feature-discovery"
    ensure_private_dir(state_dir())
    states = {"n0": {"paused": [1]},
              "n1": {"paused": {DP: "true", gfd: 5}, "gave_up": 5, "rebooting_for": ["x"], "applied": {}}}
    for node, st in states.items():
        (state_dir() / f"k8s-agent-{node}.json").write_text(json.dumps(st))
        add_node(server, node, "all-balanced", **({DP: "paused-for-mig-change"} if node == "n1" else {}))
        with caplog.at_level(logging.WARNING, logger="migctl.k8s.agent"):
            a = agent(node)
            wait_for(lambda n=node: labels(server, n).get(STATE) == "success", what=f"{node} success")
            a.stop()
        assert labels(server, node)[DP] == "true"  # n1: restored from the sound part of the record
    warned = {node: [r.getMessage() for r in caplog.records if f"k8s-agent-{node}.json: dropped" in r.getMessage()]
              for node in states}
    assert len(warned["n0"]) == len(warned["n1"]) == 1, warned
    assert "(paused); operand labels left at" in warned["n0"][0]
    assert f"(gave_up; rebooting_for; applied; paused {gfd!r}); operand labels" in warned["n1"][0]


def test_an_unwritable_agent_state_fails_the_change_without_pausing_and_the_agent_goes_on(server, agent) -> None:
    """The agent's state file cannot be written (here: a directory stands where it goes; on a node, a full or
    read-only disk). Pausing operands needs that record first (what to restore after a crash), so the agent pauses
    nothing and applies nothing: ``failed`` with one Event naming the file and why, and it keeps running (it was an
    OSError out of the reconcile loop: the agent exited, a CrashLoopBackOff). Once the file can be written, the
    next pass applies the change."""
    import shutil

    from migctl.paths import ensure_private_dir, state_dir

    ensure_private_dir(state_dir())
    blocker = state_dir() / "k8s-agent-n1.json"
    add_node(server, "n1", "all-disabled")
    a = agent("n1")
    wait_for(lambda: labels(server, "n1").get(STATE) == "success" and blocker.is_file(), what="first success")
    blocker.unlink()
    blocker.mkdir()
    server.patch_labels("n1", {CONFIG: "all-balanced"})
    wait_for(lambda: labels(server, "n1").get(STATE) == "failed", what="failed")
    time.sleep(1.0)  # (a few passes: busy_poll is 0.2 s)
    assert a.thread.is_alive()
    said = [m for r, m in events(server, "n1") if r == "MigAgentStateUnwritable"]
    assert len(said) == 1 and str(blocker) in said[0] and "nothing was paused" in said[0], said
    for o in OPERANDS:
        assert server.label_sequence("n1", f"nvidia.com/gpu.deploy.{o}") == ["true"]
    assert all(not g.mig_current for g in _live())
    shutil.rmtree(blocker)
    wait_for(lambda: labels(server, "n1").get(STATE) == "success"
             and "nvidia.com/mig-1g.10gb.count" in labels(server, "n1"), what="success once writable")
    a.stop()
    assert labels(server, "n1")[DP] == "true"


def test_bad_label_fails_with_event_and_operands_untouched(server, agent) -> None:
    add_node(server, "n1", "all-disabled")
    a = agent("n1")
    wait_for(lambda: labels(server, "n1").get(STATE) == "success")
    server.patch_labels("n1", {CONFIG: "all-9g.999gb"})
    wait_for(lambda: labels(server, "n1").get(STATE) == "failed")
    wait_for(lambda: any(r == "MigConfigFailed" for r, _ in events(server, "n1")), what="Event")
    msg = next(m for r, m in events(server, "n1") if r == "MigConfigFailed")
    assert "all-9g.999gb" in msg and "valid: all-disabled, all-enabled" in msg
    # a label this hardware cannot take (A100 profiles on H100) fails the same way, before pausing anything
    server.patch_labels("n1", {CONFIG: "all-1g.5gb"})
    wait_for(lambda: sum(r == "MigConfigFailed" for r, _ in events(server, "n1")) == 2)
    assert "does not exist on H100-80GB" in [m for r, m in events(server, "n1") if r == "MigConfigFailed"][-1]
    server.patch_labels("n1", {CONFIG: "all-balanced"})
    wait_for(lambda: labels(server, "n1").get(STATE) == "success" and "nvidia.com/mig-3g.40gb.count" in labels(server, "n1"))
    a.stop()
    assert server.label_sequence("n1", STATE) == [None, "success", "failed", "pending", "success"]
    assert server.label_sequence("n1", DP) == ["true", "paused-for-mig-change", "true"]  # only for the real apply


def test_watch_dropped_mid_apply_410_and_409_are_survived(server, agent, monkeypatch) -> None:
    """The server cuts every watch while the agent applies, forgets history (410 Gone on resume), and answers
    the first label patches with 409 Conflict: the agent still reaches success, and a label change made while
    its watch was down is picked up."""
    import migctl.reconcile.engine as engine

    add_node(server, "n1", "all-disabled")
    real = engine.run_op
    calls = {"n": 0}

    def slow_op(node, op, journal=None):  # the apply takes long enough for the faults to land mid-apply
        calls["n"] += 1
        if calls["n"] == 3:
            assert server.drop_watches() >= 1
            server.compact()
            server.patch_labels("n1", {"team": "x"})
        return real(node, op, journal)

    monkeypatch.setattr(engine, "run_op", slow_op)
    a = agent("n1")
    wait_for(lambda: labels(server, "n1").get(STATE) == "success")
    server.fail_next("PATCH", r"/nodes/n1", 409, count=2)
    server.patch_labels("n1", {CONFIG: "all-balanced"})
    wait_for(lambda: calls["n"] >= 3, what="apply started")
    server.patch_labels("n1", {CONFIG: "all-7g.80gb"})  # changed while the agent's watch is down
    wait_for(lambda: labels(server, "n1").get("nvidia.com/mig-7g.80gb.count") == "2", what="second label applied")
    wait_for(lambda: labels(server, "n1").get(STATE) == "success")
    a.stop()
    assert labels(server, "n1")[DP] == "true"
    assert "nvidia.com/mig-1g.10gb.count" not in labels(server, "n1")  # stale GFD labels removed
    assert [g.gis[0].profile for g in _live()] == ["7g.80gb", "7g.80gb"]
    assert sum(1 for m, p, _ in server.requests if m == "GET" and "watch=true" in p and "nodes" in p) >= 2


def test_two_quick_label_changes_end_on_the_last(server, agent) -> None:
    add_node(server, "n1", "all-disabled")
    a = agent("n1", "2xB200")
    wait_for(lambda: labels(server, "n1").get(STATE) == "success")
    server.patch_labels("n1", {CONFIG: "all-balanced"})
    server.patch_labels("n1", {CONFIG: "all-1g.23gb"})
    wait_for(lambda: labels(server, "n1").get("nvidia.com/mig-1g.23gb.count") == "14"
             and labels(server, "n1").get(STATE) == "success")
    time.sleep(0.5)
    a.stop()
    lab = labels(server, "n1")
    assert lab[STATE] == "success" and lab[CONFIG] == "all-1g.23gb"
    assert all(v == "true" for k, v in lab.items() if k.startswith("nvidia.com/gpu.deploy."))
    assert {g.gis[0].profile for g in _live()} == {"1g.23gb"}


def test_configmap_change_is_reapplied_and_cdi_spec_written(server, agent, tmp_path) -> None:
    import yaml

    add_node(server, "n1", "custom")
    text = "version: v1\nmig-configs:\n  custom:\n    - devices: all\n      mig-enabled: true\n      mig-devices: {\"3g.40gb\": 2}\n"
    server.put("configmaps", {"metadata": {"name": CM, "namespace": NS}, "data": {"config.yaml": text}})
    a = agent("n1", cdi_dir=str(tmp_path / "cdi"))
    wait_for(lambda: labels(server, "n1").get("nvidia.com/mig-3g.40gb.count") == "4")
    server.put("configmaps", {"metadata": {"name": CM, "namespace": NS},
                              "data": {"config.yaml": text.replace('{"3g.40gb": 2}', '{"3g.40gb": 1, "4g.40gb": 1}')}})
    wait_for(lambda: labels(server, "n1").get("nvidia.com/mig-4g.40gb.count") == "2")
    wait_for(lambda: labels(server, "n1").get(STATE) == "success")
    a.stop()
    spec = yaml.safe_load((tmp_path / "cdi" / "nvidia.com-gpu-migctl.yaml").read_text())
    assert spec["cdiVersion"] == "0.6.0" and spec["kind"] == "nvidia.com/gpu"
    names = {d["name"] for d in spec["devices"]}
    live_uuids = {c.uuid for g in _live() for x in g.gis for c in x.cis}
    assert live_uuids <= names and {"0:0", "0:1", "1:0", "1:1"} <= names and len(names) == 8


def test_a_cdi_spec_that_cannot_be_written_fails_the_config_and_is_written_later(server, agent, tmp_path) -> None:
    """``--cdi-dir`` names something that is not a directory: the config is applied, the operands restored, then
    ``failed`` with one Event naming the spec and why, and the agent keeps running (the OSError ended it). Once
    the directory can be made, a later pass writes the spec (nothing left to apply) and reports success."""
    import yaml

    cdi = tmp_path / "cdi"
    cdi.write_text("not a directory\n")
    add_node(server, "n1", "all-disabled")
    a = agent("n1", cdi_dir=str(cdi))
    wait_for(lambda: labels(server, "n1").get(STATE) == "failed", what="failed: no CDI directory")
    server.patch_labels("n1", {CONFIG: "all-balanced"})
    wait_for(lambda: labels(server, "n1").get("nvidia.com/mig-1g.10gb.count") == "4"
             and labels(server, "n1").get(STATE) == "failed", what="applied, then failed")
    time.sleep(1.5)  # (a resync: resync is 1 s here)
    assert a.thread.is_alive()
    assert labels(server, "n1")[DP] == "true"
    said = [m for r, m in events(server, "n1") if r == "MigConfigFailed" and "CDI spec" in m]
    assert len(said) == 2 and str(cdi) in said[1] and "all-balanced" in said[1], said  # (one per config)
    cdi.unlink()
    wait_for(lambda: labels(server, "n1").get(STATE) == "success", what="success once writable")
    a.stop()
    names = {d["name"] for d in yaml.safe_load((cdi / "nvidia.com-gpu-migctl.yaml").read_text())["devices"]}
    assert {c.uuid for g in _live() for x in g.gis for c in x.cis} <= names


def test_mode_change_blocked_by_a_host_process_reboots_then_succeeds_or_fails(server, agent, client, tmp_path,
                                                                             monkeypatch) -> None:
    """With --reboot-command, a MIG mode change blocked by a process that is no pod's sets `rebooting` and runs
    the command; after the "reboot" (the process gone) the agent applies; if the mode change is still blocked
    after rebooting, `failed` (the MIG manager's "did not take effect after rebooting")."""
    import migctl.sim as sim

    spec = "1xA100-40GB"
    sim.install(spec, state_path=None)
    monkeypatch.setenv("MIGCTL_SIM", spec)
    marker = tmp_path / "rebooted"
    p = client(120)
    assert sim.active().add_client(0, p.pid) == 0  # a host daemon on the whole GPU
    add_node(server, "n1", "all-1g.5gb")
    reboot = ["sh", "-c", f"echo reboot >> {marker}"]
    a = agent("n1", spec, fresh=False, reboot_command=reboot)
    wait_for(lambda: labels(server, "n1").get(STATE) == "rebooting", what="rebooting")
    wait_for(lambda: marker.exists())
    a.stop()
    # still blocked after the reboot: failed, operands never paused, no second reboot
    a = agent("n1", spec, fresh=False, reboot_command=reboot)
    wait_for(lambda: labels(server, "n1").get(STATE) == "failed", what="failed after reboot")
    time.sleep(2.5)  # two more resync passes: it stays failed and does not reboot again
    a.stop()
    assert marker.read_text().count("reboot") == 1
    assert "did not take effect after rebooting" in [m for r, m in events(server, "n1") if r == "MigConfigFailed"][-1]
    # a reboot that clears the host process: the next attempt applies
    server.patch_labels("n1", {CONFIG: "all-disabled"})
    a = agent("n1", spec, fresh=False, reboot_command=reboot)
    wait_for(lambda: labels(server, "n1").get(STATE) == "success")
    server.patch_labels("n1", {CONFIG: "all-1g.5gb"})
    wait_for(lambda: labels(server, "n1").get(STATE) == "rebooting")
    a.stop()
    p.kill()
    p.wait()
    a = agent("n1", spec, fresh=False, reboot_command=reboot)
    wait_for(lambda: labels(server, "n1").get("nvidia.com/mig-1g.5gb.count") == "7" and labels(server, "n1").get(STATE) == "success")
    a.stop()
    assert server.label_sequence("n1", STATE) == [None, "pending", "rebooting", "pending", "failed", "success",
                                                  "pending", "rebooting", "pending", "success"]
    assert server.label_sequence("n1", DP)[-1] == "true"


def test_the_agent_waits_for_the_driver_instead_of_exiting(server, agent, monkeypatch, caplog) -> None:
    """The NVIDIA driver is not ready when the agent starts (its library does not load yet, as while the GPU
    Operator's driver container installs): the agent says so once and tries again, then reconciles once NVML
    answers. It exited (a CrashLoopBackOff, whose back-off delays the node by up to five minutes)."""
    import logging

    from migctl.device import DriverNotReady, open_node
    from migctl.integrations import k8s_agent

    monkeypatch.setattr(k8s_agent.Agent, "DRIVER_WAIT_MAX_S", 0.2, raising=False)
    tries = []

    def driver_late(spec: str = "2xH100-80GB") -> object:
        tries.append(time.monotonic())
        if len(tries) < 3:
            raise DriverNotReady("the NVIDIA driver is installed (/dev/nvidiactl) but libnvidia-ml.so.1 cannot be "
                                 "loaded: libnvidia-ml.so.1: cannot open shared object file")
        return open_node(spec)

    add_node(server, "n1", "all-balanced")
    with caplog.at_level(logging.WARNING, logger="migctl.k8s.agent"):
        a = agent("n1", node_factory=driver_late)
        wait_for(lambda: labels(server, "n1").get(STATE) == "success", what="success once the driver is ready")
        a.stop()
    assert len(tries) == 3
    said = [r.getMessage() for r in caplog.records if "waiting for the NVIDIA driver" in r.getMessage()]
    assert len(said) == 1 and "libnvidia-ml.so.1" in said[0], said
    # any other failure to open the node (bad input such as MIGCTL_BACKEND) still ends the agent: no waiting
    from migctl.device import DeviceError

    def misconfigured() -> object:
        raise DeviceError("MIGCTL_BACKEND='x' is not valid; valid: auto, nvml, sim")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(threading, "excepthook", lambda args: None)  # (the error ends the thread: that is the point)
        b = agent("n2", node_factory=misconfigured)
        b.thread.join(10)
    assert not b.thread.is_alive()
