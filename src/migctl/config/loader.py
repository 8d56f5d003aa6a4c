"""Load mig-parted v1 config files (and hooks files) with line numbers for every error.

A file may be a plain config, a Kubernetes ConfigMap (``data: {config.yaml: "..."}``), or a multi-document
manifest holding such a ConfigMap; the ``config.yaml`` value is unwrapped and its line numbers are
reported relative to the outer file. Errors read ``FILE:LINE: <what> (valid: ...)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migctl.errors import UserError

Path_ = tuple[Any, ...]

FILTER_RE = re.compile(r"^0x([0-9a-fA-F]{4})([0-9a-fA-F]{4})?(?::0x([0-9a-fA-F]{8}))?$")
PROFILE_RE = re.compile(r"^(?:(\d+)c\.)?(\d+)g\.(\d+)gb(\+me\.all|\+me|\+gfx|-me)?$", re.ASCII)


class ConfigError(UserError):
    """An invalid config or hooks file: ``FILE:LINE: what (valid: ...)``; exit code 2."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message, exit_code)


@dataclass
class YamlDoc:
    """Parsed YAML data plus the 1-based line of every key and value, by path."""

    file: str
    data: Any
    key_lines: dict[Path_, int] = field(default_factory=dict)
    value_lines: dict[Path_, int] = field(default_factory=dict)

    def line(self, path: Path_, key: bool = False) -> int:
        """The line of ``path`` (its key when ``key``), falling back to the nearest known ancestor."""
        p = tuple(path)
        while True:
            table = self.key_lines if key else self.value_lines
            if p in table:
                return table[p]
            if p in self.value_lines:
                return self.value_lines[p]
            if not p:
                return 1
            p = p[:-1]

    def where(self, path: Path_, key: bool = False) -> str:
        return f"{self.file}:{self.line(path, key)}"


def _yaml() -> Any:
    import yaml

    return yaml


def _index_node(node: Any, path: Path_, doc: YamlDoc, offset: int) -> None:
    """Record lines of every mapping key / value below ``node``; reject duplicate keys like mig-parted."""
    yaml = _yaml()
    doc.value_lines[path] = node.start_mark.line + 1 + offset
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else str(k.start_mark)
            if key in seen:
                raise ConfigError(f"{doc.file}:{k.start_mark.line + 1 + offset}: duplicate key {key!r}")
            seen.add(key)
            doc.key_lines[path + (key,)] = k.start_mark.line + 1 + offset
            _index_node(v, path + (key,), doc, offset)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _index_node(v, path + (i,), doc, offset)


def _documents(text: str, file: str, offset: int) -> Iterator[tuple[Any, Any]]:
    """(node, data) for every YAML document in ``text``."""
    yaml = _yaml()
    from migctl.inputs import yaml_loader

    try:
        loader = yaml_loader(text, file)
    except yaml.YAMLError as e:
        raise ConfigError(f"{file}:1: invalid YAML: {str(e).splitlines()[0]}") from None
    try:
        while loader.check_node():
            node = loader.get_node()
            yield node, loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = (mark.line + 1 + offset) if mark is not None else 1 + offset
        raise ConfigError(f"{file}:{line}: invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{file}:{1 + offset}: invalid YAML: {' '.join(str(e).split())[:200]}") from None
    except RecursionError:
        raise ConfigError(f"{file}: YAML nested too deeply") from None
    finally:
        loader.dispose()


