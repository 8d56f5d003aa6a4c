"""Run N node agents as N processes forked from one launcher (imports paid once; each child is its own
process with its own simulated node, state dir and API connections). Used by the fleet test
(tests/k8s/test_agent_proc.py) and the 50-node benchmark (benchmarks/k8s/fleet.py) through `run_fleet`.

python -m tests.k8s.fleet KUBECONFIG WORKDIR NODE_PREFIX N SPEC
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SMALL = ("version: v1\nmig-configs:\n  all-balanced:\n    - devices: all\n      mig-enabled: true\n"
         "      mig-devices: {\"1g.5gb\": 2, \"2g.10gb\": 1, \"3g.20gb\": 1}\n"
         "  all-1g.5gb:\n    - devices: all\n      mig-enabled: true\n      mig-devices: {\"1g.5gb\": 7}\n")


def run_fleet(server: Any, workdir: Path, n: int, spec: str = "1xA100-40GB", timeout: float = 90.0,
              poll: float = 0.5) -> dict[str, float]:
    """N Nodes labelled all-balanced, N agent processes, one server: every node reaches success with its
    layout, then a relabel of all N to all-1g.5gb converges too; each node's state label went
    pending -> success twice and its operands are deployed. Returns the seconds each phase took."""
    from tests.k8s.cluster import CM, CONFIG, NS, STATE, add_node, labels, wait_for

    kc = server.kubeconfig(workdir / "kc")
    server.put("configmaps", {"metadata": {"name": CM, "namespace": NS}, "data": {"config.yaml": SMALL}})
    for i in range(n):
        add_node(server, f"node{i}", "all-balanced")
    full = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + str(ROOT / "src")}
    t0 = time.monotonic()
    launcher = subprocess.Popen([sys.executable, "-m", "tests.k8s.fleet", str(kc), str(workdir), "node", str(n),
                                 spec], env=full, stderr=subprocess.PIPE, text=True)
    took: dict[str, float] = {}
    try:
        def done(key: str, value: str) -> bool:
            time.sleep(poll)  # poll gently: the server is busy with 2 watches per agent
            return all(labels(server, f"node{i}").get(STATE) == "success"
                       and labels(server, f"node{i}").get(key) == value for i in range(n))

        wait_for(lambda: done("nvidia.com/mig-3g.20gb.count", "1"), timeout=timeout, what=f"{n} nodes all-balanced")
        took["start_and_apply_s"] = time.monotonic() - t0
        t1 = time.monotonic()
        for i in range(n):
            server.patch_labels(f"node{i}", {CONFIG: "all-1g.5gb"})
        wait_for(lambda: done("nvidia.com/mig-1g.5gb.count", "7"), timeout=timeout, what=f"{n} nodes relabelled")
        took["relabel_s"] = time.monotonic() - t1
    finally:
        launcher.send_signal(signal.SIGTERM)
        _, err = launcher.communicate(timeout=60)
    assert launcher.returncode == 0, err
    for i in range(n):
        lab = labels(server, f"node{i}")
        assert all(v == "true" for k, v in lab.items() if k.startswith("nvidia.com/gpu.deploy."))
        assert server.label_sequence(f"node{i}", STATE) == [None, "pending", "success", "pending", "success"]
    return took


def main() -> None:
    kubeconfig, workdir, prefix, n, spec = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    # imports before forking: the children share them copy-on-write
    import kubernetes.client  # noqa: F401
    import kubernetes.watch  # noqa: F401

    # the client imports API classes and models lazily (pydantic classes: costly); build them once here
    from kubernetes import client

    import migctl.integrations.k8s_agent as ka
    import migctl.reconcile  # noqa: F401
    import migctl.sim  # noqa: F401
    from migctl.device import open_node

    _ = client.CoreV1Api
    for model, data in (("V1Node", {"metadata": {"name": "x"}}), ("V1ConfigMap", {"metadata": {"name": "x"}}),
                        ("V1PodList", {"items": []}), ("V1NodeList", {"items": []}),
                        ("V1ConfigMapList", {"items": []}), ("CoreV1Event", {"metadata": {"name": "x"},
                                                                             "involvedObject": {}})):
        getattr(client, model).from_dict(data)

    children: list[int] = []
    for i in range(n):
        pid = os.fork()
        if pid == 0:
            import faulthandler

            faulthandler.register(signal.SIGUSR1, all_threads=True)
            try:
                name = f"{prefix}{i}"
                os.environ.update({"MIGCTL_SIM": spec, "MIGCTL_SIM_STATE": f"{workdir}/sim-{name}.json",
                                   "MIGCTL_STATE_DIR": f"{workdir}/state-{name}"})
                agent = ka.Agent(ka.api_from_config(kubeconfig),
                                 ka.AgentOptions(node=name, resync=5, busy_poll=0.5, watch_timeout=30),
                                 node_factory=lambda: open_node(spec))

                def stop(signum: int, frame: object, agent: ka.Agent = agent) -> None:
                    agent.stop.set()
                    agent.wake.set()

                signal.signal(signal.SIGTERM, stop)
                agent.run()
                os._exit(0)
            except BaseException as e:  # noqa: BLE001
                sys.stderr.write(f"agent {i}: {e!r}\n")
                os._exit(1)
        children.append(pid)

    def forward(signum: int, frame: object) -> None:
        for c in children:
            try:
                os.kill(c, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    bad = 0
    for c in children:
        while True:
            try:
                _, status = os.waitpid(c, 0)
                bad += status != 0
                break
            except InterruptedError:
                time.sleep(0.01)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
