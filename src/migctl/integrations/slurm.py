"""Slurm: GRES for a MIG node, and re-partitioning a node safely (drain, wait, apply, regenerate, restart, resume).

Type names follow Slurm's NVML autodetection (``src/plugins/gpu/nvml/gpu_nvml.c``, ``_handle_mig`` and
``_get_system_gpu_list_nvml``): the GPU name, lower-cased with spaces turned into ``_`` and cut at the first
``-``, then ``_<GI slices>g.<round(MIG memory MiB / 1024)>gb``. Examples: "NVIDIA A100-SXM4-40GB" 3g ->
``nvidia_a100_3g.20gb``; "NVIDIA H100 80GB HBM3" 7g (81152 MiB) -> ``nvidia_h100_80gb_hbm3_7g.79gb``: note
79gb, not NVIDIA's 80gb, because Slurm rounds the MiB figure. With ``AutoDetect=nvml`` a configured Type must
be that name or a substring of it, so the short style (``3g.20gb``) derived by the same rule always matches;
NVIDIA's own profile name does not always (``7g.80gb`` is not a substring of ``..._7g.79gb``).

Each MIG device is ``MultipleFiles=/dev/nvidia<gpu>,/dev/nvidia-caps/nvidia-cap<GI minor>,...<CI minor>``
(``File`` and ``MultipleFiles`` are mutually exclusive, gres.conf(5)); minors come from
``/proc/driver/nvidia-caps/mig-minors`` when present, else from its fixed layout: ``config`` 1, ``monitor`` 2,
then per GPU g, GI i, CI c: ``gpu<g>/gi<i>/access`` = 3 + 135 g + 9 i and ``.../ci<c>/access`` = that + 1 + c
(the last line is ``gpu31/gi14/ci7/access 4322``). Like slurmd, the GPU's NVML index is used for ``<g>``.

Slurm is driven through its CLI only (``scontrol``); no PyPI pyslurm matches Slurm 22.05.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shlex
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BEGIN = "# BEGIN migctl node={node}"
END = "# END migctl node={node}"
MIG_MINORS = Path("/proc/driver/nvidia-caps/mig-minors")


class SlurmError(RuntimeError):
    """A Slurm step failed; the message says which and what state the node was left in."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# ------------------------------------------------------------------------------------------ naming
def slurm_gpu_name(device_name: str) -> str:
    """``gpu_common_underscorify_tolower`` + cut at the first '-' (what gpu_nvml.c does for MIG parents)."""
    return device_name.lower().replace(" ", "_").split("-", 1)[0]


def slurm_mig_suffix(gi_slices: int, memory_mib: int) -> str:
    """``<slices>g.<roundl(MiB/1024)>gb`` (C roundl: halves away from zero)."""
    return f"{gi_slices}g.{int(math.floor(memory_mib / 1024 + 0.5))}gb"


def slurm_type(device_name: str, gi_slices: int, memory_mib: int, style: str = "short") -> str:
    """The GRES type of a MIG device: ``short`` = ``3g.20gb``; ``full`` = exactly what slurmd autodetects."""
    suffix = slurm_mig_suffix(gi_slices, memory_mib)
    return suffix if style == "short" else f"{slurm_gpu_name(device_name)}_{suffix}"


def read_mig_minors(path: Path = MIG_MINORS) -> dict[str, int] | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def cap_minors(gpu: int, gi: int, ci: int, table: dict[str, int] | None = None) -> tuple[int, int]:
    """(GI access minor, CI access minor) for a MIG device (see the module doc)."""
    if table:
        g, c = table.get(f"gpu{gpu}/gi{gi}/access"), table.get(f"gpu{gpu}/gi{gi}/ci{ci}/access")
        if g is not None and c is not None:
            return g, c
    base = 3 + 135 * gpu + 9 * gi
    return base, base + 1 + ci


# ------------------------------------------------------------------------------------------ GRES
@dataclass(frozen=True)
class GresEntry:
    """One GPU GRES: a MIG device (gi/ci set) or a whole GPU with MIG off."""

    gpu: int
    type: str
    files: tuple[str, ...]
    uuid: str
    gi: int | None = None
    ci: int | None = None
    profile: str = ""

    def conf_line(self, node_name: str) -> str:
        key = "MultipleFiles" if len(self.files) > 1 else "File"
        what = f"GPU {self.gpu} GI {self.gi} CI {self.ci} {self.profile} {self.uuid}" if self.gi is not None else \
            f"GPU {self.gpu} {self.uuid} (MIG off)"
        return f"NodeName={node_name} Name=gpu Type={self.type} {key}={','.join(self.files)}  # {what}"


