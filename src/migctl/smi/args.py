"""nvidia-smi's command-line syntax, parsed by hand.

nvidia-smi's options do not fit click/argparse conventions: multi-letter single-dash options
(``-lgip``, ``-cgi 5,5``, ``-mig 1``), an optional value (``-cci`` alone or ``-cci 0,0``), a ``mig``
sub-command, and both ``--opt=value`` and ``--opt value`` forms. :func:`parse` turns an argv (the words
after ``nvidia-smi``) into a :class:`SmiArgs`; bad input raises :class:`SmiUsageError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from migctl.inputs import is_digits

# nvidia-smi's own message for options it does not understand.
INVALID_COMBINATION = "Invalid combination of input arguments. Please run 'nvidia-smi -h' for help."


class SmiUsageError(ValueError):
    """Arguments nvidia-smi would reject (the message is what nvidia-smi prints)."""

    exit_code = 2


class SmiNotImplemented(SmiUsageError):
    """A real nvidia-smi option or subcommand that ``migctl smi`` does not implement (not bad syntax)."""

    exit_code = 3  # nvidia-smi(1): "The requested operation is not available on target device"


# Real nvidia-smi options and subcommands outside migctl smi's MIG subset: they get a line that says so
# instead of the bad-syntax message, which a script would take for a typo. Sources: nvidia-smi(1) man pages
# (e.g. 550.90.12, Ubuntu's nvidia-utils-550-server: -L, -B, -q, -i, -f, -l) and its -h text as quoted in
# public write-ups (the device modification options -pm, -e, -p, -c, -r, -lgc, -pl, ..., and dmon). The rest
# are long-standing nvidia-smi options not checked here against one driver version (UNCONFIRMED one by one).
# Newer subcommands (c2c, gpm, ...) are left out: they keep the bad-syntax answer, the stricter one.
NOT_IMPLEMENTED = frozenset({
    "-q", "--query", "-x", "--xml-format", "--dtd", "-d", "--display", "-l", "--loop", "-lms", "--loop-ms",
    "-u", "--unit", "-B", "--list-excluded-gpus", "-f", "--filename", "--query-supported-clocks",
    "--query-accounted-apps", "--query-retired-pages", "--query-remapped-rows",
    "-e", "--ecc-config", "-p", "--reset-ecc-errors", "-c", "--compute-mode", "-lgc", "--lock-gpu-clocks",
    "-rgc", "--reset-gpu-clocks", "-lmc", "--lock-memory-clocks", "-rmc", "--reset-memory-clocks", "-ac",
    "--applications-clocks", "-rac", "--reset-applications-clocks", "-pl", "--power-limit", "-cc",
    "--cuda-clocks", "-am", "--accounting-mode", "-caa", "--clear-accounted-apps",
    "topo", "nvlink", "clocks", "encodersessions", "fbcsessions", "drain", "dmon", "pmon", "vgpu",
})


def not_implemented(word: str) -> SmiNotImplemented:
    return SmiNotImplemented(
        f"migctl smi: nvidia-smi {word} is not implemented here; supported: -L, -i, -mig, -pm, -r, "
        "--query-gpu and --query-compute-apps with --format=csv, the default table, and the mig subcommand "
        "(docs/smi.md)")


@dataclass
class SmiArgs:
    """What an nvidia-smi command line asks for."""

    mig_subcommand: bool = False  # ``nvidia-smi mig ...``
    gpu: str | None = None  # ``-i``: indices, UUIDs or PCI bus ids, comma-separated
    action: str | None = None  # see ACTIONS below; None = the default summary table
    mig_mode: int | None = None  # ``-mig 0|1``
    persistence: int | None = None  # ``-pm 0|1`` (also ENABLED / DISABLED)
    query_fields: list[str] = field(default_factory=list)  # ``--query-gpu=a,b`` / ``--query-compute-apps=a,b``
    csv_format: list[str] = field(default_factory=list)  # ``--format=csv,noheader,nounits``
    profiles: list[str] = field(default_factory=list)  # ``-cgi`` / ``-cci`` values, as typed
    default_ci: bool = False  # ``-C`` with ``-cgi``
    gi_ids: list[int] | None = None  # ``-gi``
    ci_ids: list[int] | None = None  # ``-ci``
    help: bool = False


# top-level options: name -> (action, takes a value)
_TOP_LEVEL: dict[str, tuple[str, bool]] = {
    "-L": ("list", False),
    "--list-gpus": ("list", False),
    "-mig": ("mig-mode", True),
    "--multi-instance-gpu": ("mig-mode", True),
    "-pm": ("persistence", True),
    "--persistence-mode": ("persistence", True),
    "-r": ("reset", False),
    "--gpu-reset": ("reset", False),
    "--query-gpu": ("query", True),
    "--query-compute-apps": ("query-apps", True),
}

# ``nvidia-smi mig`` options: name -> action
_MIG_ACTIONS: dict[str, str] = {
    "-lgip": "lgip",
    "--list-gpu-instance-profiles": "lgip",
    "-lgipp": "lgipp",
    "--list-gpu-instance-possible-placements": "lgipp",
    "-lgi": "lgi",
    "--list-gpu-instances": "lgi",
    "-lcip": "lcip",
    "--list-compute-instance-profiles": "lcip",
    "-lcipp": "lcipp",
    "--list-compute-instance-possible-placements": "lcipp",
    "-lci": "lci",
    "--list-compute-instances": "lci",
    "-cgi": "cgi",
    "--create-gpu-instance": "cgi",
    "-cci": "cci",
    "--create-compute-instance": "cci",
    "-dci": "dci",
    "--destroy-compute-instance": "dci",
    "-dgi": "dgi",
    "--destroy-gpu-instance": "dgi",
}

_ID_OPTS = ("-i", "--id")
_GI_OPTS = ("-gi", "--gpu-instance-id")
_CI_OPTS = ("-ci", "--compute-instance-id")
_HELP_OPTS = ("-h", "--help")


def split_list(text: str) -> list[str]:
    """``"5,5"`` -> ``["5", "5"]``; ``"MIG 1g.6gb, 14"`` -> ``["MIG 1g.6gb", "14"]`` (tokens as typed, trimmed)."""
    return [t.strip() for t in text.split(",") if t.strip()]


def _int_list(text: str) -> list[int]:
    out: list[int] = []
    for tok in split_list(text):
        if not is_digits(tok):
            raise SmiUsageError(INVALID_COMBINATION)
        out.append(int(tok))
    if not out:
        raise SmiUsageError(INVALID_COMBINATION)
    return out


class _Words:
    """A cursor over argv that understands ``--opt=value``."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = list(argv)
        self.pos = 0

    def more(self) -> bool:
        return self.pos < len(self.argv)

    def next(self) -> tuple[str, str | None]:
        word = self.argv[self.pos]
        self.pos += 1
        if word.startswith("--") and "=" in word:
            name, value = word.split("=", 1)
            return name, value
        return word, None

    def value(self, inline: str | None) -> str:
        if inline is not None:
            return inline
        if not self.more():
            raise SmiUsageError(INVALID_COMBINATION)
        word = self.argv[self.pos]
        self.pos += 1
        return word

    def optional_value(self, inline: str | None) -> str | None:
        """A value only if the next word is not an option (``-cci`` alone vs ``-cci 0,0``)."""
        if inline is not None:
            return inline
        if self.more() and not self.argv[self.pos].startswith("-"):
            word = self.argv[self.pos]
            self.pos += 1
            return word
        return None


