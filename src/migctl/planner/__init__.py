"""The MIG planner: choose per-GPU MIG layouts for a fleet from workload needs, near-optimal with a bound.

Pure logic, no device I/O. Entry points: :func:`load_request` / :func:`parse_request` (YAML/CSV input),
:func:`plan` (dispatches to static, serving or incremental planning), :func:`validate_plan` (an
independent checker) and the output helpers in :mod:`migctl.planner.output`.
"""

from __future__ import annotations

from migctl.planner.core import Options, Plan, PlanError, PlannedGpu, PlannedInstance, Request, Workload
from migctl.planner.request import load_request, parse_request
from migctl.planner.validate import validate_plan


def plan(request: Request) -> Plan:
    """Plan ``request``: incremental when it has a live layout, serving mode when it has a serving spec."""
    if request.live is not None:
        from migctl.planner.incremental import plan_incremental

        return plan_incremental(request)
    if request.serving is not None:
        from migctl.planner.serving import plan_serving

        return plan_serving(request)
    from migctl.planner.solver import plan_static

    return plan_static(request)


__all__ = [
    "Options",
    "Plan",
    "PlanError",
    "PlannedGpu",
    "PlannedInstance",
    "Request",
    "Workload",
    "load_request",
    "parse_request",
    "plan",
    "validate_plan",
]
