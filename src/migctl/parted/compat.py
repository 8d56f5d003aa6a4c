"""mig-parted's semantics where migctl's own ``apply`` is stricter: a config entry that matches no GPU of the
node (another model's ``device-filter``, an index the node lacks) is skipped, not an error. Used by the drop-in
and by the Kubernetes agent (one ConfigMap serves nodes of every model, as with the GPU Operator)."""

from __future__ import annotations

import inspect
from typing import Any


def lenient_resolve(cfg: Any, label: str, live: list[Any]) -> dict[int, Any]:
    """``cfg.resolve`` without the strict checks (when this version of the config layer has them)."""
    if "strict" in inspect.signature(cfg.resolve).parameters:
        return cfg.resolve(label, live, strict=False)  # type: ignore[no-any-return]
    return cfg.resolve(label, live)  # type: ignore[no-any-return]


def resolver(cfg: Any, label: str, mode_only: bool = False) -> Any:
    """A resolver for ``reconcile.apply_desired``: mig-parted's lenient matching; with ``mode_only`` only the
    MIG mode of each matched GPU (profiles this model lacks do not stop a mode change)."""
    from migctl.reconcile.engine import config_modes

    def resolve(live: list[Any]) -> dict[int, Any]:
        if mode_only:
            return config_modes(cfg, label, live)
        return lenient_resolve(cfg, label, live)

    return resolve


def plan(node: Any, cfg: Any, label: str) -> tuple[list[Any], Any]:
    """(live layout, plan) for ``label`` with mig-parted's matching (no change made)."""
    from migctl.reconcile.engine import read_node
    from migctl.reconcile.plan import plan_node

    live = read_node(node)
    return live, plan_node(live, lenient_resolve(cfg, label, live), label)
