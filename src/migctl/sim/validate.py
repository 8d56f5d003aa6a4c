"""Checks a simulator state file's content before the simulated driver uses it.

The state file is written only by migctl (0600, atomic replace), but it is a file a user can edit, restore
from an old backup or damage. A value of the wrong type, or an instance the driver could never have made,
would otherwise surface deep inside the fake NVML as a traceback. :func:`check` names the first field that
is wrong and what is valid there; :class:`migctl.sim.store.Store` turns that into its one-line error.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from typing import Any

from migctl.catalog import CatalogError, load_model, parse_driver
from migctl.catalog.geometry import PlacedGI, conflict
from migctl.catalog.model import Placement
from migctl.inputs import finite_number

_BUS_ID = re.compile(r"^[0-9A-Fa-f]{8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]$")
_DRIVER = re.compile(r"^[0-9]{1,6}(\.[0-9]{1,6}){1,2}$", re.ASCII)
_MAX_INT = 2**63 - 1  # what an NVML unsigned long long field and SQLite can hold; the state never needs more
_MAX_TEXT = 4096


class StateContentError(ValueError):
    """A field of the state file holds something the simulated driver never writes."""


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "an object"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[tp]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Bad(Exception):  # noqa: N818 - internal signal, turned into StateContentError by check_fields
    """A value that does not fit its field; ``path`` is filled in on the way out (no strings on the happy path:
    the state is checked on every read and write)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text
        self.path: list[str] = []


Check = typing.Callable[[Any], None]
_SCALARS: dict[type, typing.Callable[[Any], bool]] = {
    bool: lambda v: type(v) is bool,
    int: lambda v: type(v) is int and -_MAX_INT <= v <= _MAX_INT,
    float: finite_number,
    str: lambda v: type(v) is str and len(v) <= _MAX_TEXT,
}


def _wrong(value: Any, tp: Any) -> _Bad:
    return _Bad(f" is {_show(value)}, expected {_type_name(tp)}")


@functools.cache
def _checker(tp: Any) -> Check:
    """A function that checks a value against the field type ``tp`` (built once per type)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if len(args) == 2 and type(None) in args:
            inner = _checker(next(a for a in args if a is not type(None)))

            def optional(value: Any) -> None:
                if value is not None:
                    try:
                        inner(value)
                    except _Bad:
                        raise _wrong(value, tp) from None
            return optional
        raise TypeError(f"unsupported field type {tp}")  # pragma: no cover - the state has no other unions
    if tp in _SCALARS:
        ok = _SCALARS[tp]

        def scalar(value: Any) -> None:
            if not ok(value):
                raise _wrong(value, tp)
        return scalar
    if origin in (list, dict):
        inner = _checker(typing.get_args(tp)[-1])  # list[X] or dict[str, X]: check each X

        def container(value: Any) -> None:
            if type(value) is not origin:
                raise _wrong(value, tp)
            for k, v in (enumerate(value) if origin is list else value.items()):
                try:
                    inner(v)
                except _Bad as e:
                    e.path.append(f"[{k}]" if origin is list else f".{k}")
                    raise
        return container
    if dataclasses.is_dataclass(tp):
        def record(value: Any) -> None:
            if type(value) is not dict:
                raise _wrong(value, tp)
            _fields(value, tp)
        return record
    raise TypeError(f"unsupported field type {tp}")  # pragma: no cover - every field type of the state is above


@functools.cache
def _layout(cls: type) -> tuple[dict[str, Check], frozenset[str]]:
    """Per field of ``cls``: its checker; and the fields without a default."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    required = frozenset(f.name for f in fields
                         if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    return {f.name: _checker(hints[f.name]) for f in fields}, required


def _fields(data: dict[str, Any], cls: type) -> None:
    checks, required = _layout(cls)
    for key, value in data.items():
        check = checks.get(key)
        if check is None:
            raise _Bad(f" has an unknown field {_show(key)} (known: {', '.join(checks)})")
        try:
            check(value)
        except _Bad as e:
            e.path.append(f".{key}")
            raise
    for name in required:
        if name not in data:
            bad = _Bad(" is missing")
            bad.path.append(f".{name}")
            raise bad


def check_fields(data: dict[str, Any], cls: type, where: str) -> None:
    """Every field ``cls`` requires is present, none is unknown, and each has its annotated type."""
    try:
        _fields(data, cls)
    except _Bad as e:
        raise StateContentError(where + "".join(reversed(e.path)) + e.text) from None


def _nonnegative(value: int, where: str) -> None:
    if value < 0:
        raise StateContentError(f"{where} is {value}, expected 0 or more")


def check(state: Any, behaviours: dict[str, tuple[str, ...]]) -> None:
    """What the simulated driver relies on beyond types: a known model and a parseable driver, behaviours it
    knows, and GPU and compute instances that the driver could have created (valid profiles and placements,
    no overlap, unique IDs), and clients and holders of instances that exist."""
    if not _DRIVER.match(state.driver):
        raise StateContentError(f"driver is {_show(state.driver)}, expected a version such as 580.65.06")
    parse_driver(state.driver)
    for key, value in state.behaviour.items():
        if key not in behaviours:
            raise StateContentError(f"behaviour has an unknown key {_show(key)} (known: {', '.join(behaviours)})")
        if value not in behaviours[key]:
            raise StateContentError(f"behaviour.{key} is {_show(value)}, expected one of {', '.join(behaviours[key])}")
    for name in ("op_count", "serial", "boots"):
        _nonnegative(getattr(state, name), name)
    if state.fail_at is not None:
        _nonnegative(state.fail_at, "fail_at")
    if state.client_delay < 0:
        raise StateContentError(f"client_delay is {state.client_delay}, expected 0 or more")
    if not state.gpus:
        raise StateContentError("gpus is empty, expected at least one GPU")
    uuids: set[str] = set()
    for i, gpu in enumerate(state.gpus):
        _check_gpu(gpu, i, uuids)