def parse_yaml(text: str, file: str = "<config>", offset: int = 0, unwrap: bool = True) -> YamlDoc:
    """Parse ``text``; with ``unwrap``, a ConfigMap (or a manifest holding one) yields its ``config.yaml``."""
    yaml = _yaml()
    docs = [(n, d) for n, d in _documents(text, file, offset) if n is not None]
    if not docs:
        raise ConfigError(f"{file}:1: empty file (expected a mig-parted config with version: v1)")
    if unwrap:
        for node, data in docs:
            if isinstance(data, dict) and data.get("kind") == "ConfigMap":
                cfg = (data.get("data") or {}).get("config.yaml") if isinstance(data.get("data"), dict) else None
                if isinstance(cfg, str):
                    # find the scalar node of data.config.yaml for its line
                    inner_offset = offset
                    for k, v in node.value:
                        if getattr(k, "value", None) == "data" and isinstance(v, yaml.MappingNode):
                            for k2, v2 in v.value:
                                if getattr(k2, "value", None) == "config.yaml":
                                    block = getattr(v2, "style", None) in ("|", ">")
                                    inner_offset = v2.start_mark.line + offset + (1 if block else 0)
                    return parse_yaml(cfg, file, inner_offset, unwrap=False)
        if len(docs) > 1 or (isinstance(docs[0][1], dict) and "kind" in docs[0][1]):
            kinds = ", ".join(str(d.get("kind")) for _, d in docs if isinstance(d, dict))
            raise ConfigError(
                f"{file}:1: no mig-parted config found (documents: {kinds or 'none'}; "
                "valid: a v1 config, or a ConfigMap with data key config.yaml)"
            )
    node, data = docs[0]
    doc = YamlDoc(file=file, data=data)
    _index_node(node, (), doc, offset)
    return doc


def read_text(path: str | Path) -> str:
    """A config or hooks file: a regular file of bounded size, UTF-8 (see :mod:`migctl.inputs`)."""
    from migctl import inputs

    try:
        return inputs.read_text(path, "config file")
    except inputs.InputError as e:
        raise ConfigError(str(e)) from None


# ------------------------------------------------------------------------------------------ pydantic errors
def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _data_path(data: Any, loc: tuple[Any, ...]) -> tuple[Path_, Any, bool]:
    """Follow pydantic's ``loc`` through ``data``: (path that exists, value there, whole loc found)."""
    cur = data
    path: list[Any] = []
    for part in loc:
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
            path.append(part)
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            cur = cur[part]
            path.append(part)
        elif isinstance(part, str) and ("[" in part or part.startswith(("literal", "str", "list", "dict", "int"))):
            continue  # union member tags such as "literal['all']" or "list[int]"
        else:
            return tuple(path), cur, False
    return tuple(path), cur, True


def pydantic_message(doc: YamlDoc, err: dict[str, Any], context: str) -> str:
    """One pydantic error as ``FILE:LINE: what (valid: ...)``."""
    from migctl.config import schema

    loc = tuple(err.get("loc", ()))
    path, value, found = _data_path(doc.data, loc)
    etype = err.get("type", "")
    name = str(loc[-1]) if loc else ""
    if context == "hooks":
        fields = {"top": ("version", "hooks"), "entry": schema.HOOK_FIELDS}
    else:
        fields = {"top": schema.TOP_FIELDS, "entry": schema.ENTRY_FIELDS}
    kind = "top" if len(path) <= 1 and (len(loc) <= 1) else "entry"
    if etype == "extra_forbidden":
        valid = ", ".join(fields[kind])
        return f"{doc.where(path, key=True)}: unknown field {name!r} (valid: {valid})"
    if etype == "missing":
        return f"{doc.where(path)}: missing required field {name!r}"
    if name == "version" or (loc and loc[0] == "version"):
        return f"{doc.where(('version',))}: unsupported version {_describe(value)} (valid: v1)"
    if "devices" in loc and "mig-devices" not in loc:
        return f"{doc.where(path)}: devices must be 'all' or a list of GPU indices, got {_describe(value)} (valid: all, [0, 1, ...])"
    if loc and loc[-1] == "[key]":
        key = str(loc[-2])
        if loc[0] == "hooks":
            return f"{doc.where(path, key=True)}: unknown hook {key!r} (valid: {', '.join(schema.HOOK_NAMES)})"
        return f"{doc.where(path, key=True)}: invalid key {key!r}: {err.get('msg', '')}"
    what = {
        "bool_type": "must be true or false",
        "int_type": "must be an integer",
        "string_type": "must be a string",
        "list_type": "must be a list",
        "dict_type": "must be a mapping",
        "literal_error": "is not one of the allowed values",
    }.get(etype, err.get("msg", "is invalid"))
    if etype == "value_error":  # our validators' own words, without pydantic's "Value error, "
        what = str((err.get("ctx") or {}).get("error") or what)
    dotted = ".".join(str(p) for p in path) or "document"
    return f"{doc.where(path)}: {dotted} {what}, got {_describe(value)}"
