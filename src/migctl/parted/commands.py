"""The verbs of the drop-in ``nvidia-mig-parted``, each running migctl's engine.

Messages and exit statuses follow NVIDIA/mig-parted (cmd/nvidia-mig-parted/*): success prints the same
line (``MIG configuration applied successfully``, ``Selected MIG configuration currently applied``, ...);
any failure is one ``level=fatal`` line on stderr and exit status 1 (mig-parted ends in ``log.Fatal``).
What differs is what happens on the GPUs: per-GPU plans that keep matching instances, a reset of only the
GPUs whose mode changes, a journal, and rollback of every GPU on failure (docs/kubernetes.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from migctl.config.hooks import HookError, Hooks
from migctl.parted.args import Parsed

LOCK_TIMEOUT = 60.0
_CACHE: dict[tuple[str, int, int, int], Any] = {}


class Fatal(Exception):
    """Ends the command: one ``level=fatal`` line, exit status 1."""


class Log:
    """logrus-shaped lines on stderr (``-d`` enables debug lines)."""

    def __init__(self, debug: bool) -> None:
        self.debug_on = debug

    @staticmethod
    def line(level: str, msg: str) -> str:
        ts = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"time=\"{ts}\" level={level} msg={json.dumps(msg)}"

    def debug(self, msg: str) -> None:
        if self.debug_on:
            for part in msg.splitlines() or [""]:
                sys.stderr.write(self.line("debug", part) + "\n")
            sys.stderr.flush()


def capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


class PartedHooks(Hooks):
    """Hooks run the way mig-parted runs them (api/hooks/v1): the environment is the hook's ``envs`` plus
    the command's ``MIG_PARTED_*`` flag values (those win), nothing inherited; output shown only with -d."""

    def __init__(self, base: Hooks, env: dict[str, str], output: bool) -> None:
        super().__init__(base.file, base.hooks)
        self.env = env
        self.output = output

    def run(self, name: str, env: dict[str, str], timeout: float | None = None) -> None:  # noqa: ARG002
        for h in self.hooks.get(name, []):
            full = {**h.envs, **self.env}
            sink = None if self.output else subprocess.DEVNULL
            try:
                rc = subprocess.run([h.command, *h.args], cwd=h.workdir or None, env=full, stdout=sink,
                                    stderr=sink, stdin=subprocess.DEVNULL, check=False).returncode
            except OSError as e:
                raise HookError(f"error running {name} hook: {e.strerror or e}") from None
            if rc != 0:
                raise HookError(f"error running {name} hook: exit status {rc}")


# ------------------------------------------------------------------------------------------ helpers
def _node() -> Any:
    """The node: real NVML unless a simulated node is asked for explicitly (``MIGCTL_SIM``); a drop-in
    must never fall back to a simulated node on a machine whose driver is missing."""
    from migctl.device import open_node

    if not os.environ.get("MIGCTL_SIM") and os.environ.get("MIGCTL_BACKEND", "").lower() != "sim":
        import migctl.sim as simmod
        from migctl.device import Node
        from migctl.node_guard import check

        simmod.uninstall()
        node = Node()
        check(node)  # a state dir that another node's state is in: refused, as migctl does
        return node
    return open_node()


def _require(p: Parsed, name: str) -> str:
    value = p.str(name)
    if not value:
        raise Fatal(f"missing required flags '{name}'")
    return value


def load_config(path: str) -> Any:
    """The parsed config (``-`` reads stdin); parsed files are cached by identity and modification time."""
    from migctl.config import ConfigError
    from migctl.config import load_config as load

    try:
        if path == "-":  # bounded as a file is (migctl.inputs.MAX_BYTES): read one byte past it, never further
            from migctl.inputs import MAX_BYTES

            data = sys.stdin.buffer.read(MAX_BYTES + 1)
            if len(data) > MAX_BYTES:
                raise Fatal(f"the config on stdin is larger than {MAX_BYTES // (1024 * 1024)} MiB; nothing was read "
                            "further and nothing was changed")
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise Fatal(f"the config on stdin is not UTF-8 text (byte {e.start}); nothing was changed") from None
            return load(text, file="<stdin>")
        st = os.stat(path)
        key = (os.path.realpath(path), st.st_ino, st.st_mtime_ns, st.st_size)
        if key not in _CACHE:
            _CACHE.clear()
            _CACHE[key] = load(Path(path))
        return _CACHE[key]
    except FileNotFoundError:
        raise Fatal(f"error parsing config file: read error: open {path}: no such file or directory") from None
    except (ConfigError, OSError) as e:
        raise Fatal(f"error parsing config file: {e}") from None