def _check_gpu(gpu: Any, i: int, uuids: set[str]) -> None:
    where = f"gpus[{i}]"
    if gpu.index != i:
        raise StateContentError(f"{where}.index is {gpu.index}, expected {i} (GPUs are listed in index order)")
    if not _BUS_ID.match(gpu.bus_id):
        raise StateContentError(f"{where}.bus_id is {_show(gpu.bus_id)}, expected DDDDDDDD:BB:DD.F (hex)")
    for name, values in (("mig_current", (0, 1)), ("mig_pending", (0, 1)), ("persistence_mode", (0, 1))):
        if getattr(gpu, name) not in values:
            raise StateContentError(f"{where}.{name} is {getattr(gpu, name)}, expected 0 or 1")
    if not gpu.uuid.startswith("GPU-") or gpu.uuid in uuids:
        raise StateContentError(f"{where}.uuid is {_show(gpu.uuid)}, expected a unique GPU-... UUID")
    uuids.add(gpu.uuid)
    try:
        model = gpu.catalog
    except (CatalogError, OSError, ValueError) as e:
        raise StateContentError(f"{where}.model {_show(gpu.model)} is not a known model ({e})") from None
    if (gpu.gis or gpu.mig_current) and not model.gi_profiles:
        raise StateContentError(f"{where} is a {gpu.model}, which has no MIG, but its state has MIG on or instances")
    layout = tuple((gi.id, gi.profile_id, gi.start, gi.size, tuple((c.id, c.profile_id, c.start, c.size) for c in gi.cis))
                   for gi in gpu.gis)
    problem, gi_ids, cis = _instances(gpu.model, layout)
    if problem:
        raise StateContentError(f"{where}.{problem}")
    for k, proc in enumerate(gpu.processes):
        if proc.pid < 1:
            raise StateContentError(f"{where}.processes[{k}].pid is {proc.pid}, expected a process ID (1 or more)")
        _check_ref(proc.gi, proc.ci, gi_ids, cis, f"{where}.processes[{k}]")
        if proc.used_mib < 0:
            raise StateContentError(f"{where}.processes[{k}].used_mib is {proc.used_mib}, expected 0 or more")
    for k, holder in enumerate(gpu.holders):
        _check_ref(holder.gi, holder.ci, gi_ids, cis, f"{where}.holders[{k}]")


@functools.lru_cache(maxsize=4096)
def _instances(model_key: str, layout: tuple[Any, ...]) -> tuple[str | None, frozenset[int], frozenset[tuple[int, int]]]:
    """What is wrong with one GPU's GPU and compute instances, relative to ``gpus[i].`` (None when the driver could
    have made them), and the GI and (GI, CI) IDs present. Cached by the layout: most reads and writes see the
    same layouts again, and this was most of the cost of checking a state."""
    from migctl.sim.plain_gpus import PLAIN_GPUS

    model = PLAIN_GPUS.get(model_key) or load_model(model_key)
    try:
        placed: list[PlacedGI] = []
        gi_ids: set[int] = set()
        cis: set[tuple[int, int]] = set()
        for j, (gi_id, gi_profile, gi_start, gi_size, gi_cis) in enumerate(layout):
            gw = f"gis[{j}]"
            profile = model.profile(gi_profile)
            if profile is None:
                raise _unknown_profile(gw, gi_profile, "a GI profile of " + model_key, model.gi_profiles)
            why = conflict(model, placed, profile, Placement(gi_start, gi_size))
            if why:
                raise StateContentError(f"{gw}: {why}")
            _claim(gi_ids, gi_id, gi_id, gw)
            placed.append(PlacedGI(profile, Placement(gi_start, gi_size)))
            used: list[Placement] = []
            for k, (ci_id, ci_profile, ci_start, ci_size) in enumerate(gi_cis):
                cw = f"{gw}.cis[{k}]"
                cp = profile.ci_profile(ci_profile)
                if cp is None:
                    raise _unknown_profile(cw, ci_profile, "a CI profile of " + profile.name, profile.ci_profiles)
                pl = Placement(ci_start, ci_size)
                if pl not in cp.placements or any(p.overlaps(pl) for p in used):
                    raise StateContentError(f"{cw}: placement {pl} is not free and valid for CI profile {cp.id}")
                _claim(cis, (gi_id, ci_id), ci_id, cw)
                used.append(pl)
    except StateContentError as e:
        return str(e), frozenset(), frozenset()
    return None, frozenset(gi_ids), frozenset(cis)


def _unknown_profile(where: str, profile_id: int, what: str, profiles: Any) -> StateContentError:
    valid = ", ".join(str(p.id) for p in profiles)
    return StateContentError(f"{where}.profile_id is {profile_id}, not {what} (valid: {valid})")


def _claim(seen: set[Any], key: Any, ident: int, where: str) -> None:
    """Instance IDs are unique (per GPU for GIs, per GI for CIs) and below 64, as the driver hands them out."""
    if key in seen or not 0 <= ident < 64:
        raise StateContentError(f"{where}.id is {ident}, expected a unique ID from 0 to 63")
    seen.add(key)


def _check_ref(gi: int | None, ci: int | None, gi_ids: set[int], cis: set[tuple[int, int]], where: str) -> None:
    if gi is None:
        if ci is not None:
            raise StateContentError(f"{where} names compute instance {ci} but no GPU instance")
        return
    if gi not in gi_ids:
        raise StateContentError(f"{where} names GPU instance {gi}, which does not exist")
    if ci is not None and (gi, ci) not in cis:
        raise StateContentError(f"{where} names compute instance {gi}/{ci}, which does not exist")
