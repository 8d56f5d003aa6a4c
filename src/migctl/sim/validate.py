"""Checks a simulator state file's content before the simulated driver uses it.

The state file is written only by migctl (0600, atomic replace), but it is a file a user can edit, restore
from an old backup or damage. A value of the wrong type, or an instance the driver could never have made,
would otherwise surface deep inside the fake NVML as a traceback. :func:`check` names the first field that
is wrong and what is valid there; :class:`migctl.sim.store.Store` turns that into its one-line error.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from typing import Any

from migctl.catalog import CatalogError, parse_driver
from migctl.catalog.geometry import PlacedGI, conflict
from migctl.catalog.model import Placement

_BUS_ID = re.compile(r"^[0-9A-Fa-f]{8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]$")
_DRIVER = re.compile(r"^\d{1,6}(\.\d{1,6}){1,2}$")
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


Check = typing.Callable[[Any, str], None]
_SCALARS: dict[type, typing.Callable[[Any], bool]] = {
    bool: lambda v: type(v) is bool,
    int: lambda v: type(v) is int and -_MAX_INT <= v <= _MAX_INT,
    float: lambda v: type(v) in (int, float) and math.isfinite(v),
    str: lambda v: type(v) is str and len(v) <= _MAX_TEXT,
}


def _wrong(value: Any, tp: Any, where: str) -> StateContentError:
    return StateContentError(f"{where} is {_show(value)}, expected {_type_name(tp)}")


@functools.cache
def _checker(tp: Any) -> Check:
    """A function that checks a value against the field type ``tp`` (built once per type: the state is read
    on every command, and walking type hints for each value cost more than reading the file)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if len(args) == 2 and type(None) in args:
            inner = _checker(next(a for a in args if a is not type(None)))

            def optional(value: Any, where: str) -> None:
                if value is not None:
                    try:
                        inner(value, where)
                    except StateContentError:
                        raise _wrong(value, tp, where) from None
            return optional
        raise TypeError(f"unsupported field type {tp}")  # pragma: no cover - the state has no other unions
    if tp in _SCALARS:
        ok = _SCALARS[tp]

        def scalar(value: Any, where: str) -> None:
            if not ok(value):
                raise _wrong(value, tp, where)
        return scalar
    if origin in (list, dict):
        inner = _checker(typing.get_args(tp)[-1])  # list[X] or dict[str, X]: check each X

        def container(value: Any, where: str) -> None:
            if type(value) is not origin:
                raise _wrong(value, tp, where)
            if origin is list:
                for i, v in enumerate(value):
                    inner(v, f"{where}[{i}]")
            else:
                for k, v in value.items():
                    inner(v, f"{where}.{k}")
        return container
    if dataclasses.is_dataclass(tp):
        def record(value: Any, where: str) -> None:
            if type(value) is not dict:
                raise _wrong(value, tp, where)
            check_fields(value, tp, where)
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


def check_fields(data: dict[str, Any], cls: type, where: str) -> None:
    """Every field ``cls`` requires is present, none is unknown, and each has its annotated type."""
    checks, required = _layout(cls)
    for key, value in data.items():
        check = checks.get(key)
        if check is None:
            raise StateContentError(f"{where} has an unknown field {_show(key)} (known: {', '.join(checks)})")
        check(value, f"{where}.{key}")
    for name in required:
        if name not in data:
            raise StateContentError(f"{where}.{name} is missing")


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
    placed: list[PlacedGI] = []
    gi_ids: set[int] = set()
    cis: set[tuple[int, int]] = set()
    for j, gi in enumerate(gpu.gis):
        gw = f"{where}.gis[{j}]"
        profile = model.profile(gi.profile_id)
        if profile is None:
            raise _unknown_profile(gw, gi.profile_id, "a GI profile of " + gpu.model, model.gi_profiles)
        why = conflict(model, placed, profile, Placement(gi.start, gi.size))
        if why:
            raise StateContentError(f"{gw}: {why}")
        _claim(gi_ids, gi.id, gi.id, gw)
        placed.append(PlacedGI(profile, Placement(gi.start, gi.size)))
        used: list[Placement] = []
        for k, ci in enumerate(gi.cis):
            cw = f"{gw}.cis[{k}]"
            cp = profile.ci_profile(ci.profile_id)
            if cp is None:
                raise _unknown_profile(cw, ci.profile_id, "a CI profile of " + profile.name, profile.ci_profiles)
            pl = Placement(ci.start, ci.size)
            if pl not in cp.placements or any(p.overlaps(pl) for p in used):
                raise StateContentError(f"{cw}: placement {pl} is not free and valid for CI profile {cp.id}")
            _claim(cis, (gi.id, ci.id), ci.id, cw)
            used.append(pl)
    for k, proc in enumerate(gpu.processes):
        if proc.pid < 1:
            raise StateContentError(f"{where}.processes[{k}].pid is {proc.pid}, expected a process ID (1 or more)")
        _check_ref(proc.gi, proc.ci, gi_ids, cis, f"{where}.processes[{k}]")
        if proc.used_mib < 0:
            raise StateContentError(f"{where}.processes[{k}].used_mib is {proc.used_mib}, expected 0 or more")
    for k, holder in enumerate(gpu.holders):
        _check_ref(holder.gi, holder.ci, gi_ids, cis, f"{where}.holders[{k}]")


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
