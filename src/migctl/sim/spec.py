"""Simulated node specs: ``8xH100-80GB``, ``2xA100-40GB,2xA30``, ``4xA30@545.23.08``.

A spec is a comma-separated list of ``[N x]MODEL[~nomig]`` groups, optionally followed by ``@DRIVER`` (one
driver per node, as on a real machine; the suffix may be written on any group, but all must agree), then
optionally ``;key=value`` driver behaviours (:data:`migctl.sim.state.BEHAVIOURS`), e.g.
``4xA100-40GB@470.57.02;caller=user;vm=passthrough``. MODEL is a catalog key, or ``file:PATH`` for a model
file the catalog does not ship (same format as ``catalog/data/*.yaml``; ``migctl catalog --from-node`` writes one).
``~nomig`` makes a GPU answer Not Supported to every MIG call, as a GPU without MIG does (and as an RTX PRO
6000 Workstation edition does before it is switched to compute display mode, MIG User Guide v580).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from migctl.catalog import CatalogError, load_model, model_keys, parse_driver
from migctl.sim.state import BEHAVIOURS

# A current driver: R580 (580.65.06 appears in the MIG User Guide v580's MPS example [S3]).
DEFAULT_DRIVER = "580.65.06"
DEFAULT_SPEC = "8xH100-80GB"

_GROUP = re.compile(
    r"^\s*(?:([0-9]+)\s*[xX*]\s*)?(file:[^~@,;]+?|[A-Za-z0-9._+-]+?)(~nomig)?\s*(?:@\s*([0-9]{1,6}(?:\.[0-9]{1,6}){1,2}))?\s*$",
    re.ASCII,  # (other scripts' digits are not a GPU count)
)


class SpecError(ValueError):
    """A simulated node spec that cannot be parsed."""


@dataclass(frozen=True)
class NodeSpec:
    models: tuple[str, ...]  # catalog key (or file:PATH) per GPU index (with "~nomig" when MIG is unavailable)
    driver: str
    options: tuple[tuple[str, str], ...] = ()  # driver behaviours, sorted

    @property
    def behaviour(self) -> dict[str, str]:
        return dict(self.options)

    def __str__(self) -> str:
        groups: list[tuple[str, int]] = []
        for m in self.models:
            if groups and groups[-1][0] == m:
                groups[-1] = (m, groups[-1][1] + 1)
            else:
                groups.append((m, 1))
        opts = "".join(f";{k}={v}" for k, v in self.options)
        return ",".join(f"{n}x{m}" for m, n in groups) + f"@{self.driver}" + opts


def parse_spec(text: str) -> NodeSpec:
    """Parse a node spec; raises :class:`SpecError` with the valid forms and models on bad input."""
    if not text or not text.strip():
        raise SpecError("empty simulator spec; expected e.g. 8xH100-80GB or 2xA100-40GB,2xA30@545.23.08")
    text, *opt_parts = text.split(";")
    options = _parse_options(opt_parts)
    models: list[str] = []
    drivers: set[str] = set()
    for part in text.split(","):
        m = _GROUP.match(part)
        if not m:
            raise SpecError(
                f"cannot parse simulator spec group {part.strip()!r}; expected [N x]MODEL[~nomig][@DRIVER], "
                "e.g. 8xH100-80GB or 4xA30@545.23.08"
            )
        count = int(m.group(1) or 1)
        if count < 1 or count > 64:
            raise SpecError(f"GPU count {count} in {part.strip()!r} is out of range 1..64")
        ref = m.group(2)
        from migctl.sim.plain_gpus import PLAIN_GPUS, plain_model

        plain = plain_model(ref)
        if ref.startswith("file:"):
            from pathlib import Path

            path = Path(ref[5:]).expanduser().resolve()
            try:
                load_model(f"file:{path}")
            except CatalogError as e:
                raise SpecError(f"model file in simulator spec: {e}") from None
            key = f"file:{path}"
        elif plain is not None:
            key = plain.key
        else:
            try:
                key = load_model(ref).key
            except CatalogError:
                raise SpecError(f"unknown GPU model {ref!r} in simulator spec; valid: {', '.join(model_keys())}, "
                                f"{', '.join(f'{k} (no MIG)' for k in PLAIN_GPUS)}, "
                                "or file:PATH for a model file") from None
        models.extend([key + (m.group(3) or "")] * count)
        if m.group(4):
            drivers.add(m.group(4))
    if len(drivers) > 1:
        raise SpecError(f"one driver per node, but the spec names {', '.join(sorted(drivers))}")
    if len(models) > 64:
        raise SpecError(f"at most 64 GPUs per simulated node, the spec has {len(models)}")
    from migctl.sim.plain_gpus import PLAIN_GPUS

    catalog = [PLAIN_GPUS.get(k.partition("~")[0]) or load_model(k.partition("~")[0]) for k in models]
    minimum = max((m.min_driver for m in catalog if m.min_driver), default=None)
    if drivers:
        driver = drivers.pop()  # kept as written: real drivers have two-part versions too (570.169)
        if minimum is not None and parse_driver(driver) < minimum:
            need = ".".join(f"{x:02d}" if i else str(x) for i, x in enumerate(minimum))
            raise SpecError(f"driver {driver} is older than the first driver with MIG on this node's GPUs "
                            f"({need}, MIG User Guide); use @{need} or newer")
    else:
        # the default driver, or the first one that supports every GPU of the spec when that is newer
        driver = DEFAULT_DRIVER
        if minimum is not None and parse_driver(driver) < minimum:
            driver = ".".join(f"{x:02d}" if i else str(x) for i, x in enumerate(minimum))
    return NodeSpec(tuple(models), driver, options)


def _parse_options(parts: list[str]) -> tuple[tuple[str, str], ...]:
    out: dict[str, str] = {}
    for part in parts:
        if not part.strip():
            continue
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or key not in BEHAVIOURS:
            raise SpecError(f"unknown simulator option {part.strip()!r}; valid: "
                            + ", ".join(f"{k}={'|'.join(v)}" for k, v in BEHAVIOURS.items()))
        if value not in BEHAVIOURS[key]:
            raise SpecError(f"simulator option {key}={value!r} is not valid; valid: {key}={'|'.join(BEHAVIOURS[key])}")
        out[key] = value
    return tuple(sorted(out.items()))