def _set_action(args: SmiArgs, action: str) -> None:
    if args.action is not None and args.action != action:
        raise SmiUsageError(INVALID_COMBINATION)
    args.action = action


def parse(argv: list[str]) -> SmiArgs:
    """Parse nvidia-smi's argv (without the program name)."""
    args = SmiArgs()
    words = _Words(argv)
    if words.more() and argv[0] in NOT_IMPLEMENTED and not argv[0].startswith("-"):
        raise not_implemented(argv[0])  # a subcommand: topo, dmon, ...
    if words.more() and argv[0] == "mig":
        args.mig_subcommand = True
        words.pos = 1
    while words.more():
        name, inline = words.next()
        if name in _HELP_OPTS:
            args.help = True
        elif name in _ID_OPTS:
            args.gpu = words.value(inline)
        elif name.startswith("-i") and len(name) > 2 and is_digits(name[2:]):
            args.gpu = name[2:]  # ``-i0``
        elif not args.mig_subcommand and name in _TOP_LEVEL:
            action, takes_value = _TOP_LEVEL[name]
            _set_action(args, action)
            if action == "mig-mode":
                value = words.value(inline).strip()
                if value not in ("0", "1"):
                    raise SmiUsageError(INVALID_COMBINATION)
                args.mig_mode = int(value)
            elif action == "persistence":
                value = words.value(inline).strip().upper()
                if value not in ("0", "1", "ENABLED", "DISABLED"):
                    raise SmiUsageError(INVALID_COMBINATION)
                args.persistence = 1 if value in ("1", "ENABLED") else 0
            elif action in ("query", "query-apps"):
                args.query_fields = split_list(words.value(inline))
        elif not args.mig_subcommand and name == "--format":
            args.csv_format = [t.lower() for t in split_list(words.value(inline))]
        elif args.mig_subcommand and name in _MIG_ACTIONS:
            action = _MIG_ACTIONS[name]
            _set_action(args, action)
            if action == "cgi":
                args.profiles = split_list(words.value(inline))
                if not args.profiles:
                    raise SmiUsageError(INVALID_COMBINATION)
            elif action == "cci":
                value = words.optional_value(inline)
                args.profiles = split_list(value) if value is not None else []
        elif args.mig_subcommand and name in ("-C", "--default-compute-instance"):
            args.default_ci = True
        elif args.mig_subcommand and name in _GI_OPTS:
            args.gi_ids = _int_list(words.value(inline))
        elif args.mig_subcommand and name in _CI_OPTS:
            args.ci_ids = _int_list(words.value(inline))
        elif not args.mig_subcommand and name in NOT_IMPLEMENTED and name.startswith("-"):
            raise not_implemented(name)
        else:
            raise SmiUsageError(INVALID_COMBINATION)
    if args.help:
        return args
    if args.action in ("query", "query-apps") and not args.query_fields:
        raise SmiUsageError(INVALID_COMBINATION)  # ``--query-gpu=`` names no field (nvidia-smi's answer UNCONFIRMED)
    if args.action in ("query", "query-apps") and not args.csv_format:
        raise SmiUsageError("Missing --format option. Please run 'nvidia-smi -h' for help.")
    if args.csv_format and args.csv_format[0] != "csv":
        raise SmiUsageError(INVALID_COMBINATION)
    if args.mig_subcommand and args.action is None:
        raise SmiUsageError(INVALID_COMBINATION)
    if args.default_ci and args.action != "cgi":
        raise SmiUsageError(INVALID_COMBINATION)
    if args.ci_ids is not None and args.action not in ("dci", "lci"):
        raise SmiUsageError(INVALID_COMBINATION)
    return args
