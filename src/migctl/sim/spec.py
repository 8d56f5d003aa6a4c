"""Simulated node specs: ``8xH100-80GB``, ``2xA100-40GB,2xA30``, ``4xA30@545.23.08``.

A spec is a comma-separated list of ``[N x]MODEL[~nomig]`` groups, optionally followed by ``@DRIVER`` (one
driver per node, as on a real machine; the suffix may be written on any group, but all must agree).
``~nomig`` makes a GPU answer Not Supported to every MIG call, as a GPU without MIG does (and as an RTX PRO
6000 Workstation edition does before it is switched to compute display mode, MIG User Guide v580).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from migctl.catalog import CatalogError, load_model, model_keys

# A current driver: R580 (580.65.06 appears in the MIG User Guide v580's MPS example [S3]).
DEFAULT_DRIVER = "580.65.06"
DEFAULT_SPEC = "8xH100-80GB"

_GROUP = re.compile(
    r"^\s*(?:(\d+)\s*[xX*]\s*)?([A-Za-z0-9._+-]+?)(~nomig)?\s*(?:@\s*([0-9]+(?:\.[0-9]+){1,2}))?\s*$"
)


class SpecError(ValueError):
    """A simulated node spec that cannot be parsed."""


@dataclass(frozen=True)
class NodeSpec:
    models: tuple[str, ...]  # catalog key per GPU index (with "~nomig" when MIG is unavailable)
    driver: str

    def __str__(self) -> str:
        groups: list[tuple[str, int]] = []
        for m in self.models:
            if groups and groups[-1][0] == m:
                groups[-1] = (m, groups[-1][1] + 1)
            else:
                groups.append((m, 1))
        return ",".join(f"{n}x{m}" for m, n in groups) + f"@{self.driver}"


def parse_spec(text: str) -> NodeSpec:
    """Parse a node spec; raises :class:`SpecError` with the valid forms and models on bad input."""
    if not text or not text.strip():
        raise SpecError("empty simulator spec; expected e.g. 8xH100-80GB or 2xA100-40GB,2xA30@545.23.08")
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
        try:
            model = load_model(m.group(2))
        except CatalogError:
            raise SpecError(f"unknown GPU model {m.group(2)!r} in simulator spec; valid: {', '.join(model_keys())}") from None
        models.extend([model.key + (m.group(3) or "")] * count)
        if m.group(4):
            drivers.add(m.group(4))
    if len(drivers) > 1:
        raise SpecError(f"one driver per node, but the spec names {', '.join(sorted(drivers))}")
    if len(models) > 64:
        raise SpecError(f"at most 64 GPUs per simulated node, the spec has {len(models)}")
    driver = drivers.pop() if drivers else DEFAULT_DRIVER
    if len(driver.split(".")) == 2:
        driver += ".00"
    return NodeSpec(tuple(models), driver)
