"""``migctl k8s export``: the GPU Operator ConfigMap, the node label, and the mixed-strategy resources."""

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
    node_name: str = typer.Option("NODE", "--node", help="Kubernetes node name for the label command."),
    name: str = typer.Option("custom-mig-parted-config", "--name", help="ConfigMap name."),
    namespace: str = typer.Option("gpu-operator", "--namespace", "-n"),
    output: str = typer.Option("yaml", "-o", "--output", help="yaml (manifest with comments) or json."),
) -> None:
    """Write the ConfigMap (key config.yaml), the nvidia.com/mig.config label and the advertised resources."""
    from migctl.integrations import k8s
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
            "label": {"key": k8s.CONFIG_LABEL_KEY, "value": label, "command": k8s.label_command(node_name, label),
                      "patch": k8s.label_patch(label)},
            "mixed_resources": k8s.mixed_resources(layouts),
        })
        return
    if output != "yaml":
        fail(f"unknown output format {output!r} (valid: yaml, json)")
    sys.stdout.write(k8s.render(text, label, node_name, layouts, name, namespace))


def register(app: typer.Typer) -> None:
    app.add_typer(k8s_app, name="k8s")
