"""``migctl k8s export|agent|manifests|plan``: GPU Operator ConfigMap and labels, the node agent, its manifests,
and fleet planning onto nodes (docs/kubernetes.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from migctl.cli.common import emit_json, fail, node

k8s_app = typer.Typer(help="Kubernetes (NVIDIA GPU Operator) integration.", no_args_is_help=True)


@k8s_app.command("export")
def export_cmd(
    ctx: typer.Context,
    file: Path | None = typer.Option(None, "-f", "--file", help="Config to publish (default: the live layout)."),
    label: str | None = typer.Option(None, "-c", "--config", help="Label to select (default: 'current' for the live layout)."),
    node_name: str | None = typer.Option(None, "--node", help="Kubernetes node name for the label command (default: NODE, to replace)."),
    name: str = typer.Option("custom-mig-parted-config", "--name", help="ConfigMap name."),
    namespace: str = typer.Option("gpu-operator", "--namespace", "-n"),
    output: str = typer.Option("yaml", "-o", "--output", help="yaml (manifest with comments) or json."),
) -> None:
    """Write the ConfigMap (key config.yaml), the nvidia.com/mig.config label and the advertised resources."""
    from migctl.integrations import k8s
    from migctl.integrations.k8s_names import check

    check(namespace, "namespace", "--namespace")
    check(name, "name", "--name")
    if node_name is not None:
        check(node_name, "name", "--node")
    if label is not None:
        check(label, "label value", "-c")
    from migctl.reconcile.live import read_node
    from migctl.reconcile.roundtrip import export_config, to_yaml

    live = read_node(node(ctx))
    if file is None:
        label = label or "current"
        text = to_yaml(export_config(live, label))
        layouts = [g.layout() for g in live]
    else:
        from migctl.config import load_config, parse_yaml
        from migctl.config.loader import read_text
        from migctl.reconcile import build_plan

        if label is None:
            fail("-c LABEL is required with -f FILE")
        cfg = load_config(file)
        cfg.entries_for(label)  # type: ignore[arg-type]
        doc = parse_yaml(read_text(file), str(file))  # unwraps a ConfigMap: publish the config itself
        text = to_yaml(doc.data)
        _, plan = build_plan(node(ctx), cfg, label)  # type: ignore[arg-type]
        layouts = [g.target_layout() for g in plan.gpus]
    assert label is not None
    if output == "json":
        emit_json({
            "configmap": {"name": name, "namespace": namespace, "data": {"config.yaml": text}},
            "label": {"key": k8s.CONFIG_LABEL_KEY, "value": label, "command": k8s.label_command(node_name or "NODE", label),
                      "patch": k8s.label_patch(label)},
            "mixed_resources": k8s.mixed_resources(layouts),
        })
        return
    if output != "yaml":
        fail(f"unknown output format {output!r} (valid: yaml, json)")
    sys.stdout.write(k8s.render(text, label, node_name or "NODE", layouts, name, namespace))


@k8s_app.command("agent")
def agent_cmd(
    node_name: str = typer.Option(..., "--node", envvar="NODE_NAME", help="This node's name (the DaemonSet passes spec.nodeName)."),
    namespace: str = typer.Option("gpu-operator", "--namespace", "-n", help="Namespace of the ConfigMap."),
    configmap: str = typer.Option("migctl-mig-parted-config", "--configmap", help="ConfigMap holding the mig-parted configs."),
    key: str = typer.Option("config.yaml", "--key", help="Key of the config in the ConfigMap."),
    kubeconfig: str | None = typer.Option(None, "--kubeconfig", help="Kubeconfig file (default: in-cluster config, else $KUBECONFIG)."),
    evict: bool = typer.Option(False, "--evict", help="Evict pods holding MIG devices that must go (PodDisruptionBudgets apply)."),
    cdi_dir: str | None = typer.Option(None, "--cdi-dir", help="Write a CDI spec of the MIG devices here after each change."),
    operand_timeout: float = typer.Option(300, "--operand-timeout", help="Seconds to wait for paused operand pods to go."),
    resync: float = typer.Option(30, "--resync", help="Seconds between reconciles when nothing changes."),
    reboot_command: str | None = typer.Option(None, "--reboot-command", help="Reboot this way when a MIG mode change is blocked by host processes (e.g. 'chroot /host reboot'); state 'rebooting'."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Log each step on stderr."),
    as_json: bool = typer.Option(False, "--json", help="When the agent stops, print its final state as one JSON object."),
) -> None:
    """Run the node agent: reconcile nvidia.com/mig.config with migctl's engine (one per GPU node)."""
    import logging
    import shlex
    import signal

    from migctl.integrations.k8s_agent import Agent, AgentOptions, api_from_config
    from migctl.integrations.k8s_names import check

    check(node_name, "name", "--node")
    check(namespace, "namespace", "--namespace")
    check(configmap, "name", "--configmap")
    check(key, "key", "--key")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(message)s")
    if operand_timeout < 0 or resync <= 0:
        fail("--operand-timeout must be >= 0 and --resync > 0")
    opts = AgentOptions(node=node_name, namespace=namespace, configmap=configmap, key=key, evict=evict,
                        cdi_dir=cdi_dir, operand_timeout=operand_timeout, resync=resync,
                        reboot_command=shlex.split(reboot_command) if reboot_command else None)
    agent = Agent(api_from_config(kubeconfig), opts)

    def stop(signum: int, frame: object) -> None:
        agent.stop.set()
        agent.wake.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    agent.run()
    if as_json:
        from migctl.integrations.k8s_labels import CONFIG_LABEL, STATE_LABEL

        emit_json({"node": node_name, "config": agent.snap.labels.get(CONFIG_LABEL),
                   "state": agent.snap.labels.get(STATE_LABEL), "paused": sorted(agent.saved.get("paused") or {}),
                   "failed": agent.saved.get("failed")})