def gres_entries(node: Any, style: str = "short", dev_prefix: str = "/dev", minors: dict[str, int] | None = None,
                 include_non_mig: bool = True) -> list[GresEntry]:
    """GRES entries for the node's current layout, in slurmd's order (GPU index, then MIG index)."""
    table = minors if minors is not None else read_mig_minors()
    dev = dev_prefix.rstrip("/")
    out: list[GresEntry] = []
    for g in node.gpus():
        gpu_file = f"{dev}/nvidia{g.index}"
        mig_on = g.mig_capable() and g.mig_mode()[0] == 1
        if not mig_on:
            if include_non_mig:
                t = g.name.lower().replace(" ", "_")
                out.append(GresEntry(gpu=g.index, type=t, files=(gpu_file,), uuid=g.uuid))
            continue
        for d in g.mig_devices():
            gi_minor, ci_minor = cap_minors(g.index, d.gi_id, d.ci_id, table)
            files = (gpu_file, f"{dev}/nvidia-caps/nvidia-cap{gi_minor}", f"{dev}/nvidia-caps/nvidia-cap{ci_minor}")
            out.append(GresEntry(gpu=g.index, type=slurm_type(g.name, d.gi_slices, d.memory_mib, style), files=files,
                                 uuid=d.uuid, gi=d.gi_id, ci=d.ci_id, profile=d.profile_name))
    return out


def gres_value(entries: list[GresEntry]) -> str:
    """The node's ``Gres=`` value, e.g. ``gpu:3g.40gb:1,gpu:1g.10gb:2`` (types in first-seen order)."""
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.type] = counts.get(e.type, 0) + 1
    return ",".join(f"gpu:{t}:{n}" for t, n in counts.items())


def gres_block(node_name: str, entries: list[GresEntry], autodetect: str = "nvml") -> str:
    """This node's managed block of gres.conf."""
    lines = [BEGIN.format(node=node_name),
             "# generated by `migctl slurm gres` from the node's MIG layout; edits inside this block are replaced",
             f"NodeName={node_name} AutoDetect={autodetect}"]
    lines += [e.conf_line(node_name) for e in entries]
    lines.append(END.format(node=node_name))
    return "\n".join(lines) + "\n"


def replace_block(text: str, node_name: str, block: str) -> str:
    """``text`` with this node's managed block replaced (appended when absent)."""
    begin, end = BEGIN.format(node=node_name), END.format(node=node_name)
    pat = re.compile(rf"^{re.escape(begin)}\n.*?^{re.escape(end)}\n?", re.S | re.M)
    if pat.search(text):
        return pat.sub(lambda _m: block, text, count=1)
    return (text if not text or text.endswith("\n") else text + "\n") + block


# ------------------------------------------------------------------------------------------ Slurm line syntax
@dataclass(frozen=True)
class Token:
    """A ``key=value`` word of a slurm.conf line: its physical line and character span (value may be quoted)."""

    line: int
    start: int
    end: int
    key: str
    value: str


def _code_end(line: str) -> int:
    """Where the comment of a physical line starts (``#`` outside double quotes, not escaped), else its length."""
    quoted = False
    i = 0
    while i < len(line):
        c = line[i]
        if c == "\\" and i + 1 < len(line):
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == "#" and not quoted:
            return i
        i += 1
    return len(line)


def _continued(code: str) -> bool:
    """A physical line continues on the next one when its code part ends in a backslash (slurm.conf(5))."""
    return code.rstrip(" \t").endswith("\\") and not code.rstrip(" \t").endswith("\\\\")


def logical_lines(lines: list[str]) -> list[tuple[int, int]]:
    """(first, last) physical line index of each logical line (backslash continuations joined)."""
    out = []
    i = 0
    while i < len(lines):
        j = i
        while j < len(lines) - 1 and _continued(lines[j][:_code_end(lines[j])]):
            j += 1
        out.append((i, j))
        i = j + 1
    return out


