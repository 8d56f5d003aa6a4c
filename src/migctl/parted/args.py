"""nvidia-mig-parted's command line, parsed the way its CLI library (urfave/cli v3) parses it.

Rules reproduced (NVIDIA/mig-parted cmd/nvidia-mig-parted/*, vendor/github.com/urfave/cli/v3/command_parse.go):
flags may come before or after positional arguments; ``-f X``, ``-f=X``, ``--config-file X``,
``--config-file=X`` and ``-config-file X`` are the same; a bool flag takes a value only after ``=``
(``--skip-reset=false``); short bool flags combine (``-sm``), the last one of a group may take a value;
``--`` ends the flags; the global ``--debug/-d`` is persistent (accepted before or after the verb). A flag
not given on the command line comes from its environment variable (bools parsed like Go's
``strconv.ParseBool``; an empty variable is ignored for a bool).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


class ArgError(ValueError):
    """A command line the real tool rejects too."""


@dataclass(frozen=True)
class Flag:
    name: str
    alias: str
    env: str
    boolean: bool = False
    default: str = ""


GLOBAL = [Flag("debug", "d", "MIG_PARTED_DEBUG", True)]

_F = Flag("config-file", "f", "MIG_PARTED_CONFIG_FILE")
_C = Flag("selected-config", "c", "MIG_PARTED_SELECTED_CONFIG")
_K = Flag("hooks-file", "k", "MIG_PARTED_HOOKS_FILE")
_M = Flag("mode-only", "m", "MIG_PARTED_MODE_CHANGE_ONLY", True)

COMMANDS: dict[str, list[Flag]] = {
    "apply": [_F, _C, _K, Flag("skip-reset", "s", "MIG_PARTED_SKIP_RESET", True), _M],
    "assert": [_F, _C, _M, Flag("valid-config", "a", "MIG_PARTED_VALID_CONFIG", True)],
    "export": [Flag("output-format", "o", "MIG_PARTED_OUTPUT_FORMAT", default="yaml"),
               Flag("config-label", "l", "MIG_PARTED_CONFIG_LABEL", default="current")],
    "generate-config": [Flag("output-file", "f", "MIG_PARTED_OUTPUT_FILE"),
                        Flag("output-format", "o", "MIG_PARTED_OUTPUT_FORMAT", default="yaml")],
    "checkpoint": [Flag("checkpoint-file", "f", "MIG_PARTED_CHECKPOINT_FILE")],
    "restore": [Flag("checkpoint-file", "f", "MIG_PARTED_CHECKPOINT_FILE"), _K, _M],
}
HELP = Flag("help", "h", "", True)
VERSION = Flag("version", "v", "", True)

_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def parse_bool(text: str, where: str) -> bool:
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ArgError(f'invalid value "{text}" for {where}: parse error (valid: true, false, 1, 0, t, f)')


@dataclass
class Parsed:
    """A parsed command line: the verb, its flag values (by long name), positional arguments."""

    command: str | None
    values: dict[str, str | bool] = field(default_factory=dict)
    given: set[str] = field(default_factory=set)  # flags set on the command line or from the environment
    args: list[str] = field(default_factory=list)
    help: bool = False
    version: bool = False

    def str(self, name: str) -> str:
        v = self.values.get(name, "")
        return v if isinstance(v, str) else str(v)

    def bool(self, name: str) -> bool:
        return bool(self.values.get(name, False))


def _lookup(flags: list[Flag], name: str) -> Flag | None:
    return next((f for f in flags if name in (f.name, f.alias)), None)


def _set(p: Parsed, f: Flag, value: str, where: str) -> None:
    if f is HELP:
        p.help = True
        return
    if f is VERSION:
        p.version = True
        return
    p.values[f.name] = parse_bool(value, where) if f.boolean else value
    p.given.add(f.name)


def _value(args: list[str], i: int, value: str, has_eq: bool, flag: str) -> tuple[str, int]:
    """A flag's value: after ``=``, else the next argument (Go's flag package); the index of the last one used."""
    if has_eq:
        return value, i
    if i + 1 >= len(args):
        raise ArgError(f"flag needs an argument: {flag}")
    return args[i + 1], i + 1


def _parse_flags(args: list[str], flags: list[Flag], p: Parsed, stop_at_command: bool) -> list[str]:
    """Parse ``args`` into ``p``; returns the positional arguments (from the verb on, at the root)."""
    pos: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        first = arg.strip()
        if not first:
            pos.append(arg)
            i += 1
            continue
        if first == "--":
            return pos + args[i + 1:]
        if first[0] != "-":
            if stop_at_command and (first in COMMANDS or first in ("help", "h")):
                return pos + args[i:]
            pos.append(first)
            i += 1
            continue
        if len(first) == 1:  # "-"
            pos.append(first)
            break
        minuses = 2 if first[1] == "-" else 1
        if minuses == 1 and not first[1].isalpha():
            return pos + args[i:]
        name, value, has_eq = first[minuses:], "", False
        if "=" in name:
            name, value = name.split("=", 1)
            has_eq = True
        f = _lookup(flags, name)
        if f is not None:
            if f.boolean:
                _set(p, f, value or "true", f"flag -{name}")
            else:
                value, i = _value(args, i, value, has_eq, first)
                _set(p, f, value, f"flag -{name}")
            i += 1
            continue
        if minuses == 2:
            raise ArgError(f"flag provided but not defined: -{name}")
        for k, ch in enumerate(name):  # combined short options
            sf = _lookup(flags, ch)
            if sf is None:
                raise ArgError(f"flag provided but not defined: -{name}")
            if sf.boolean:
                _set(p, sf, value if (k == len(name) - 1 and value) else "true", f"flag -{ch}")
            elif k == len(name) - 1:
                value, i = _value(args, i, value, has_eq, f"-{ch}")
                _set(p, sf, value, f"flag -{ch}")
        i += 1
    return pos


def parse(argv: list[str], environ: dict[str, str] | None = None) -> Parsed:
    """Parse ``nvidia-mig-parted`` arguments (without the program name)."""
    env = os.environ if environ is None else environ
    p = Parsed(None)
    root_flags = [*GLOBAL, HELP, VERSION]
    rest = _parse_flags(argv, root_flags, p, stop_at_command=True)
    if rest and rest[0] in ("help", "h"):
        p.help = True
        p.command = rest[1] if len(rest) > 1 and rest[1] in COMMANDS else None
        return p
    if not rest:
        _env_defaults(p, GLOBAL, env)
        return p
    verb = rest[0]
    if verb not in COMMANDS:
        raise ArgError(f"No help topic for '{verb}' (valid commands: {', '.join(COMMANDS)})")
    p.command = verb
    flags = [*COMMANDS[verb], *GLOBAL, HELP]
    p.args = _parse_flags(rest[1:], flags, p, stop_at_command=False)
    _env_defaults(p, [*COMMANDS[verb], *GLOBAL], env)
    return p


def _env_defaults(p: Parsed, flags: list[Flag], env: dict[str, str] | os._Environ[str]) -> None:
    for f in flags:
        if f.name in p.given:
            continue
        raw = env.get(f.env) if f.env else None
        if raw is not None and (raw != "" or not f.boolean):
            p.values[f.name] = parse_bool(raw, f"environment variable {f.env}") if f.boolean else raw
            p.given.add(f.name)
        elif f.name not in p.values:
            p.values[f.name] = False if f.boolean else f.default


def usage(command: str | None) -> str:
    """Help text in the shape urfave/cli prints."""
    if command is None:
        lines = [
            "NAME:", "   nvidia-mig-parted - Manage MIG partitions across the full set of NVIDIA GPUs on a node",
            "", "USAGE:", "   nvidia-mig-parted [global options] [command [command options]]", "",
            "COMMANDS:",
            "   apply            Apply changes (if necessary) for a specific MIG configuration from a configuration file",
            "   assert           Assert that a specific MIG configuration is currently applied to the node",
            "   export           Export the MIG configuration from all GPUs in a compatible format",
            "   generate-config  Generate MIG configuration by discovering available MIG profiles on the system",
            "   checkpoint       Checkpoint MIG state to a checkpoint file",
            "   restore          Restore MIG state from a checkpoint file",
            "", "GLOBAL OPTIONS:", "   --debug, -d    Enable debug-level logging [$MIG_PARTED_DEBUG]",
            "   --help, -h     show help", "   --version, -v  print the version",
            "", "(migctl's drop-in: every change runs through migctl's transactional engine)",
        ]
        return "\n".join(lines) + "\n"
    lines = ["NAME:", f"   nvidia-mig-parted {command}", "", "USAGE:",
             f"   nvidia-mig-parted {command} [options]", "", "OPTIONS:"]
    for f in COMMANDS[command]:
        dflt = f' (default: "{f.default}")' if f.default else ""
        lines.append(f"   --{f.name}, -{f.alias}{dflt}  [${f.env}]")
    lines.append("   --help, -h  show help")
    return "\n".join(lines) + "\n"
