# ruff: noqa: UP007, UP045
"""``migctl slurm gres | reconfigure``: Slurm GRES from the node's MIG layout, and safe re-partitioning."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Optional

import typer

from migctl.cli.common import emit_json, node, seconds


def _slurm_conf_default() -> str:
    return os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")


def _gres_conf_default(slurm_conf: str | None) -> str:
    return str(Path(slurm_conf or _slurm_conf_default()).with_name("gres.conf"))


def _style(style: str) -> str:
    from migctl.errors import UserError

    if style not in ("short", "full"):
        raise UserError(f"--type-style must be short or full, not {style!r}")
    return style


def _checked(node_name: str, autodetect: str, dev_prefix: str, option: str = "--node") -> None:
    """What goes into gres.conf and slurm.conf lines, checked before anything is read or written: a value
    with a space, '#', '=' or a newline would split a line or start a comment there (``--dev-prefix`` with a
    newline wrote lines of its own into gres.conf; ``--autodetect yes`` wrote ``AutoDetect=yes``)."""
    import re

    from migctl.errors import UserError
    from migctl.inputs import printable

    if not re.fullmatch(r"[A-Za-z0-9._-]{1,253}", node_name, re.ASCII):
        raise UserError(f"{option} '{printable(node_name)}': not a Slurm node name (valid: one node's name, letters, "
                        "digits, '.', '_' and '-')")
    if autodetect not in ("nvml", "off"):
        raise UserError(f"--autodetect '{printable(autodetect)}': valid: nvml (real MIG nodes) or off")
    if not re.fullmatch(r"/[A-Za-z0-9._/+-]*", dev_prefix, re.ASCII):
        raise UserError(f"--dev-prefix '{printable(dev_prefix)}': not a device directory (valid: an absolute path of "
                        "letters, digits, '.', '_', '+', '-' and '/', e.g. /dev)")


def _not_real_files_on_sim(n: object, gres_conf: str | None, slurm_conf: str | None, no_slurm_conf: bool) -> None:
    """A simulated node never writes the host's real Slurm files by default."""
    from migctl.errors import UserError

    if getattr(n, "sim", None) is None or os.environ.get("SLURM_CONF"):
        return
    if gres_conf is None or (slurm_conf is None and not no_slurm_conf):
        raise UserError("this is a simulated node: give --gres-conf and --slurm-conf (or set SLURM_CONF), or use "
                        "--print; refusing to write the host's /etc/slurm")