def tokens(lines: list[str], first: int, last: int) -> list[Token]:
    """The ``key=value`` words of one logical line (comments skipped, quotes kept in the span, unquoted value)."""
    out = []
    for n in range(first, last + 1):
        line = lines[n]
        code = line[:_code_end(line)]
        if n < last:
            code = code.rstrip(" \t")[:-1]  # drop the continuation backslash
        i = 0
        while i < len(code):
            if code[i].isspace():
                i += 1
                continue
            j = i
            quoted = False
            while j < len(code) and (quoted or not code[j].isspace()):
                if code[j] == '"':
                    quoted = not quoted
                j += 1
            word = code[i:j]
            key, _, value = word.partition("=")
            out.append(Token(n, i, j, key, value.replace('"', "")))
            i = j
    return out


def set_node_gres(slurm_conf_text: str, node_name: str, gres: str) -> str:
    """Set ``Gres=`` on the ``NodeName=<node_name>`` line of slurm.conf; everything else is kept byte for byte.

    Slurm's line syntax is followed: ``#`` comments (a ``Gres=`` in a comment is neither read nor written),
    backslash continuations (a ``Gres=`` on any physical line of the logical line is found), double-quoted
    values (kept as they are). An existing ``Gres=`` is replaced in place (any further one removed); else the
    new one goes right after the ``NodeName=`` word, before any comment.
    """
    lines = slurm_conf_text.splitlines(keepends=True)
    bare = [ln.rstrip("\r\n") for ln in lines]
    found = False
    edits: list[tuple[int, int, int, str]] = []  # (line, start, end, replacement), applied right to left
    for first, last in logical_lines(bare):
        toks = tokens(bare, first, last)
        if not toks or toks[0].key.lower() != "nodename" or toks[0].value != node_name:
            continue
        if found:
            raise SlurmError(f"slurm.conf has more than one 'NodeName={node_name}' line; refusing to guess", 2)
        found = True
        head = toks[0]
        olds = [t for t in toks[1:] if t.key.lower() == "gres"]
        for k, t in enumerate(olds):
            if k == 0 and gres:
                edits.append((t.line, t.start, t.end, f"Gres={gres}"))  # in place
                continue
            s = t.start  # remove the word and the blanks before it
            while s > 0 and bare[t.line][s - 1] in " \t":
                s -= 1
            edits.append((t.line, s, t.end, ""))
        if gres and not olds:
            edits.append((head.line, head.end, head.end, f" Gres={gres}"))
    if not found:
        raise SlurmError(f"slurm.conf has no line 'NodeName={node_name} ...' (node lists such as n[1-4] are not "
                         "edited; give that node its own NodeName line or use --print)", 2)
    for n, s, e, rep in sorted(edits, key=lambda x: (x[0], -x[1])):
        ending = lines[n][len(bare[n]):]
        bare[n] = bare[n][:s] + rep + bare[n][e:]
        lines[n] = bare[n] + ending
    return "".join(lines)


# ------------------------------------------------------------------------------------------ safe file writes
def _target(path: Path) -> Path:
    """The file a path names, symlinks followed (the link itself stays a link)."""
    return Path(os.path.realpath(path))


