"""Run N node agents as N processes forked from one launcher (imports paid once; each child is its own
process with its own simulated node, state dir and API connections). Used by the 50-node test.

python -m tests.k8s.fleet KUBECONFIG WORKDIR NODE_PREFIX N SPEC
"""

from __future__ import annotations

import os
import signal
import sys
import time


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