@k8s_app.command("manifests")
def manifests_cmd(
    namespace: str = typer.Option("gpu-operator", "--namespace", "-n"),
    image: str = typer.Option("migctl:latest", "--image", help="Container image with migctl installed."),
    configmap: str = typer.Option("migctl-mig-parted-config", "--configmap"),
    file: Path | None = typer.Option(None, "-f", "--file", help="mig-parted config to ship in the ConfigMap (validated)."),
    evict: bool = typer.Option(False, "--evict", help="Let the agent evict pods (adds pods/eviction create to RBAC)."),
    cdi: bool = typer.Option(False, "--cdi", help="Mount /var/run/cdi and write a CDI spec."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object (a v1 List) instead of YAML documents."),
) -> None:
    """Print the agent's ServiceAccount, least-privilege RBAC, ConfigMap and DaemonSet (kubectl apply -f -)."""
    from migctl.integrations.k8s_manifests import manifests, render
    from migctl.integrations.k8s_names import check, check_image

    check(namespace, "namespace", "--namespace")
    check(configmap, "name", "--configmap")
    check_image(image)
    text = None
    if file is not None:
        from migctl.config import load_config, parse_yaml
        from migctl.config.loader import read_text

        load_config(file)
        text = _yaml_text(parse_yaml(read_text(file), str(file)).data)
    objs = manifests(namespace, image, configmap, text, evict=evict, cdi=cdi)
    if as_json:
        emit_json({"apiVersion": "v1", "kind": "List", "items": objs})
        return
    sys.stdout.write(render(objs))


@k8s_app.command("plan")
def plan_cmd(
    file: Path = typer.Argument(..., help="Planning request (YAML workloads, as for `migctl plan`; its fleet is ignored)."),
    kubeconfig: str | None = typer.Option(None, "--kubeconfig", help="Kubeconfig file (default: in-cluster, else $KUBECONFIG)."),
    namespace: str = typer.Option("gpu-operator", "--namespace", "-n", help="Namespace of the ConfigMap."),
    configmap: str = typer.Option("migctl-mig-parted-config", "--configmap", help="ConfigMap the agents read."),
    selector: str | None = typer.Option(None, "--selector", "-l", help="Only nodes matching this label selector."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would change; write nothing."),
    time_limit: float | None = typer.Option(None, "--time-limit", help="Solver time limit in seconds."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Plan layouts for FILE's workloads onto the nodes (incrementally: busy instances stay), write one config
    per changed node into the ConfigMap and set those nodes' nvidia.com/mig.config."""
    from migctl.inputs import load_yaml_file
    from migctl.integrations.k8s_agent import api_from_config
    from migctl.integrations.k8s_names import check
    from migctl.integrations.k8s_plan import plan_fleet, write_plan

    check(namespace, "namespace", "--namespace")
    check(configmap, "name", "--configmap")

    data = load_yaml_file(file, "planning request")  # (InputError: one line, exit 2)
    if not isinstance(data, dict):
        fail(f"{file}: expected a mapping with 'workloads'")
    if time_limit is not None and time_limit <= 0:
        fail("--time-limit must be > 0")
    api = api_from_config(kubeconfig)
    fp = plan_fleet(api, data, base_dir=file.parent, selector=selector, time_limit=time_limit)
    if not dry_run:
        write_plan(api, fp, namespace, configmap)
    if as_json:
        emit_json({"dry_run": dry_run, "changed": [{"node": c.node, "label": c.label, "previous": c.old_label,
                                                   "config": c.entries, "diff": c.diff} for c in fp.changes],
                   "unchanged": fp.unchanged, "skipped": fp.skipped, "plan": fp.plan.to_dict()})
        return
    print(fp.render())
    print("dry run: nothing written" if dry_run else
          f"wrote {len(fp.changes)} config(s) to ConfigMap {namespace}/{configmap} and labelled those nodes")


def _yaml_text(data: object) -> str:
    from migctl.reconcile.roundtrip import to_yaml

    return to_yaml(data)  # type: ignore[arg-type]


def register(app: typer.Typer) -> None:
    app.add_typer(k8s_app, name="k8s")