def select_label(p: Parsed, cfg: Any) -> str:
    label = p.str("selected-config")
    labels = cfg.labels
    if not label:
        if len(labels) > 1:
            raise Fatal("error selecting MIG config: missing required flag 'selected-config' when more than one "
                        f"config available (valid: {', '.join(labels)})")
        if len(labels) == 1:
            label = labels[0]
    if label not in labels:
        raise Fatal(f"error selecting MIG config: selected mig-config not present: {label} "
                    f"(valid: {', '.join(labels) or 'none'})")
    return label


def _hooks(p: Parsed, env: dict[str, str]) -> PartedHooks | None:
    from migctl.config import ConfigError, load_hooks

    path = p.str("hooks-file")
    if not path:
        return None
    try:
        base = load_hooks(path)
    except (ConfigError, OSError) as e:
        raise Fatal(f"error parsing hooks file: {e}") from None
    assert base is not None
    return PartedHooks(base, env, p.bool("debug"))


def _flag_env(p: Parsed, names: list[str]) -> dict[str, str]:
    from migctl.parted.args import COMMANDS

    flags = {f.name: f for f in COMMANDS[p.command or ""]}
    out = {}
    for n in names:
        v = p.values.get(n, "")
        out[flags[n].env] = str(v).lower() if isinstance(v, bool) else str(v)
    return out


def _engine_errors() -> tuple[type[BaseException], ...]:
    import pynvml

    from migctl.device import DeviceError
    from migctl.errors import UserError

    return (UserError, DeviceError, pynvml.NVMLError, HookError, OSError)


def _write_private(path: str, data: str) -> None:
    """Write ``data`` to ``path`` (created 0600; never through a symlink)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        raise Fatal(f"error creating output file: open {path}: {e.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(data)


def _observers(log: Log) -> dict[str, Any]:
    def on_plan(plan: Any) -> None:
        log.debug(plan.render())

    def progress(k: int, n: int, desc: str) -> None:
        log.debug(f"[{k}/{n}] {desc}")

    return {"on_plan": on_plan, "progress": progress}


# ------------------------------------------------------------------------------------------ verbs
def _selected(p: Parsed, log: Log) -> tuple[Any, str]:
    """The config file (-f) and the label selected in it (-c), with mig-parted's debug lines."""
    path = _require(p, "config-file")
    log.debug("Parsing config file...")
    cfg = load_config(path)
    log.debug("Selecting specific MIG config...")
    return cfg, select_label(p, cfg)


def cmd_apply(p: Parsed, log: Log) -> None:
    from migctl.parted.compat import resolver
    from migctl.reconcile import apply_desired

    cfg, label = _selected(p, log)
    p.values["selected-config"] = label  # hooks see the selected label, as in mig-parted
    env = _flag_env(p, ["config-file", "selected-config", "hooks-file", "skip-reset", "mode-only"])
    hooks = _hooks(p, env)
    node = _node()
    try:
        apply_desired(resolver(cfg, label, p.bool("mode-only")), label, str(cfg.file), node=node, hooks=hooks,
                      skip_reset=p.bool("skip-reset"), mode_only=p.bool("mode-only"), lock_timeout=LOCK_TIMEOUT,
                      **_observers(log))
    except _engine_errors() as e:
        raise Fatal(f"error applying MIG configuration with hooks: {e}") from None
    print("MIG configuration applied successfully", flush=True)


