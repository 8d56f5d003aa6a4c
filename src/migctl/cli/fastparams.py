"""Parameter coercion without pydantic for plain values, so that a listing does not pay for importing it.

typer 0.2x coerces every command-line value through a pydantic ``TypeAdapter`` (``typer._coercion``) and
builds one for each parameter of the command; the first one built imports pydantic, about 0.15 s of a
0.65 s ``migctl gpus``. :func:`install` wraps typer's ``build_runtime_param`` so that typer's adapter is built
only when a value needs it: for a ``bool``, ``str``, ``int``, ``float`` or ``list[str]`` parameter with no
parser, range, choices, path or file type, a value that is already of that type, or a string in the plain
decimal form that the adapter reads the same way, is returned (converted) here; every other value goes to
typer's own adapter, so what is accepted, what is refused and every error message stay typer's.
``tests/cli/test_fastparams.py`` checks the two against each other. With a typer that has no ``_coercion``
module (before 0.2x, which coerced without pydantic) or a different one, nothing is changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, get_args, get_origin

_INT = re.compile(r"-?(?:0|[1-9][0-9]{0,17})", re.ASCII)
_FLOAT = re.compile(r"-?(?:0|[1-9][0-9]{0,17})(?:\.[0-9]{1,15})?", re.ASCII)
MISS = object()


def plain(annotation: Any, value: Any) -> Any:
    """``value`` coerced to ``annotation`` when it is a plain case (see the module docstring), else MISS."""
    if annotation is bool:
        return value if type(value) is bool else MISS
    if annotation is str:
        return value if type(value) is str else MISS
    if annotation is int or annotation is float:
        if type(value) is annotation:
            return value
        form = _INT if annotation is int else _FLOAT
        return annotation(value) if type(value) is str and form.fullmatch(value) else MISS
    if get_origin(annotation) is list and get_args(annotation) == (str,):
        if type(value) in (list, tuple) and all(type(v) is str for v in value):
            return list(value)
        return MISS
    return MISS


def _simple(descriptor: Any) -> bool:
    """Whether typer's adapter for ``descriptor`` is the plain conversion of its annotation (no parser, range,
    choices, path or file handling), so that :func:`plain` may answer for it."""
    info = descriptor.parameter_info
    ann = descriptor.annotation
    if ann not in (bool, str, int, float) and not (get_origin(ann) is list and get_args(ann) == (str,)):
        return False
    return (descriptor.file_annotation is None and getattr(info, "parser", None) is None
            and getattr(info, "min", None) is None and getattr(info, "max", None) is None
            and not getattr(info, "clamp", False) and descriptor.choices is None and not descriptor.is_path)


def install() -> bool:
    """Wrap typer's coercion (once); True if it is in place."""
    try:
        from typer import _coercion, core
    except ImportError:
        return False
    build = getattr(_coercion, "build_runtime_param", None)
    base = getattr(_coercion, "RuntimeParam", None)
    if build is None or base is None or getattr(core, "build_runtime_param", None) is not build:
        return bool(getattr(getattr(core, "build_runtime_param", None), "migctl_fast", False))
    try:
        fields = set(base.__dataclass_fields__)
    except AttributeError:
        return False
    if fields != {"parameter_info", "annotation"} or not hasattr(base, "_coerce_value"):
        return False

    @dataclass(frozen=True)
    class FastParam(base):  # type: ignore[misc, valid-type]
        descriptor: Any = None
        simple: bool = False
        slow: list[Any] = field(default_factory=list)  # typer's own runtime param, built on first use

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            out = plain(self.annotation, value) if self.simple else MISS
            if out is not MISS:
                return out
            if not self.slow:
                self.slow.append(build(self.descriptor))
            return self.slow[0]._coerce_value(value, param=param, ctx=ctx)

    def fast_build(descriptor: Any) -> Any:
        try:
            simple = _simple(descriptor)
            return FastParam(parameter_info=descriptor.parameter_info, annotation=descriptor.annotation,
                             descriptor=descriptor, simple=simple)
        except AttributeError:  # a descriptor of another shape: typer's own
            return build(descriptor)

    fast_build.migctl_fast = True  # type: ignore[attr-defined]
    core.build_runtime_param = fast_build
    return True
