"""Reading user-supplied files safely: bounded size, time, YAML alias expansion and nesting depth.

Every file migctl reads on a user's behalf (configs for ``validate``/``apply -f``, hooks ``-k``, ``restore -f``,
``batch``, ``k8s export``, plan files, the simulator's state and the apply journal) goes through here:

* only regular files (a FIFO, a device such as ``/dev/zero``, a directory or a socket is refused at once:
  the file is opened non-blocking and checked with ``fstat`` before anything is read);
* at most :data:`MAX_BYTES` bytes (the file is read up to the limit plus one byte, never further);
* UTF-8 text;
* YAML with at most :data:`MAX_ALIASES` aliases, :data:`MAX_NODES` nodes once aliases are expanded, and
  :data:`MAX_DEPTH` levels of nesting, checked while the document is composed, before anything walks it;
* JSON whose nesting stays within Python's recursion limit.

Errors are :class:`InputError` (a :class:`~migctl.errors.UserError`): one line naming the file and the limit.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
from pathlib import Path
from typing import Any

from migctl.errors import UserError

MAX_BYTES = 16 * 1024 * 1024  # 16 MiB: far above any real config, plan, jobs file or journal
MAX_ALIASES = 1000
MAX_NODES = 100_000  # YAML nodes after alias expansion (the largest real config has a few thousand)
MAX_DEPTH = 64
MAX_PRIORITY = 1_000_000  # job priorities run from -MAX_PRIORITY to MAX_PRIORITY (submit --priority, batch files)


class InputError(UserError):
    """A file that cannot or must not be read: one line, exit 2."""


def read_bytes(path: str | Path, what: str = "file", limit: int = MAX_BYTES) -> bytes:
    """The content of the regular file ``path`` (at most ``limit`` bytes), or an :class:`InputError`."""
    p = os.fsdecode(os.fspath(path))
    label = printable(p)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InputError(f"{what} {label}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{what} {label}: is a directory (expected a regular file)") from None
    except OSError as e:
        raise InputError(f"{what} {label}: cannot open ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                    else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                    else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
            raise InputError(f"{what} {label}: is {kind} (expected a regular file)")
        if st.st_size > limit:
            raise InputError(f"{what} {label}: {st.st_size} bytes is too large (limit {limit} bytes)")
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise InputError(f"{what} {label}: larger than the limit of {limit} bytes")
        return b"".join(chunks)
    except OSError as e:
        raise InputError(f"{what} {label}: cannot read ({e.strerror})") from None
    finally:
        os.close(fd)


def read_text(path: str | Path, what: str = "file", limit: int = MAX_BYTES) -> str:
    """:func:`read_bytes` decoded as UTF-8."""
    data = read_bytes(path, what, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{what} {printable(os.fsdecode(os.fspath(path)))}: not UTF-8 text "
                         f"(invalid byte at offset {e.start})") from None


def printable(text: Any, limit: int = 200) -> str:
    """``text`` with control characters, lone surrogates (undecodable bytes) and escapes made visible."""
    s = str(text)
    out = []
    for ch in s:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:  # surrogateescape'd byte
            out.append(f"\\x{o - 0xDC00:02x}")
        elif o < 0x20 or o == 0x7F or 0x80 <= o < 0xA0 or 0xD800 <= o <= 0xDFFF or o in (0x2028, 0x2029):
            out.append(repr(ch)[1:-1] if o < 0x100 else f"\\u{o:04x}")
        else:
            out.append(ch)
    r = "".join(out)
    return r if len(r) <= limit else r[: limit - 3] + "..."


# ------------------------------------------------------------------------------------------------- YAML
def _bounded_loader(file: str) -> Any:
    """A SafeLoader subclass that counts aliases, expanded nodes and nesting depth while composing."""
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        def __init__(self, stream: Any) -> None:
            super().__init__(stream)
            self._depth = 0
            self._aliases = 0
            self._sizes: dict[int, int] = {}
            self._total = 0  # nodes composed so far, an alias counting as the nodes it repeats

        def _mark(self) -> str:
            mark = self.peek_event().start_mark if self.check_event() else None
            return f"{file}:{mark.line + 1}" if mark is not None else file

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                self._aliases += 1
                if self._aliases > MAX_ALIASES:
                    raise InputError(f"{self._mark()}: more than {MAX_ALIASES} YAML aliases")
                node = super().compose_node(parent, index)
                self._count(self._size(node))
                return node
            self._count(1)  # (as each node starts: a long flat document is refused early, not once parsed)
            self._depth += 1
            try:
                if self._depth > MAX_DEPTH:
                    raise InputError(f"{self._mark()}: YAML nested deeper than {MAX_DEPTH} levels")
                node = super().compose_node(parent, index)
            finally:
                self._depth -= 1
            size = 1 + sum(self._size(c) for c in _children(node))
            self._sizes[id(node)] = size
            return node

        def _count(self, n: int) -> None:
            self._total += n
            if self._total > MAX_NODES:
                raise InputError(f"{self._mark()}: YAML has more than {MAX_NODES} nodes (aliases expanded); refused")

        def _size(self, node: Any) -> int:
            return self._sizes.get(id(node), 1)

        def compose_document(self) -> Any:
            self._sizes = {}
            self._total = 0
            return super().compose_document()

    return BoundedLoader


def _children(node: Any) -> list[Any]:
    import yaml

    if isinstance(node, yaml.MappingNode):
        return [x for kv in node.value for x in kv]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def yaml_loader(text: str, file: str) -> Any:
    """A bounded loader over ``text`` (use ``check_node``/``get_node``/``construct_document``, then ``dispose``)."""
    return _bounded_loader(file)(text)


def load_yaml(text: str, file: str) -> Any:
    """The first YAML document of ``text`` (None when empty), within the limits; YAML errors are raised as is."""
    loader = yaml_loader(text, file)
    try:
        try:
            return loader.get_single_data()
        except RecursionError:
            raise InputError(f"{file}: YAML nested too deeply") from None
    finally:
        loader.dispose()


def load_yaml_file(path: str | Path, what: str = "file", limit: int = MAX_BYTES) -> Any:
    """Read ``path`` safely (a regular file of at most ``limit`` bytes) and parse it as YAML; any problem is
    one :class:`InputError` line."""
    label = printable(os.fsdecode(os.fspath(path)))
    return load_yaml_text(read_text(path, what, limit), f"{what} {label}", label)


def load_yaml_text(text: str, what: str, label: str = "") -> Any:
    """:func:`load_yaml` of ``text`` (from ``what``, e.g. ``ConfigMap ns/name``; ``label`` names it in the
    limits' messages); any problem is one :class:`InputError` line."""
    import yaml

    try:
        return load_yaml(text, label or what)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise InputError(f"{what}:{line}: invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise InputError(f"{what}: invalid YAML: {' '.join(str(e).split())[:200]}") from None


def is_digits(text: str) -> bool:
    """Only ASCII decimal digits, at least one: ``str.isdigit`` (and regex ``\\d``) also take other scripts'
    digits (``'١'``, ``'０'``), and ``int()`` reads them."""
    return text.isascii() and text.isdigit()


def decimal_text(text: str) -> bool:
    """A number in plain ASCII decimal notation (``12``, ``-0.5``, ``1e3``): ``float()`` also reads ``1_0``,
    ``inf``, ``nan`` and other scripts' digits."""
    import re

    return re.fullmatch(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?", text) is not None


def gpu_indices(text: str) -> tuple[int, ...] | None:
    """``"0,1"`` (``--gpu``, a batch file's ``gpu``) as GPU indices, each once and in order; None when a part
    is not a GPU index (ASCII digits, at most 4)."""
    parts = [x.strip() for x in text.split(",")]
    if not all(is_digits(x) and len(x) <= 4 for x in parts):
        return None
    return tuple(sorted({int(x) for x in parts}))


def finite_number(value: Any) -> bool:
    """A JSON number that is a real quantity: an int or float, not a bool, not inf or nan."""
    return type(value) in (int, float) and math.isfinite(value)


def load_json(text: str, file: str) -> Any:
    """``json.loads`` (the C decoder bounds nesting by the recursion limit); errors are one :class:`InputError` line."""
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{file}:{e.lineno}: invalid JSON: {e.msg}") from None
    except RecursionError:
        raise InputError(f"{file}: JSON nested too deeply") from None


# ------------------------------------------------------------------------------------------------ output
def check_writable(path: str | Path, what: str = "file") -> Path:
    """``path`` as a Path if a file can be written there, checked before any work is done (nothing is
    created); else one :class:`InputError` line: a missing or read-only directory, a directory or something
    other than a regular file or a symbolic link at ``path`` (whether a link is replaced or refused is the
    writer's choice), a name too long for the file system."""
    p = Path(os.fsdecode(os.fspath(path)))
    label = printable(str(p))
    parent = p.parent
    try:
        if not parent.is_dir():
            raise InputError(f"cannot write {what} {label}: directory {printable(str(parent))} does not exist")
        st = os.lstat(p) if os.path.lexists(p) else None
        if st is None:
            limit = os.pathconf(parent, "PC_NAME_MAX")
            if len(os.fsencode(p.name)) > limit:
                raise InputError(f"cannot write {what} {label}: file name longer than {limit} bytes")
    except OSError as e:
        raise InputError(f"cannot write {what} {label}: {e.strerror or e}") from None
    if st is not None and (stat.S_ISDIR(st.st_mode) or (stat.S_ISLNK(st.st_mode) and os.path.isdir(p))):
        raise InputError(f"cannot write {what} {label}: is a directory")
    if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):  # (a link: the writer's call)
        raise InputError(f"cannot write {what} {label}: not a regular file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {what} {label}: directory {printable(str(parent))} is not writable")
    return p


def write_text_file(path: str | Path, text: str, what: str = "file", mode: int = 0o600) -> None:
    """Write ``text`` to ``path`` atomically: an unpredictable temp file created exclusively next to it, renamed
    (private, 0600, unless ``mode`` says otherwise; the umask still applies).

    A missing directory, a directory as ``path`` or a permission problem is one :class:`InputError` line
    (:func:`check_writable`).
    """
    import tempfile

    p = check_writable(path, what)
    label = printable(str(p))
    parent = p.parent
    try:
        fd, tmp = tempfile.mkstemp(dir=str(parent), prefix=f".{p.name[:40]}.", suffix=".tmp")
    except OSError as e:
        raise InputError(f"cannot write {what} {label}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode & ~_umask())
        os.replace(tmp, p)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise InputError(f"cannot write {what} {label}: {e.strerror}") from None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