def _atomic_write(path: Path, text: str, like: os.stat_result | None = None) -> None:
    """Replace ``path``'s target atomically: an unpredictable temp file created exclusively (O_EXCL, mkstemp)
    next to the target, with the target's owner and mode (0644 for a new file), fsynced, then renamed."""
    import tempfile

    target = _target(path)
    st = like
    if st is None:
        try:
            st = os.stat(target)
        except FileNotFoundError:
            st = None
    fd, tmp = tempfile.mkstemp(dir=str(target.parent), prefix=f".{target.name}.", suffix=".migctl-tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), (st.st_mode & 0o7777) if st else 0o644)
            if st is not None and (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                os.fchown(f.fileno(), st.st_uid, st.st_gid)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _trusted_link(path: Path, what: str) -> None:
    """A symlink is followed only when root or this user owns it: one planted by another user (in a shared or
    world-writable directory) could point the edit at any file this (usually root) process can write."""
    try:
        st = os.lstat(path)
    except OSError:
        return
    if stat.S_ISLNK(st.st_mode) and st.st_uid not in (0, os.geteuid()):
        raise SlurmError(f"{what} {path} is a symlink owned by UID {st.st_uid}; refusing to follow it (give the "
                         "file it points to, after checking it)", 2)


_GRES_LINE = re.compile(r"^\s*(#|$|[A-Za-z][A-Za-z0-9]*=|Include\s)")


def _check_gres_conf(text: str, path: Path) -> None:
    """Refuse to edit a file that is not a gres.conf (every line a comment, blank, or ``Key=Value`` words): a
    wrong --gres-conf, or a symlink to another file, would otherwise get a block appended and be rewritten."""
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        if n > 1 and lines[n - 2].rstrip().endswith("\\"):
            continue  # a continued line
        if not _GRES_LINE.match(line):
            from migctl.inputs import printable

            raise SlurmError(f"gres.conf {path}: line {n} is not gres.conf syntax ({printable(line, 60)}); expected "
                             "Key=Value words, comments or blank lines; refusing to edit it", 2)


def _read_conf(path: Path, what: str) -> str:
    from migctl.inputs import InputError, read_text

    try:
        return read_text(path, what)
    except InputError as e:
        raise SlurmError(str(e), 2) from None


@dataclass
class ConfEdit:
    """A validated change of one Slurm file: old text (None: file absent), new text, target, backup path."""

    path: Path
    old: str | None
    new: str

    @property
    def target(self) -> Path:
        return _target(self.path)

    @property
    def backup(self) -> Path:
        return self.target.with_name(self.target.name + ".migctl.bak")


def plan_gres_edits(node: Any, node_name: str, gres_conf: Path, slurm_conf: Path | None, style: str = "short",
                    autodetect: str = "nvml", dev_prefix: str = "/dev") -> tuple[list[ConfEdit], str, str]:
    """Read and validate everything, change nothing: (edits, gres.conf block, Gres= value)."""
    entries = gres_entries(node, style=style, dev_prefix=dev_prefix)
    block, value = gres_block(node_name, entries, autodetect), gres_value(entries)
    edits = []
    gtarget = _target(gres_conf)
    if not gtarget.parent.is_dir():
        raise SlurmError(f"gres.conf {gres_conf}: directory {gtarget.parent} does not exist", 2)
    _trusted_link(gres_conf, "gres.conf")
    old = _read_conf(gres_conf, "gres.conf") if gtarget.exists() else None
    if old is not None:
        _check_gres_conf(old, gres_conf)
    edits.append(ConfEdit(gres_conf, old, replace_block(old or "", node_name, block)))
    if slurm_conf is not None:
        _trusted_link(slurm_conf, "slurm.conf")
        if not _target(slurm_conf).exists():
            raise SlurmError(f"slurm.conf {slurm_conf}: no such file (give --slurm-conf or --no-slurm-conf)", 2)
        old = _read_conf(slurm_conf, "slurm.conf")
        edits.append(ConfEdit(slurm_conf, old, set_node_gres(old, node_name, value)))
    for e in edits:
        if not os.access(e.target.parent, os.W_OK):
            raise SlurmError(f"cannot write {e.path}: directory {e.target.parent} is not writable", 2)
    return edits, block, value


def commit_edits(edits: list[ConfEdit]) -> None:
    """Write every edit (backups first, kept as ``<file>.migctl.bak``); when one fails, restore those done."""
    for e in edits:
        if e.old is not None:
            _atomic_write(e.backup, e.old)
    done: list[ConfEdit] = []
    try:
        for e in edits:
            if e.old != e.new:
                _atomic_write(e.path, e.new)
                done.append(e)
    except OSError as err:
        for e in reversed(done):
            with contextlib.suppress(OSError):
                if e.old is None:
                    e.target.unlink()
                else:
                    _atomic_write(e.path, e.old)
        raise SlurmError(f"cannot write {e.path}: {err.strerror or err}; earlier files restored") from None


def restore_edits(edits: list[ConfEdit]) -> None:
    """Put every file back as it was before :func:`commit_edits`."""
    for e in edits:
        with contextlib.suppress(OSError):
            if e.old is None:
                e.target.unlink()
            else:
                _atomic_write(e.path, e.old)


def write_gres(node: Any, node_name: str, gres_conf: Path, slurm_conf: Path | None, style: str = "short",
               autodetect: str = "nvml", dev_prefix: str = "/dev") -> tuple[str, str]:
    """Write this node's block into gres.conf and its ``Gres=`` into slurm.conf. Returns (block, gres value).

    Both files are read and validated before either is written; each is replaced atomically (symlinks
    followed, owner and mode kept) after a backup ``<file>.migctl.bak``.
    """
    edits, block, value = plan_gres_edits(node, node_name, gres_conf, slurm_conf, style, autodetect, dev_prefix)
    commit_edits(edits)
    return block, value


# ------------------------------------------------------------------------------------------ scontrol
def scontrol(*args: str, timeout: float = 30) -> str:
    try:
        p = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SlurmError("scontrol not found: install the Slurm client (Debian: slurm-client)", 2) from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"scontrol {' '.join(args)} timed out after {timeout:g}s") from None
    if p.returncode != 0:
        raise SlurmError(f"scontrol {' '.join(args)}: {(p.stderr or p.stdout).strip()}")
    return p.stdout


def node_info(node_name: str) -> dict[str, str]:
    """``scontrol -o show node NODE`` as a dict (State, Reason, Gres, ...)."""
    out = scontrol("-o", "show", "node", node_name).strip()
    info: dict[str, str] = {}
    for m in re.finditer(r"(\w+)=(.*?)(?=\s+\w+=|$)", out):
        info[m.group(1)] = m.group(2).strip()
    return info


def state_flags(state: str) -> set[str]:
    return set(state.upper().replace("*", "").split("+"))


def drain(node_name: str, reason: str) -> None:
    scontrol("update", f"nodename={node_name}", "state=drain", f"reason={reason}")


def resume(node_name: str) -> None:
    scontrol("update", f"nodename={node_name}", "state=resume")


def wait_until(pred: Callable[[dict[str, str]], bool], node_name: str, timeout: float, what: str) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    last: dict[str, str] = {}
    while True:
        try:
            last = node_info(node_name)
            if pred(last):
                return last
        except SlurmError as e:
            last = {"State": f"unreachable ({e})"}
        if time.monotonic() >= deadline:
            raise SlurmError(f"node {node_name} not {what} after {timeout:g}s "
                             f"(State={last.get('State', '?')} Reason={last.get('Reason', '-')})")
        time.sleep(0.2)


def drained_idle(info: dict[str, str]) -> bool:
    """Drained with no job left: State IDLE+DRAIN (scontrol's spelling of 'drained')."""
    f = state_flags(info.get("State", ""))
    return "DRAIN" in f and "IDLE" in f and not f & {"ALLOCATED", "MIXED", "COMPLETING", "INVAL", "DOWN",
                                                      "NOT_RESPONDING"}


def is_idle(info: dict[str, str]) -> bool:
    f = state_flags(info.get("State", ""))
    return "IDLE" in f and not f & {"DRAIN", "INVAL", "DOWN", "NOT_RESPONDING"}


def _run_shell(cmd: str, what: str, timeout: float) -> None:
    """A restart command; a daemon it leaves running (``slurmd -D &``) is not waited for (was: a timeout after
    a restart that had worked, the reconfiguration failed and the node left drained)."""
    from migctl.proc import run_or_raise

    run_or_raise(cmd, timeout, f"{what} ({cmd})", SlurmError, shell=True)


@dataclass
class ReconfigureOptions:
    """How to reach and restart Slurm for :func:`reconfigure`."""

    gres_conf: Path
    slurm_conf: Path | None
    style: str = "short"
    autodetect: str = "nvml"
    dev_prefix: str = "/dev"
    # Slurm 22.05 cannot change GPU types/counts with `scontrol reconfigure` alone (the node goes INVAL with
    # "gres/gpu count changed"): slurmctld and slurmd must restart. Defaults suit a node running both
    # daemons under systemd; on a cluster give e.g. --slurmctld-restart 'ssh head systemctl restart slurmctld'.
    slurmctld_restart: str = "systemctl restart slurmctld"
    slurmd_restart: str = "systemctl restart slurmd"
    drain_timeout: float = 3600.0
    timeout: float = 120.0
    force: bool = False


def reconfigure(node: Any, node_name: str, config: str | Path, label: str, opts: ReconfigureOptions,
                log: Callable[[str], None] = lambda s: None) -> None:
    """Drain ``node_name``, wait for its jobs, apply ``label`` of ``config``, regenerate GRES, restart, resume.

    Everything that can be checked is checked before the drain: Slurm knows the node, slurm.conf has its own
    ``NodeName=`` line, gres.conf's directory is writable, the config file and label are valid for this node.
    Any failure while the MIG layout is still the one Slurm knows (the drain wait, an apply that was refused
    or rolled back) resumes the node (unless it was drained before migctl started). A failure after the layout
    changed (writing GRES, restarts, registration) leaves it drained with ``Reason=migctl: ... failed: <why>``,
    since resuming would offer jobs devices that no longer exist. Either way :class:`SlurmError` is raised.
    """
    from migctl.config import load_config

    reason = f"migctl: reconfiguring to {label}"
    # ---- validate everything first
    try:
        load_config(config).resolve(label, _live(node))  # type: ignore[arg-type]
    except Exception as e:  # a UserError from the config loader: one line, nothing touched
        raise SlurmError(f"{e}; nothing was changed", getattr(e, "exit_code", 2)) from None
    if opts.slurm_conf is not None:
        set_node_gres(_read_conf(opts.slurm_conf, "slurm.conf"), node_name, "gpu:check:1")
    gdir = _target(opts.gres_conf).parent
    if not gdir.is_dir() or not os.access(gdir, os.W_OK):
        raise SlurmError(f"gres.conf {opts.gres_conf}: directory {gdir} missing or not writable; nothing was changed", 2)
    info = node_info(node_name)  # fails early if Slurm or the node is unknown
    was_drained = "DRAIN" in state_flags(info.get("State", "")) and not info.get("Reason", "").startswith("migctl")
    if was_drained:
        log(f"note: {node_name} was already drained ({info.get('Reason', '')}); it stays drained on failure")
    drain(node_name, reason)
    log(f"drained {node_name}; waiting for its jobs to finish")
    layout_changed = False
    edits: list[ConfEdit] = []
    try:
        wait_until(drained_idle, node_name, opts.drain_timeout, "drained and idle")
        log(f"applying {label} from {config}")
        before = [g.layout() for g in _live(node)]
        try:
            _apply(node, config, label, opts.force)
        finally:
            layout_changed = [g.layout() for g in _live(node)] != before
        edits, block, value = plan_gres_edits(node, node_name, opts.gres_conf, opts.slurm_conf, opts.style,
                                              opts.autodetect, opts.dev_prefix)
        commit_edits(edits)
        log(f"wrote {opts.gres_conf} and Gres={value} (backups: *.migctl.bak)")
        _run_shell(opts.slurmctld_restart, "restarting slurmctld", opts.timeout)
        _run_shell(opts.slurmd_restart, "restarting slurmd", opts.timeout)
        log("restarted slurmctld and slurmd; waiting for the node to register")
        got = wait_until(drained_idle, node_name, opts.timeout, "registered (IDLE+DRAIN) with its new GRES")
        want = sorted(value.split(",")) if value else []
        have = sorted(x for x in re.split(r",(?![^()]*\))", got.get("Gres", "")) if x and x != "(null)")
        have = [re.sub(r"\(.*\)$", "", x) for x in have]
        if want and have != want:
            raise SlurmError(f"slurmctld reports Gres={got.get('Gres')} for {node_name}, expected {value}")
        resume(node_name)
        wait_until(is_idle, node_name, opts.timeout, "resumed (IDLE)")
        log(f"{node_name} resumed with Gres={value}")
    except BaseException as e:
        why = str(e).replace("\n", " ")[:300] or e.__class__.__name__
        left = "left drained"
        if not layout_changed:
            restore_edits(edits)
            if not was_drained:
                try:
                    resume(node_name)
                    left = "layout unchanged; node resumed"
                except SlurmError as e2:
                    left = f"layout unchanged; resuming failed ({e2})"
        if left == "left drained" or was_drained:
            with contextlib.suppress(SlurmError):
                drain(node_name, f"migctl: reconfigure to {label} failed: {why}")
        if isinstance(e, SlurmError):
            raise SlurmError(f"{e}; {left}") from None
        if isinstance(e, Exception):
            raise SlurmError(f"apply of {label} failed: {why}; {left}", getattr(e, "exit_code", 1)) from None
        raise


def _live(node: Any) -> Any:
    from migctl.reconcile.live import read_node

    return read_node(node)


def _apply(node: Any, config: str | Path, label: str, force: bool) -> None:
    """Apply through the reconciler (``migctl.reconcile.apply_config``, imported lazily)."""
    from migctl import reconcile

    result = reconcile.apply_config(str(config), label, node=node, force=force)
    err = getattr(result, "error", None)
    if err:
        raise SlurmError(f"apply of {label} failed: {err}")


def shell_join(args: list[str]) -> str:
    return shlex.join(args)