def cmd_assert(p: Parsed, log: Log) -> None:
    from migctl.config import ConfigError
    from migctl.parted.compat import plan as lenient_plan
    from migctl.reconcile.engine import config_modes
    from migctl.reconcile.live import read_node

    cfg, label = _selected(p, log)
    if p.bool("valid-config"):
        print("Selected MIG configuration is valid", flush=True)
        return
    node = _node()
    failure = "assertion failure: selected configuration not currently applied"
    log.debug("Asserting MIG mode configuration...")
    try:
        live = read_node(node)
        modes = config_modes(cfg, label, live)
    except ConfigError as e:
        raise Fatal(f"{failure} ({e})") from None
    wrong = [g for g in live if g.index in modes and g.mig_current != modes[g.index].mig_enabled]
    for g in wrong:
        log.debug(f"GPU {g.index}: current mode different than mode being asserted "
                  f"(have {'enabled' if g.mig_current else 'disabled'})")
    if wrong:
        raise Fatal(failure)
    if p.bool("mode-only"):
        print("Selected MIG mode settings from configuration currently applied", flush=True)
        return
    log.debug("Asserting MIG device configuration...")
    try:
        _, plan = lenient_plan(node, cfg, label)
    except ConfigError as e:
        raise Fatal(f"{failure} ({e})") from None
    diffs = [f"GPU {g.index}: have {g.live.describe()}; want {g.describe()}" for g in plan.gpus
             if g.status in ("change", "blocked", "invalid")]
    for d in diffs:
        log.debug(d)
    if diffs:
        raise Fatal(failure)
    print("Selected MIG configuration currently applied", flush=True)


def _format(p: Parsed) -> str:
    fmt = p.str("output-format")
    if fmt not in ("json", "yaml"):
        raise Fatal(f"unrecognized 'output-format': {fmt} (valid: json, yaml)")
    return fmt


def _dump(data: Any, fmt: str) -> str:
    from migctl.reconcile.roundtrip import to_yaml

    return json.dumps(data, indent=2) if fmt == "json" else to_yaml(data)


def cmd_export(p: Parsed, log: Log) -> None:
    from migctl.reconcile.live import read_node
    from migctl.reconcile.roundtrip import export_config

    fmt = _format(p)
    data = export_config(read_node(_node()), p.str("config-label") or "current")
    sys.stdout.write(_dump(data, fmt))
    sys.stdout.flush()


def cmd_generate_config(p: Parsed, log: Log) -> None:
    from migctl.reconcile.roundtrip import generate_config

    fmt = _format(p)
    models = [g.model for g in _node().gpus() if g.model is not None]
    text = _dump(generate_config(models), fmt)
    out = p.str("output-file")
    if out:
        _write_private(out, text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


def cmd_checkpoint(p: Parsed, log: Log) -> None:
    from migctl.reconcile.roundtrip import checkpoint

    path = _require(p, "checkpoint-file")
    _write_private(path, json.dumps(checkpoint(_node())))
    print("MIG configuration checkpointed successfully", flush=True)


def cmd_restore(p: Parsed, log: Log) -> None:
    from migctl.errors import UserError
    from migctl.reconcile import apply_desired
    from migctl.reconcile.roundtrip import load_checkpoint, restore_resolver

    path = _require(p, "checkpoint-file")
    log.debug("Parsing checkpoint file...")
    try:
        resolver = restore_resolver(load_checkpoint(path))
    except UserError as e:
        raise Fatal(f"error parsing checkpoint file: {e}") from None
    env = _flag_env(p, ["checkpoint-file", "hooks-file", "mode-only"])
    hooks = _hooks(p, env)
    try:
        apply_desired(resolver, "checkpoint", path, node=_node(), hooks=hooks, mode_only=p.bool("mode-only"),
                      lock_timeout=LOCK_TIMEOUT, **_observers(log))
    except _engine_errors() as e:
        raise Fatal(f"error applying MIG configuration with hooks: {e}") from None
    print("MIG configuration restored successfully", flush=True)


VERBS = {
    "apply": cmd_apply, "assert": cmd_assert, "export": cmd_export, "generate-config": cmd_generate_config,
    "checkpoint": cmd_checkpoint, "restore": cmd_restore,
}