def register(app: typer.Typer) -> None:
    slurm = typer.Typer(help="Slurm integration: GRES for MIG devices, drain/apply/resume.", no_args_is_help=True)
    app.add_typer(slurm, name="slurm")

    @slurm.command("gres")
    def gres_cmd(
        ctx: typer.Context,
        node_name: Optional[str] = typer.Option(None, "--node", "-n", help="Slurm NodeName (default: short hostname)."),
        gres_conf: Optional[str] = typer.Option(None, "--gres-conf", help="gres.conf to update (default: next to slurm.conf)."),
        slurm_conf: Optional[str] = typer.Option(None, "--slurm-conf", help="slurm.conf whose NodeName line gets Gres= (default: $SLURM_CONF or /etc/slurm/slurm.conf)."),
        print_only: bool = typer.Option(False, "--print", help="Print the gres.conf block and Gres= value; write nothing."),
        no_slurm_conf: bool = typer.Option(False, "--no-slurm-conf", help="Write gres.conf only; print the Gres= value."),
        style: str = typer.Option("short", "--type-style", help="short: 3g.40gb; full: exactly slurmd's NVML name (nvidia_h100_80gb_hbm3_3g.40gb)."),
        autodetect: str = typer.Option("nvml", "--autodetect", help="AutoDetect= for this node: nvml (real MIG nodes) or off (explicit lines only)."),
        dev_prefix: str = typer.Option("/dev", "--dev-prefix", help="Where the device files live (tests use fake ones)."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Write gres.conf and the node's Gres= from its current MIG layout (types named as Slurm's NVML autodetect names them)."""
        from migctl.errors import UserError
        from migctl.integrations import slurm as S

        name = node_name or socket.gethostname().split(".")[0]
        _checked(name, autodetect, dev_prefix)
        n = node(ctx)
        entries = S.gres_entries(n, style=_style(style), dev_prefix=dev_prefix)
        block, value = S.gres_block(name, entries, autodetect), S.gres_value(entries)
        if as_json:
            emit_json({"node": name, "gres": value, "gres_conf": block,
                       "devices": [e.__dict__ for e in entries]})
            if print_only:
                return
        elif print_only:
            sys.stdout.write(block)
            print(f"Gres={value}")
            return
        _not_real_files_on_sim(n, gres_conf, slurm_conf, no_slurm_conf)
        sc = slurm_conf or _slurm_conf_default()
        gc = Path(gres_conf or _gres_conf_default(sc))
        try:
            S.write_gres(n, name, gc, None if no_slurm_conf else Path(sc), _style(style), autodetect, dev_prefix)
        except S.SlurmError as e:
            raise UserError(str(e), e.exit_code) from None
        except OSError as e:
            raise UserError(f"cannot write Slurm configuration: {e}") from None
        if not as_json:
            print(f"wrote {gc}" + ("" if no_slurm_conf else f" and Gres= in {sc}"))
            print(f"Gres={value}")

    @slurm.command("reconfigure")
    def reconfigure_cmd(
        ctx: typer.Context,
        node_name: str = typer.Argument(..., help="Slurm NodeName of this node."),
        config_file: str = typer.Option(..., "-f", "--file", "--config-file", help="mig-parted v1 config file."),
        label: str = typer.Option(..., "-c", "--config", "--selected-config", help="Config label to apply."),
        gres_conf: Optional[str] = typer.Option(None, "--gres-conf"),
        slurm_conf: Optional[str] = typer.Option(None, "--slurm-conf"),
        no_slurm_conf: bool = typer.Option(False, "--no-slurm-conf", help="Do not edit slurm.conf (configless / managed elsewhere)."),
        style: str = typer.Option("short", "--type-style"),
        autodetect: str = typer.Option("nvml", "--autodetect"),
        dev_prefix: str = typer.Option("/dev", "--dev-prefix"),
        slurmctld_restart: str = typer.Option("systemctl restart slurmctld", "--slurmctld-restart", help="Shell command that restarts slurmctld (22.05 needs a restart when GPU types/counts change)."),
        slurmd_restart: str = typer.Option("systemctl restart slurmd", "--slurmd-restart", help="Shell command that restarts this node's slurmd."),
        drain_timeout: float = typer.Option(3600, "--drain-timeout", callback=seconds, help="Seconds to wait for running jobs."),
        timeout: float = typer.Option(120, "--timeout", callback=seconds, help="Seconds for restarts and registration."),
        force: bool = typer.Option(False, "--force", help="Passed to apply: terminate processes on instances that must go."),
        as_json: bool = typer.Option(False, "--json", help="Print {node, config, gres_conf, slurm_conf, resumed} at the end."),
    ) -> None:
        """Drain NODE, wait for its jobs, apply LABEL, regenerate GRES, restart Slurm, resume.

        On failure the node stays drained with the reason and migctl exits non-zero.
        """
        from migctl.errors import UserError
        from migctl.integrations import slurm as S

        _checked(node_name, autodetect, dev_prefix, "NODE")
        _not_real_files_on_sim(node(ctx), gres_conf, slurm_conf, no_slurm_conf)
        sc = slurm_conf or _slurm_conf_default()
        opts = S.ReconfigureOptions(
            gres_conf=Path(gres_conf or _gres_conf_default(sc)), slurm_conf=None if no_slurm_conf else Path(sc),
            style=_style(style), autodetect=autodetect, dev_prefix=dev_prefix, slurmctld_restart=slurmctld_restart,
            slurmd_restart=slurmd_restart, drain_timeout=drain_timeout, timeout=timeout, force=force,
        )
        try:
            S.reconfigure(node(ctx), node_name, config_file, label, opts,
                          log=lambda s: (sys.stderr.write(f"migctl slurm: {s}\n"), sys.stderr.flush()))
        except S.SlurmError as e:
            raise UserError(str(e), e.exit_code if e.exit_code != 2 else 2) from None
        if as_json:
            emit_json({"node": node_name, "config": label, "gres_conf": str(opts.gres_conf),
                       "slurm_conf": str(opts.slurm_conf) if opts.slurm_conf else None, "resumed": True})
